"""Frame sources: synthetic frames, image files (Pillow), video files and cameras (OpenCV).

A source is a context manager whose :meth:`Source.read` returns the head's feed for the next
frame (input name -> array of the manifest's dtype and shape), or None when it has no more.
Pillow and OpenCV are imported only by the sources that need them.
"""

from __future__ import annotations

import abc
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from splitpipe.devices.runtimes import TensorSpec
from splitpipe.edge.options import SourceSpec
from splitpipe.errors import SplitpipeError

_LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: synthetic frames kept at most (distinct frames, cycled)
SYNTHETIC_POOL = 8
SYNTHETIC_POOL_BYTES = 64 << 20

Feed = dict[str, np.ndarray]


def _concrete(spec: TensorSpec) -> tuple[int, ...]:
    """The shape of one frame: a free first (batch) dimension is 1; other free ones are errors."""
    shape = [1 if (i == 0 and d is None) else d for i, d in enumerate(spec.shape)]
    if any(d is None for d in shape):
        raise SplitpipeError(
            f"input {spec.name!r} has free dimensions {list(spec.shape)}; frames need a fixed shape"
        )
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


class Source(abc.ABC):
    """Yields feeds for the head; use as a context manager."""

    #: inputs that could not be read and were skipped (an image file that does not decode)
    unreadable = 0

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire what the source reads from (a file, a camera)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release it."""

    @abc.abstractmethod
    def read(self) -> Feed | None:
        """The next frame's feed, or None at the end of the source."""


class SyntheticSource(Source):
    """Random frames of the inputs' shapes and dtypes, from a seed; frame ``i`` is :meth:`frame`.

    A few distinct frames are made once and cycled, so that capturing costs nothing measurable
    and any frame can be made again (tests compare results with the whole model on it)."""

    def __init__(self, inputs: tuple[TensorSpec, ...], seed: int = 0) -> None:
        self.inputs = inputs
        self.seed = seed
        frame_bytes = sum(math.prod(_concrete(s)) * s.dtype.itemsize for s in inputs)
        self.pool_size = max(1, min(SYNTHETIC_POOL, SYNTHETIC_POOL_BYTES // max(frame_bytes, 1)))
        self._pool: list[Feed] = []
        self._next = 0

    def open(self) -> None:
        self.frame(self.pool_size - 1)  # make the pool now, so that capturing costs nothing later

    def frame(self, index: int) -> Feed:
        """The feed of frame ``index`` (the same array objects each time it comes round)."""
        slot = index % self.pool_size
        while len(self._pool) <= slot:
            self._pool.append(self._make(len(self._pool)))
        return self._pool[slot]

    def _make(self, slot: int) -> Feed:
        rng = np.random.default_rng([self.seed, slot])
        feed: Feed = {}
        for spec in self.inputs:
            shape = _concrete(spec)
            if spec.dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feed[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
            elif spec.dtype.kind in "iu":
                hi = min(int(np.iinfo(spec.dtype).max), 255)
                feed[spec.name] = rng.integers(0, hi, shape, endpoint=True).astype(spec.dtype)
            else:
                raise SplitpipeError(f"input {spec.name!r}: no synthetic frames of dtype {spec.dtype}")
        return feed

    def read(self) -> Feed:
        feed = self.frame(self._next)
        self._next += 1
        return feed


class _ImageInput:
    """Turns an RGB (or grey) uint8 picture into the one image input of the head, as the
    manifest's ``preprocess`` says: resize to ``size`` [H, W], scale to 0..1, then
    ``(x - mean) / std`` per channel, NCHW. Without ``preprocess``: resize to the input's H, W
    and scale to 0..1."""

    def __init__(self, inputs: tuple[TensorSpec, ...], preprocess: dict[str, Any] | None, what: str) -> None:
        if len(inputs) != 1:
            raise SplitpipeError(
                f"source {what} feeds models with one image input; this one has {len(inputs)}"
            )
        spec = inputs[0]
        shape = _concrete(spec)
        if len(shape) != 4 or shape[0] != 1 or shape[1] not in (1, 3) or spec.dtype.kind != "f":
            raise SplitpipeError(
                f"source {what} needs a float NCHW image input with 1 or 3 channels, batch 1; "
                f"input {spec.name!r} is {spec.dtype}{list(spec.shape)}"
            )
        pre = preprocess or {}
        layout = pre.get("layout", "NCHW")
        if layout != "NCHW":
            raise SplitpipeError(f"preprocess layout {layout!r} is not supported; accepted: NCHW")
        self.name = spec.name
        self.dtype = spec.dtype
        self.channels = shape[1]
        self.size = (shape[2], shape[3])  # the input's H, W: what the head takes
        size = pre.get("size")
        if size is not None and tuple(size) != self.size:
            _LOGGER.warning(
                "preprocess size %s differs from the input's %s; resizing to the input", size, self.size
            )
        c = self.channels
        self.mean = np.asarray(pre.get("mean", [0.0] * c), dtype=np.float32).reshape(c, 1, 1)
        self.std = np.asarray(pre.get("std", [1.0] * c), dtype=np.float32).reshape(c, 1, 1)
        if self.mean.size != c or self.std.size != c or np.any(self.std == 0):
            raise SplitpipeError(f"preprocess mean and std need {c} values each, std non-zero; got {pre}")

    def feed(self, pixels: np.ndarray) -> Feed:
        """``pixels``: uint8 [H, W, C] at the input's size (RGB, or grey for one channel)."""
        x = pixels.astype(np.float32).reshape(self.size[0], self.size[1], self.channels)
        x = x.transpose(2, 0, 1) * np.float32(1 / 255)
        x = (x - self.mean) / self.std
        return {self.name: np.ascontiguousarray(x[None], dtype=self.dtype)}


class ImageSource(Source):
    """The image files of a directory, in name order (Pillow). A file that does not decode is
    skipped with one warning (counted in :attr:`unreadable`); a folder of which no file decodes
    is an error."""

    def __init__(
        self,
        directory: Path,
        inputs: tuple[TensorSpec, ...],
        preprocess: dict[str, Any] | None,
        loop: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.loop = loop
        self.image = _ImageInput(inputs, preprocess, "images")
        self.files: list[Path] = []
        self._next = 0
        self._decoded = False  # some file decoded
        self._warned: dict[Path, str] = {}  # the files skipped, and why

    def open(self) -> None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise SplitpipeError(
                "source images needs Pillow: pip install pillow (or the splitpipe[edge] extra)"
            ) from None
        if not self.directory.is_dir():
            if self.directory.exists():  # one picture given: the source takes its folder
                raise SplitpipeError(
                    f"source images takes a folder of pictures; {self.directory} is not a folder"
                )
            raise SplitpipeError(f"images directory not found: {self.directory}")
        self.files = sorted(
            p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise SplitpipeError(
                f"no image files in {self.directory} (accepted: {', '.join(IMAGE_SUFFIXES)})"
            )

    def read(self) -> Feed | None:
        from PIL import Image

        for _ in range(len(self.files)):  # one pass at most: a looping folder none of which reads ends
            if self._next >= len(self.files):
                if not self.loop:
                    break
                self._next = 0
            path = self.files[self._next]
            self._next += 1
            try:
                with Image.open(path) as img:
                    mode = "RGB" if self.image.channels == 3 else "L"
                    h, w = self.image.size
                    pixels = np.asarray(img.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
            # Pillow's errors for a file that does not decode (UnidentifiedImageError is an OSError)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                self.unreadable += 1
                if path not in self._warned:
                    self._warned[path] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    _LOGGER.warning("skipping image %s: cannot read it (%s)", path, self._warned[path])
                continue
            self._decoded = True
            return self.image.feed(pixels)
        if not self._decoded:
            path, why = next(iter(self._warned.items()))
            raise SplitpipeError(
                f"none of the {len(self.files)} image files in {self.directory} can be read "
                f"(e.g. {path.name}: {why}); accepted: images Pillow decodes"
            )
        return None


class VideoSource(Source):
    """A video file or a camera (OpenCV ``VideoCapture``)."""

    def __init__(
        self,
        target: str | int,
        inputs: tuple[TensorSpec, ...],
        preprocess: dict[str, Any] | None,
        loop: bool = False,
    ) -> None:
        self.target = target
        self.camera = isinstance(target, int)
        self.loop = loop and not self.camera
        self.image = _ImageInput(inputs, preprocess, "camera" if self.camera else "video")
        self._capture: Any = None

    def open(self) -> None:
        try:
            import cv2
        except ImportError:
            raise SplitpipeError(
                f"source {'camera' if self.camera else 'video'} needs OpenCV: "
                "pip install opencv-python-headless (or the splitpipe[video] extra)"
            ) from None
        if not self.camera and not Path(str(self.target)).is_file():
            raise SplitpipeError(f"video file not found: {self.target}")
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            what = f"camera {self.target}" if self.camera else f"video {self.target}"
            raise SplitpipeError(f"OpenCV cannot open {what}")
        self._capture = capture

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def read(self) -> Feed | None:
        import cv2

        ok, frame = self._capture.read()
        if not ok and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            if self.camera:
                # a camera does not end: fail, so that a service manager restarts the agent
                raise SplitpipeError(f"camera {self.target} stopped delivering frames")
            return None
        h, w = self.image.size
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        code = cv2.COLOR_BGR2RGB if self.image.channels == 3 else cv2.COLOR_BGR2GRAY
        return self.image.feed(cv2.cvtColor(frame, code))


def open_source(
    spec: SourceSpec, inputs: tuple[TensorSpec, ...], preprocess: dict[str, Any] | None
) -> Source:
    """The source ``spec`` names, for a head with ``inputs`` (not yet opened)."""
    if spec.kind == "synthetic":
        return SyntheticSource(inputs, spec.seed)
    if spec.kind == "images":
        return ImageSource(Path(str(spec.target)), inputs, preprocess, spec.loop)
    if spec.kind == "video":
        return VideoSource(str(spec.target), inputs, preprocess, spec.loop)
    return VideoSource(int(str(spec.target)), inputs, preprocess)
