"""Fixed-seed fuzzing of every codec's decoder with mutated meta and payloads, in a subprocess (a
crash in the compiled kernels fails the test instead of the test run), and regressions it found."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from splitpipe.errors import CodecError
from splitpipe.kernels import CodecMeta, decode, get_codec

CODECS = [
    "raw",
    "fp16",
    "int8",
    "int8/sym",
    "int8/ch",
    "int8/sym/ch",
    "uint4",
    "uint4/ch",
    "uint2",
    "uint2/ch",
    "int8+zstd",
    "int8/ch+lz4",
    "fp16+zstd",
    "raw+lz4",
    "uint4/ch+zstd",
    "uint2+lz4",
    "jpeg:80",
]
SHAPES = [(1, 4, 3, 3), (2, 3, 5, 7), (1, 1), (7,), (1, 3, 8, 8), (2, 1, 5, 9), (1, 2, 1, 1), (0, 4)]
_F32 = [1e-45, 1.0, 3.4e38]
META_VALUES: list[Any] = [
    0,
    -1,
    1,
    255,
    256,
    -128,
    2**63 - 1,
    float("nan"),
    float("inf"),
    1e-45,
    1.5,
    True,
    "",
    "1,4,3,3",
    "2,3,5,7",
    "1,4,3,\u00b3",
    "1,\u0661",
    "int8",
    "uint4/ch",
    "jpeg:80",
    "float16",
    "float64",
    "bool",
    "int64",
    base64.b64encode(b"\0" * 4).decode(),
    base64.b64encode(np.array(_F32 * 3, "<f4").tobytes()).decode(),
    base64.b64encode(bytes(range(200, 208))).decode(),
]
KEYS = ["codec_scale", "codec_zero_point", "codec_axis", "codec_scales", "codec_zero_points"]


def _mutate_meta(rng: random.Random, params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    key = rng.choice(list(params) + KEYS)
    if rng.random() < 0.2:
        params.pop(key, None)
    else:
        params[key] = rng.choice(META_VALUES)
    return params


def _mutate_payload(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    op = rng.randrange(6)
    if op == 0 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 1 and b:
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif op == 3:
        b = bytearray(rng.randbytes(rng.randrange(300)))
    elif op == 4:
        b = b + b
    return bytes(b)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def fuzz(seed: int, count: int) -> dict[str, int]:
    """Decode ``count`` mutated (meta, payload) pairs with the fast and the reference path; both
    must refuse with CodecError or give the same array. Raises AssertionError otherwise."""
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    outcomes = {"decoded": 0, "refused": 0, "meta refused": 0}
    for _ in range(count):
        name = rng.choice(CODECS)
        shape = rng.choice([(1, 3, 8, 8), (2, 1, 5, 9)] if name.startswith("jpeg") else SHAPES)
        dtype = rng.choice(
            ["float32", "float16", "float64"] if name != "raw" else ["float32", "int8", "bool"]
        )
        x = (data.standard_normal(shape) * 3).astype(dtype)
        try:
            payload, meta = get_codec(name).encode(x)
        except CodecError:
            continue  # e.g. a per-channel codec for a rank-1 tensor
        params: dict[str, Any] = dict(meta.to_params())
        for _ in range(rng.randrange(3)):
            params = _mutate_meta(rng, params)
        if rng.random() < 0.6:
            payload = _mutate_payload(rng, payload)
        try:
            parsed = CodecMeta.from_params(params)
        except CodecError:
            outcomes["meta refused"] += 1
            continue
        results: list[np.ndarray | CodecError] = []
        for impl in ("fast", "reference"):
            try:
                with np.errstate(all="ignore"):
                    results.append(decode(payload, parsed, impl=impl, max_bytes=1 << 20))  # type: ignore[arg-type]
            except CodecError as exc:
                results.append(exc)
        fast, ref = results
        where = f"{params} with a payload of {len(payload)} bytes"
        assert isinstance(fast, CodecError) == isinstance(ref, CodecError), f"{fast!r} vs {ref!r}: {where}"
        if isinstance(fast, CodecError):
            outcomes["refused"] += 1
        else:
            assert isinstance(ref, np.ndarray) and _same(fast, ref), where
            assert fast.shape == parsed.shape and fast.dtype == np.dtype(parsed.dtype), where
            outcomes["decoded"] += 1
    return outcomes


@pytest.mark.parametrize("kernels", ["compiled", "onnxruntime"])
def test_fuzzed_payloads_and_meta_are_decoded_alike_or_refused_by_both_paths(kernels: str) -> None:
    env_flag = "0" if kernels == "compiled" else "1"
    code = (
        "import json, sys; from tests.kernels.test_fuzz_decode import fuzz; "
        "print(json.dumps(fuzz(int(sys.argv[1]), int(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "7" if kernels == "compiled" else "8", "2500"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SPLITPIPE_NO_CKERNELS": env_flag},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # a negative code is the signal of a crash
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["decoded"] > 200 and outcomes["refused"] > 200 and outcomes["meta refused"] > 200


@pytest.mark.parametrize("text", ["1,4,3,\u00b3", "1,\u0661,3,3", "\U0001d7cf,4", "1,4,\u00b2\u00b3"])
def test_codec_shape_takes_ascii_digits_only(text: str) -> None:
    """str.isdigit() is true for superscripts (which int() refuses: a ValueError reached the
    server's catch-all as INTERNAL, with a traceback logged per request) and for other scripts'
    digits (which int() took)."""
    params = {"codec": "raw", "codec_version": 1, "codec_dtype": "float32", "codec_shape": text}
    with pytest.raises(CodecError, match="comma-separated non-negative integers"):
        CodecMeta.from_params(params)


# -- jpeg: scans ------------------------------------------------------------------------------


def _progressive(side: int, mode: str) -> tuple[bytes, list[int]]:
    from PIL import Image

    pixels = np.zeros((side, side, 3) if mode == "RGB" else (side, side), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", progressive=True, quality=50)
    data = buf.getvalue()
    return data, [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]


def _jpeg_meta(channels: int, side: int) -> CodecMeta:
    scales = base64.b64encode(np.ones(channels, "<f4").tobytes()).decode()
    zero_points = base64.b64encode(bytes(channels)).decode()
    return CodecMeta.from_params(
        {
            "codec": "jpeg",
            "codec_version": 1,
            "codec_dtype": "float32",
            "codec_shape": f"1,{channels},{side},{side}",
            "codec_axis": 1,
            "codec_scales": scales,
            "codec_zero_points": zero_points,
        }
    )


def test_progressive_jpeg_decodes_but_a_stream_of_repeated_scans_is_refused_before_decoding() -> None:
    """libjpeg passes over the whole image per scan; 5000 repeats of a 39-byte scan (200 KB)
    kept a tail thread busy for 1.6 s on a 2048x2048 image."""
    side = 2048
    data, sos = _progressive(side, "L")
    meta = _jpeg_meta(1, side)
    out = decode(struct.pack("<I", len(data)) + data, meta, max_bytes=1 << 30)  # about 6 scans
    assert out.shape == (1, 1, side, side) and not out.any()
    rgb, rgb_sos = _progressive(16, "RGB")
    assert len(rgb_sos) >= 8
    assert decode(struct.pack("<I", len(rgb)) + rgb, _jpeg_meta(3, 16)).shape == (1, 3, 16, 16)

    scan = data[sos[1] : sos[2]]  # a small AC scan
    bomb = data[:-2] + scan * 5000 + data[-2:]
    start = time.perf_counter()
    with pytest.raises(CodecError, match="more than 100 scans"):
        decode(struct.pack("<I", len(bomb)) + bomb, meta, max_bytes=1 << 30)
    assert time.perf_counter() - start < 0.5
    # 0xFF 0xDA inside a comment, or after the end of the image, is no scan
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 2 * 200) + b"\xff\xda" * 200
    padded = data[:2] + comment + data[2:] + b"\xff\xda\x00\x02" * 200
    assert decode(struct.pack("<I", len(padded)) + padded, meta, max_bytes=1 << 30).shape == out.shape
