"""What a user gets wrong on the command line, in an export or a report file: one line naming it,
exit code 2, before anything runs (real exports, a real server on loopback, ONNX Runtime)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from splitpipe import cli
from splitpipe.edge import AgentOptions, ClientOptions, parse_address, run_agent
from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerOptions, ServerThread
from tests.edge.conftest import MODEL, SPLIT, Exports


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:8001", "dns:///edge-server:8001", "edge server:8001", "[::1:8001"]
)
def test_a_server_address_with_a_scheme_or_path_is_refused_not_retried_for_ever(
    exports: Exports, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SplitpipeError, match="no scheme or path"):
        parse_address(address)
    args = ["agent", str(exports.raw), "--server", address, "--frames", "1", "--log-interval", "0"]
    assert cli.main(args) == 2
    line = _one_line(capsys)
    assert "HOST:PORT" in line and repr(address) in line, line
    assert (
        parse_address("[::1]:8001") == "[::1]:8001" and parse_address("edge-1.lan:8001") == "edge-1.lan:8001"
    )


def test_a_port_of_other_digits_is_refused_in_one_line() -> None:
    # '³' passes str.isdigit() but not int(): it gave a traceback
    for address in ("edge:8³", "edge:٨٠٠١"):
        with pytest.raises(SplitpipeError, match=r"port 1\.\.65535"):
            parse_address(address)


@pytest.mark.parametrize("value", [math.nan, -1.0])
def test_nan_and_negative_seconds_are_refused(exports: Exports, value: float) -> None:
    for field, flag in (("log_interval_s", "--log-interval"), ("drain_timeout_s", "--drain-timeout")):
        with pytest.raises(SplitpipeError, match=f"{flag} must be a number of seconds >= 0"):
            AgentOptions(exports.raw, **{field: value})  # type: ignore[arg-type]
    for field, flag in (("grace_s", "--grace"), ("log_interval_s", "--log-interval")):
        with pytest.raises(SplitpipeError, match=f"{flag} must be a number of seconds >= 0"):
            ServerOptions(**{field: value})  # type: ignore[arg-type]
    # infinity stays what it was: wait (or stay quiet) for ever
    assert AgentOptions(exports.raw, drain_timeout_s=math.inf).drain_timeout_s == math.inf
    assert ServerOptions(grace_s=math.inf).grace_s == math.inf


def test_a_manifest_whose_inputs_are_not_the_heads_is_one_line_before_any_frame(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = Path(shutil.copytree(exports.local, tmp_path / "export"))
    manifest = json.loads((export / "manifest.json").read_text())
    # an edited input shape: frames of it would be a terabyte each (numpy's error, a traceback)
    manifest["inputs"][0]["shape"] = [1, 3, 10**6, 10**6]
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["agent", str(export), "--frames", "1", "--log-interval", "0"]) == 2
    line = _one_line(capsys)
    assert f"export {export}: the manifest's inputs" in line and "do not match the head's" in line, line


def test_a_server_with_another_export_of_the_same_name_is_an_error_at_connect(
    exports: Exports, tmp_path: Path
) -> None:
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    # the same model, name and split made for another input size: the cut has other dimensions
    req = PlanRequest(model=MODEL, input_shape=(1, 3, 16, 16), profile_mode="analytic", calibration_samples=1)
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    other = export_split(
        req, SPLIT, tmp_path / "other", plan=plan, analysis=analysis, codec="raw", name="tiny-raw"
    ).out
    with ServerThread([other]) as running:
        options = AgentOptions(
            exports.raw,
            server=f"127.0.0.1:{running.port}",
            frames=3,
            log_interval_s=0,
            client=ClientOptions(connect_timeout_s=10),
        )
        with pytest.raises(
            SplitpipeError, match=r"of shape .* but this export sends .*serve the same export"
        ):
            run_agent(options)
        served = running.server.metrics.snapshot()["models"].get("tiny-raw", {})
        assert served.get("requests", 0) == 0  # refused at connect, before any frame


def test_a_report_whose_summary_was_edited_is_one_line(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    args = ["agent", str(exports.local), "--frames", "3", "--log-interval", "0", "--report", str(good)]
    assert cli.main(args) == 0
    capsys.readouterr()
    data = json.loads(good.read_text())
    for name, edit in {
        "latency": lambda s: s.update(latency="fast"),
        "fps": lambda s: s.update(fps="fast"),
        "missing": lambda s: s.pop("completed"),
    }.items():
        summary = dict(data["summary"])
        edit(summary)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**data, "summary": summary}))
        assert cli.main(["report", str(path)]) == 2
        line = _one_line(capsys)
        assert f"{path}: its summary is not one splitpipe agent writes" in line, line


def test_a_report_never_replaces_a_device_or_a_pipe(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report is renamed over the file it names: run as root with ``--report /dev/null``
    that replaced /dev/null with a regular file. A pipe stands in for the device here."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["agent", str(exports.local), "--frames", "2", "--log-interval", "0", "--report", str(fifo)]
    assert cli.main(args) == 2
    assert f"--report {fifo} is not a regular file" in _one_line(capsys)
    assert fifo.is_fifo()
    if Path("/proc/version").is_file():  # a folder nothing can be created in: found before the run
        args[-1] = "/proc/version"
        assert cli.main(args) == 2
        assert "--report /proc/version: cannot write in /proc" in _one_line(capsys)
    # the library's writer refuses too, whatever its caller checked
    report = run_agent(AgentOptions(exports.local, frames=1, log_interval_s=0))
    with pytest.raises(SplitpipeError, match="is not a regular file; not replacing it"):
        report.write(fifo)
    assert fifo.is_fifo() and not list(tmp_path.glob(".fifo*"))


def test_plot_and_report_of_one_name_are_refused_before_the_run(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["agent", str(exports.local), "--frames", "2", "--log-interval", "0"]
    assert cli.main([*args, "--plot", "run.png", "--report", "./run.png"]) == 2  # the plot would win
    assert "--plot and --report name the same file" in _one_line(capsys)
    assert not (tmp_path / "run.png").exists()


def test_a_capture_rate_too_slow_for_the_os_timeouts_is_refused(exports: Exports) -> None:
    # --fps 1e-300 waited 1e300 s: an OverflowError traceback from the head worker's wait
    with pytest.raises(SplitpipeError, match=r"--fps must be at least 1.16e-05 \(one frame a day\)"):
        AgentOptions(exports.local, fps=1e-300)
    assert AgentOptions(exports.local, fps=1 / 3600).fps == 1 / 3600  # one an hour is fine
