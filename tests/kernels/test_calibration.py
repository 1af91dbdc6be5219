"""Static scales: calibrate(), Calibration JSON, and codecs that use them."""

from __future__ import annotations

import numpy as np
import pytest

from splitpipe.errors import CodecError, SplitpipeError
from splitpipe.kernels import Calibration, calibrate, decode, get_codec

RNG = np.random.default_rng(21)


def test_static_scales_cover_all_samples() -> None:
    a = np.full((1, 2, 3), 1.0, np.float32)
    b = np.full((1, 2, 3), -4.0, np.float32)
    cal = calibrate("int8", [a, b])
    assert cal.min == (-4.0,) and cal.max == (1.0,) and cal.samples == 2
    scale, zp = cal.arrays()
    assert float(scale) == pytest.approx(5.0 / 255) and 0 < int(zp) < 255
    # same scales as dynamic quantization of a tensor that spans the same range
    both = np.concatenate([a, b], axis=2)
    _, dyn = get_codec("int8").encode(both)
    assert dyn.scale == float(scale) and dyn.zero_point == int(zp)


def test_static_codec_uses_the_calibration_and_saturates() -> None:
    cal = calibrate("int8/sym/ch", [RNG.standard_normal((2, 4, 5)).astype(np.float32)])
    codec = get_codec("int8/sym/ch+zstd", calibration=cal)
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32) * 10
    payload, meta = codec.encode(x)
    assert meta.scales == np.array(cal.scale, "<f4").tobytes()
    y = decode(payload, meta)
    limit = np.array(cal.scale, np.float32).reshape(1, 4, 1) * 128
    assert (np.abs(y) <= limit).all()
    assert (
        get_codec("int8/sym/ch", calibration=cal, impl="reference").encode(x)[0]
        == get_codec("int8/sym/ch", calibration=cal).encode(x)[0]
    )


def test_calibration_mismatches_are_clear() -> None:
    cal = calibrate("int8/ch", [np.ones((1, 4, 2), np.float32)])
    with pytest.raises(
        SplitpipeError, match=r"calibration is for int8/ch, not for int8 \(codec int8\+zstd\)"
    ):
        get_codec("int8+zstd", calibration=cal)
    with pytest.raises(SplitpipeError, match="has no scales"):
        get_codec("fp16", calibration=cal)
    with pytest.raises(CodecError, match="calibration has 4 channels, the tensor has 3"):
        get_codec("int8/ch", calibration=cal).encode(np.ones((1, 3, 2), np.float32))
    with pytest.raises(SplitpipeError, match="has no scales to calibrate"):
        calibrate("raw", [np.ones(3, np.float32)])
    with pytest.raises(SplitpipeError, match="at least one sample"):
        calibrate("int8", [])
    with pytest.raises(SplitpipeError, match="has 5 channels, the first had 4"):
        calibrate("int8/ch", [np.ones((1, 4, 2), np.float32), np.ones((1, 5, 2), np.float32)])
    with pytest.raises(CodecError, match="NaN"):
        calibrate("int8", [np.array([np.nan], np.float32)])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2"),
        ({"codec": "int8+zstd"}, "not a quantizer name"),
        ({"codec": "fp16"}, "not a quantizer name"),
        ({"axis": None}, "axis None does not fit"),
        ({"scale": [1.0, -1.0, 1.0, 1.0]}, "not a finite positive"),
        ({"scale": [1.0, 1.0]}, "equal length"),
        ({"zero_point": [0, 0, 0, 300]}, "out of range"),
        ({"min": "x"}, "must be lists"),
    ],
)
def test_calibration_json_is_validated(change: dict[str, object], message: str) -> None:
    data = calibrate("int8/ch", [RNG.standard_normal((1, 4, 3)).astype(np.float32)]).to_json()
    data.update(change)
    with pytest.raises(SplitpipeError, match=message):
        Calibration.from_json(data)
