"""The compiled kernels (splitpipe/kernels/_cquant.c) on their own: the scale rule and the range
against the Python ones on any float32 range, tails of every length, what they refuse, and the
switch that turns them off. The codecs' fast-vs-reference tests also run through them
(conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpipe.kernels import get_codec, pack, quant
from splitpipe.kernels._spec import parse_name

C = quant.C
needs_c = pytest.mark.skipif(C is None, reason=f"compiled kernels: {quant.C_MISSING}")
SPECS = [parse_name(n) for n in ("int8", "int8/sym", "uint4", "uint2")]


def test_the_compiled_kernels_are_built() -> None:
    """A checkout set up as README.md says has them: pip builds them with the package."""
    if os.environ.get("SPLITPIPE_NO_CKERNELS", "") not in ("", "0"):
        pytest.skip("turned off by SPLITPIPE_NO_CKERNELS")
    assert C is not None, "splitpipe.kernels._cquant is missing: reinstall with a C compiler (make venv)"
    assert C.HAS_F16  # x86-64 with F16C or aarch64


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    lo=st.floats(width=32, allow_nan=False, allow_infinity=False, max_value=0),
    hi=st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=0),
    spec=st.sampled_from(SPECS),
)
def test_scale_rule_equals_the_python_one(lo: float, hi: float, spec: object) -> None:
    assert C is not None
    qmin, qmax = spec.qrange  # type: ignore[attr-defined]
    assert C.params(lo, hi, qmin, qmax, spec.symmetric) == quant.params_scalar(lo, hi, spec)  # type: ignore[attr-defined, arg-type]


@needs_c
@pytest.mark.parametrize(
    "values",
    [
        [-0.0, 0.0],
        [0.0, -0.0, -1e-45],
        [1e-45, 3e-45],
        [-3.4028235e38, 3.4028235e38],
        [-3.4028235e38, -1.0],
        [5.0],
        [-2.5, -2.5, -2.5],
        [1.17549435e-38, -1.17549435e-38, 2.0],
    ],
)
def test_range_and_codes_on_edge_values(values: list[float]) -> None:
    assert C is not None
    x = np.array(values, np.float32)
    for spec in SPECS:
        codes, scale, zp = C.quantize_dynamic(x, *spec.qrange, spec.symmetric)
        want_scale, want_zp = quant.params_scalar(*quant.range_scalar(x), spec)
        assert (scale, zp) == (want_scale, want_zp)
        ref = quant.quantize_ref(x, np.array(scale, np.float32), np.array(zp), spec, None)
        assert codes == ref.tobytes()


@needs_c
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 33, 1000])
def test_every_tail_length(n: int) -> None:
    """Vector bodies and scalar tails: every element is converted, and nothing beyond."""
    assert C is not None
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * np.float32(100)
    h = np.full(n + 1, 7, np.float16)
    C.to_f16(x, h[:n])
    np.testing.assert_array_equal(h[:n], x.astype(np.float16))
    assert h[n] == 7
    back = np.full(n + 1, 7, np.float32)
    C.from_f16(h[:n], back[:n])
    np.testing.assert_array_equal(back[:n], h[:n].astype(np.float32))
    assert back[n] == 7
    for name in ("int8", "int8/sym", "uint4", "uint2"):
        fast, ref = get_codec(name).encode(x), get_codec(name, impl="reference").encode(x)
        assert fast == ref, name
        out = np.full(n + 1, 7, np.float32)
        spec = parse_name(name)
        codes = np.frombuffer(C.quantize_dynamic(x, *spec.qrange, spec.symmetric)[0], np.uint8)
        C.dequantize(codes, out[:n], fast[1].scale, fast[1].zero_point, spec.symmetric)
        assert out[n] == 7


@needs_c
@pytest.mark.parametrize("bits", [4, 2])
def test_packing_equals_the_reference_for_every_count(bits: int) -> None:
    assert C is not None
    rng = np.random.default_rng(bits)
    for n in range(1, 70):
        codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
        packed = C.pack(codes, bits)
        assert packed == pack.pack_ref(codes.tolist(), bits)
        out = np.empty(n, np.uint8)
        assert C.unpack(packed, bits, out) is True
        assert out.tolist() == codes.tolist()
        if n % (8 // bits):  # a set padding bit is refused
            assert C.unpack(packed[:-1] + bytes([packed[-1] | 0x80]), bits, out) is False


@needs_c
def test_nan_and_inf_are_left_to_the_numpy_path() -> None:
    assert C is not None
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([1.0, bad, 2.0], np.float32)
        assert C.quantize_dynamic(x, 0, 255, False) is None
    out = np.empty(3, np.uint8)
    assert C.quantize(np.array([1.0, np.nan, 2.0], np.float32), out, 0.1, 0, 0, 255) is False
    assert C.quantize(np.array([-np.inf, 0.0, np.inf], np.float32), out, 0.1, 3, 0, 255) is True
    assert out.tolist() == [0, 3, 255]


@needs_c
def test_refuses_wrong_buffers() -> None:
    assert C is not None
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="must hold float32"):
        C.quantize_dynamic(np.ones(8, np.float64), 0, 255, False)
    with pytest.raises(ValueError, match="must hold float32"):  # right size, wrong kind
        C.quantize_dynamic(np.ones(8, np.int32), 0, 255, False)
    with pytest.raises(ValueError, match="must hold float16"):
        C.from_f16(np.ones(8, np.int16), np.empty(8, np.float32))
    with pytest.raises(ValueError, match="zero_point <= qmax"):
        C.quantize(x, np.empty(8, np.uint8), 0.5, 300, 0, 255)
    with pytest.raises(ValueError, match="zero points within"):
        C.quantize_ch(
            x, np.empty(8, np.uint8), (1, 2, 4), np.ones(2, "<f4").tobytes(), bytes([3, 20]), 0, 15, False
        )
    with pytest.raises(ValueError, match="dims must be positive"):  # products that would overflow
        C.quantize_dynamic_ch(x, (2**40, 2**40, 8), 0, 255, False)
    with pytest.raises(ValueError, match="dims must be positive"):
        C.dequantize_ch(np.ones(8, np.uint8), np.empty(8, np.float32), (4, 4, 1), bytes(16), bytes(4), False)
    with pytest.raises(ValueError, match="empty"):
        C.quantize_dynamic(np.ones(0, np.float32), 0, 255, False)
    with pytest.raises(ValueError, match="one item per item of x"):
        C.quantize(x, np.empty(7, np.uint8), 0.5, 0, 0, 255)
    with pytest.raises(ValueError, match="finite and positive"):
        C.quantize(x, np.empty(8, np.uint8), 0.0, 0, 0, 255)
    with pytest.raises(ValueError, match="one item per item of codes"):
        C.dequantize(np.ones(8, np.uint8), np.empty(9, np.float32), 0.5, 0, False)
    with pytest.raises(ValueError, match="bits must be 4 or 2"):
        C.pack(np.zeros(8, np.uint8), 3)
    with pytest.raises(ValueError, match="packed length"):
        C.unpack(bytes(3), 4, np.empty(8, np.uint8))
    with pytest.raises((BufferError, TypeError, ValueError)):  # read-only output
        C.to_f16(x, np.frombuffer(bytes(16), np.float16))
    with pytest.raises((BufferError, TypeError, ValueError)):  # not contiguous
        C.to_f16(np.ones(16, np.float32)[::2], np.empty(8, np.float16))


def test_the_environment_switch_turns_them_off() -> None:
    code = "from splitpipe.kernels import quant, get_codec; import numpy as np; "
    code += "get_codec('int8').encode(np.ones((2, 3), np.float32)); print(quant.C is None)"
    env = {**os.environ, "SPLITPIPE_NO_CKERNELS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
