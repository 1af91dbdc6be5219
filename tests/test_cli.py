"""The command line: user errors are one line and exit code 2; the main flows run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["tests.fixtures.models:tiny_net", "--input-shape", "1,3,32,32"]
BOTTLENECK = [
    "tests.fixtures.models:digit_net",
    "--input-shape",
    "1,1,16,16",
    "--at",
    "layer1",
    "--data",
    "digits",
]


def splitpipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpipe", *args],
        capture_output=True,
        text=True,
        cwd=cwd or Path(__file__).resolve().parents[1],
        timeout=600,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["plan", "resnet50"], ["unrecognised model spec 'resnet50'", "torchvision:NAME"]),
        (["plan", "torchvision:resnet51"], ["unknown torchvision model 'resnet51'", "resnet50"]),
        (["plan", "nowhere/model.onnx"], ["ONNX file not found"]),
        (["plan", *TINY[:1], "--input-shape", "1,3,x"], ["invalid input shape"]),
        (["plan", *TINY[:1], "--input-shape", "1,7,32,32"], ["does not accept input shape [1, 7, 32, 32]"]),
        (["plan", *TINY, "--device", "jetson-xavier"], ["unknown device 'jetson-xavier'", "rpi4", "local"]),
        (
            ["plan", *TINY, "--objectives", "latency,speed"],
            ["unknown objective 'speed'", "latency, energy, bytes, memory"],
        ),
        (["plan", *TINY, "--link", "fast"], ["invalid link 'fast'"]),
        (["plan", *TINY, "--profile", "guess"], ["invalid choice: 'guess'"]),
        (["plan"], ["no model given"]),
        (
            ["export", *TINY, "--split", "42", "--out", "/tmp/never-written"],
            ["unknown split id 42; accepted: 0, 1"],
        ),
        (["export", *TINY, "--out", "/tmp/x"], ["--split"]),
        (
            ["export", *TINY, "--split", "1", "--codec", "auto", "--out", "/tmp/never-written"],
            ["--codec auto chooses per split when planning", "--plan PLAN.json"],
        ),
        (["plan", "--from", "/nonexistent/plan.json"], ["plan file not found"]),
        # output paths are checked before planning
        (
            ["plan", *TINY, "--json", "/nonexistent/plan.json"],
            ["--json /nonexistent/plan.json: folder /nonexistent"],
        ),
        (
            ["plan", *TINY, "--plot", "/tmp"],
            ["--plot /tmp is a directory; give a file name such as /tmp/pareto.png"],
        ),
        (["nosuchcommand"], ["invalid choice"]),
        # plot formats and folders that are files are refused before planning
        (
            ["plan", *TINY, "--plot", "/tmp/front.txt"],
            ["--plot /tmp/front.txt: give a file ending in .png, .svg, .pdf"],
        ),
        (["plan", *TINY, "--json", f"{__file__}/plan.json"], [f"{__file__} is a file, not a folder"]),
        (
            ["export", *TINY, "--split", "1", "--out", f"{__file__}/out"],
            [f"{__file__} is a file, not a folder"],
        ),
        (["plan", "/tmp"], ["/tmp is a directory; give the path of an .onnx file"]),
        # outputs that cannot be written (/proc takes no new files, whoever runs this) are refused
        # before any planning, training or measuring
        (
            ["plan", *TINY, "--json", "/proc/splitpipe-plan.json"],
            ["--json /proc/splitpipe-plan.json: cannot write in /proc"],
        ),
        (
            ["export", *TINY, "--split", "1", "--out", "/proc/splitpipe-test/out"],
            ["--out /proc/splitpipe-test/out: cannot write in /proc"],
        ),
        (
            ["bottleneck", *BOTTLENECK, "--out", "/proc/splitpipe-test/bf"],
            ["--out /proc/splitpipe-test/bf: cannot write in /proc"],
        ),
        (
            ["triton-repo", "nowhere", "--repo", "/proc/splitpipe-test/repo"],
            ["--repo /proc/splitpipe-test/repo: cannot write in /proc"],
        ),
        (
            ["profile", "--quick", "--out", "/proc/splitpipe-device.json"],
            ["--out /proc/splitpipe-device.json: cannot write in /proc"],
        ),
    ],
)
def test_user_errors_are_one_line(args: list[str], fragments: list[str]) -> None:
    assert_user_error(splitpipe(*args), *fragments)


def test_export_takes_the_codec_of_the_plan(tmp_path: Path) -> None:
    plan_json, out = tmp_path / "plan.json", tmp_path / "export"
    proc = splitpipe("plan", *TINY, "--analytic", "--codec", "int8", "--json", str(plan_json))
    assert proc.returncode == 0, proc.stderr
    split = json.loads(plan_json.read_text())["candidates"][0]["id"]
    proc = splitpipe("export", "--plan", str(plan_json), "--split", str(split), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["codec"]["name"] == "int8"


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01\x02 definitely not protobuf")
    assert_user_error(splitpipe("plan", str(bad)), "is not a valid ONNX model")


def test_plan_json_plot_and_export(tmp_path: Path) -> None:
    plan_json, png = tmp_path / "plan.json", tmp_path / "front.png"
    proc = splitpipe("plan", *TINY, "--link", "5mbit,40ms", "--json", str(plan_json), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "local" in proc.stdout and "offload" in proc.stdout and "Best per objective" in proc.stdout
    assert "Codec times on the " in " ".join(proc.stdout.split())  # which codec fast path was measured
    plan = json.loads(plan_json.read_text())
    assert plan["link"] == {"bandwidth_mbps": 5.0, "rtt_ms": 40.0}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = plan["candidates"][-1]["id"]
    out = tmp_path / "export"
    proc = splitpipe("export", "--plan", str(plan_json), "--split", str(split), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "max relative diff" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["id"] == split
    assert manifest["predictions"]["e2e_ms"] == pytest.approx(plan["candidates"][-1]["e2e_ms"])
    # the plan can be re-run from its JSON
    again = splitpipe("plan", "--from", str(plan_json))
    assert again.returncode == 0, again.stderr


def test_flags_a_stored_request_would_ignore_are_refused(tmp_path: Path) -> None:
    plan_json = tmp_path / "plan.json"
    assert splitpipe("plan", *TINY, "--analytic", "--json", str(plan_json)).returncode == 0
    assert_user_error(
        splitpipe("plan", "--from", str(plan_json), "--link", "5mbit,40ms", "torchvision:resnet18"),
        "--from re-runs the request stored in",
        "MODEL, --link would be ignored",
    )
    assert_user_error(  # a flag of two names is named by both (--analytic sets --profile)
        splitpipe("plan", "--from", str(plan_json), "--analytic"), "--profile/--analytic would be ignored"
    )
    assert_user_error(
        splitpipe(
            "export",
            "--plan",
            str(plan_json),
            "--split",
            "1",
            "--device",
            "rpi4",
            "--out",
            str(tmp_path / "x"),
        ),
        "--plan takes the model, link, device and server of",
        "--device would be ignored",
    )
    assert not (tmp_path / "x").exists()


def test_a_plan_of_an_onnx_file_works_from_another_folder(tmp_path: Path) -> None:
    from tests.server.tiny_tails import relu_mean

    model = relu_mean(tmp_path / "m") / "tail.onnx"
    (tmp_path / "a").mkdir()
    proc = splitpipe(
        "plan",
        "../m/tail.onnx",
        "--input-shape",
        "2,4,3,3",
        "--analytic",
        "--json",
        "plan.json",
        cwd=tmp_path / "a",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["request"]["model"] == str(model.resolve())
    again = splitpipe("plan", "--from", str(tmp_path / "a" / "plan.json"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
