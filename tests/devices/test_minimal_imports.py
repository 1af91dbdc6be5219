"""The agent's side of splitpipe runs with only numpy, onnxruntime, grpcio, protobuf and psutil.

A subprocess installs an import blocker (a sys.meta_path finder that refuses the heavy and
optional packages) and then imports the device-side packages, lists runners and meters,
measures a quick profile (the micro-benchmarks need no ``onnx``) and runs ``splitpipe devices``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = [
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "tensorrt",
    "ray",
    "matplotlib",
    "rich",
    "zstandard",
    "lz4",
    "numba",
    "PIL",
    "cv2",
    "pynvml",
]
#: imported if their package exists yet (others write them in parallel)
PACKAGES = [
    "splitpipe",
    "splitpipe.devices.runtimes",
    "splitpipe.devices.meters",
    "splitpipe.kernels",
    "splitpipe.edge",
]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = set(json.loads(sys.argv[1]))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: not installed on a device")
            return None

    sys.meta_path.insert(0, Blocker())
    assert not BLOCKED & set(sys.modules), sorted(BLOCKED & set(sys.modules))
    import importlib, io, contextlib
    report = {"imported": []}
    for name in json.loads(sys.argv[2]):
        importlib.import_module(name)
        report["imported"].append(name)

    from splitpipe.devices.runtimes import available_runners, create_runner
    from splitpipe.devices.meters import detect_meter, available_meters
    from splitpipe.devices.microbench import profile_this_machine
    report["runners"] = available_runners()
    report["meters"] = available_meters()
    meter = detect_meter()
    meter.start()
    sample = meter.stop()
    report["meter"] = {"source": sample.source, "measured": sample.measured}
    profile = profile_this_machine(quick=True)
    report["profile_classes"] = sorted(profile.measured_gflops)

    import splitpipe.cli as cli
    cli.COMMANDS = ["devices", "profile"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["devices", "--json"])
    report["devices_exit"] = code
    report["devices"] = json.loads(out.getvalue())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["devices"])  # the plain-text tables, rich being blocked
    report["devices_text"] = out.getvalue()
    report["leaked"] = sorted(BLOCKED & {m.split(".")[0] for m in sys.modules})
    print(json.dumps(report))
    """
)


def test_device_side_imports_without_heavy_packages(tmp_path: Path) -> None:
    present = [p for p in PACKAGES if (REPO / p.replace(".", "/") / "__init__.py").is_file()]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), json.dumps(present)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "SPLITPIPE_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)},
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported"] == present
    assert report["leaked"] == []
    assert report["runners"]["ort"] is None
    assert "blocked" in report["runners"]["torch"] and "blocked" in report["runners"]["trt"]
    assert "pynvml" in report["meters"]["nvml"]
    assert report["meter"] == {"source": "estimated:generic", "measured": False}
    assert report["profile_classes"] == sorted(["conv", "dwconv", "matmul", "elementwise", "pool"])
    assert report["devices_exit"] == 0 and len(report["devices"]["profiles"]) >= 7
    assert "Runtimes on this machine" in report["devices_text"] and "ESTIMATED" in report["devices_text"]
