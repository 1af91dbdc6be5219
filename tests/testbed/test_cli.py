"""``splitpipe testbed`` from the command line, in a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

_RUN = f"c{os.getpid() % 100_000}"


def _cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "splitpipe", "testbed", *args]
    if user == "nobody":
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr


def test_without_root_one_line_and_exit_2() -> None:
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root")
        proc = _cli("up", "--name", _RUN, user="nobody")
    else:
        proc = _cli("up", "--name", _RUN)
    _one_line_error(proc, "the testbed needs root")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("up", "--rate", "10mbps"), "bad link rate '10mbps': 'mbps' is ambiguous"),
        (("up", "--rtt", "soon"), "bad duration 'soon'"),
        (("up", "--device-cpu", "2"), "device CPU share 2.0 is out of range; accepted: 0.01 to 1.0"),
        (("up", "--name", "No/Slash"), "bad testbed name 'No/Slash'"),
        (("set",), "nothing to set"),
        (("set", "--rate", "fast"), "bad link rate 'fast'"),
        (("up", "--json", "/tmp"), "--json /tmp is a directory; give a file name such as /tmp/testbed.json"),
        (("measure", "--json", "/tmp"), "--json /tmp is a directory"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_built(args: tuple[str, ...], text: str) -> None:
    _one_line_error(_cli(*args), text)


@pytest.mark.testbed
def test_lifecycle_up_run_set_status_down() -> None:
    name = f"{_RUN}l"
    try:
        up = _cli(
            "up", "--name", name, "--rate", "20mbit", "--rtt", "30ms", "--device-cpu", "50%", "--no-measure"
        )
        assert up.returncode == 0, up.stderr
        assert f"testbed {name} is up" in up.stdout
        assert "server listens on 10.77.0.2:8001; the device dials" in up.stdout

        assert _cli("run", "--name", name, "--", "sh", "-c", "exit 7").returncode == 7
        srv = _cli("run", "--name", name, "--side", "server", "--", "ip", "-br", "addr")
        assert srv.returncode == 0 and "10.77.0.2/30" in srv.stdout
        _one_line_error(_cli("run", "--name", name, "--", "no-such-command-here"), "command not found")

        st = _cli("status", "--name", name, "--json")
        assert st.returncode == 0
        status = json.loads(st.stdout)
        assert status["up"] and status["sides"]["device"]["quota_us"] == 5000

        assert _cli("set", "--name", name, "--rate", "2mbit", "--no-measure").returncode == 0
        status = json.loads(_cli("status", "--name", name, "--json").stdout)
        assert any("rate 2Mbit" in q for q in status["sides"]["device"]["qdiscs"])
    finally:
        down = _cli("down", "--name", name)
    assert down.returncode == 0 and "removed" in down.stdout
    assert _cli("status", "--name", name).returncode == 1
    again = _cli("down", "--name", name)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    _one_line_error(_cli("set", "--name", name, "--rate", "5mbit"), f"no testbed named '{name}' is up")
