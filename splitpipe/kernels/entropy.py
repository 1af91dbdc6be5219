"""The optional lossless stage: zstd or lz4 frames, with bounded decompression.

Both libraries are imported lazily. Frames are written with their content size and a checksum,
and decompression is bounded by the size the meta implies (which the caller has already checked
against its limit): a frame whose header declares another size is refused before anything is
allocated, and the decompressor is never asked for more than the expected bytes, so a
decompression bomb cannot exhaust memory. Corrupted or truncated frames raise CodecError.
"""

from __future__ import annotations

import threading
from typing import Any

from splitpipe.errors import CodecError, UnavailableError

_LOCAL = threading.local()  # zstd contexts are not thread safe: one per thread

_PACKAGES = {"zstd": "zstandard", "lz4": "lz4"}


def _import(kind: str) -> Any:
    try:
        if kind == "zstd":
            import zstandard

            return zstandard
        import lz4.frame

        return lz4.frame
    except ImportError:
        raise UnavailableError(
            f"codec stage +{kind} needs the {_PACKAGES[kind]} package, which is not installed here "
            f"(pip install {_PACKAGES[kind]}, or the splitpipe[edge] / splitpipe[server] extra)"
        ) from None


def check_available(kind: str) -> None:
    _import(kind)


def _zstd_cctx(level: int) -> Any:
    cache = getattr(_LOCAL, "cctx", None)
    if cache is None:
        cache = _LOCAL.cctx = {}
    if level not in cache:
        zstandard = _import("zstd")
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return cache[level]


def _zstd_dctx() -> Any:
    dctx = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = _import("zstd").ZstdDecompressor()
    return dctx


def compress(data: Any, kind: str, level: int | None = None) -> bytes:
    """Compress a bytes-like object (numpy arrays pass without a copy)."""
    if kind == "zstd":
        out: bytes = _zstd_cctx(level or 3).compress(data)
        return out
    lz4f = _import("lz4")
    out = lz4f.compress(data, content_checksum=True, store_size=True, return_bytearray=False)
    return out


def decompress(payload: bytes, kind: str, expected: int) -> bytes:
    """Decompress exactly ``expected`` bytes, or raise CodecError."""
    try:
        module = _import(kind)
    except UnavailableError as exc:
        raise CodecError(f"payload uses +{kind} but it cannot be decoded here: {exc}") from None
    if kind == "zstd":
        return _zstd_decompress(module, payload, expected)
    return _lz4_decompress(module, payload, expected)


def _zstd_decompress(zstandard: Any, payload: bytes, expected: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd payload is not a valid frame: {exc}") from None
    if declared != expected:
        what = "no content size" if declared < 0 else f"{declared} bytes"
        raise CodecError(f"zstd frame declares {what}, the meta implies {expected} bytes")
    try:
        out: bytes = _zstd_dctx().decompress(payload, max_output_size=expected, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd payload is corrupted or truncated: {exc}") from None
    if len(out) != expected:
        raise CodecError(f"zstd payload decompressed to {len(out)} bytes, the meta implies {expected}")
    return out


def _lz4_decompress(lz4f: Any, payload: bytes, expected: int) -> bytes:
    try:
        info = lz4f.get_frame_info(payload)
    except RuntimeError as exc:
        raise CodecError(f"lz4 payload is not a valid frame: {exc}") from None
    declared = info.get("content_size", 0)
    if declared != expected and not (declared == 0 and expected == 0):
        raise CodecError(
            f"lz4 frame declares {declared or 'no'} content size, the meta implies {expected} bytes"
        )
    dctx = lz4f.LZ4FrameDecompressor()
    try:
        out: bytes = dctx.decompress(payload, max_length=expected)
    except RuntimeError as exc:
        raise CodecError(f"lz4 payload is corrupted or truncated: {exc}") from None
    if len(out) != expected or not dctx.eof or dctx.unused_data:
        raise CodecError(
            f"lz4 payload does not hold exactly one frame of {expected} bytes "
            f"(got {len(out)} bytes, complete={dctx.eof}, trailing={len(dctx.unused_data or b'')} bytes)"
        )
    return out
