"""Adversarial inputs: NaN, inf, constants, empty tensors, huge dynamic range, denormals;
each compared between the fast path and the reference, plus hypothesis round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitpipe.errors import CodecError
from splitpipe.kernels import CodecMeta, calibrate, codec_names, decode, get_codec, quant

# every test here runs with the compiled kernels and with the ONNX Runtime ones (conftest.py)
pytestmark = pytest.mark.usefixtures("fast_path")
# the fixture only swaps a module attribute once per test; hypothesis examples may share it
_SHARED = [HealthCheck.function_scoped_fixture]

QUANT = [n for n in codec_names(entropy=False) if n not in ("raw", "fp16")]
ALL = codec_names(entropy=False)


def _both(name: str, x: np.ndarray, **kw: object) -> tuple[bytes, CodecMeta, np.ndarray]:
    """Encode with fast and reference paths, assert they agree, return the fast result."""
    fast, ref = get_codec(name, **kw), get_codec(name, impl="reference", **kw)  # type: ignore[arg-type]
    pf, mf = fast.encode(x)
    pr, mr = ref.encode(x)
    assert mf == mr, (mf, mr)
    yf, yr = fast.decode(pf, mf), ref.decode(pr, mr)
    if name.startswith("fp16") and np.isnan(x).any():
        # NaN stays NaN, but which NaN payload bits come out is the converter's business
        hf, hr = np.frombuffer(pf, "<f2"), np.frombuffer(pr, "<f2")
        same = (hf.view(np.uint16) == hr.view(np.uint16)) | (np.isnan(hf) & np.isnan(hr))
        assert same.all()
    else:
        assert pf == pr
    np.testing.assert_array_equal(yf, yr)
    return pf, mf, yf


@pytest.mark.parametrize("name", QUANT)
def test_nan_is_refused(name: str) -> None:
    x = np.ones((1, 3, 4, 4), np.float32)
    x[0, 2, 1, 1] = np.nan
    for impl in ("fast", "reference"):
        with pytest.raises(CodecError, match="contains NaN"):
            get_codec(name, impl=impl).encode(x)  # type: ignore[arg-type]
    cal = calibrate(name, [np.ones((1, 3, 4, 4), np.float32)])
    with pytest.raises(CodecError, match="contains NaN"):
        get_codec(name, calibration=cal).encode(x)


@pytest.mark.parametrize("name", ["raw", "fp16"])
def test_nan_and_inf_pass_through_float_codecs(name: str) -> None:
    x = np.array([[np.nan, np.inf, -np.inf, 1.0, 1e6]], np.float32)
    _, _, y = _both(name, x)
    assert np.isnan(y[0, 0]) and y[0, 1] == np.inf and y[0, 2] == -np.inf and y[0, 3] == 1.0
    # beyond float16's range (65504) IEEE rounding gives inf
    assert y[0, 4] == (1e6 if name == "raw" else np.inf)


@pytest.mark.parametrize("name", QUANT)
def test_inf_saturates_to_the_end_codes(name: str) -> None:
    x = np.linspace(-2, 3, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    x[0, 1, 0, 0], x[0, 1, 0, 1] = np.inf, -np.inf
    _, meta, y = _both(name, x)
    assert np.isfinite(y).all()
    # the scales come from the finite values only
    _, finite_meta = get_codec(name).encode(np.where(np.isfinite(x), x, 0))
    np.testing.assert_array_equal(meta.scale_array(), finite_meta.scale_array())
    # +inf decodes to the largest value its channel (or tensor) can hold, -inf to the smallest
    scale = float(meta.scale_array().reshape(-1)[1 if meta.axis is not None else 0])
    zp = int(meta.zero_point_array().reshape(-1)[1 if meta.axis is not None else 0])
    lo, hi = get_codec(name).spec.qrange
    assert y[0, 1, 0, 0] == np.float32((hi - zp) * np.float32(scale))
    assert y[0, 1, 0, 1] == np.float32((lo - zp) * np.float32(scale))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [0.0, 1.0, -3.5, 1e-30, 7e37])
def test_constant_tensors(name: str, value: float) -> None:
    x = np.full((1, 4, 3, 3), value, np.float32)
    _, _, y = _both(name, x)
    assert np.isfinite(y).all() or (name == "fp16" and value > 65504)
    if value == 0.0 or name == "raw":
        np.testing.assert_array_equal(y, x)
    elif name != "fp16":
        # zero is inside the range, so a constant is one end of it: within one step
        np.testing.assert_allclose(y, x, rtol=0.35 if "uint2" in name else 0.07)


@pytest.mark.parametrize("name", [n + e for n in ALL for e in ("", "+zstd", "+lz4")])
@pytest.mark.parametrize("shape", [(0,), (1, 0, 4, 4), (2, 3, 0), ()])
def test_empty_and_scalar_tensors(name: str, shape: tuple[int, ...]) -> None:
    x = np.full(shape, 2.5, np.float32)
    if "/ch" in name and len(shape) < 2:
        with pytest.raises(CodecError, match="per channel"):
            get_codec(name).encode(x)
        return
    _, meta, y = _both(name, x)
    assert y.shape == shape
    assert CodecMeta.from_params(meta.to_params()) == meta


@pytest.mark.parametrize("name", QUANT)
def test_huge_dynamic_range(name: str) -> None:
    x = np.array([-3e38, -1.0, 0.0, 1e-38, 2.0, 3.4e38], np.float32).reshape(1, 2, 3)
    _, meta, y = _both(name, x)
    assert np.isfinite(meta.scale_array()).all()
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name", QUANT)
def test_denormal_range(name: str) -> None:
    x = np.array([0, 1e-45, 3e-45, -2e-45, 1e-40], np.float32).reshape(1, 1, 5)
    _, meta, y = _both(name, x)
    assert (meta.scale_array() >= np.finfo(np.float32).tiny).all()
    np.testing.assert_allclose(y, x, atol=1e-37)


def test_fp16_rounding_matches_numpy_on_all_kinds_of_bits() -> None:
    bits = np.random.default_rng(3).integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).reshape(1, -1)
    _both("fp16", x)


# ---- property tests -----------------------------------------------------------------------

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9)


@settings(max_examples=60, deadline=None, suppress_health_check=_SHARED)
@given(x=hnp.arrays(np.float32, shapes, elements=finite32), name=st.sampled_from(QUANT))
def test_property_round_trip_error_bounded(x: np.ndarray, name: str) -> None:
    payload, meta = get_codec(name).encode(x)
    meta2 = CodecMeta.from_params(meta.to_params())
    y = decode(payload, meta2)
    assert y.shape == x.shape
    scale = meta.scale_array()
    if meta.axis is not None:
        bshape = [1] * x.ndim
        bshape[meta.axis] = -1
        scale = scale.reshape(bshape)
    # half a step, plus float32 rounding of x/scale and of the reconstruction
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    tol = 0.5 * scale * (1 + 1e-3) + 1e-6 * np.abs(x.astype(np.float64))
    if "/sym" not in name:
        # the affine zero point is rounded: the top of the range can sit up to one step off
        tol = tol + 0.5 * scale
    assert (err <= tol).all(), float((err - tol).max())


@settings(max_examples=60, deadline=None, suppress_health_check=_SHARED)
@given(
    x=hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=False)),
    name=st.sampled_from(ALL),
    entropy=st.sampled_from(["", "+zstd", "+lz4"]),
)
def test_property_fast_equals_reference(x: np.ndarray, name: str, entropy: str) -> None:
    _both(name + entropy, x)


@settings(max_examples=40, deadline=None, suppress_health_check=_SHARED)
@given(
    x=hnp.arrays(
        st.sampled_from([np.float16, np.float64, np.int32, np.uint8, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
    ),
)
def test_property_raw_is_exact(x: np.ndarray) -> None:
    payload, meta = get_codec("raw+lz4").encode(x)
    y = decode(payload, CodecMeta.from_json(meta.to_json()))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.tobytes() == x.tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=_SHARED)
@given(
    lo=st.floats(width=32, allow_nan=False, allow_infinity=False, max_value=0),
    hi=st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=0),
    name=st.sampled_from(QUANT),
)
def test_property_scalar_scale_rule_equals_vector_rule(lo: float, hi: float, name: str) -> None:
    spec = get_codec(name).spec
    scale, zp = quant.params_scalar(lo, hi, spec)
    vscale, vzp = quant.params_from_range(
        np.array([lo, lo], np.float32), np.array([hi, hi], np.float32), spec
    )
    assert scale == float(vscale[0]) and zp == int(vzp[0])
    assert np.isfinite(np.float32((spec.qrange[1] - zp) * np.float32(scale)))
    assert np.isfinite(np.float32((spec.qrange[0] - zp) * np.float32(scale)))
