"""Decoding untrusted payloads and meta: every failure is a CodecError naming what was wrong,
and sizes are checked before anything is allocated."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from splitpipe.errors import CodecError
from splitpipe.kernels import CodecMeta, decode, get_codec

X = np.maximum(np.random.default_rng(7).standard_normal((1, 16, 8, 8), dtype=np.float32), 0)


def _params(name: str) -> tuple[bytes, dict[str, object]]:
    payload, meta = get_codec(name).encode(X)
    return payload, meta.to_params()


def test_size_limit_checked_before_allocation() -> None:
    payload, meta = get_codec("raw").encode(X)
    huge = dataclasses.replace(meta, shape=(1 << 20, 1 << 20))  # 4 TiB of float32
    tracemalloc.start()
    with pytest.raises(CodecError, match="above the limit of 67108864"):
        decode(payload, huge)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(CodecError, match="above the limit of 1000"):
        decode(payload, meta, max_bytes=1000)
    assert decode(payload, meta, max_bytes=X.nbytes).shape == X.shape


@pytest.mark.parametrize("name", ["raw", "fp16", "int8", "int8/ch", "uint4", "uint2/ch"])
def test_payload_length_must_match_meta(name: str) -> None:
    payload, meta = get_codec(name).encode(X)
    for bad in (payload[:-1], payload + b"\0", b""):
        with pytest.raises(CodecError, match=r"payload is \d+ bytes, the meta of .* implies \d+"):
            decode(bad, meta)


@pytest.mark.parametrize("name", ["int8+zstd", "fp16+lz4", "uint4/ch+zstd:1", "raw+lz4"])
def test_truncated_or_corrupted_frames(name: str) -> None:
    payload, meta = get_codec(name).encode(X)
    with pytest.raises(CodecError):
        decode(payload[: len(payload) // 2], meta)
    with pytest.raises(CodecError):
        decode(payload[:3], meta)
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(CodecError):
        decode(bytes(flipped), meta)
    with pytest.raises(CodecError):
        decode(payload + payload, meta)
    with pytest.raises(CodecError):
        decode(b"not a frame at all", meta)


@pytest.mark.parametrize("kind", ["zstd", "lz4"])
def test_decompression_bomb_is_refused_without_allocating(kind: str) -> None:
    # 512 MiB of zeros compresses to a few KiB; the meta claims a small tensor
    bomb_src = np.zeros(512 << 20, np.uint8)
    if kind == "zstd":
        import zstandard

        bomb = zstandard.ZstdCompressor(level=1).compress(bomb_src)
        bomb_nosize = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bomb_src)
    else:
        import lz4.frame

        bomb = lz4.frame.compress(bomb_src, store_size=True)
        bomb_nosize = lz4.frame.compress(bomb_src, store_size=False)
    del bomb_src
    meta = CodecMeta(codec=f"raw+{kind}", dtype="float32", shape=(1, 16, 8, 8))
    tracemalloc.start()
    for payload in (bomb, bomb_nosize):
        with pytest.raises(CodecError, match=kind):
            decode(payload, meta)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"decoding a bomb allocated {peak} bytes"
    # a meta that claims the bomb's real size is refused by the size limit first
    big = CodecMeta(codec=f"raw+{kind}", dtype="uint8", shape=(512 << 20,))
    with pytest.raises(CodecError, match="above the limit"):
        decode(bomb, big)


def test_zstd_frame_declaring_another_size() -> None:
    import zstandard

    meta = CodecMeta(codec="raw+zstd", dtype="float32", shape=(4,))
    with pytest.raises(CodecError, match="declares 32 bytes, the meta implies 16"):
        decode(zstandard.ZstdCompressor().compress(bytes(32)), meta)


def test_padding_bits_checked() -> None:
    x = np.ones((1, 1, 3), np.float32)
    payload, meta = get_codec("uint4").encode(x)
    assert len(payload) == 2
    bad = payload[:1] + bytes([payload[1] | 0xF0])
    with pytest.raises(CodecError, match="padding bits"):
        decode(bad, meta)
    with pytest.raises(CodecError, match="padding bits"):
        decode(bad, meta, impl="reference")


def test_decode_refuses_non_meta() -> None:
    payload, meta = get_codec("int8").encode(X)
    with pytest.raises(CodecError, match="meta must be a CodecMeta"):
        decode(payload, meta.to_params())  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="payload must be bytes"):
        decode("text", meta)  # type: ignore[arg-type]


# ---- meta validation on the wire -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("int8", {"codec_version": 2}, "version 2 is not supported"),
        ("int8", {"codec_version": "1"}, "version must be an integer"),
        ("int8", {"codec": "int9"}, "unknown codec 'int9'"),
        ("int8", {"codec": None}, "unknown codec"),
        ("int8", {"codec_dtype": "object"}, "dtype 'object' is not valid for int8"),
        ("int8", {"codec_dtype": "int32"}, "dtype 'int32' is not valid for int8"),
        ("int8", {"codec_shape": "1,-16,8,8"}, "comma-separated non-negative integers"),
        ("int8", {"codec_shape": "1,16,8,8e3"}, "comma-separated non-negative integers"),
        ("int8", {"codec_shape": [1, 16, 8, 8]}, "must be a string"),
        ("int8", {"codec_shape": ",".join(["1"] * 33)}, "at most 32"),
        ("int8", {"codec_scale": float("nan")}, "finite positive"),
        ("int8", {"codec_scale": -1.0}, "finite positive"),
        ("int8", {"codec_scale": 1e300}, "finite positive"),
        ("int8", {"codec_scale": 0.1}, "not a float32 value"),
        ("int8", {"codec_scale": "0.5"}, "must be a number"),
        ("int8", {"codec_scale": True}, "must be a number"),
        ("int8", {"codec_zero_point": 256}, "zero_point 256 out of range"),
        ("int8/sym", {"codec_zero_point": 3}, r"expected 0"),
        ("uint4", {"codec_zero_point": 16}, r"expected 0..15"),
        ("int8", {"codec_zero_point": None}, r"lacks \['zero_point'\]"),
        ("int8", {"codec_axis": 1}, r"must not carry \['axis'\]"),
        ("fp16", {"codec_scale": 1.0}, r"must not carry \['scale'\]"),
        ("int8/ch", {"codec_axis": 4}, "axis 4 out of range"),
        ("int8/ch", {"codec_scales": "AAAA"}, "holds 3 bytes, expected 64"),
        ("int8/ch", {"codec_scales": "!!notbase64!!"}, "not valid base64"),
        ("int8/ch", {"codec_scales": "A" * 100000}, "characters, expected 64 bytes"),
        ("int8/ch", {"codec_scales": 3}, "base64 string"),
        ("int8/ch", {"codec_zero_points": "AAAA"}, "holds 3 bytes, expected 16"),
        ("int8", {"codec_unknown": 1}, "unknown codec parameter 'codec_unknown'"),
    ],
)
def test_from_params_rejects(name: str, change: dict[str, object], message: str) -> None:
    _, params = _params(name)
    for key, value in change.items():
        if value is None and key != "codec":
            params.pop(key, None)
        else:
            params[key] = value
    with pytest.raises(CodecError, match=message):
        CodecMeta.from_params(params)


def test_from_params_checks_per_channel_values() -> None:
    _, params = _params("int8/ch")
    import base64

    scales = np.ones(16, "<f4")
    scales[3] = np.inf
    params["codec_scales"] = base64.b64encode(scales.tobytes()).decode()
    with pytest.raises(CodecError, match="scales must all be finite and positive"):
        CodecMeta.from_params(params)
    _, params = _params("uint4/ch")
    zps = np.zeros(16, np.uint8)
    zps[0] = 16
    params["codec_zero_points"] = base64.b64encode(zps.tobytes()).decode()
    with pytest.raises(CodecError, match=r"zero_points must lie in 0\.\.15"):
        CodecMeta.from_params(params)


def test_from_params_ignores_foreign_keys_and_accepts_int_scale() -> None:
    _, params = _params("int8")
    params["binary_data_size"] = 12
    params["codec_scale"] = 1
    meta = CodecMeta.from_params(params)
    assert meta.scale == 1.0


def test_from_json_rejects_unknown_fields_and_bad_shapes() -> None:
    _, meta = get_codec("int8").encode(X)
    data = meta.to_json()
    with pytest.raises(CodecError, match="unknown codec meta field"):
        CodecMeta.from_json({**data, "pickle": "x"})
    with pytest.raises(CodecError, match="non-negative integers"):
        CodecMeta.from_json({**data, "shape": [1, -2]})
    with pytest.raises(CodecError, match="lacks 'shape'"):
        CodecMeta.from_json({k: v for k, v in data.items() if k != "shape"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "object"}, "dtype 'object' is not valid"),
        ({"shape": (1, -16, 8, 8)}, "non-negative integers"),
        ({"shape": [1, 16, 8, 8]}, "non-negative integers"),
        ({"version": 9}, "version 9 is not supported"),
        ({"codec": "int7"}, "unknown codec 'int7'"),
        ({"scale": float("inf")}, "finite positive"),
        ({"zero_point": -1}, "out of range"),
        ({"axis": 1}, "must not carry"),
    ],
)
def test_decode_validates_metas_built_by_hand(change: dict[str, object], message: str) -> None:
    payload, meta = get_codec("int8").encode(X)
    with pytest.raises(CodecError, match=message):
        decode(payload, dataclasses.replace(meta, **change))  # type: ignore[arg-type]


def test_decode_validates_per_channel_metas_built_by_hand() -> None:
    payload, meta = get_codec("int8/ch").encode(X)
    assert meta.scales is not None
    for change, message in (
        ({"scales": meta.scales[:-4]}, "must be 16 float32 values"),
        ({"zero_points": b""}, "must be 16 bytes"),
        ({"axis": 7}, "axis 7 out of range"),
        ({"scales": b"\0" * 64}, "finite and positive"),
    ):
        with pytest.raises(CodecError, match=message):
            decode(payload, dataclasses.replace(meta, **change))  # type: ignore[arg-type]


def test_bool_payload_must_hold_zeros_and_ones() -> None:
    payload, meta = get_codec("raw").encode(np.array([True, False, True]))
    assert decode(payload, meta).tolist() == [True, False, True]
    with pytest.raises(CodecError, match="bytes other than 0 and 1"):
        decode(b"\x01\x07\x00", meta)
