"""``splitpipe bench sweep``: a small sweep end to end on the real testbed (root only), and the
pieces that need no root: options, the summary, the table and the plots of a recorded sweep."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.testbed.sweep import (
    SWEEP_FORMAT,
    Sweep,
    SweepOptions,
    image_input,
    measured_figures,
    parse_links,
    steady_fps,
    write_pictures,
)
from splitpipe.testbed.sweep_report import (
    goodput,
    load_sweep,
    plot_sweep,
    print_sweep,
    summarize,
    summary_lines,
)

_RUN = f"s{os.getpid() % 100_000}"
TINY = ("tests.fixtures.models:tiny_net", "--input-shape", "1,3,32,32")
PNG = b"\x89PNG\r\n\x1a\n"


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpipe", "bench", *args], capture_output=True, text=True, timeout=timeout
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr


def _gone(name: str) -> bool:
    from splitpipe.testbed import Testbed
    from splitpipe.testbed.cgroups import CpuGroup, detect
    from splitpipe.testbed.link import netns_exists

    tb = Testbed(name=name)
    layout = detect()
    return (
        not any(netns_exists(tb.names.netns(s)) for s in ("device", "server"))
        and not any(CpuGroup(layout, tb.names.cgroup(s)).exists() for s in ("device", "server"))
        and not tb.names.state_dir.exists()
    )


# ------------------------------------------------------------------------- on the testbed (root)
@pytest.mark.testbed
def test_small_sweep_end_to_end(tmp_path: Path) -> None:
    """tiny_net at two links, a few frames: every run measured and predicted, plots drawn, testbed gone."""
    name = f"{_RUN}e"
    out = tmp_path / "sweep"
    proc = _cli(
        "sweep", *TINY, "--links", "5mbit,20mbit", "--rtt", "10ms", "--device-cpu", "0.5",
        "--frames", "4", "--name", name, "--port", "8301", "--out", str(out),
        "--pipelined", "3", "--run-seconds", "0.5", "--max-error", "0.05",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _gone(name)
    data = load_sweep(out / "sweep.json")
    assert data["format"] == SWEEP_FORMAT and data["pictures"] is True
    assert data["command"].startswith("splitpipe bench sweep tests.fixtures.models:tiny_net")
    assert [x["rate_set_mbit"] for x in data["links"]] == [5.0, 20.0]
    keys = set(data["exports"])
    assert {"local", "offload-raw", "offload-jpeg"} <= keys and any(k.startswith("s") for k in keys)
    for link in data["links"]:
        # the plan was made for the link as measured, not as set
        assert link["plan"]["link"]["bandwidth_mbps"] == pytest.approx(
            link["link_planned"]["uplink_mbit"], rel=1e-3
        )
        assert link["link_run"]["measured"] is True
        assert {r["key"] for r in link["runs"]} == keys
        assert link["picked"] in keys
        for run in link["runs"]:
            assert "failure" not in run, run
            m, p = run["measured"], run["predicted"]
            assert m["measured"] is True and p["estimated"] is True
            assert m["e2e_ms"]["n"] == 4 and m["completed"] == 4 and m["lost"] == 0
            assert 0 < m["e2e_ms"]["p50"] <= m["e2e_ms"]["p90"]
            assert p["e2e_ms"] > 0 and run["error"] == pytest.approx(
                (p["e2e_ms"] - m["e2e_ms"]["p50"]) / m["e2e_ms"]["p50"]
            )
            if run["kind"] != "local":
                # every remote frame crossed the link: at least one round trip
                assert m["e2e_ms"]["min"] >= link["link_run"]["rtt_min_ms"] * 0.9
            piped = run["pipelined"]
            assert piped["window"] == 3 and piped["frames"] >= 12 and piped["predicted_fps"] > 0
            assert piped["measured_fps"] > 0 and piped["error"] == pytest.approx(
                (piped["predicted_fps"] - piped["measured_fps"]) / piped["measured_fps"]
            )
            if run["kind"] != "local":
                # three frames in flight hide the round trip that sequential frames wait for
                assert piped["measured_fps"] > 1.3 * m["fps"], (run["key"], piped, m["fps"])
        by_key = {r["key"]: r for r in link["runs"]}
        # JPEG sends far fewer bytes than the raw input; local sends nothing
        assert (
            by_key["offload-jpeg"]["measured"]["bytes_per_frame"]
            < by_key["offload-raw"]["measured"]["bytes_per_frame"]
        )
        assert by_key["local"]["measured"]["bytes_per_frame"] == 0
    s = data["summary"]
    assert s["prediction_error"]["n"] == 2 * len(keys)
    assert len(s["links"]) == 2 and all("best" in x for x in s["links"])
    for png in ("sweep-latency.png", "sweep-predicted-vs-measured.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert not (out / "exports").exists()  # removed unless --keep-exports
    assert "prediction error over" in proc.stdout
    device = data["overhead"]["pipelined"]
    assert device["device_ms"] >= 0 and device["interval_ms"] > 0
    for link in data["links"]:
        plan = json.loads(Path(link["plan"]["file"]).read_text())
        assert plan["request"]["device_overhead_ms"] == device["device_ms"]
    t = s["throughput"]
    assert t["n"] == 2 * len(keys) and len(t["links"]) == 2
    assert all(x["picked"] in keys and x["best"] in keys for x in t["links"])
    assert "throughput prediction error over" in proc.stdout and "fps, 3 in flight" in proc.stdout


@pytest.mark.testbed
def test_testbed_is_torn_down_when_the_sweep_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{_RUN}f"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected failure after the testbed came up")

    monkeypatch.setattr(Sweep, "_start_plan", broken)
    options = SweepOptions(
        model="tests.fixtures.models:tiny_net", input_shape=(1, 3, 32, 32), links_mbit=(10.0,),
        name=name, out=tmp_path / "out",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="injected failure"):
        Sweep(options, log=lambda line: None).run()
    assert _gone(name)


# ------------------------------------------------------------------------- no root needed
def test_parse_links() -> None:
    assert parse_links("2mbit,10mbit, 50mbit") == (2.0, 10.0, 50.0)
    assert parse_links("500kbit,1gbit") == (0.5, 1000.0)
    with pytest.raises(SplitpipeError, match="bad link rate '10mbps'"):
        parse_links("2mbit,10mbps")
    with pytest.raises(SplitpipeError, match="accepted: comma-separated rates"):
        parse_links(" , ")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"links_mbit": ()}, "no link rates given"),
        ({"links_mbit": (2.0, 2.0)}, "link rates listed twice"),
        ({"objectives": ("bytes",)}, "must include latency"),
        ({"objectives": ("latency", "speed")}, "unknown objective 'speed'"),
        ({"frames": 0}, "--frames must be at least 1"),
        ({"min_frames": 9, "max_frames": 3}, "1 <= min <= max"),
        ({"run_seconds": 0}, "seconds per run must be positive"),
        ({"images": Path("/nonexistent/pictures")}, "images directory not found"),
        ({"out": Path(__file__)}, "is a file; give a directory for the sweep's results"),
        ({"max_error": -1.0}, "--max-error must be a non-negative number"),
        ({"codec": "int8", "max_error": 0.02}, "--max-error chooses a codec per split with --codec auto"),
    ],
)
def test_bad_sweep_options(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SplitpipeError, match=message):
        SweepOptions(model="torchvision:resnet50", **fields)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("sweep", "torchvision:resnet50", "--links", "2mbit,fast"), "bad link rate 'fast'"),
        (
            ("sweep", "torchvision:resnet50", "--links", "20000mbit"),
            "link rate 20000.0 Mbit/s is out of range",
        ),
        (("sweep", "torchvision:resnet50", "--rtt", "soon"), "bad duration 'soon'"),
        (("sweep", "torchvision:resnet50", "--device-cpu", "3"), "device CPU share 3.0 is out of range"),
        (("sweep", "torchvision:resnet50", "--codec", "int7"), "int7"),
        (("sweep", "torchvision:resnet50", "--objectives", "bytes"), "must include latency"),
        (("sweep", "torchvision:resnet50", "--frames", "0"), "--frames must be at least 1"),
        (("sweep", "torchvision:resnet50", "--name", "Bad/Name"), "bad testbed name 'Bad/Name'"),
        (("report", "/nonexistent/sweep.json"), "sweep file not found"),
        (
            ("report", "/nonexistent/sweep.json", "--plots", __file__),
            "is a file; give a directory for the plots",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], text: str) -> None:
    _one_line_error(_cli(*args, timeout=60), text)


def test_without_root_one_line_and_exit_2() -> None:
    import shutil

    argv = [sys.executable, "-m", "splitpipe", "bench", "sweep", *TINY, "--links", "5mbit"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"}
    )
    _one_line_error(proc, "the testbed needs root")


def test_report_refuses_other_json(tmp_path: Path) -> None:
    other = tmp_path / "plan.json"
    other.write_text(json.dumps({"format": "splitpipe-plan", "version": 1}))
    _one_line_error(_cli("report", str(other), timeout=60), "not a splitpipe sweep JSON")
    other.write_text("{nope")
    _one_line_error(_cli("report", str(other), timeout=60), "not a readable sweep JSON")
    other.write_text(json.dumps({"format": SWEEP_FORMAT, "version": 99}))
    _one_line_error(_cli("report", str(other), timeout=60), "version 99 is not supported")


def test_pictures_are_photographs_at_the_input_size(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    folder = write_pictures(tmp_path / "pics", 40, 30, count=4)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["00.bmp", "01.bmp", "02.bmp", "03.bmp"]
    arrays = [np.asarray(Image.open(f)) for f in files]
    assert all(a.shape == (40, 30, 3) for a in arrays)
    # real pictures, not noise: neighbouring pixels are alike; and the crops differ
    for a in arrays:
        assert np.abs(np.diff(a.astype(int), axis=1)).mean() < 40
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])
    assert image_input((1, 3, 224, 224), "float32") and image_input((1, 1, 28, 28), "float16")
    assert not image_input((1, 3, 224, 224), "uint8") and not image_input((1, 16), "float32")


def _frame(i: int, e2e: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": i, "e2e_ms": e2e, "capture_ms": 1.0, "head_ms": 2.0, "encode_ms": 0.5, "rtt_ms": e2e - 3.5,
        "network_ms": e2e - 13.5, "server": {"queue_us": 5, "decode_us": 1000, "tail_us": 8000, "batch_size": 1,
        "total_us": 10_000}, "tx_bytes": 1000 + i, "payload_bytes": 900, **extra,
    }  # fmt: skip


def test_measured_figures_leave_out_the_warm_up_and_failed_frames() -> None:
    frames = [_frame(0, 500.0)] + [_frame(i, 100.0 + i) for i in range(1, 11)]
    frames[5]["error"] = "refused"
    report = {"frames": frames[::-1], "summary": {"lost": 0, "resent": 0, "bound": None}}
    m = measured_figures(report, warmup=1)
    assert m["completed"] == 9 and m["failed"] == 1 and m["measured"] is True
    kept = [100.0 + i for i in range(1, 11) if i != 5]
    assert m["e2e_ms"]["n"] == 9 and m["e2e_ms"]["max"] == max(kept)  # frame 0 (500 ms) left out
    assert m["e2e_ms"]["p50"] == pytest.approx(106.0)
    assert m["fps"] == pytest.approx(9 / (sum(kept) / 1e3))
    assert m["stages_p50_ms"]["server_total"] == 10.0 and m["stages_p50_ms"]["server_tail"] == 8.0


def test_steady_fps_leaves_out_the_start_and_counts_results() -> None:
    # results every 10 ms after a slow start; frame 3 failed
    frames = [{"id": i, "captured_s": 1.0 + 0.01 * i, "e2e_ms": 500.0 if i < 2 else 30.0} for i in range(12)]
    frames[3]["error"] = "refused"
    report = {"frames": frames[::-1]}
    assert steady_fps(report, skip=2) == pytest.approx(8 / 0.09)
    assert steady_fps(report, skip=11) is None


def test_throughput_summary() -> None:
    data = _sweep()
    data["options"]["pipelined_window"] = 4
    for link in data["links"]:
        link["plan"] = {"best": {"latency": 3, "throughput": 3}}
        for r in link["runs"]:
            fps = 2.5 * r["measured"]["fps"]
            r["pipelined"] = {"window": 4, "frames": 40, "predicted_fps": 1.1 * fps, "measured_fps": fps,
                              "error": 0.1, "predicted_stage_ms": 1.0}  # fmt: skip
    data["links"][0]["runs"][0]["pipelined"]["error"] = -0.3
    t = summarize(data)["throughput"]
    assert t["n"] == 6 and t["median_abs"] == pytest.approx(0.1) and t["max_abs"] == pytest.approx(0.3)
    slow = t["links"][0]
    assert slow["best"] == "s3" and slow["picked"] == "s3" and slow["picked_of_best"] == 1.0
    assert slow["speedup_over_sequential"] == pytest.approx({"offload-raw": 2.5, "s3": 2.5})
    lines = "\n".join(summary_lines(summarize(data)))
    assert "throughput prediction error over 6 pipelined runs: median 10.0%" in lines
    assert "2 Mbit/s, 4 frames in flight: best s3" in lines


def _run(key: str, kind: str, predicted: float, measured: float, **extra: Any) -> dict[str, Any]:
    return {
        "key": key, "kind": kind, "split": key, "label": key, "codec": "raw", "frames": 10, "warmup_frames": 1,
        "predicted": {"e2e_ms": predicted, "tx_ms": extra.pop("tx_ms", 0.0), "reply_ms": 0.0, "reply_bytes": 4000,
                      "estimated": True},
        "measured": {"e2e_ms": {"p50": measured, "p90": measured * 1.1, "n": 10, "min": measured},
                     "fps": 1e3 / measured, "bytes_per_frame": extra.pop("bytes", 0.0),
                     "network_ms": extra.pop("network", None), "measured": True},
        "error": (predicted - measured) / measured,
        "in_plan": {"pareto": True, "picked": extra.pop("picked", False)},
        **extra,
    }  # fmt: skip


def _sweep() -> dict[str, Any]:
    """A sweep document with round numbers, to check the summary's arithmetic."""
    link = {"uplink_mbit": 1.9, "rtt_ms": 20.0, "rtt_min_ms": 19.8, "measured": True}
    slow = {
        "rate_set_mbit": 2.0, "link_planned": link, "link_run": link, "picked": "s3",
        "runs": [
            _run("local", "local", 400.0, 500.0),                                   # error -0.2
            _run("offload-raw", "offload-raw", 2600.0, 2500.0, tx_ms=2500.0,
                 bytes=596_000.0, network={"p50": 2420.0}),                       # +0.04
            _run("s3", "split", 210.0, 200.0, picked=True),                       # +0.05
        ],
    }  # fmt: skip
    fast = {
        "rate_set_mbit": 50.0, "link_planned": dict(link, uplink_mbit=47.8), "link_run": dict(link, uplink_mbit=47.8),
        "picked": "s3",
        "runs": [
            _run("local", "local", 400.0, 400.0),                                   # 0
            _run("offload-raw", "offload-raw", 190.0, 200.0, tx_ms=100.0),        # -0.05
            _run("s3", "split", 99.0, 110.0, picked=True),                        # -0.1
        ],
    }  # fmt: skip
    return {
        "format": SWEEP_FORMAT, "version": 1, "model": "torchvision:resnet50", "input_shape": [1, 3, 224, 224],
        "options": {"device_cpu": 0.25, "rtt_ms": 20.0, "codec": "auto", "max_error": None},
        "side_plans": {"device": {"whole_model_ms": 400.0}, "server": {"whole_model_ms": 80.0}},
        "links": [slow, fast],
    }  # fmt: skip


def test_summary_arithmetic() -> None:
    data = _sweep()
    s = summarize(data)
    e = s["prediction_error"]
    errors = sorted(abs(r["error"]) for link in data["links"] for r in link["runs"])
    assert e["n"] == 6 and e["median_abs"] == pytest.approx((errors[2] + errors[3]) / 2)
    assert e["max_abs"] == pytest.approx(0.2) and e["met"] is (
        e["median_abs"] <= 0.1 and e["p90_abs"] <= 0.25
    )
    slow, fast = s["links"]
    assert slow["best"] == "s3" and slow["picked_within_target"] is True
    assert slow["speedup_vs_local"] == pytest.approx(2.5) and slow[
        "latency_reduction_vs_local"
    ] == pytest.approx(0.6)
    assert slow["speedup_vs_offload-raw"] == pytest.approx(12.5)
    assert fast["best"] == "s3" and fast["picked_p50_ms"] == 110.0 and fast["picked_over_best"] == 1.0
    assert e["median_abs"] == pytest.approx(0.05) and e["p90_abs"] == pytest.approx(0.15) and e["met"] is True
    # goodput: (request + reply) bytes over the time on the link beyond the round trip
    g = s["goodput_headline"]
    assert g["key"] == "offload-raw" and g["rate_set_mbit"] == 2.0
    assert g["transfer_ms"] == pytest.approx(2400.0)
    assert g["goodput_mbit"] == pytest.approx(600_000 * 8 / 2400 / 1e3)
    assert g["of_set_rate"] == pytest.approx(1.0) and g["of_measured_tcp"] == pytest.approx(1.0 / 0.95)
    lines = "\n".join(summary_lines(s))
    assert (
        "prediction error over 6 runs" in lines and "within 5 %" in lines and "goodput offload-raw" in lines
    )


def test_picked_not_within_five_percent_is_reported() -> None:
    data = _sweep()
    data["links"][1]["runs"][1]["measured"]["e2e_ms"]["p50"] = 100.0  # raw offload now beats the pick (110)
    s = summarize(data)
    fast = s["links"][1]
    assert fast["best"] == "offload-raw" and fast["picked_over_best"] == pytest.approx(1.1)
    assert fast["picked_within_target"] is False and s["picked_within_target_everywhere"] is False
    assert "NOT within 5 %" in "\n".join(summary_lines(s))


def test_failed_run_is_listed_not_counted() -> None:
    data = _sweep()
    run = data["links"][0]["runs"][2]
    del run["measured"], run["error"]
    run["failure"] = "the agent failed (exit code 2): boom"
    s = summarize(data)
    assert s["prediction_error"]["n"] == 5
    assert s["failures"] == ["2 Mbit/s s3: the agent failed (exit code 2): boom"]
    assert "picked_p50_ms" not in s["links"][0]
    assert "has no measurement" in "\n".join(summary_lines(s))


def test_goodput_needs_a_transfer() -> None:
    data = _sweep()
    link = data["links"][0]
    run = copy.deepcopy(link["runs"][1])
    run["measured"]["network_ms"] = {"p50": 15.0}  # less than the round trip: nothing to divide by
    assert goodput(link, run) is None


def test_table_and_plots_of_a_recorded_sweep(tmp_path: Path) -> None:
    from rich.console import Console

    data = _sweep()
    data["summary"] = summarize(data)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(data))
    loaded = load_sweep(path)
    console = Console(record=True, width=200)
    print_sweep(loaded, console)
    text = console.export_text()
    assert "2 Mbit/s set: measured 1.90 Mbit/s" in text and "offload-raw" in text and "picked" in text
    assert "~2600.0" in text and "+4.0%" in text
    pngs = plot_sweep(loaded, tmp_path / "plots")
    assert [p.name for p in pngs] == ["sweep-latency.png", "sweep-predicted-vs-measured.png"]
    assert all(p.read_bytes()[:8] == PNG for p in pngs)
    # the CLI does the same
    proc = _cli("report", str(path), "--plots", str(tmp_path / "cli"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "prediction error over 6 runs" in proc.stdout
    assert (tmp_path / "cli" / "sweep-latency.png").is_file()
