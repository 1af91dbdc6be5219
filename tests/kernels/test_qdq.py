"""Folding int8/sym into QuantizeLinear/DequantizeLinear: a real ONNX Runtime session against
the kernel codec, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.kernels import calibrate, get_codec
from splitpipe.kernels.qdq import qdq_params, verify_qdq

pytest.importorskip("onnx")

RNG = np.random.default_rng(11)


def _samples() -> list[np.ndarray]:
    scales = (2.0 ** np.arange(-4, 4, dtype=np.float32)).reshape(1, 8, 1, 1)
    return [RNG.standard_normal((1, 8, 6, 6)).astype(np.float32) * scales for _ in range(4)]


@pytest.mark.parametrize("name", ["int8/sym", "int8/sym/ch"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_folded_graphs_match_the_codec(name: str, impl: str) -> None:
    samples = _samples()
    cal = calibrate(name, samples[:2])
    params = qdq_params(cal)
    assert params.zero_point.dtype == np.int8 and not params.zero_point.any()
    assert params.axis == (1 if name.endswith("/ch") else None)
    assert params.scale.shape == ((8,) if params.axis else ())
    # held-out inputs exceed the calibrated range somewhere: saturation must agree too
    x = samples[3] * np.float32(1.5)
    x[0, 0, 0, :3] = [np.inf, -np.inf, 1e30]
    check = verify_qdq(cal, x, impl=impl)  # type: ignore[arg-type]
    assert check.equal, check
    assert check.mismatched_codes == 0 and check.max_dequant_diff == 0.0 and check.total == x.size
    check.raise_for_mismatch()


def test_only_symmetric_int8_folds() -> None:
    for name in ("int8", "int8/ch", "uint4"):
        with pytest.raises(SplitpipeError, match="only symmetric int8 folds"):
            qdq_params(calibrate(name, _samples()))


def test_static_calibration_round_trips_json() -> None:
    from splitpipe.kernels import Calibration

    cal = calibrate("int8/sym/ch", _samples())
    again = Calibration.from_json(cal.to_json())
    assert again == cal
    x = _samples()[0]
    assert (
        get_codec("int8/sym/ch", calibration=again).encode(x)[0]
        == get_codec("int8/sym/ch", calibration=cal).encode(x)[0]
    )
