"""Micro-benchmark models and the measured profile of this machine (real ONNX Runtime runs)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from splitpipe.devices import microbench
from splitpipe.devices.meters import Ina3221Meter
from splitpipe.devices.microbench import (
    LONG,
    OVERHEAD,
    POINTS,
    SHORT,
    local_profile,
    local_profile_path,
    model_files,
    profile_this_machine,
)
from splitpipe.devices.profile import OP_CLASSES, load_profile, profile_from_json
from splitpipe.devices.runtimes.ort import OrtRunner
from splitpipe.errors import SplitpipeError, UnavailableError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "devices"
MODELS = resources.files("splitpipe.devices") / "microbench_models"


def test_committed_models_match_the_script() -> None:
    pytest.importorskip("onnx")
    from splitpipe.devices.make_microbench import build_models

    built = build_models()
    assert sorted(built) == sorted(model_files())
    on_disk = sorted(p.name for p in MODELS.iterdir() if p.name.endswith(".onnx"))
    assert on_disk == sorted(built), "stale or missing files: run python -m splitpipe.devices.make_microbench"
    for name, data in built.items():
        assert (MODELS / name).read_bytes() == data, f"{name} differs from make_microbench.py's output"
        assert len(data) < 1024  # weights are made in the graph, not stored


def test_every_class_is_covered_in_quick_mode() -> None:
    assert {p.op_class for p in POINTS if p.quick} == set(OP_CLASSES)
    assert len({p.name for p in POINTS}) == len(POINTS)


def _reference(point: microbench.BenchPoint, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The op computed independently (torch for conv and pool, numpy for the rest)."""
    x = feed["x"]
    if point.kind == "matmul":
        return x @ np.full((point.dims[1],) * 2, 1.0 / point.dims[1], np.float32)
    if point.kind == "add":
        return x + feed["b"]
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x)
    if point.kind == "maxpool":
        return torch.nn.functional.max_pool2d(t, point.kernel, stride=1, padding=point.kernel // 2).numpy()
    c, k, g = point.dims[0], point.kernel, point.groups
    w = torch.full((c, c // g, k, k), 1.0 / ((c // g) * k * k))
    b = torch.full((c,), 1e-3)
    return torch.nn.functional.conv2d(t, w, b, padding=k // 2, groups=g).numpy()


@pytest.mark.parametrize("point", [*POINTS, OVERHEAD], ids=lambda p: p.name)
def test_model_computes_its_op(point: microbench.BenchPoint) -> None:
    """The model is the op its FLOP count describes (same shapes, same result)."""
    rng = np.random.default_rng(1)
    feed = microbench._feed(point, rng)
    with OrtRunner((MODELS / point.file(SHORT)).read_bytes()) as runner:
        (out,) = runner.infer(feed).values()
    np.testing.assert_allclose(out, _reference(point, feed), rtol=1e-4, atol=1e-5)
    assert out.shape == point.input_shape


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.name)
def test_flops_match_the_planner(point: microbench.BenchPoint, tmp_path: Path) -> None:
    """The planner's node_cost counts the same FLOPs and class for the chain (one convention)."""
    onnx = pytest.importorskip("onnx")
    try:
        from splitpipe.partition.flops import node_cost
        from splitpipe.partition.graph import Graph
    except ImportError as exc:
        pytest.skip(f"planner not importable yet: {exc}")
    model = onnx.load_from_string((MODELS / point.file(LONG)).read_bytes())
    _fold_constants(model)  # as exported models carry weights: initializers
    path = tmp_path / point.file(LONG)
    onnx.save(model, str(path))
    graph = Graph(model, path)  # with a path, the planner learns shapes by running it
    costs = [node_cost(graph, k) for k in range(graph.n)]
    assert [c.op_class for c in costs] == [point.op_class] * LONG
    assert sum(c.flops for c in costs) == point.flops * LONG


def test_measured_rates_add_the_weights_read_once_per_inference(tmp_path: Path) -> None:
    """With measured rates, a node costs FLOPs / rate plus its weights at the copy bandwidth."""
    onnx = pytest.importorskip("onnx")
    from splitpipe.partition.flops import node_cost, node_ms
    from splitpipe.partition.graph import Graph

    point = next(p for p in POINTS if p.name == "matmul_m1_k1024")
    model = onnx.load_from_string((MODELS / point.file(SHORT)).read_bytes())
    _fold_constants(model)
    path = tmp_path / point.file(SHORT)
    onnx.save(model, str(path))
    cost = node_cost(Graph(model, path), 0)
    assert cost.weight_bytes == 1024 * 1024 * 4  # the K x K float32 weight, an initializer
    profile = dataclasses.replace(
        load_profile("x86-server"),
        measured_gflops={"matmul": 10.0},
        mem_bandwidth_gbs=20.0,
        node_overhead_us=0.0,
    )
    compute_ms = cost.flops / 10e9 * 1e3
    assert node_ms(cost, profile, stream_weights=False) == pytest.approx(compute_ms)
    assert node_ms(cost, profile) == pytest.approx(compute_ms + cost.weight_bytes / 20e9 * 1e3)


def _fold_constants(model: object) -> None:
    """Replace ConstantOfShape nodes by the initializers they make."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            keep.append(node)
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        array = np.full(tuple(inits[node.input[0]]), value[0], dtype=value.dtype)
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)


def test_quick_profile_of_this_machine() -> None:
    seen: list[tuple[str, int, int]] = []
    profile = profile_this_machine(quick=True, progress=lambda *a: seen.append(a))
    assert profile.name == "local" and profile.role == "device"
    assert set(profile.measured_gflops) == set(OP_CLASSES)
    assert all(rate > 0 for rate in profile.measured_gflops.values())
    assert profile.measured and profile.mem_bandwidth_gbs > 0
    assert profile.node_overhead_us >= 0 and profile.run_overhead_us > 0
    assert 0 < profile.compute_efficiency <= 1 and 0 < profile.memory_efficiency <= 1
    # no sensor here: power is an estimate and says so
    assert not profile.measured_power
    assert profile.sources["idle_w"].startswith("estimate")
    assert profile.measurement["quick"] and len(profile.measurement["points"]) == sum(p.quick for p in POINTS)
    assert seen[0][0] == "overheads" and seen[-1][0] == "done"
    for cls in OP_CLASSES:
        assert profile.achieved_gflops(cls, 1e6) is not None
    assert set(profile.boundary_us_per_mb) <= set(OP_CLASSES)
    assert all(v >= 0 for v in profile.boundary_us_per_mb.values())
    # it is a valid profile file
    again = profile_from_json(json.loads(json.dumps(profile.to_json())), "round trip")
    assert again == profile


def test_profile_with_a_measured_meter_and_base(tmp_path: Path) -> None:
    """A meter (here INA3221 on a recorded Orin Nano tree) turns power into measured figures."""
    import shutil

    root = tmp_path / "orin"
    shutil.copytree(FIXTURES / "sysfs" / "jetson-orin-nano", root)
    meter = Ina3221Meter(root=root, rate_hz=50)
    base = load_profile("jetson-orin-nano")
    profile = profile_this_machine(
        quick=True, name="bench-orin", base=base, meter=meter, idle_s=0.1, load_s=0.1
    )
    assert profile.measured_power
    assert profile.idle_w == pytest.approx(5.072 * 0.987, rel=1e-3)
    assert profile.active_w == pytest.approx(profile.idle_w)  # a recorded tree does not change with load
    assert "ina3221:VDD_IN" in profile.sources["active_w"]
    assert profile.power_rails == ("VDD_IN",) and profile.radio_w == base.radio_w
    assert profile.measurement["power"]["loaded"]["measured"]


def test_threads_and_providers_are_checked() -> None:
    with pytest.raises(SplitpipeError, match="threads"):
        profile_this_machine(threads=0)
    with pytest.raises(UnavailableError, match="Requested provider was: cuda"):
        profile_this_machine(providers=("cuda",))


def test_local_profile_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIPE_CACHE_DIR", str(tmp_path))
    path = local_profile_path()
    assert path.parent == tmp_path / "profiles" and not path.exists()
    first = local_profile()
    assert path.is_file()

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("measured again although a cached profile exists")

    monkeypatch.setattr(microbench, "profile_this_machine", refuse)
    assert local_profile() == first
    assert load_profile("local") == first
    # a broken cache is measured again, not trusted and not fatal
    monkeypatch.undo()
    monkeypatch.setenv("SPLITPIPE_CACHE_DIR", str(tmp_path))
    path.write_text("{broken")
    again = local_profile()
    assert again.measured and json.loads(path.read_text())["name"] == "local"
    # different thread counts are cached apart
    assert local_profile_path(threads=2) != path


def test_copy_bandwidth_threads() -> None:
    one = microbench.copy_bandwidth_gbs(nbytes=8 << 20, threads=1, repeats=2)
    two = microbench.copy_bandwidth_gbs(nbytes=8 << 20, threads=2, repeats=2)
    assert one > 0 and two > 0


def test_boundary_rates_are_what_the_one_op_model_costs_beyond_its_op() -> None:
    """x1 = op + fixed costs + edge work; the edge work per MB of inputs and output, median over
    the half of a class's points with the least op time per MB; noisy points and points too
    small to say anything are left out."""
    from splitpipe.devices.microbench import _boundary_figures

    by_name = {p.name: p for p in POINTS}
    overheads = {"run_us": 5.0, "node_us": 1.0}

    def row(name: str, edge_us: float, noisy: bool = False) -> dict[str, object]:
        p = by_name[name]
        return {
            "name": name,
            "op_class": p.op_class,
            "op_ms": 0.5,
            "x1_ms": 0.5 + (6.0 + edge_us) / 1e3,
            "noisy": noisy,
        }

    mb = {n: by_name[n].bytes_moved / 1e6 for n in by_name}
    rows = [
        row("conv1x1_c64_h56", 10 * mb["conv1x1_c64_h56"]),
        # 0.5 ms over 0.4 MB: the most op time per MB of the three, so not used
        row("conv1x1_c256_h14", 90 * mb["conv1x1_c256_h14"]),
        row("conv3x3_c64_h56", 20 * mb["conv3x3_c64_h56"]),
        row("add_c256_h56", 2 * mb["add_c256_h56"]),
        row("add_c64_h56", 0.0, noisy=True),
        row("matmul_m1_k1024", 500.0),  # 8 kB of edges: too small to count
    ]
    rates = _boundary_figures(rows, overheads)
    assert rates == {"conv": pytest.approx(15.0), "elementwise": pytest.approx(2.0)}
