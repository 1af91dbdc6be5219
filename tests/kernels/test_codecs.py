"""Round trips, error bounds and fast-vs-reference agreement for every codec name."""

from __future__ import annotations

import numpy as np
import pytest

from splitpipe.errors import CodecError, SplitpipeError
from splitpipe.kernels import CodecMeta, codec_names, decode, get_codec

ALL = codec_names()
RNG = np.random.default_rng(1234)


def _relu_like(shape: tuple[int, ...]) -> np.ndarray:
    return np.maximum(RNG.standard_normal(shape, dtype=np.float32), 0) * np.float32(3.0)


def _bound(name: str, x: np.ndarray) -> float:
    """Worst absolute error allowed: half a quantization step of the tensor's own range."""
    base = name.split("+")[0].split("/")[0]
    span = float(max(x.max(), 0) - min(x.min(), 0))
    if base == "raw":
        return 0.0
    if base == "fp16":
        return float(np.abs(x).max()) * 2.0**-11
    if "/sym" in name:
        step = float(np.abs(x).max()) / 127
    else:
        step = span / {"int8": 255, "uint4": 15, "uint2": 3}[base]
    return step * 0.5 * (1 + 1e-5) + 1e-12


@pytest.mark.parametrize("name", ALL)
def test_round_trip_within_half_step(name: str) -> None:
    x = _relu_like((2, 8, 5, 7)) - np.float32(0.25)
    payload, meta = get_codec(name).encode(x)
    assert isinstance(payload, bytes)
    y = decode(payload, meta)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(np.abs(y - x).max()) <= _bound(name, x)


@pytest.mark.usefixtures("fast_path")
@pytest.mark.parametrize("name", ALL)
def test_fast_path_equals_reference(name: str) -> None:
    x = RNG.standard_normal((1, 6, 9, 11)).astype(np.float32) * np.float32(10.0)
    fast, ref = get_codec(name), get_codec(name, impl="reference")
    pf, mf = fast.encode(x)
    pr, mr = ref.encode(x)
    assert mf == mr
    assert pf == pr
    np.testing.assert_array_equal(fast.decode(pf, mf), ref.decode(pr, mr))


@pytest.mark.parametrize("name", ["raw", "fp16", "int8", "int8/sym/ch", "uint4/ch", "uint2"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dtype_restored(name: str, dtype: str) -> None:
    x = RNG.standard_normal((3, 4, 5)).astype(dtype)
    payload, meta = get_codec(name).encode(x)
    assert meta.dtype == dtype
    assert decode(payload, meta).dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int64", "bool"])
def test_raw_is_lossless_for_integers(dtype: str) -> None:
    x = RNG.integers(0, 2, (4, 5)).astype(dtype)
    for name in ("raw", "raw+zstd", "raw+lz4"):
        payload, meta = get_codec(name).encode(x)
        np.testing.assert_array_equal(decode(payload, meta), x)


def test_lossy_codecs_refuse_integer_input() -> None:
    with pytest.raises(CodecError, match="cannot encode dtype int32; accepted: float16"):
        get_codec("int8").encode(np.zeros(4, np.int32))


def test_quantized_sizes() -> None:
    x = _relu_like((1, 16, 8, 8))
    n = x.size
    assert len(get_codec("fp16").encode(x)[0]) == 2 * n
    assert len(get_codec("int8").encode(x)[0]) == n
    assert len(get_codec("uint4").encode(x)[0]) == n // 2
    assert len(get_codec("uint2").encode(x)[0]) == n // 4


@pytest.mark.usefixtures("fast_path")
@pytest.mark.parametrize("name", ["uint4", "uint2", "uint4/ch", "uint2+zstd"])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 9])
def test_bit_packing_odd_counts(name: str, count: int) -> None:
    x = RNG.standard_normal((1, 1, count)).astype(np.float32)
    fast, ref = get_codec(name), get_codec(name, impl="reference")
    (pf, mf), (pr, mr) = fast.encode(x), ref.encode(x)
    assert pf == pr
    bits = 4 if name.startswith("uint4") else 2
    if "+" not in name:
        assert len(pf) == (count * bits + 7) // 8
    np.testing.assert_array_equal(fast.decode(pf, mf), ref.decode(pr, mr))


def test_unknown_name_lists_accepted_forms() -> None:
    for bad in ("int9", "int8/foo", "fp16/ch", "uint4/sym", "int8+gzip", "int8+zstd:99", "int8+lz4:3", ""):
        with pytest.raises(SplitpipeError, match=r"accepted: raw, fp16, int8"):
            get_codec(bad)


def test_names_canonicalise() -> None:
    assert get_codec("INT8/ch/sym+zstd:3").name == "int8/sym/ch+zstd"
    assert get_codec("int8+zstd:9").name == "int8+zstd:9"
    payload, meta = get_codec("int8/ch+zstd:19").encode(_relu_like((1, 4, 4, 4)))
    assert meta.codec == "int8/ch+zstd:19"
    assert decode(payload, meta).shape == (1, 4, 4, 4)


def test_sym_has_zero_point_zero_and_int8_codes() -> None:
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    payload, meta = get_codec("int8/sym").encode(x)
    assert meta.zero_point == 0
    codes = np.frombuffer(payload, np.int8)
    assert codes.min() >= -127 and codes.max() <= 127
    assert np.isclose(meta.scale, np.abs(x).max() / 127, rtol=1e-6)


def test_per_channel_beats_per_tensor_on_unequal_channels() -> None:
    x = RNG.standard_normal((1, 8, 16, 16)).astype(np.float32)
    x *= (10.0 ** np.arange(8, dtype=np.float32) / 1e3).reshape(1, 8, 1, 1)
    err = {}
    for name in ("int8", "int8/ch"):
        payload, meta = get_codec(name).encode(x)
        err[name] = np.linalg.norm(decode(payload, meta) - x, axis=(2, 3)) / np.linalg.norm(x, axis=(2, 3))
    assert err["int8/ch"].max() < 0.01 < err["int8"].max()


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_channel_axis_option(axis: int) -> None:
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    codec = get_codec("int8/ch", axis=axis)
    payload, meta = codec.encode(x)
    assert meta.axis == axis % 3
    assert len(meta.scale_array()) == x.shape[axis]
    ref_payload, _ = get_codec("int8/ch", axis=axis, impl="reference").encode(x)
    assert payload == ref_payload
    assert np.abs(decode(payload, meta) - x).max() < 0.05


def test_per_channel_needs_the_axis() -> None:
    with pytest.raises(CodecError, match="along axis 1, but the tensor has rank 1"):
        get_codec("int8/ch").encode(np.ones(5, np.float32))


def test_meta_round_trips_through_params_and_json() -> None:
    for name in ALL:
        _, meta = get_codec(name).encode(_relu_like((1, 3, 2, 2)))
        assert CodecMeta.from_params(meta.to_params()) == meta
        assert CodecMeta.from_json(meta.to_json()) == meta
        assert all(isinstance(v, str | int | float | bool) for v in meta.to_params().values())


def test_meta_is_small() -> None:
    _, meta = get_codec("int8/ch+zstd").encode(_relu_like((1, 256, 4, 4)))
    # 256 channels: 1 KiB of float32 scales and 256 zero points, base64
    assert sum(len(str(k)) + len(str(v)) for k, v in meta.to_params().items()) < 1900
    _, meta = get_codec("int8+zstd").encode(_relu_like((1, 256, 4, 4)))
    assert sum(len(str(k)) + len(str(v)) for k, v in meta.to_params().items()) < 150


def test_without_the_fast_path_the_numpy_reference_gives_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from splitpipe.kernels import _ort, quant

    x = RNG.standard_normal((1, 5, 6, 7)).astype(np.float32)
    expected = {n: get_codec(n).encode(x)[0] for n in ("fp16", "int8", "int8/sym/ch", "uint4/ch")}
    monkeypatch.setattr(quant, "C", None)  # neither compiled kernels nor ONNX Runtime ones
    monkeypatch.setattr(_ort, "_SESSIONS", {})
    monkeypatch.setattr(_ort, "_FAILED", {})

    def refuse(name: str) -> None:
        raise _ort.FastPathUnavailable(f"no {name} in this test")

    monkeypatch.setattr(_ort, "_load", refuse)
    for name, payload in expected.items():
        got, meta = get_codec(name).encode(x)
        assert got == payload, name
        np.testing.assert_array_equal(decode(got, meta), get_codec(name, impl="reference").decode(got, meta))
    assert set(_ort._FAILED) >= {
        "cast_f32_f16",
        "quantize_u8",
        "quantize_i8",
        "dequantize_u8",
        "dequantize_i8",
    }


def test_the_encoders_meta_is_an_ordinary_meta() -> None:
    """encode() builds its meta without the dataclass __init__ (CodecMeta._make): the result must
    be indistinguishable from one built the ordinary way."""
    import dataclasses

    x = _relu_like((1, 4, 3, 3))
    for name in ("raw", "fp16", "int8", "int8/sym", "int8/ch", "uint2+zstd", "jpeg"):
        _, meta = get_codec(name).encode(x[:, :3] if name == "jpeg" else x)
        fields = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta) if f.init}
        twin = CodecMeta(**fields)
        assert twin == meta and repr(twin) == repr(meta) and hash(twin) == hash(meta), name


def test_a_meta_that_fails_validation_fails_every_time() -> None:
    """validate() remembers a meta that passed (metas are immutable), never one that failed."""
    bad = CodecMeta(codec="int8", dtype="float32", shape=(2,), scale=-1.0, zero_point=0)
    for _ in range(2):
        with pytest.raises(CodecError, match="scale must be a finite positive"):
            decode(b"\0\0", bad)
    good = CodecMeta(codec="int8", dtype="float32", shape=(2,), scale=0.5, zero_point=1)
    assert decode(b"\1\3", good).tolist() == [0.0, 1.0]
    assert decode(b"\1\3", good).tolist() == [0.0, 1.0]
