"""The compiled kernels built for aarch64 (Jetson, Raspberry Pi) give the same bytes as the x86-64
build, which the other tests check against the numpy references.

Both builds of tests/kernels/cquant_harness.c run every kernel (range, scale rule, codes and
dequantized values per tensor and per channel, bit packing, float16) on the same inputs; the
aarch64 one runs under qemu. Needs Debian's ``gcc-aarch64-linux-gnu`` and ``qemu-user-static``
(``apt install gcc-aarch64-linux-gnu qemu-user-static``); skipped without them.
"""

from __future__ import annotations

import platform
import shutil
import struct
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "splitpipe" / "kernels"
CROSS, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static")

pytestmark = [
    pytest.mark.skipif(
        platform.machine() != "x86_64", reason="compares an aarch64 build with this x86-64 one"
    ),
    pytest.mark.skipif(
        CROSS is None or QEMU is None or shutil.which("gcc") is None,
        reason="needs gcc, aarch64-linux-gnu-gcc and qemu-aarch64-static",
    ),
]


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 16 * 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return {
        "normal": rng.standard_normal(16 * 97).astype(np.float32) * np.float32(100),
        "relu": np.maximum(rng.standard_normal(16 * 49), 0).astype(np.float32) * np.float32(3),
        "ties": (rng.integers(-600, 600, 16 * 64) / np.float32(8)).astype(np.float32),  # x / scale on .5
        "denormal": (rng.standard_normal(16 * 16) * 1e-39).astype(np.float32),
        "constant": np.full(16 * 8, -2.5, np.float32),
        "bit patterns": np.where(np.isfinite(bits), bits, np.float32(1)).astype(np.float32),
        "with inf": np.array([1.0, np.inf] * 8, np.float32),
    }


def test_aarch64_build_gives_the_same_bytes(tmp_path: Path) -> None:
    assert CROSS is not None and QEMU is not None
    flags = ["-O3", "-fno-trapping-math", "-fopenmp-simd", "-w", "-static", f"-I{KERNELS}"]
    flags += [f"-I{sysconfig.get_paths()['include']}", "-Wl,--unresolved-symbols=ignore-all"]
    builds = {"x86": tmp_path / "h_x86", "arm": tmp_path / "h_arm"}
    for compiler, out in (("gcc", builds["x86"]), (CROSS, builds["arm"])):
        subprocess.run([compiler, *flags, str(HERE / "cquant_harness.c"), "-o", str(out)], check=True)
    for name, x in _inputs().items():
        src = tmp_path / "in.bin"
        src.write_bytes(struct.pack("<q", x.size) + x.tobytes())
        outs = {}
        for arch, exe in builds.items():
            dst = tmp_path / f"{arch}.out"
            cmd = [str(exe), str(src), str(dst)] if arch == "x86" else [QEMU, str(exe), str(src), str(dst)]
            subprocess.run(cmd, check=True, timeout=120)
            outs[arch] = dst.read_bytes()
        assert len(outs["x86"]) > 4 * x.size, name  # the fp16 results at least
        assert outs["arm"] == outs["x86"], name
