"""A detector given as an ONNX file: several outputs at different depths, planned and exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitpipe.partition.export import export_split
from splitpipe.partition.plan import PlanRequest, analyse, make_plan
from tests.partition.test_plan import assert_front_exact


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.models import tiny_yolo

    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    program = torch.onnx.export(tiny_yolo(), (torch.randn(1, 3, 64, 64),), None, dynamo=True, verbose=False)
    assert program is not None
    program.save(str(path))
    return path


def test_plan_and_export_an_onnx_detector(yolo_onnx: Path, tmp_path: Path) -> None:
    req = PlanRequest(
        model=str(yolo_onnx),
        device="rpi4",
        server="gpu-server",
        link="5mbit,40ms",
        max_cut_tensors=2,
        objectives=("latency", "bytes", "energy", "memory"),
    )
    a = analyse(req)
    assert len(a.graph.outputs) == 3
    plan = make_plan(req, analysis=a)
    assert_front_exact(plan)
    # once the stride-8 output is computed on the device, it crosses the cut itself
    early = a.graph.outputs[0]
    with_output = [c for c in a.cuts if early in c.tensors]
    assert with_output, "no cut sends the early detection output"
    session = ort.InferenceSession(str(yolo_onnx))
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = session.run(None, {session.get_inputs()[0].name: x})
    for cut in [with_output[0], *[a.cuts[i] for i in range(0, len(a.cuts), 4)]]:
        m = export_split(req, cut.id, tmp_path / f"s{cut.id}", plan=plan, analysis=a).manifest
        head = ort.InferenceSession(str(tmp_path / f"s{cut.id}" / "head.onnx"))
        tail = ort.InferenceSession(str(tmp_path / f"s{cut.id}" / "tail.onnx"))
        mid = head.run(None, {head.get_inputs()[0].name: x})
        got = tail.run(None, dict(zip([t["name"] for t in m["cut"]], mid, strict=True)))
        assert [o["name"] for o in m["outputs"]] == a.graph.outputs
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
