"""Fixtures for agent tests: real exports of a small model, the whole model as reference, a server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe.server import ServerOptions, ServerThread

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.fixtures.models:tiny_net"
SHAPE = (1, 3, 32, 32)
SPLIT = 3  # after the residual block: one 1x8x16x16 tensor crosses


@dataclass(frozen=True)
class Exports:
    raw: Path
    int8: Path
    local: Path
    offload: Path
    model: Path  # the whole model as ONNX (the reference)

    def reference(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The whole model's outputs on ``feed`` (ONNX Runtime, the exported model)."""
        import onnxruntime as ort

        key = str(self.model)
        if key not in _SESSIONS:
            _SESSIONS[key] = ort.InferenceSession(key, providers=["CPUExecutionProvider"])
        session = _SESSIONS[key]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed), strict=True))


_SESSIONS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    root = tmp_path_factory.mktemp("edge-exports")
    req = PlanRequest(model=MODEL, input_shape=SHAPE, profile_mode="analytic", calibration_samples=1)
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    out = {}
    for key, split, codec in (
        ("raw", SPLIT, "raw"),
        ("int8", SPLIT, "int8"),
        ("local", "local", None),
        ("offload", "offload", "raw"),
    ):
        out[key] = export_split(
            req, split, root / key, plan=plan, analysis=analysis, codec=codec, name=f"tiny-{key}"
        ).out
    model = analysis.graph.model_path
    assert model is not None
    return Exports(model=model, **out)


@pytest.fixture(scope="module")
def server(exports: Exports) -> Iterator[ServerThread]:
    with ServerThread([exports.raw, exports.int8, exports.offload], ServerOptions(max_batch=8)) as running:
        yield running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "SPLITPIPE_LOG_LEVEL": "INFO"}


class ServeProcess:
    """``splitpipe serve`` as a subprocess on a fixed port (restartable on the same port)."""

    def __init__(self, dirs: list[Path], port: int, *args: str) -> None:
        self.dirs = dirs
        self.port = port
        self.args = args  # more options of splitpipe serve
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "splitpipe", "serve", *map(str, self.dirs), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-interval", "0", "--grace", "1", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(), cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert re.search(r"listening on .*:(\d+)", line), line
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
