"""Assembling the server: gRPC options, servicers (inference, health, reflection), start, stop.

- :func:`create_server` loads the tails and binds, without starting (tests bind port 0).
- :func:`serve` is the process entry point: runs until SIGTERM or SIGINT, then drains.
- :class:`ServerThread` runs a server on its own event loop in a background thread, for tests,
  benchmarks and the demo, which drive it with blocking clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from splitpipe.errors import SplitpipeError
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server.batcher import Batcher
from splitpipe.server.metrics import Metrics
from splitpipe.server.models import TailModel, load_tails
from splitpipe.server.options import ServerOptions
from splitpipe.server.servicer import SERVICE, InferenceServicer, ServerState, add_to_server

_LOGGER = logging.getLogger(__name__)

SERVICE_NAME = SERVICE.full_name


def grpc_options(options: ServerOptions) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        # A second server on a busy port must fail instead of silently sharing it.
        ("grpc.so_reuseport", 0),
        # Agents keep long streams open and may send keepalive pings; accept one per 10 s.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _bind_problem(address: str) -> str | None:
    """Why ``host:port`` cannot be listened on, found by binding it here with the socket options
    gRPC uses (gRPC itself logs the reason and raises only "Failed to bind"); None if it can be
    (on any of the host's addresses, as gRPC needs)."""
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            return None  # gRPC's error tells
        found = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except ValueError:
        return None  # not HOST:PORT (a unix: address, say)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror})"
    problems = []
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
            return None
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            problems.append(f"port {port} is already in use" if in_use else str(exc.strerror))
    return problems[0] if problems else None


def _reflection_pool() -> Any:
    """A pool holding every service this server offers, for server reflection (our inference
    descriptors live in a private pool, health and reflection in protobuf's default one)."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    pool = descriptor_pool.DescriptorPool()
    for file in (pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
    return pool


class InferenceServer:
    """A loaded, bound server. ``start()``, then ``stop(grace)`` (or ``wait_for_termination``)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        models: dict[str, TailModel],
        options: ServerOptions,
        metrics: Metrics,
        state: ServerState,
        health: Any,
        ray: Any = None,
        host: str = "0.0.0.0",
    ) -> None:
        self.grpc = server
        self.host = host
        self.metrics_port: int | None = None  # the Prometheus exporter's, once started
        self._exporter: Any = None
        self._ray = ray  # the RayCluster the tails run on, if any
        self.port = port
        self.models = models
        self.options = options
        self.metrics = metrics
        self._state = state
        self._health = health
        self._batchers = {name: Batcher(model, options, metrics) for name, model in models.items()}
        self._servicer = InferenceServicer(models, self._batchers, options, metrics, state)
        add_to_server(self._servicer, server)
        self._stats: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        from grpc_health.v1 import health_pb2

        for batcher in self._batchers.values():
            batcher.start()
        await self.grpc.start()
        self._state.ready = True
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.options.log_interval_s > 0:
            self._stats = asyncio.create_task(self._log_stats())
        if self.options.metrics_port is not None:
            from splitpipe.server.metrics import start_exporter

            try:
                self._exporter, self.metrics_port = start_exporter(
                    self.metrics, self.host, self.options.metrics_port, lambda: self._state.ready
                )
            except OSError as exc:
                await self.stop(0)
                raise SplitpipeError(
                    f"cannot serve metrics on {self.host}:{self.options.metrics_port}: {exc.strerror}"
                ) from None
            _LOGGER.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.metrics_port)
        _LOGGER.info("serving %s on port %d", ", ".join(sorted(self.models)), self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting requests, let those in flight finish for ``grace`` seconds (default:
        the options'), then release the tails. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._state.ready = False
        await self._health.enter_graceful_shutdown()  # every service NOT_SERVING from now on
        grace = self.options.grace_s if grace is None else grace
        await self.grpc.stop(grace)
        if self._exporter is not None:  # its shutdown waits for the serving thread's next poll
            await asyncio.get_running_loop().run_in_executor(None, self._exporter.shutdown)
            self._exporter.server_close()
        if self._stats is not None:
            self._stats.cancel()
        for batcher in self._batchers.values():
            await batcher.stop()
        for model in self.models.values():
            model.close()
        if self._ray is not None:
            # Ray's calls block and use their own event loop: off this one
            await asyncio.get_running_loop().run_in_executor(None, self._ray.close)
        for line in self.metrics.interval_lines():
            _LOGGER.info("%s", line)
        _LOGGER.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.options.log_interval_s)
            for line in self.metrics.interval_lines():
                _LOGGER.info("%s", line)


async def create_server(
    address: str, export_dirs: Sequence[str | Path], options: ServerOptions | None = None
) -> tuple[InferenceServer, int]:
    """Load the tails of ``export_dirs`` and bind ``address`` (``host:port``; port 0 picks a free
    one). Returns the unstarted server and the bound port. Must run inside an event loop."""
    from grpc_health.v1 import health as health_module
    from grpc_health.v1 import health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    options = options or ServerOptions()
    credentials = options.tls.credentials() if options.tls is not None else None
    models = load_tails(list(export_dirs), options)
    cluster = None
    try:
        if options.ray is not None:
            from splitpipe.server.ray_serve import attach

            cluster = attach(models, options.ray, options.threads, list(options.providers))
        server = grpc.aio.server(options=grpc_options(options))
        health = health_module.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME], server, pool=_reflection_pool()
        )
        # Checked here first, so that a busy port is our one line, without gRPC's log line.
        problem = _bind_problem(address)
        if problem is not None:
            raise SplitpipeError(f"cannot listen on {address}: {problem}")
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # taken meanwhile, or a problem the check above misses
            raise SplitpipeError(f"cannot listen on {address}: {_bind_problem(address) or exc}") from None
        if port == 0:
            raise SplitpipeError(
                f"cannot listen on {address}: {_bind_problem(address) or 'in use, or not an address of this host'}"
            )
        state = ServerState()
        host = address.rpartition(":")[0].strip("[]")
        return InferenceServer(server, port, models, options, Metrics(), state, health, cluster, host), port
    except BaseException:
        for model in models.values():
            model.close()
        if cluster is not None:
            cluster.close()
        raise


async def serve(
    address: str,
    export_dirs: Sequence[str | Path],
    options: ServerOptions | None = None,
    on_ready: Callable[[InferenceServer], None] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then stop accepting, finish what is in flight, return 0."""
    options = options or ServerOptions()
    server, _port = await create_server(address, export_dirs, options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        _LOGGER.info("shutting down: finishing requests in flight (grace %.1f s)", options.grace_s)
        await server.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.stop(0)
    return 0


class ServerThread:
    """Run a server in a background thread with its own event loop::

    with ServerThread(["exports/s12"], ServerOptions(max_batch=4)) as running:
        client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{running.port}")
    """

    def __init__(
        self, export_dirs: Sequence[str | Path], options: ServerOptions | None = None, host: str = "127.0.0.1"
    ) -> None:
        self._dirs = list(export_dirs)
        self._options = options or ServerOptions()
        self._address = f"{host}:0"
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.server: InferenceServer | None = None
        self.port = 0

    def start(self) -> ServerThread:
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            self.server, self.port = await create_server(self._address, self._dirs, self._options)
            await self.server.start()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(boot())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="splitpipe-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._loop.close()
            raise failure[0]
        return self

    @property
    def metrics(self) -> Metrics:
        if self.server is None:
            raise RuntimeError("the server thread has not started")
        return self.server.metrics

    def call(self, coroutine: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float | None = 0.0) -> None:
        if self._thread is None or self.server is None:
            return
        with contextlib.suppress(RuntimeError):
            self.call(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
