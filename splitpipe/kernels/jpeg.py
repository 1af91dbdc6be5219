"""The image stage of the ``jpeg`` codec: uint8 codes of an NHWC batch <-> JPEG streams (Pillow).

Payload layout: for each image of the batch, in order, a 4-byte little-endian unsigned length
``L`` followed by ``L`` bytes of one baseline JPEG stream (mode L for one channel, RGB for
three; Pillow's defaults: JFIF, 4:2:0 chroma subsampling for RGB, standard Huffman tables).
Nothing else: the batch size, image size and mode come from the meta.

Decoding trusts nothing: the length prefixes must tile the payload exactly; then every stream's
header is read (Pillow's ``Image.open`` parses the markers up to the start of scan and decodes no
pixels) and its format, mode and size are checked against the meta before any stream's pixels are
decoded, so a few bytes that declare a 50000x50000 image are refused without allocating it.
Pillow is imported lazily; without it, ``jpeg`` is unavailable and says so.
"""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import numpy as np

from splitpipe.errors import CodecError, UnavailableError

_PREFIX = struct.Struct("<I")
_MODES = {1: "L", 3: "RGB"}

#: most scans (SOS markers) one stream may have. libjpeg passes over the whole image for every
#: scan, and a progressive stream may repeat a scan of a few bytes any number of times: without a
#: limit, 200 KB declaring a 2048x2048 image kept a tail thread decoding for 1.6 s (a message of
#: the default 256 MiB for half an hour). Pillow writes 1 scan (baseline) or about 10 (progressive).
MAX_SCANS = 100
# a marker: 0xFF and a code other than 0x00 (a stuffed 0xFF in entropy-coded data), 0xFF (a fill
# byte before the marker) and RST0-7 (inside a scan's entropy-coded data)
_MARKER = re.compile(rb"\xff([^\x00\xff\xd0-\xd7])")
_STANDALONE = (0x01, 0xD8)  # TEM, SOI: no length follows
_SOS, _EOI = 0xDA, 0xD9


def _image_module() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise UnavailableError(
            "codec jpeg needs the Pillow package, which is not installed here "
            "(pip install pillow, or the splitpipe[edge] / splitpipe[server] extra)"
        ) from None
    return Image


def check_available() -> None:
    _image_module()


def encode(codes: np.ndarray, quality: int) -> bytes:
    """One length-prefixed JPEG stream per image of ``codes``, uint8 of shape (N, H, W, C)."""
    image = _image_module()
    parts: list[bytes] = []
    for img in codes:
        pixels = np.ascontiguousarray(img[:, :, 0] if img.shape[2] == 1 else img)
        buf = io.BytesIO()
        image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        parts += [_PREFIX.pack(len(data)), data]
    return b"".join(parts)


def split_streams(payload: bytes | bytearray | memoryview, n: int) -> list[bytes]:
    """The ``n`` streams of a payload; CodecError unless the length prefixes tile it exactly."""
    view = memoryview(payload).cast("B")
    total = len(view)
    if total < _PREFIX.size * n:
        raise CodecError(f"jpeg payload is {total} bytes, too short for {n} length-prefixed streams")
    streams: list[bytes] = []
    pos = 0
    for i in range(n):
        if pos + _PREFIX.size > total:
            raise CodecError(f"jpeg payload ends before the length of stream {i} of {n}")
        (length,) = _PREFIX.unpack_from(view, pos)
        pos += _PREFIX.size
        if length == 0 or length > total - pos:
            raise CodecError(
                f"jpeg stream {i} of {n} declares {length} bytes, {total - pos} remain in the payload"
            )
        streams.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != total:
        raise CodecError(f"jpeg payload has {total - pos} bytes after its {n} streams")
    return streams


def _check_scans(data: bytes, index: int) -> None:
    """Walk the markers of a stream as libjpeg reads them (segments skipped by their length, a
    scan's entropy-coded data up to the next marker, nothing after EOI) and refuse more than
    :data:`MAX_SCANS` scans. Malformed structure is left for Pillow to report."""
    pos, scans, end = 0, 0, len(data)
    while (found := _MARKER.search(data, pos)) is not None:
        marker, pos = data[found.start() + 1], found.end()
        if marker == _EOI:
            return
        if marker in _STANDALONE:
            continue
        if marker == _SOS:
            scans += 1
            if scans > MAX_SCANS:
                raise CodecError(f"jpeg stream {index} has more than {MAX_SCANS} scans")
        if pos + 2 > end:
            return
        pos += (data[pos] << 8) | data[pos + 1]  # the segment's length counts its own two bytes


def _open_checked(image: Any, data: bytes, index: int, mode: str, size: tuple[int, int]) -> Any:
    """Open one stream lazily (header only) and check it against the meta."""
    try:
        img = image.open(io.BytesIO(data), formats=["JPEG"])
    except image.DecompressionBombError as exc:
        raise CodecError(f"jpeg stream {index}: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CodecError(f"jpeg stream {index} is not a readable JPEG: {exc}") from None
    got = (img.format, img.mode, img.size)
    if got != ("JPEG", mode, size):
        img.close()
        raise CodecError(
            f"jpeg stream {index} is a {got[0]} image of {got[2][0]}x{got[2][1]} pixels in mode {got[1]}, "
            f"the meta implies JPEG {size[0]}x{size[1]} in mode {mode}"
        )
    try:
        _check_scans(data, index)
    except CodecError:
        img.close()
        raise
    return img


def decode(payload: bytes | bytearray | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 codes of shape (N, H, W, C) for an NCHW meta ``shape`` whose size the caller has
    already checked against its limit."""
    try:
        image = _image_module()
    except UnavailableError as exc:
        raise CodecError(f"payload uses jpeg but it cannot be decoded here: {exc}") from None
    n, c, h, w = shape
    streams = split_streams(payload, n)
    mode = _MODES[c]
    opened: list[Any] = []
    try:
        # every header first: nothing is decoded unless all of them match the meta
        for i, data in enumerate(streams):
            opened.append(_open_checked(image, data, i, mode, (w, h)))
        out = np.empty((n, h, w, c), np.uint8)
        for i, img in enumerate(opened):
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
                raise CodecError(f"jpeg stream {i} is corrupted or truncated: {exc}") from None
            pixels = np.asarray(img)
            if pixels.shape[:2] != (h, w):  # pragma: no cover - Pillow keeps the header's size
                raise CodecError(f"jpeg stream {i} decoded to {pixels.shape}, expected {(h, w)}")
            out[i] = pixels.reshape(h, w, c)
    finally:
        for img in opened:
            img.close()
    return out
