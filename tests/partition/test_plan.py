"""Plans: the Pareto front is exact, every figure says whether it was measured, JSON reproduces the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitpipe.errors import SplitpipeError
from splitpipe.partition.cost import Link, parse_link
from splitpipe.partition.pareto import dominates, pareto_mask
from splitpipe.partition.plan import OBJECTIVES, Plan, PlanRequest, make_plan, read_plan

TINY = PlanRequest(model="tests.fixtures.models:tiny_net", input_shape=(1, 3, 32, 32), repeats=3, warmup=1)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), max_size=30))
def test_pareto_mask_is_exact(points: list[tuple[int, int, int]]) -> None:
    mask = pareto_mask(points)
    for p, on_front in zip(points, mask, strict=True):
        dominated = any(dominates(q, p) for q in points)
        assert on_front == (not dominated)


def assert_front_exact(plan: Plan) -> None:
    options = plan.options()
    objectives = tuple(plan.objectives)
    for o in options:
        beaten = any(
            dominates(q.objective_values(objectives), o.objective_values(objectives)) for q in options
        )
        assert o.pareto == (not beaten), f"option {o.id} pareto={o.pareto} but dominated={beaten}"


@pytest.fixture(scope="module")
def tiny_plan() -> Plan:
    return make_plan(TINY)


def test_measured_plan_of_a_small_model(tiny_plan: Plan) -> None:
    assert len(tiny_plan.candidates) >= 5
    assert_front_exact(tiny_plan)
    for c in tiny_plan.candidates:
        assert c.head_ms > 0 and c.tail_ms > 0
        assert c.estimated["head_ms"] is False and c.estimated["tail_ms"] is False  # measured here
        assert c.estimated["e2e_ms"] is True and c.estimated["device_energy_mj"] is True
        expected = c.head_ms + c.encode_ms + c.tx_ms + c.rtt_ms + c.decode_ms + c.tail_ms + c.reply_ms
        assert c.e2e_ms == pytest.approx(expected)
        raw = sum(t["bytes"] for t in c.tensors)
        assert raw < c.tx_bytes < raw + 100  # raw float32 plus the codec parameters
    local, offload = tiny_plan.baselines["local"], tiny_plan.baselines["offload"]
    assert local.tx_bytes == 0 and local.tx_ms == 0 and local.estimated["e2e_ms"] is False
    assert 3 * 32 * 32 * 4 < offload.tx_bytes < 3 * 32 * 32 * 4 + 100 and offload.head_ms == 0
    assert set(tiny_plan.best) == set(OBJECTIVES)
    assert tiny_plan.device["estimated"] is False and tiny_plan.device["details"]["threads"] == 1


def test_plan_json_round_trip_and_replay(tiny_plan: Plan, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    tiny_plan.write(path)
    data = json.loads(path.read_text())
    for key in ["model", "input_shape", "device", "server", "link", "codec", "candidates", "baselines"]:
        assert key in data
    assert data["link"] == {"bandwidth_mbps": 20.0, "rtt_ms": 10.0}
    from splitpipe.kernels import quant

    # what the codec times were measured on
    assert data["profiling"]["codec_path"].startswith("compiled" if quant.C else "ONNX Runtime kernels")
    for key in [
        "id",
        "tensors",
        "tx_bytes",
        "head_ms",
        "tail_ms",
        "encode_ms",
        "decode_ms",
        "tx_ms",
        "e2e_ms",
        "device_energy_mj",
        "head_mem_bytes",
        "pareto",
        "estimated",
    ]:
        assert key in data["candidates"][0]
        assert key in data["baselines"]["local"]
    again = read_plan(path)
    assert again.request == tiny_plan.request
    assert [c.id for c in again.candidates] == [c.id for c in tiny_plan.candidates]
    # a replayed request finds the same cuts
    replay = make_plan(again.request)
    assert [(c.id, c.tensors) for c in replay.candidates] == [(c.id, c.tensors) for c in tiny_plan.candidates]


def test_analytic_plan_is_flagged_estimated() -> None:
    plan = make_plan(
        PlanRequest(
            **{
                **TINY.to_json(),
                "input_shape": (1, 3, 32, 32),
                "objectives": ("latency", "memory"),
                "device": "rpi4",
                "server": "gpu-server",
            }
        )
    )
    assert plan.device["estimated"] is True and plan.server["estimated"] is True
    assert all(c.estimated["head_ms"] and c.estimated["tail_ms"] for c in plan.candidates)
    assert plan.objectives == ["latency", "memory"]
    assert_front_exact(plan)


def test_slower_link_favours_fewer_bytes() -> None:
    fast = make_plan(
        PlanRequest(
            **{
                **TINY.to_json(),
                "input_shape": (1, 3, 32, 32),
                "link": "1gbit,1ms",
                "device": "rpi4",
                "server": "gpu-server",
            }
        )
    )
    slow = make_plan(
        PlanRequest(
            **{
                **TINY.to_json(),
                "input_shape": (1, 3, 32, 32),
                "link": "1mbit,1ms",
                "device": "rpi4",
                "server": "gpu-server",
            }
        )
    )
    pick = {p.request.link: min(p.options(), key=lambda o: o.e2e_ms) for p in (fast, slow)}
    assert pick["1mbit,1ms"].tx_bytes <= pick["1gbit,1ms"].tx_bytes


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("objectives", ("speed",), "unknown objective 'speed'"),
        ("device", "jetson-xavier", "unknown device"),
        ("link", "fast", "invalid link"),
        ("profile_mode", "guess", "unknown profile mode"),
        ("threads", 0, "threads"),
        ("window", 0, "--window must be at least 1 frame in flight"),
        ("max_error", 0.01, r"--max-error chooses a codec per split with --codec auto; with --codec raw"),
    ],
)
def test_bad_requests(field: str, value: object, message: str) -> None:
    req = PlanRequest(
        **{
            **TINY.to_json(),
            "input_shape": (1, 3, 32, 32),
            "objectives": tuple(TINY.objectives),
            field: value,
        }
    )
    with pytest.raises(SplitpipeError, match=message):
        make_plan(req)


def test_link_parsing() -> None:
    assert parse_link("20mbit,10ms") == Link(20.0, 10.0)
    assert parse_link("500kbit, 0.1s") == Link(0.5, 100.0)
    assert Link(8.0, 0).tx_ms(1_000_000) == pytest.approx(1000.0)
    # plain numbers are Mbit/s and ms, as for `splitpipe testbed` (one parser: splitpipe.units)
    assert parse_link("20,10") == Link(20.0, 10.0)
    for bad in ["20mbit", "fast,10ms", "20mbit,soon", "20mbit,10ms,5"]:
        with pytest.raises(SplitpipeError, match=r"accepted|expected RATE,RTT"):
            parse_link(bad)
    with pytest.raises(SplitpipeError, match=r"'mbps' is ambiguous .*\(e\.g\. 20mbit\)"):
        parse_link("20mbps,10ms")
    with pytest.raises(SplitpipeError, match="rate must be above 0"):
        parse_link("0mbit,10ms")


def test_plan_request_fields_of_the_wrong_type_are_one_line() -> None:
    data = TINY.to_json()
    for field, value, kind in (("repeats", "x", "an integer"), ("overhead_ms", "1", "a number"),
                               ("objectives", "latency", "a list of strings"), ("model", 3, "a string")):  # fmt: skip
        with pytest.raises(SplitpipeError, match=f"plan request field '{field}' must be {kind}, got"):
            PlanRequest.from_json({**data, field: value})
    assert PlanRequest.from_json({**data, "overhead_ms": 2}).overhead_ms == 2  # an int is a number


def test_read_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="not found"):
        read_plan(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SplitpipeError, match="not a readable plan"):
        read_plan(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SplitpipeError, match="not a splitpipe plan"):
        read_plan(bad)


def test_times_measured_elsewhere_replace_this_machines(tiny_plan: Plan, tmp_path: Path) -> None:
    """Plan on the device and on the server, then combine: what the testbed sweep does."""
    on_device = tmp_path / "device.json"
    tiny_plan.write(on_device)
    combined = make_plan(
        PlanRequest(
            **{
                **TINY.to_json(),
                "input_shape": (1, 3, 32, 32),
                "device": "rpi4",
                "server": "gpu-server",
                "device_from": str(on_device),
            }
        )
    )
    assert "from" in combined.device["method"] and combined.device["estimated"] is False
    assert combined.server["estimated"] is True  # the server side stayed analytic
    for mine, theirs in zip(combined.candidates, tiny_plan.candidates, strict=True):
        assert mine.head_ms == theirs.head_ms and mine.estimated["head_ms"] is False
        assert mine.encode_ms == theirs.encode_ms and mine.estimated["encode_ms"] is False
        assert mine.tail_ms != theirs.tail_ms and mine.estimated["tail_ms"] is True
    assert combined.baselines["local"].head_ms == tiny_plan.baselines["local"].head_ms

    other = make_plan(
        PlanRequest(
            model="tests.fixtures.models:two_heads",
            input_shape=(1, 3, 32, 32),
            device="rpi4",
            server="gpu-server",
            profile_mode="analytic",
        )
    )
    elsewhere = tmp_path / "other.json"
    other.write(elsewhere)
    with pytest.raises(SplitpipeError, match=r"is a plan of tests\.fixtures\.models:two_heads"):
        make_plan(
            PlanRequest(**{**TINY.to_json(), "input_shape": (1, 3, 32, 32), "device_from": str(elsewhere)})
        )


def test_codec_stage_is_taken_from_device_and_server_plans_with_the_same_settings(
    tiny_plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes and errors do not depend on the machine: combining plans re-measures no codec."""
    import splitpipe.partition.plan as plan_module

    codec = {"codec": "int8", "offload_codec": "int8"}
    on_device = make_plan(PlanRequest(**{**TINY.to_json(), "input_shape": (1, 3, 32, 32), **codec}))
    on_server = make_plan(PlanRequest(**{**TINY.to_json(), "input_shape": (1, 3, 32, 32), **codec}))
    on_device.write(tmp_path / "device.json")
    on_server.write(tmp_path / "server.json")
    request = PlanRequest(
        **{
            **TINY.to_json(),
            "input_shape": (1, 3, 32, 32),
            **codec,
            "device_from": str(tmp_path / "device.json"),
            "server_from": str(tmp_path / "server.json"),
            "link": "2mbit,30ms",
        }
    )

    def no_measuring(*args: object) -> None:
        raise AssertionError("the codec stage ran again")

    monkeypatch.setattr(plan_module, "_codecs", no_measuring)
    combined = make_plan(request)
    for mine, dev, srv in zip(combined.options(), on_device.options(), on_server.options(), strict=True):
        assert (mine.codec, mine.tx_bytes, mine.codec_error) == (dev.codec, dev.tx_bytes, dev.codec_error)
        assert mine.encode_ms == dev.encode_ms and mine.decode_ms == srv.decode_ms
    # other codec settings: measured again
    monkeypatch.undo()
    other = make_plan(PlanRequest(**{**request.to_json(), "input_shape": (1, 3, 32, 32), "codec": "raw"}))
    assert other.candidates[0].codec == "raw"


def test_overhead_is_added_to_the_latency_and_reported() -> None:
    base = {**TINY.to_json(), "input_shape": (1, 3, 32, 32), "device": "rpi4", "server": "gpu-server"}
    base["profile_mode"] = "analytic"
    plain = make_plan(PlanRequest(**base))
    more = make_plan(PlanRequest(**{**base, "overhead_ms": 7.5, "local_overhead_ms": 2.0}))
    for a, b in zip(plain.options(), more.options(), strict=True):
        extra = 2.0 if a.id == "local" else 7.5
        assert b.overhead_ms == extra and a.overhead_ms == 0.0
        # (codec times are measured anew in each plan)
        assert b.e2e_ms - b.encode_ms - b.decode_ms == pytest.approx(
            a.e2e_ms - a.encode_ms - a.decode_ms + extra
        )
        assert (b.head_ms, b.tx_ms, b.tail_ms) == (a.head_ms, a.tx_ms, a.tail_ms)
    with pytest.raises(SplitpipeError, match="--overhead-ms must be a non-negative number"):
        make_plan(PlanRequest(**{**base, "overhead_ms": -1.0}))


def test_offload_codec(tiny_plan: Plan) -> None:
    plan = make_plan(
        PlanRequest(
            **{
                **TINY.to_json(),
                "input_shape": (1, 3, 32, 32),
                "device": "rpi4",
                "server": "gpu-server",
                "profile_mode": "analytic",
                "offload_codec": "int8",
            }
        )
    )
    off = plan.baselines["offload"]
    assert off.codec == "int8" and off.label == "input sent as int8"
    assert off.tx_bytes < tiny_plan.baselines["offload"].tx_bytes / 3
    assert 0 < off.codec_error < 0.01


def test_pipelined_frames_per_second() -> None:
    """The slowest of the four stages, or the window over the latency (Little's law)."""
    from splitpipe.partition.cost import Stages, end_to_end, pipelined

    link = Link(8.0, 20.0)  # 8 Mbit/s: 1 ms per kB
    stages = Stages(head_ms=5.0, encode_ms=1.0, tx_bytes=10_000, decode_ms=0.5, tail_ms=2.0, reply_bytes=1000)
    times = end_to_end(stages, link)  # e2e = 6 + 10 + 20 + 2.5 + 1 = 39.5 ms
    assert pipelined(stages, times, window=8) == {"stage_ms": 10.0, "fps": pytest.approx(100.0)}
    # one frame in flight: sequential, one frame per end-to-end latency
    assert pipelined(stages, times, window=1)["fps"] == pytest.approx(1e3 / 39.5)
    assert pipelined(stages, times, window=2)["fps"] == pytest.approx(2e3 / 39.5)
    # the agent's own device work per frame shares the device with the head
    assert pipelined(stages, times, window=8, device_overhead_ms=6.5) == {
        "stage_ms": 12.5,
        "fps": pytest.approx(80.0),
    }


def test_throughput_objective() -> None:
    base = {**TINY.to_json(), "input_shape": (1, 3, 32, 32), "device": "rpi4", "server": "gpu-server"}
    base.update(profile_mode="analytic", link="5mbit,30ms", objectives=("latency", "throughput"))
    plans = {w: make_plan(PlanRequest(**{**base, "window": w})) for w in (1, 8)}
    for window, plan in plans.items():
        for o in plan.options():
            assert o.estimated["fps"] and o.estimated["stage_ms"]
            stage = max(o.head_ms + o.encode_ms, o.tx_ms, o.decode_ms + o.tail_ms, o.reply_ms)
            assert o.stage_ms == pytest.approx(stage)
            # local has nothing in flight: one frame after the other (codec times are measured
            # anew in each plan, so each plan is checked against its own figures)
            in_flight = 1 if o.id == "local" else window
            assert o.fps == pytest.approx(min(1e3 / stage, in_flight * 1e3 / o.e2e_ms))
    remote = [o for o in plans[8].options() if o.id != "local"]
    assert all(o.fps > 1e3 / o.e2e_ms for o in remote)  # on this link, pipelining pays
    plan = plans[8]
    assert plan.best["throughput"] == max(plan.options(), key=lambda o: o.fps).id
    assert_front_exact(plan)
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert [o.fps for o in again.options()] == [o.fps for o in plan.options()]


def test_every_figure_says_whether_it_was_measured(tiny_plan: Plan) -> None:
    figures = {"tensors", "id", "label", "codec", "pareto", "estimated"}
    for o in tiny_plan.options():
        numbers = {k for k, v in vars(o).items() if k not in figures and isinstance(v, (int, float))}
        assert numbers <= set(o.estimated), f"option {o.id}: no flag for {sorted(numbers - set(o.estimated))}"
    c = tiny_plan.candidates[0]
    assert c.estimated["rtt_ms"] and c.estimated["reply_ms"] and c.estimated["head_flops"]
    assert not c.estimated["codec_error"] and not c.estimated["reply_bytes"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["request"].update(input_shape="1,3,32,32"), "'input_shape' must be a list of positive"),
        (
            lambda p: p["request"].update(input_shape=[1, 3, -32, 32]),
            "'input_shape' must be a list of positive",
        ),
        (lambda p: p["request"].update(weights=5), "'weights' must be a string or null, got 5"),
        (lambda p: p["request"].update(max_error="high"), "'max_error' must be a number or null"),
        (lambda p: p.update(request=[]), "'request' must be an object"),
        (lambda p: p.update(device="rpi4"), "'device' must be an object, got 'rpi4'"),
        (lambda p: p.update(candidates={}), "'candidates' must be a list of objects"),
        (lambda p: p.update(baselines={}), "'baselines' must hold local and offload"),
        (lambda p: p["link"].pop("rtt_ms"), "'link' field 'rtt_ms' must be a number, got None"),
        (
            lambda p: p["candidates"][1].update(head_ms="fast"),
            "candidate 1: field 'head_ms' has the wrong type",
        ),
        (
            lambda p: p["candidates"][0].update(tensors=None),
            "candidate 0: field 'tensors' has the wrong type",
        ),
    ],
)
def test_a_damaged_plan_json_is_one_clear_error(tiny_plan: Plan, tmp_path: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(tiny_plan.to_json()))  # a copy: the plan is shared
    change(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SplitpipeError, match=f"^{path}: .*{message}"):
        read_plan(path)


def test_writing_a_plan_replaces_the_file_whole_or_says_why_not(tiny_plan: Plan, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("an earlier plan")
    tiny_plan.write(path)
    assert read_plan(path).candidates == tiny_plan.candidates
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left
    with pytest.raises(SplitpipeError, match=r"cannot write the plan to /proc/splitpipe-test/plan\.json"):
        tiny_plan.write("/proc/splitpipe-test/plan.json")


def test_more_threads_than_cpus_are_refused_where_they_would_measure() -> None:
    from dataclasses import replace

    with pytest.raises(SplitpipeError, match=r"--threads 100000 is more than the \d+ CPUs of this machine"):
        make_plan(replace(TINY, threads=100_000))
    # where nothing is measured here, the setting does not matter
    assert make_plan(replace(TINY, threads=100_000, profile_mode="analytic")).candidates
