"""The split chooser on a simulated link (deterministic: every time is given), then the agent
adapting among real exports on loopback with every frame's output checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from splitpipe.edge import AgentOptions, ClientOptions, FrameResult, SyntheticSource, load_export, run_agent
from splitpipe.edge.adapt import AdaptOptions, Chooser, Link, Option
from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerThread
from tests.edge.conftest import Exports

MBIT = 1e6 / 8 / 1e3  # bytes per ms in one Mbit/s


@dataclass
class TrueLink:
    rtt_ms: float
    mbit: float

    def network_ms(self, nbytes: int) -> float:
        return self.rtt_ms + nbytes / (self.mbit * MBIT)


def _options() -> list[Option]:
    # big: cheap head, 200 KB; small: 30 ms head, 300 B; local: the whole model, 60 ms
    return [
        Option("big", True, 1.0, 200_000, 1.0),
        Option("small", True, 30.0, 300, 1.0),
        Option("local", False, 60.0, 0, 0.0),
    ]


def _run(chooser: Chooser, link: TrueLink, start: float, seconds: float) -> tuple[float, list[str]]:
    """Frames one after the other (sequential) for ``seconds`` of simulated time."""
    t, picked = start, []
    while t < start + seconds:
        i = chooser.pick(t)
        o = chooser.options[i]
        server = 1.0 if o.remote else 0.0
        chooser.ran(i, o.device_ms, o.tx_bytes)
        net = link.network_ms(o.tx_bytes) if o.remote else 0.0
        t += (o.device_ms + net + server) / 1e3
        chooser.answered(i, t, net + server if o.remote else None, server if o.remote else None)
        picked.append(o.name)
    return t, picked


def test_follows_the_bandwidth_down_and_back_up() -> None:
    chooser = Chooser(_options(), Link(2.0, 100 * MBIT, "planned"), AdaptOptions(probe_s=1.0))
    assert chooser.options[chooser.current].name == "big"  # 1 + 2 + 16 + 1 ms beats 33 and 60
    fast, slow = TrueLink(2.0, 100), TrueLink(2.0, 2)

    t, picked = _run(chooser, fast, 0.0, 5.0)
    assert picked[-20:].count("big") >= 19  # probes aside
    assert {"small", "local"} <= set(picked)  # each tried at least once
    link = chooser.link(t)
    assert link.source == "measured"
    assert link.rtt_ms == pytest.approx(2.0, abs=0.01) and link.bytes_per_ms == pytest.approx(
        100 * MBIT, rel=0.01
    )

    # 2 Mbit/s: 200 KB take 800 ms; the chooser leaves big within a few of its frames
    t, picked = _run(chooser, slow, t, 30.0)
    assert picked[:8].count("big") <= 5
    assert chooser.options[chooser.current].name == "small"
    assert picked[-50:].count("small") >= 48
    assert chooser.link(t).bytes_per_ms == pytest.approx(2 * MBIT, rel=0.02)  # from small's frames

    # back to 100 Mbit/s: small's own frames show it, big wins again
    _, picked = _run(chooser, fast, t, 10.0)
    assert chooser.options[chooser.current].name == "big"
    assert [s["to"] for s in chooser.switches] == ["small", "big"]
    assert chooser.switch_count == 2


def test_a_dead_slow_link_goes_local_and_expensive_probes_stop() -> None:
    chooser = Chooser(_options(), Link(2.0, 100 * MBIT, "planned"), AdaptOptions(probe_s=1.0))
    _, picked = _run(chooser, TrueLink(300.0, 0.05), 0.0, 120.0)  # 300 ms rtt, 50 kbit/s
    assert chooser.options[chooser.current].name == "local"
    # after one try, big (predicted 32 s, more than 3x local's 60 ms) is not probed again; with
    # nothing crossing the link, small (the cheapest look at it) is, once per window (5 s)
    assert chooser.options[0].frames <= 2
    tail = picked[len(picked) // 2 :]
    assert "big" not in tail
    assert 4 <= tail.count("small") <= 60 / 5 + 1


def test_a_frame_still_waiting_shows_a_slower_link_before_any_reply() -> None:
    chooser = Chooser(_options(), Link(2.0, 100 * MBIT, "planned"), AdaptOptions(probe_s=100.0))
    _run(chooser, TrueLink(2.0, 100), 0.0, 1.0)
    assert chooser.options[chooser.current].name == "big"
    t = 1.5
    assert chooser.pick(t, waiting_ms={0: 25.0}) == 0  # a little late (26 ms): still ahead of small
    # big's oldest frame has waited 400 ms (the link fell): small (33 ms) is over twice as fast
    assert chooser.options[chooser.pick(t, waiting_ms={0: 400.0})].name == "small"
    assert chooser.switches[-1]["predicted_ms"]["big"] == pytest.approx(401.0)
    # big's fast frames from before no longer count: its late replies decide its figures
    assert not chooser.options[0].network


def test_one_stalled_frame_does_not_move_the_choice() -> None:
    # a garbage-collection pause on the device, or one slow reply from the server, is one frame:
    # the figures are medians of the latest frames, so neither sends the stream elsewhere
    chooser = Chooser(_options(), Link(2.0, 100 * MBIT, "planned"), AdaptOptions(probe_s=100.0))
    t, _ = _run(chooser, TrueLink(2.0, 100), 0.0, 1.0)
    big = chooser.options[0]
    assert chooser.options[chooser.current].name == "big"
    assert chooser.pick(t) == 0
    chooser.ran(0, 300.0, big.tx_bytes)  # the head took 300 ms once
    chooser.answered(0, t + 0.3, 19.0, 1.0)
    assert chooser.pick(t + 0.31) == 0
    chooser.ran(0, 1.0, big.tx_bytes)
    chooser.answered(0, t + 0.32, 319.0, 300.0)  # the server took 300 ms once
    assert chooser.pick(t + 0.33) == 0
    assert big.device_ms == pytest.approx(1.0) and big.server_ms == pytest.approx(1.0)
    assert chooser.switch_count == 0

    # a lasting change shows within a few frames: the head now takes 100 ms every time
    picks = []
    for k in range(6):
        now = t + 0.4 + k * 0.12
        picks.append(i := chooser.pick(now))
        chooser.ran(i, 100.0 if i == 0 else chooser.options[i].device_ms, chooser.options[i].tx_bytes)
        chooser.answered(i, now + 0.1, 19.0, 1.0)
    assert chooser.options[chooser.current].name == "small"
    assert picks[:2] == [0, 0] and picks[3:] == [1, 1, 1]  # the median moves on the 2nd-3rd


def test_an_export_whose_frames_fail_is_left_and_retried_later() -> None:
    # big's frames come back as errors (say, over the server's message limit): the chooser
    # leaves it at the first one and tries it again after 5 s, then 10 s, ...
    chooser = Chooser(_options(), Link(2.0, 100 * MBIT, "planned"), AdaptOptions(probe_s=1.0))
    assert chooser.options[chooser.current].name == "big"
    t, picks = 0.0, []
    while t < 30.0:
        i = chooser.pick(t)
        o = chooser.options[i]
        picks.append((t, o.name))
        chooser.ran(i, o.device_ms, o.tx_bytes)
        t += o.device_ms / 1e3
        if o.name == "big":
            chooser.failed(i, t)
        else:
            chooser.answered(i, t + 0.002, 3.0 if o.remote else None, 1.0 if o.remote else None)
    tries = [when for when, name in picks if name == "big"]
    assert tries[0] < 0.1 and len(tries) == 3  # at the start, after 5 s and after 10 more
    assert tries[1] == pytest.approx(5.0, abs=0.1) and tries[2] == pytest.approx(15.0, abs=0.1)
    assert chooser.options[chooser.current].name == "small"
    assert chooser.to_json()["options"][0]["failures"] == 3

    # once its frames get through again, it is back in the running at once
    chooser.answered(0, t, 19.0, 1.0)
    assert chooser.options[0].failures == 0
    assert chooser.to_json()["options"][0]["failures"] == 0


def test_hysteresis_keeps_it_from_flapping() -> None:
    options = [Option("a", True, 10.0, 1000, 1.0), Option("b", True, 10.5, 900, 1.0)]
    chooser = Chooser(options, Link(1.0, 10 * MBIT, "planned"), AdaptOptions(probe_s=0.5, hysteresis=0.15))
    _, picked = _run(chooser, TrueLink(1.0, 10), 0.0, 20.0)
    assert chooser.switch_count == 0
    assert picked.count("a") > 0.9 * len(picked)


def test_one_size_seen_keeps_the_fitted_round_trip() -> None:
    options = [Option("a", True, 1.0, 10_000, 1.0), Option("b", True, 1.0, 100_000, 1.0)]
    chooser = Chooser(options, Link(50.0, 1 * MBIT, "planned"), AdaptOptions(window_s=5.0))
    # nothing measured: the planned link
    assert chooser.link(0.0) == Link(50.0, 1 * MBIT, "planned")
    # one size only: the planned round trip caps it, the bandwidth from what is left
    chooser.answered(0, 1.0, 2.0 + 10_000 / (20 * MBIT) + 1.0, 1.0)
    link = chooser.link(1.0)
    assert link.rtt_ms == pytest.approx(6.0) and math.isinf(link.bytes_per_ms)
    # two sizes: fitted, and the fit's round trip is kept once one size has aged out
    chooser.answered(1, 2.0, 2.0 + 100_000 / (20 * MBIT) + 1.0, 1.0)
    chooser.answered(0, 2.0, 2.0 + 10_000 / (20 * MBIT) + 1.0, 1.0)
    link = chooser.link(2.0)
    assert link.rtt_ms == pytest.approx(2.0) and link.bytes_per_ms == pytest.approx(20 * MBIT)
    chooser.answered(0, 7.5, 2.0 + 10_000 / (5 * MBIT) + 1.0, 1.0)
    link = chooser.link(7.5)  # b's point is older than the window now
    assert link.rtt_ms == pytest.approx(2.0) and link.bytes_per_ms == pytest.approx(5 * MBIT)


def test_bad_settings() -> None:
    with pytest.raises(SplitpipeError, match="hysteresis"):
        AdaptOptions(hysteresis=1.0)
    with pytest.raises(SplitpipeError, match="at least two"):
        Chooser(_options()[:1], Link(1.0, 1.0, "planned"))


# -- the agent, on loopback ------------------------------------------------------------------------


def test_agent_adapts_among_real_exports(exports: Exports, server: ServerThread) -> None:
    """Four exports of one model (two codecs of one split, offload, local): every frame's output
    is the whole model's, whichever export it ran through, and each export is tried."""
    dirs = [exports.raw, exports.int8, exports.offload, exports.local]
    results: dict[int, tuple[str, dict[str, np.ndarray]]] = {}

    def on_result(result: FrameResult) -> None:
        results[result.record.id] = (str(result.record.split), result.outputs)

    report = run_agent(
        AgentOptions(
            dirs[0],
            more_exports=tuple(dirs[1:]),
            server=f"127.0.0.1:{server.port}",
            frames=600,
            fps=400,
            log_interval_s=0,
            client=ClientOptions(window=4),
            adapt=AdaptOptions(probe_s=0.1),
        ),
        on_result,
    )
    s = report.summary
    assert (s["completed"], s["failed"], s["lost"]) == (600, 0, 0)
    adapt = report.info["adapt"]
    names = {o["name"] for o in adapt["options"]}
    assert names == {"tiny-raw", "tiny-int8", "tiny-offload", "tiny-local"}
    assert all(o["frames"] >= 1 for o in adapt["options"]), adapt["options"]
    assert adapt["link"]["source"] == "measured"
    assert report.info["path"] == "adaptive"
    source = SyntheticSource(load_export(exports.raw).inputs, seed=0)
    used = set()
    for i, (split, got) in results.items():
        used.add(split)
        tolerance = 0.01 if split == "tiny-int8" else 1e-5
        for name, want in exports.reference(source.frame(i)).items():
            assert np.max(np.abs(got[name] - want)) <= tolerance * np.max(np.abs(want)), (i, split)
    assert used == names
    frame = report.to_json()["frames"][0]
    assert frame["split"] in names
    assert any(line.startswith("splits: ") for line in report.lines())


def test_an_export_over_the_message_limit_is_avoided(exports: Exports, server: ServerThread) -> None:
    """With a 6 KB limit the raw split (8 KB a frame) and offload (12 KB) can never be sent: each
    fails a frame when tried, then the agent keeps off it and runs the int8 split (2 KB)."""
    report = run_agent(
        AgentOptions(
            exports.raw,
            more_exports=(exports.offload, exports.int8),
            server=f"127.0.0.1:{server.port}",
            frames=300,
            fps=200,
            log_interval_s=0,
            client=ClientOptions(window=4, max_message_bytes=6000),
            adapt=AdaptOptions(probe_s=0.1, window_s=5.0),
        )
    )
    s = report.summary
    failed = [f for f in report.to_json()["frames"] if f.get("error")]
    assert s["lost"] == 0 and s["completed"] + s["failed"] == 300
    assert {f["split"] for f in failed} <= {"tiny-raw", "tiny-offload"}
    assert 1 <= s["failed"] <= 4, [f["error"] for f in failed]  # one try each, maybe one retry
    assert all("message limit" in f["error"] for f in failed)
    options = {o["name"]: o for o in report.info["adapt"]["options"]}
    assert options["tiny-int8"]["failures"] == 0 and report.info["adapt"]["current"] == "tiny-int8"


def test_exports_of_different_models_are_refused(exports: Exports, tmp_path: Path) -> None:
    from tests.server.tiny_tails import relu_mean

    other = relu_mean(tmp_path / "other")
    with pytest.raises(SplitpipeError, match="differ in their inputs"):
        run_agent(AgentOptions(exports.raw, more_exports=(other,), server="127.0.0.1:1", frames=1))
    with pytest.raises(SplitpipeError, match="different names"):
        run_agent(AgentOptions(exports.raw, more_exports=(exports.raw,), server="127.0.0.1:1", frames=1))


def _remote_and_heavy_local(folder: Path) -> tuple[Path, Path]:
    """One function, y = max(x) per row, two ways: remote (head Identity, tail ReduceMax) and
    local with an expensive head (x multiplied by the identity matrix 16 times, then
    ReduceMax: the same numbers, a few ms of device work), so that remote is the faster choice."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    from tests.server.tiny_tails import OPSET, _sha256, _value_info, write_export

    n = 2000
    remote = write_export(
        folder / "remote",
        "max-remote",
        [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=1)],
        cut=[{"name": "x", "dtype": "float32", "shape": [None, n]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [None, 1]}],
    )
    nodes, last = [], "input_0"
    for i in range(16):
        nodes.append(helper.make_node("MatMul", [last, "I"], [f"m{i}"]))
        last = f"m{i}"
    nodes.append(helper.make_node("ReduceMax", [last], ["y"], axes=[1], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "heavy-local",
        [_value_info("input_0", "float32", [None, n])],
        [_value_info("y", "float32", [None, 1])],
        initializer=[numpy_helper.from_array(np.eye(n, dtype=np.float32), "I")],
    )
    local = folder / "local"
    local.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.save(model, str(local / "head.onnx"))
    manifest = json.loads((remote / "manifest.json").read_text())
    head = local / "head.onnx"
    manifest.update(
        name="max-local",
        split={"id": "local", "label": "all on the device"},
        cut=[],
        files={"head": {"path": "head.onnx", "sha256": _sha256(head), "bytes": head.stat().st_size}},
    )
    (local / "manifest.json").write_text(json.dumps(manifest))
    return remote, local


def test_frames_run_locally_while_the_server_is_down(tmp_path: Path) -> None:
    import threading

    from tests.edge.conftest import ServeProcess, free_port, wait_for

    remote, local = _remote_and_heavy_local(tmp_path)
    port = free_port()
    serve = ServeProcess([remote], port).start()
    results: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}

    def on_result(result: FrameResult) -> None:
        feed = next(iter(result.inputs.values()))
        results[result.record.id] = (str(result.record.split), feed.copy(), result.outputs["y"].copy())

    options = AgentOptions(
        remote,
        more_exports=(local,),
        server=f"127.0.0.1:{port}",
        frames=1500,
        fps=200,  # a camera's pace: frames do not queue behind each other
        log_interval_s=0,
        client=ClientOptions(window=4, backoff_initial_s=0.05, backoff_max_s=0.3),
    )
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(run_agent(options, on_result)), daemon=True)
    thread.start()
    try:
        # remote is faster: the agent settles on it (a stall of the test process early on, such as
        # a garbage collection, can send a few hundred frames local until the next probe)
        def settled() -> bool:
            latest = [results[i][0] for i in sorted(results)[-100:]]
            return len(results) >= 300 and latest.count("max-remote") >= 90

        wait_for(lambda: settled() or not thread.is_alive(), what="frames settled on the server")
        assert settled()
        serve.kill()
        down_at = len(results)
        wait_for(lambda: len(results) >= down_at + 100 or not thread.is_alive(), what="frames while down")
        during = sorted(results)[down_at + 20 : down_at + 100]
        serve.start()  # same port
        thread.join(90)
    finally:
        serve.stop()
    report = out[0]
    s = report.summary  # type: ignore[attr-defined]
    assert (s["captured"], s["completed"], s["lost"], s["failed"]) == (1500, 1500, 0, 0)
    assert all(results[i][0] == "max-local" for i in during)
    assert report.info["adapt"]["fallback_frames"] >= 80  # type: ignore[attr-defined]
    last = [results[i][0] for i in sorted(results)[-100:]]
    assert last.count("max-remote") >= 80  # back to the server once it is up
    for split, x, y in results.values():
        np.testing.assert_array_equal(y, x.max(axis=1, keepdims=True), err_msg=split)
    _check_plot(report.to_json(), tmp_path)  # type: ignore[attr-defined]


def _check_plot(data: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The report's picture: one colour per split with its frame count, a line per switch."""
    from collections import Counter

    import matplotlib.pyplot as plt

    from splitpipe.edge.plot import draw_report, plot_report

    fig = draw_report(data)
    latency = fig.axes[0]
    drawn = {c.get_label(): len(c.get_offsets()) for c in latency.collections}
    used = Counter(f["split"] for f in data["frames"] if f["e2e_ms"] is not None)
    assert drawn == {f"{name} ({n} frames)": n for name, n in used.items()}
    switches = [line for line in latency.lines if line.get_linestyle() == ":"]
    assert len(switches) == len(data["adapt"]["switches"])
    plt.close(fig)
    png = plot_report(data, tmp_path / "run.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frames_run_locally_until_the_server_comes_up(tmp_path: Path) -> None:
    import threading

    from tests.edge.conftest import ServeProcess, free_port, wait_for

    remote, local = _remote_and_heavy_local(tmp_path)
    port = free_port()
    splits: dict[int, str] = {}

    def on_result(result: FrameResult) -> None:
        splits[result.record.id] = str(result.record.split)

    options = AgentOptions(
        remote,
        more_exports=(local,),
        server=f"127.0.0.1:{port}",
        frames=1000,
        fps=200,
        log_interval_s=0,
        client=ClientOptions(window=4, backoff_initial_s=0.05, backoff_max_s=0.3),
    )
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(run_agent(options, on_result)), daemon=True)
    thread.start()
    serve = ServeProcess([remote], port)
    try:
        wait_for(lambda: len(splits) >= 100 or not thread.is_alive(), what="100 local frames")
        before = dict(splits)
        serve.start()
        thread.join(90)
    finally:
        serve.stop()
    report = out[0]
    s = report.summary  # type: ignore[attr-defined]
    assert (s["completed"], s["lost"], s["failed"]) == (1000, 0, 0)
    assert set(before.values()) == {"max-local"}
    last = [splits[i] for i in sorted(splits)[-100:]]
    assert last.count("max-remote") >= 80


def test_a_server_without_the_model_still_ends_the_run(tmp_path: Path, exports: Exports) -> None:
    remote, local = _remote_and_heavy_local(tmp_path)
    with (
        ServerThread([exports.raw]) as server,
        pytest.raises(SplitpipeError, match="unknown model 'max-remote'"),
    ):
        run_agent(
            AgentOptions(
                remote, more_exports=(local,), server=f"127.0.0.1:{server.port}", fps=50, log_interval_s=0
            )
        )


def test_log_lines_and_compiled_heads_name_every_export(
    exports: Exports,
    server: ServerThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The interval log line is the adaptive run's (with the frames of each split), not the first
    export's; the final lines name each export whose compiled head ran."""
    import logging
    import shutil

    from splitpipe import cli
    from splitpipe.partition.compile import CompileOptions, compile_export

    dirs = [Path(shutil.copytree(d, tmp_path / d.name)) for d in (exports.raw, exports.local)]
    for d in dirs:
        compile_export(d, CompileOptions(part="head", target="ort", rounds=1, frames=8, eval_frames=8))
    args = [
        "agent",
        *map(str, dirs),
        "--server",
        f"127.0.0.1:{server.port}",
        "--frames",
        "150",
        "--fps",
        "300",
    ]
    with caplog.at_level(logging.INFO, "splitpipe.edge.agent"):
        assert cli.main([*args, "--log-interval", "0.1"]) == 0
    lines = [r.getMessage() for r in caplog.records if " fps, " in r.getMessage()]
    assert lines and all(line.startswith("adaptive: ") for line in lines), lines
    assert all(", frames by split: " in line for line in lines if not line.startswith("adaptive: 0.0 fps"))
    out = capsys.readouterr().out.splitlines()
    heads = [line for line in out if line.startswith("head: ")]
    assert heads == [
        "head: tiny-raw runs the compiled head.ort.onnx (ort, fp32)",
        "head: tiny-local runs the compiled head.ort.onnx (ort, fp32)",
    ], out
