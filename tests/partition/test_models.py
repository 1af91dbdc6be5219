"""Real models: every architecture family plans, and every Pareto candidate exports exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitpipe.partition.export import export_split
from splitpipe.partition.plan import PlanRequest, analyse, make_plan
from tests.partition.test_plan import assert_front_exact

MODELS = [
    ("torchvision:resnet50", None),  # residual
    ("torchvision:mobilenet_v3_large", None),  # depthwise, squeeze-excite (multiply by a side branch)
    ("torchvision:efficientnet_b0", None),
    ("torchvision:densenet121", None),  # concatenation-heavy
    ("torchvision:googlenet", None),  # multi-branch inception modules
    ("torchvision:vit_b_16", None),  # transformer
    ("tests.fixtures.models:two_heads", (1, 3, 32, 32)),  # two outputs
]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "shape"), MODELS, ids=[m[0].split(":")[1] for m in MODELS])
def test_plan_and_export_every_pareto_candidate(
    spec: str, shape: tuple[int, ...] | None, tmp_path: Path
) -> None:
    req = PlanRequest(
        model=spec,
        input_shape=shape,
        device="jetson-nano",
        server="gpu-server",
        link="20mbit,10ms",
        profile_mode="analytic",
        objectives=("latency", "bytes", "energy", "memory"),
    )
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    assert len(plan.candidates) >= 3, f"{spec}: only {len(plan.candidates)} cuts"
    assert_front_exact(plan)
    front = [c for c in plan.candidates if c.pareto]
    assert front, f"{spec}: no candidate on the front"
    for c in front:
        assert isinstance(c.id, int)
        result = export_split(req, c.id, tmp_path / f"s{c.id}", plan=plan, analysis=analysis, samples=1)
        assert result.max_rel <= 1e-4, f"{spec} split {c.id}: relative difference {result.max_rel}"
