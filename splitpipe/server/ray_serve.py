"""Tails on Ray Serve: ``splitpipe serve --ray`` scales the tail runs out over a Ray cluster.

The front end stays the same process (the Open Inference Protocol over gRPC, the checks, decode
and dynamic batching: what standard clients and the agent talk to); each tail becomes a Ray
Serve deployment of ``replicas`` replicas, each an ONNX Runtime session of ``tail.onnx``, placed
by Ray on any node of the cluster with the CPUs (and GPUs) asked for. A batch goes to a replica
through a deployment handle, so several batches run at once, one per replica.

With no ``address`` a local Ray instance is started for the front end (replicas on this
machine's cores) and stopped with it; ``auto`` or ``HOST:PORT`` joins a running cluster
(``ray start --head`` on one machine, ``ray start --address ...`` on the others). Ray is imported
only here, and only with ``--ray``.

Inside the cluster Ray moves the decoded arrays between processes with its own serialization;
what comes from clients is checked and decoded by the front end before it reaches Ray.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
from typing import Any

import numpy as np

from splitpipe.devices.runtimes import Runner, TensorSpec
from splitpipe.errors import SplitpipeError
from splitpipe.server.options import RayOptions

_LOGGER = logging.getLogger(__name__)
APP_PREFIX = "splitpipe-"


class TailReplica:
    """One replica: the tail's ONNX Runtime session, from the bytes the front end checked."""

    def __init__(self, model: bytes, sha256: str, threads: int | None, providers: list[str]) -> None:
        from splitpipe.devices.runtimes import create_runner

        if hashlib.sha256(model).hexdigest() != sha256:
            raise SplitpipeError("the tail's bytes changed on the way to the replica")
        self.runner = create_runner("ort", model, threads=threads, providers=providers)
        self.runner.activate()
        self.pid = os.getpid()

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        return self.runner.infer(feed, check=False), self.pid


class RayRunner(Runner):
    """A runner whose runs happen on a tail's Ray Serve replicas (the front end's checks have
    passed; the specs are those of the tail file, read by the front end's own session)."""

    name = "ray"

    def __init__(
        self, handle: Any, app: str, inputs: list[TensorSpec], outputs: list[TensorSpec], timeout_s: float
    ):
        super().__init__()
        self._handle = handle
        self.app = app
        self._inputs, self._outputs = inputs, outputs
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        #: tail runs per replica (its process id): how the work spread
        self.calls_by_replica: collections.Counter[int] = collections.Counter()

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass  # the deployment is removed by RayCluster.close (it blocks: not on the event loop)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, pid = self._handle.remote(feed).result(timeout_s=self._timeout_s)
        with self._lock:
            self.calls_by_replica[pid] += 1
        return outputs


class RayCluster:
    """The Ray side of one server: connects (or starts Ray), deploys tails, and cleans up."""

    def __init__(self, options: RayOptions) -> None:
        try:
            import ray
            from ray import serve
        except ImportError:
            raise SplitpipeError(
                "splitpipe serve --ray needs Ray Serve: pip install 'splitpipe[ray]'"
            ) from None
        self.options = options
        self.apps: list[str] = []
        self._init_here = not ray.is_initialized()  # we connect (or start), so we disconnect
        self._started_ray = self._init_here and options.address is None  # a Ray of our own
        try:
            if self._init_here:
                ray.init(
                    address=options.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
            try:
                self._check_resources(ray.cluster_resources())
            except BaseException:
                if self._init_here:
                    ray.shutdown()
                raise
            serve.start(proxy_location="Disabled")  # the front end is the only ingress
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local instance"
            raise SplitpipeError(f"cannot start Ray Serve on {where}: {str(exc).splitlines()[0]}") from None

    def _check_resources(self, total: dict[str, float]) -> None:
        """Replicas that the cluster cannot place would make the deployment wait forever, with
        nothing said: refuse them on a Ray of our own (whose size is fixed), warn on a cluster
        joined (which may grow)."""
        o = self.options
        for resource, each, flag in (
            ("CPU", o.replica_cpus, "--replica-cpus"),
            ("GPU", o.replica_gpus, "--replica-gpus"),
        ):
            need, have = o.replicas * each, float(total.get(resource, 0.0))
            if need <= have + 1e-9:
                continue
            message = (
                f"--replicas {o.replicas} x {flag} {each:g} asks Ray for {need:g} {resource}s, but "
                f"{'this Ray instance' if self._started_ray else 'the Ray cluster'} has {have:g}; accepted: "
                f"replicas x {flag} up to {have:g}"
            )
            if self._started_ray:
                raise SplitpipeError(message)
            _LOGGER.warning("%s (the deployment waits until the cluster has them)", message)

    def deploy(self, model: Any, threads: int | None, providers: list[str]) -> RayRunner:
        """Deploy ``model`` (a loaded TailModel) and give the runner that sends it batches."""
        from ray import serve

        o = self.options
        # the file the front end's own session loaded: tail.onnx, or the compiled tail
        tail = model.compiled.entry if model.compiled is not None else model.manifest["files"]["tail"]
        data = (model.directory / tail["path"]).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha != str(tail["sha256"]).lower():
            raise SplitpipeError(f"export {model.directory}: {tail['path']} changed after it was loaded")
        app = APP_PREFIX + model.name
        base: Any = serve.deployment(TailReplica)
        deployment = base.options(
            name=f"tail-{model.name}",
            num_replicas=o.replicas,
            ray_actor_options={"num_cpus": o.replica_cpus, "num_gpus": o.replica_gpus},
            # the front end has drained its requests before it removes the deployment
            graceful_shutdown_timeout_s=2,
            graceful_shutdown_wait_loop_s=0.5,
        )
        handle = serve.run(deployment.bind(data, sha, threads, providers), name=app, route_prefix=None)
        self.apps.append(app)
        _LOGGER.info(
            "%s: %d replica(s) on Ray Serve (%g CPU, %g GPU each)",
            model.name,
            o.replicas,
            o.replica_cpus,
            o.replica_gpus,
        )
        return RayRunner(handle, app, list(model.runner.inputs), list(model.runner.outputs), o.timeout_s)

    def close(self) -> None:
        """Remove our deployments (and stop Ray if we started it). Blocks: call it off the
        event loop."""
        import ray
        from ray import serve

        try:
            if self._started_ray:
                serve.shutdown()
            else:  # a shared cluster: remove only what we deployed
                for app in self.apps:
                    serve.delete(app)
        except Exception as exc:  # Ray already gone: nothing left to remove
            _LOGGER.debug("removing %s: %s", self.apps, exc)
        finally:
            self.apps = []
            if self._init_here:  # stops our own instance; leaves a cluster we joined running
                ray.shutdown()


def attach(
    models: dict[str, Any], options: RayOptions, threads: int | None, providers: list[str]
) -> RayCluster:
    """Move every tail of ``models`` onto Ray Serve: each model's local session (which checked
    the file against its manifest) is closed and its runner replaced by a :class:`RayRunner`."""
    cluster = RayCluster(options)
    try:
        for model in models.values():
            remote = cluster.deploy(model, threads, providers)
            model.runner.deactivate()
            model.runner = remote
            remote.activate()
            model.remote = True
    except BaseException:
        cluster.close()
        raise
    return cluster
