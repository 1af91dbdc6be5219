"""The rate estimator of the measurement probes (pure function)."""

from __future__ import annotations

import pytest

from splitpipe.testbed.probe import goodput_mbit


def test_goodput_is_the_slope_after_warmup() -> None:
    # 1.25 MB/s = 10 Mbit/s, after a 64 KiB burst at time 0 that the warm-up must ignore
    samples = [(0.0, 65536)] + [(0.01 * i, 65536 + 12_500 * i) for i in range(1, 101)]
    assert goodput_mbit(samples) == pytest.approx(10.0, rel=1e-3)


def test_goodput_needs_samples() -> None:
    with pytest.raises(ValueError, match="too few samples"):
        goodput_mbit([(0.0, 1)])
