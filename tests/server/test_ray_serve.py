"""Tails on Ray Serve replicas behind the same front end: a real local Ray instance, the
unmodified tritonclient, results checked, and the work spread over both replicas."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerOptions, ServerThread
from splitpipe.server.options import RayOptions
from tests.server.tiny_tails import relu_mean

ray = pytest.importorskip("ray")
tc = pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One Ray instance for the module (started here, in the main thread): the server joins it,
    as it joins a cluster with --ray-address."""
    ray.init(num_cpus=2, object_store_memory=100 * (1 << 20), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_requests_run_on_both_replicas(local_ray: None, tmp_path: Path) -> None:
    from ray import serve

    export = relu_mean(tmp_path / "export")
    options = ServerOptions(max_batch=4, ray=RayOptions(replicas=2, replica_cpus=0.5))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 4, 3, 3)).astype(np.float32) for _ in range(120)]
    results: dict[int, Any] = {}
    done = threading.Semaphore(0)
    with ServerThread([export], options) as running:
        assert running.server is not None
        model = running.server.models["relu-mean"]
        assert model.remote and model.runner.name == "ray"
        with tc.InferenceServerClient(f"127.0.0.1:{running.port}") as client:
            assert client.is_server_ready() and client.is_model_ready("relu-mean")

            def callback(i: int) -> Any:
                def on_done(result: Any, error: Any) -> None:
                    results[i] = error or result
                    done.release()

                return on_done

            for i, x in enumerate(inputs):  # all in flight at once: batches go to both replicas
                tensor = tc.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                client.async_infer("relu-mean", [tensor], callback(i))
            for _ in inputs:
                assert done.acquire(timeout=60)
        calls = dict(model.runner.calls_by_replica)
        apps = set(serve.status().applications)
    assert "splitpipe-relu-mean" in apps
    assert "splitpipe-relu-mean" not in set(serve.status().applications)  # removed at stop
    for i, x in enumerate(inputs):
        result = results[i]
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result.as_numpy("mean"), np.maximum(x, 0).mean(axis=(2, 3)), rtol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("peak"), x.max(axis=(2, 3)))
    assert len(calls) == 2 and min(calls.values()) >= 1, calls
    assert sum(calls.values()) < len(inputs)  # dynamic batching still batched


def test_bad_options() -> None:
    with pytest.raises(SplitpipeError, match="at least 1"):
        RayOptions(replicas=0)
    with pytest.raises(SplitpipeError, match="some CPU or GPU"):
        RayOptions(replica_cpus=0, replica_gpus=0)
    done = subprocess.run(
        [sys.executable, "-m", "splitpipe", "serve", "x", "--ray-address", "auto"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--ray-address goes with --ray" in done.stderr
    assert "Traceback" not in done.stderr


def _serve_cli(export: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitpipe", "serve", str(export), "--port", "0", "--ray", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_replica_size_that_is_not_a_number_is_one_line(tmp_path: Path, value: str) -> None:
    # used to start Ray, then end in Ray's ValueError / OverflowError traceback
    done = _serve_cli(relu_mean(tmp_path / "export"), "--replica-cpus", value)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
    assert f"--replica-cpus must be a finite number of CPUs or GPUs (e.g. 1 or 0.5), got {value}" in line


def test_replicas_the_local_ray_cannot_place_are_refused(tmp_path: Path) -> None:
    """More CPUs or GPUs than the Ray the server starts has: the deployment used to wait for
    them forever, saying nothing."""
    export = relu_mean(tmp_path / "export")
    for args, want in [
        (
            ("--replicas", "2", "--replica-cpus", "4096"),
            "--replicas 2 x --replica-cpus 4096 asks Ray for 8192 CPUs",
        ),
        (("--replicas", "1", "--replica-cpus", "0", "--replica-gpus", "4096"), "asks Ray for 4096 GPUs"),
    ]:
        done = _serve_cli(export, *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
        assert want in line and "but this Ray instance has" in line and "accepted: replicas x" in line
