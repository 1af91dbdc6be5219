"""Both fast paths of the codecs: the compiled kernels (splitpipe.kernels._cquant) and the ONNX
Runtime graphs a device without a C compiler at install time falls back to. Tests that compare
the fast path with the reference use the ``fast_path`` fixture and so run once for each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from splitpipe.kernels import quant


@pytest.fixture(params=["compiled", "onnxruntime"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "compiled":
        if quant.C is None:
            pytest.skip(f"compiled kernels: {quant.C_MISSING}")
    else:
        monkeypatch.setattr(quant, "C", None)
    yield request.param
