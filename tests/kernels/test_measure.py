"""measure_codec, pick_codec and the error metrics."""

from __future__ import annotations

import numpy as np
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.kernels import get_codec
from splitpipe.kernels.measure import cosine_similarity, measure_codec, pick_codec, relative_l2

RNG = np.random.default_rng(5)
SAMPLES = [np.maximum(RNG.standard_normal((1, 32, 12, 12), dtype=np.float32), 0) for _ in range(3)]


def test_metrics() -> None:
    x = np.array([3.0, 4.0], np.float32)
    assert relative_l2(x, x) == 0.0
    assert relative_l2(x, np.zeros(2)) == pytest.approx(1.0)
    assert relative_l2(x, np.array([3.0, 4.5])) == pytest.approx(0.1)
    assert cosine_similarity(x, 2 * x) == pytest.approx(1.0)
    assert cosine_similarity(x, np.array([-4.0, 3.0])) == pytest.approx(0.0)
    assert relative_l2(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_l2(np.zeros(3), np.ones(3)) == float("inf")
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    nan_inf = np.array([np.nan, np.inf, 1.0])
    assert relative_l2(nan_inf, nan_inf.copy()) == 0.0
    assert relative_l2(nan_inf, np.array([np.nan, 5.0, 1.0])) == float("inf")


def test_measure_codec_reports_real_bytes_and_error() -> None:
    m = measure_codec("int8+zstd", SAMPLES, repeats=2)
    payloads = [len(get_codec("int8+zstd").encode(s)[0]) for s in SAMPLES]
    assert m.bytes == round(sum(payloads) / 3) and m.bytes_max == max(payloads)
    assert m.raw_bytes == SAMPLES[0].nbytes
    assert m.ratio == pytest.approx(m.raw_bytes / m.bytes)
    assert 0 < m.rel_l2 < 0.01 and m.cosine > 0.9999
    assert m.encode_ms > 0 and m.decode_ms > 0
    assert m.source == "measured" and m.samples == 3
    raw = measure_codec("raw", SAMPLES[0])
    assert raw.rel_l2 == 0.0 and raw.bytes == SAMPLES[0].nbytes and raw.ratio == 1.0


def test_pick_codec_takes_the_smallest_within_budget() -> None:
    loose = pick_codec(SAMPLES, max_error=0.5)
    tight = pick_codec(SAMPLES, max_error=0.01)
    exact = pick_codec(SAMPLES, max_error=0.0)
    assert loose.measurement.rel_l2 <= 0.5 and tight.measurement.rel_l2 <= 0.01
    assert loose.measurement.bytes < tight.measurement.bytes < exact.measurement.bytes
    assert exact.codec in ("raw", "raw+zstd")
    for pick in (loose, tight):
        fitting = [m for m in pick.candidates if m.rel_l2 <= pick.max_error]
        assert pick.measurement.bytes == min(m.bytes for m in fitting)
    js = tight.to_json()
    assert js["codec"] == tight.codec and js["error_metric"] == "relative_l2"


def test_pick_codec_static_scales_and_skips() -> None:
    samples = [s.copy() for s in SAMPLES]
    samples[1][0, 0, 0, 0] = np.nan
    pick = pick_codec(samples, max_error=0.1, candidates=["int8", "fp16", "bogus"])
    assert pick.codec == "fp16"
    assert "NaN" in pick.skipped["int8"] and "unknown codec" in pick.skipped["bogus"]
    static = pick_codec(SAMPLES, max_error=0.02, candidates=["int8/sym", "fp16"], static=True)
    assert static.codec == "int8/sym" and static.measurement.static_scales


def test_pick_codec_says_when_nothing_fits() -> None:
    with pytest.raises(SplitpipeError, match=r"within 1e-06; the most accurate candidate, int8, reaches"):
        pick_codec(SAMPLES, max_error=1e-6, candidates=["uint2", "int8"])
    with pytest.raises(SplitpipeError, match="non-negative"):
        pick_codec(SAMPLES, max_error=float("nan"))
