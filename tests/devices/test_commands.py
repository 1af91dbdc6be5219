"""``splitpipe devices`` and ``splitpipe profile`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import splitpipe.cli as cli
from splitpipe.devices.profile import load_profile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "devices"


@pytest.fixture(autouse=True)
def only_device_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Other commands are written in parallel; these tests need only ours, and a private cache."""
    monkeypatch.setattr(cli, "COMMANDS", ["devices", "profile"])
    monkeypatch.setenv("SPLITPIPE_CACHE_DIR", str(tmp_path / "cache"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_devices_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["devices", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    names = {p["name"] for p in data["profiles"]}
    assert {"jetson-nano", "rpi5", "gpu-server"} <= names
    assert data["meters"]["estimated"] == {"available": True, "reason": None}
    assert data["meters"]["rapl"]["available"] is False and data["meters"]["rapl"]["reason"]
    assert data["runtimes"]["ort"]["available"] is True
    assert data["detected_meter"]["measured"] is False  # no sensor on this machine
    assert "not measured yet" in data["local_profile"]["note"]
    if os.environ.get("SPLITPIPE_NO_CKERNELS", "") in ("", "0"):
        assert data["codec_kernels"] == {"compiled": True, "reason": None}  # built by make venv


def test_devices_says_when_the_codec_kernels_are_missing() -> None:
    import subprocess
    import sys

    env = {**os.environ, "SPLITPIPE_NO_CKERNELS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "splitpipe", "devices"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (
        "codec kernels: turned off by SPLITPIPE_NO_CKERNELS; the codecs use ONNX Runtime kernels"
        in out.stdout
    )


def test_devices_tables(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["devices"], capsys)
    assert code == 0
    for text in ("Device profiles", "jetson-orin-nano", "Power meters", "Runtimes", "ESTIMATED"):
        assert text in out


def test_devices_with_a_jetson_sysfs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "orin"
    shutil.copytree(FIXTURES / "sysfs" / "jetson-orin-nano", root)
    _code, out, _ = run(["devices", "--json", "--sysfs-root", str(root)], capsys)
    data = json.loads(out)
    assert data["meters"]["ina3221"]["available"]
    assert data["detected_meter"] == {"name": "ina3221", "source": "ina3221:VDD_IN", "measured": True}


def test_profile_writes_a_loadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "my-device.json"
    code, out, err = run(["profile", "--out", str(out_file), "--quick", "--base", "rpi4"], capsys)
    assert code == 0
    profile = load_profile(str(out_file))
    assert profile.name == "my-device" and profile.measured
    assert not profile.measured_power and profile.idle_w == load_profile("rpi4").idle_w
    assert "no meter on this machine" in err and "public figures of rpi4" in err
    assert "[1/" in err  # plain progress lines when stderr is not a terminal
    assert "GFLOP/s  (measured)" in out and "NOT measured" in out and str(out_file) in out
    if profile.boundary_us_per_mb:  # classes whose one-op models were all too noisy have no rate
        assert "us/MB (measured)" in out


def test_profile_with_a_meter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "orin"
    shutil.copytree(FIXTURES / "sysfs" / "jetson-orin-nano", root)
    out_file = tmp_path / "orin.json"
    argv = [
        "profile",
        "--out",
        str(out_file),
        "--quick",
        "--name",
        "orin-bench",
        "--sysfs-root",
        str(root),
        "--idle-seconds",
        "0.1",
        "--load-seconds",
        "0.1",
    ]
    code, _out, err = run(argv, capsys)
    assert code == 0, err
    profile = load_profile(str(out_file))
    assert profile.name == "orin-bench" and profile.measured_power
    assert "measured with ina3221:VDD_IN" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "--threads must be at least 1"),
        # ONNX Runtime would start them all and stall the device
        (["--threads", "100000"], "--threads must be at least 1 and at most"),
        (["--base", "jetson-tx9"], "unknown device 'jetson-tx9'; accepted: local"),
        (["--provider", "cuda"], "Requested provider was: cuda, but available providers are"),
        (["--meter", "rapl"], "meter 'rapl' is unavailable: no Intel RAPL zones"),
        (["--meter", "joulescope"], "unknown meter 'joulescope'; accepted: ina3221"),
        (["--idle-seconds", "-1"], "--idle-seconds must be positive"),
    ],
)
def test_profile_bad_input_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    out_file = tmp_path / "x.json"
    code, _, err = run(["profile", "--out", str(out_file), "--quick", *argv], capsys)
    assert code == 2
    assert err.startswith("splitpipe profile: error: ") and message in err
    assert err.count("\n") == 1
    assert not out_file.exists()


def test_profile_output_folder_must_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["profile", "--out", str(tmp_path / "no" / "x.json")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run(["profile", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err
