"""The kernel graphs shipped as package data are what the committed generator builds."""

from __future__ import annotations

import pytest

from splitpipe.kernels import _build_graphs


def test_committed_graphs_are_current() -> None:
    pytest.importorskip("onnx")
    built = _build_graphs.build()
    on_disk = {p.stem: p.read_bytes() for p in _build_graphs.GRAPH_DIR.glob("*.onnx")}
    assert set(on_disk) == set(built), "run: python -m splitpipe.kernels._build_graphs"
    for name, data in built.items():
        assert on_disk[name] == data, f"{name}.onnx is stale; run: python -m splitpipe.kernels._build_graphs"
