"""``splitpipe report`` and ``agent --plot``: a report file summarised and drawn, bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitpipe import cli
from splitpipe.edge.plot import _running_median, _series
from splitpipe.server import ServerThread
from tests.edge.conftest import Exports

PNG = b"\x89PNG\r\n\x1a\n"


def _stdout_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_agent_plot_and_report_of_its_file(
    exports: Exports, server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, png = tmp_path / "r.json", tmp_path / "run.png"
    args = ["agent", str(exports.int8), "--server", f"127.0.0.1:{server.port}", "--frames", "80"]
    assert cli.main([*args, "--log-interval", "0", "--report", str(report), "--plot", str(png)]) == 0
    printed = _stdout_lines(capsys)
    assert png.read_bytes()[:8] == PNG and printed[-1] == f"plot written to {png}"
    # the report command prints what the agent printed at the end of its run
    again = tmp_path / "again.svg"
    assert cli.main(["report", str(report), "--plot", str(again)]) == 0
    lines = _stdout_lines(capsys)
    summary = [line for line in printed if not line.startswith(("report written", "plot written", "head:"))]
    assert lines[:-1] == summary and lines[-1] == f"plot written to {again}"
    assert again.read_text().lstrip().startswith("<?xml")
    assert cli.main(["report", str(report), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(report.read_text())["summary"]


def test_bad_report_files_are_one_line(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    assert (
        cli.main(["agent", str(exports.local), "--frames", "5", "--log-interval", "0", "--report", str(good)])
        == 0
    )
    capsys.readouterr()
    data = json.loads(good.read_text())
    (tmp_path / "text.json").write_text("{ not json")
    (tmp_path / "plan.json").write_text(json.dumps({"format": "splitpipe-plan", "version": 1}))
    (tmp_path / "v9.json").write_text(json.dumps({**data, "version": 9}))
    (tmp_path / "frames.json").write_text(json.dumps({**data, "frames": [{"id": 0}]}))
    text = {**data, "frames": [{**data["frames"][0], "e2e_ms": "abc"}]}
    (tmp_path / "text-e2e.json").write_text(json.dumps(text))
    none_done = {**data, "frames": [{**f, "e2e_ms": None} for f in data["frames"]]}
    (tmp_path / "none.json").write_text(json.dumps(none_done))
    cases = {
        "report file not found": ["report", str(tmp_path / "missing.json")],
        "is not JSON": ["report", str(tmp_path / "text.json")],
        "is not a splitpipe agent report": ["report", str(tmp_path / "plan.json")],
        "report version 9 is not supported": ["report", str(tmp_path / "v9.json")],
        "a report needs 'frames' (each with captured_s)": ["report", str(tmp_path / "frames.json")],
        "frame 0 has e2e_ms 'abc'; a number or null": ["report", str(tmp_path / "text-e2e.json")],
        "the report holds no completed frame to plot": [
            "report", str(tmp_path / "none.json"), "--plot", str(tmp_path / "p.png"),
        ],
        "give a file ending in .png, .svg, .pdf": ["report", str(good), "--plot", str(tmp_path / "p.txt")],
        "is a directory": ["report", str(good), "--plot", str(tmp_path)],
        # checked before the run: the plot comes at its end
        f"folder {tmp_path / 'no'} does not exist": [
            "agent", str(exports.local), "--frames", "5", "--plot", str(tmp_path / "no" / "p.png"),
        ],
    }  # fmt: skip
    for expected, args in cases.items():
        assert cli.main(args) == 2, args
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and expected in err[0], (expected, err)
    assert not (tmp_path / "p.png").exists()


def test_stages_add_up_to_the_end_to_end_time() -> None:
    frames = [
        {"captured_s": 1.0, "e2e_ms": 10.0, "capture_ms": 0.5, "head_ms": 2.0, "encode_ms": 0.5,
         "network_ms": 3.0, "server": {"total_us": 4000}, "tx_bytes": 100},
        {"captured_s": 1.1, "e2e_ms": 4.0, "capture_ms": 0.5, "head_ms": 2.5, "encode_ms": 0.0,
         "network_ms": None, "server": {}, "tx_bytes": 0},
    ]  # fmt: skip
    s = _series(frames)
    np.testing.assert_allclose(s["device"], [3.0, 3.0])
    np.testing.assert_allclose(s["network"], [3.0, 0.0])
    np.testing.assert_allclose(s["server"], [4.0, 0.0])
    np.testing.assert_allclose(s["rest"], [0.0, 1.0])  # a local frame waited 1 ms for a worker
    np.testing.assert_allclose(s["device"] + s["network"] + s["server"] + s["rest"], s["e2e"])
    np.testing.assert_allclose(_running_median(np.array([1.0, 9.0, 2.0, 3.0, 8.0]), 3), [1, 2, 3, 3, 8])
