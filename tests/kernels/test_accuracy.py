"""A real accuracy figure in the test suite: a tiny CNN trained on scikit-learn's digits for a
few seconds, split after its first block; int8 must stay within 0.5 points of float on the
held-out images (the full benchmark is bench/accuracy.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from splitpipe.kernels import calibrate, decode, get_codec  # noqa: E402


@pytest.fixture(scope="module")
def trained() -> tuple[object, np.ndarray, np.ndarray]:
    import torch.nn as nn

    torch.manual_seed(0)
    digits = sklearn_datasets.load_digits()
    x = (digits.images / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 10)),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        xt, yt = torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300])
        for _ in range(5):
            for i in range(0, len(xt), 50):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[i : i + 50]), yt[i : i + 50]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, x[1300:], y[1300:]


def _accuracy(model, x: np.ndarray, y: np.ndarray, codec=None) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        z = model[:1](torch.from_numpy(x)).numpy()
        if codec is not None:
            z = np.concatenate([decode(*codec.encode(z[i : i + 1])) for i in range(len(z))])
        pred = model[1:](torch.from_numpy(z)).argmax(1).numpy()
    return 100.0 * float((pred == y).mean())


def test_int8_keeps_accuracy_within_half_a_point(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    full = _accuracy(model, x, y)
    assert full > 90.0, f"the tiny model should learn digits (got {full:.1f} %)"
    for name in ("int8", "int8/ch", "int8/sym+zstd"):
        assert abs(_accuracy(model, x, y, get_codec(name)) - full) <= 0.5, name
    with torch.no_grad():
        calib = model[:1](torch.from_numpy(x[:100])).numpy()
    static = get_codec("int8/sym", calibration=calibrate("int8/sym", [calib]))
    assert abs(_accuracy(model, x, y, static) - full) <= 0.5
    # 2 bits per value is visibly lossy on the same split: the test can tell codecs apart
    assert _accuracy(model, x, y, get_codec("uint2")) < full
