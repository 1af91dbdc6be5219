"""The agent: capture, head, encode on a worker thread; stream, match replies, record on an event loop.

Pipeline (docs/agent.md)::

    worker thread:  [capture -> head (ONNX Runtime) -> encode]  frame n+1
    event loop:                       send frame n  ->  ... reply n -> record, callback

The worker takes a credit before capturing a frame (``window + 1`` credits: the window of frames
sent and unanswered, plus the one being prepared) and the loop returns it when the frame's
result is in, so the head of the next frame overlaps the transfer and tail of the earlier ones
and nothing queues without bound. ONNX Runtime releases the GIL while the head runs, so the
stream keeps flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.edge.client import Pending, StreamClient
from splitpipe.edge.manifest import EdgeExport, load_export
from splitpipe.edge.options import AgentOptions
from splitpipe.edge.report import EnergyShares, FrameRecord, IntervalLog, Report
from splitpipe.edge.sources import Feed, Source, open_source
from splitpipe.edge.wire import ReplyReader, RequestBuilder, kserve_datatype
from splitpipe.errors import SplitpipeError

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameResult:
    """Handed to ``on_result`` for every finished frame (on the agent's event loop thread)."""

    record: FrameRecord
    inputs: Feed
    outputs: dict[str, np.ndarray]


@dataclass
class _Prepared:
    record: FrameRecord
    inputs: Feed
    data: bytes | None  # the request; None for a local frame
    outputs: dict[str, np.ndarray] | None  # a local frame's result


class Pacer:
    """Starts frames at most ``fps`` times a second; a late frame starts at once and the
    schedule moves on from it (no burst to catch up)."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._due: float | None = None

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the next frame is due; False if ``stop`` was set meanwhile."""
        if not self.period:
            return not stop.is_set()
        now = time.perf_counter()
        if self._due is None or self._due < now - self.period:
            self._due = now
        delay = self._due - now
        if delay > 0 and stop.wait(delay):
            return False
        self._due += self.period
        return not stop.is_set()


class Agent:
    """One agent run. ``await run()`` (or :func:`run_agent`) returns the :class:`Report`.

    ``stop()`` (thread safe) ends capturing; frames in flight are drained, for at most
    ``drain_timeout_s``; a second ``stop()`` abandons them (they are reported lost).
    """

    def __init__(
        self,
        options: AgentOptions,
        on_result: Callable[[FrameResult], None] | None = None,
        export: EdgeExport | None = None,
        source: Source | None = None,
    ) -> None:
        self.options = options
        self.export = export or load_export(options.export_dir)
        if not self.export.local and options.server is None:
            raise SplitpipeError("this export has a tail: give --server HOST:PORT (splitpipe serve)")
        if self.export.local and options.server is not None:
            _LOGGER.info(
                "local export: everything runs on the device, --server %s is not used", options.server
            )
        self.on_result = on_result
        self.source = source or open_source(options.source, self.export.inputs, self.export.preprocess)
        self.builder = None if self.export.local else RequestBuilder(self.export)
        self.reader = ReplyReader(self.export.outputs)
        self.records: list[FrameRecord] = []
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_async: asyncio.Event | None = None
        self._stop_async: asyncio.Event | None = None
        self._credits = threading.Semaphore(options.client.window + 1)
        self._log = IntervalLog(options.log_interval_s)
        self._failures = 0
        self._client: StreamClient | None = None
        self._worker_error: BaseException | None = None

    # -- control ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """End capturing and drain (first call); abandon frames in flight (second call)."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may just have finished
                loop.call_soon_threadsafe(self._sync_events)

    def _sync_events(self) -> None:
        if self._stop_async is not None and self._stop.is_set():
            self._stop_async.set()
        if self._abort_async is not None and self._abort.is_set():
            self._abort_async.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT call :meth:`stop` (call inside the running loop, main thread)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self._stop.is_set():
            _LOGGER.warning("second %s: abandoning frames in flight", signal.Signals(sig).name)
        else:
            _LOGGER.info("%s: finishing frames in flight, then exiting", signal.Signals(sig).name)
        self.stop()

    # -- run --------------------------------------------------------------------------------------
    async def run(self, handle_signals: bool = False) -> Report:
        from splitpipe.devices.meters import detect_meter
        from splitpipe.devices.runtimes import create_runner

        opts = self.options
        self._loop = asyncio.get_running_loop()
        self._abort_async = asyncio.Event()
        self._stop_async = asyncio.Event()
        self._sync_events()
        if handle_signals:
            self.install_signal_handlers()
        profile = None
        if opts.device_profile:
            from splitpipe.devices.profile import load_profile

            profile = load_profile(opts.device_profile)
        energy = EnergyShares(detect_meter(profile))

        runner = create_runner(
            opts.runtime, self.export.head_path, threads=opts.threads, providers=list(opts.providers)
        )
        queue: asyncio.Queue[_Prepared | None] = asyncio.Queue()
        started = time.perf_counter()
        with runner, self.source:
            self._warm_up(runner)
            if not self.export.local:
                assert opts.server is not None
                self._client = StreamClient(
                    opts.server,
                    self.export.name,
                    self._on_reply,
                    opts.client,
                    expected_inputs=[(t.name, kserve_datatype(t.dtype)) for t in self.export.cut],
                )
                await self._client.start(abort=self._stop_async)
            energy.start()
            started = time.perf_counter()
            worker = threading.Thread(
                target=self._work, args=(runner, queue, energy), name="splitpipe-head", daemon=True
            )
            logger = asyncio.create_task(self._log_lines()) if opts.log_interval_s > 0 else None
            worker.start()
            sender = asyncio.create_task(self._send_all(queue))
            try:
                await self._drive(sender)
            finally:
                self._stop.set()
                sender.cancel()
                await asyncio.get_running_loop().run_in_executor(None, worker.join)
                if self._client is not None:
                    await self._client.close()
                if logger is not None:
                    logger.cancel()
                energy.stop()
        if self._worker_error is not None:
            raise self._worker_error
        ended = time.perf_counter()
        client = self._client
        lost = sum(1 for r in self.records if r.done is None)
        counts = {
            "captured": len(self.records),
            "completed": sum(1 for r in self.records if r.done is not None and r.error is None),
            "failed": sum(1 for r in self.records if r.error is not None and r.done is not None),
            "lost": lost,
            "resent": client.resent if client else 0,
            "reconnects": client.reconnects if client else 0,
            "duplicate_replies": client.duplicates if client else 0,
        }
        report = Report(self.records, self._info(), counts, energy.to_json(), started, ended)
        if opts.report is not None:
            report.write(opts.report)
        return report

    def _info(self) -> dict[str, Any]:
        e = self.export
        o = self.options
        return {
            "export": str(e.directory),
            "model": e.manifest.get("model"),
            "name": e.name,
            "split": {"id": e.split_id, "label": e.split_label},
            "path": "local" if e.local else "remote",
            "codec": None if e.local else e.codec_name,
            "server": None if e.local else o.server,
            "source": o.source.describe(),
            "window": o.client.window,
            "fps_limit": o.fps,
            "threads": o.threads,
            "clock": "all durations measured on the device's clock, except 'server' (the server's, from its replies)",
        }

    def _warm_up(self, runner: Any) -> None:
        """Check the head once on a frame the source does not count (fail before streaming)."""
        from splitpipe.edge.sources import SyntheticSource

        feed = SyntheticSource(self.export.inputs, seed=1 << 30).frame(0)
        outputs = runner.infer(feed)
        if self.builder is not None:
            self.builder.check(outputs)
            self.builder.build("warm-up", outputs)

    # -- worker thread ----------------------------------------------------------------------------
    def _work(self, runner: Any, queue: asyncio.Queue[_Prepared | None], energy: EnergyShares) -> None:
        loop = self._loop
        assert loop is not None
        post = queue.put_nowait
        pacer = Pacer(self.options.fps)
        limit = self.options.frames
        builder = self.builder
        stop = self._stop
        index = 0
        try:
            while not stop.is_set() and (limit is None or index < limit):
                while not self._credits.acquire(timeout=0.1):
                    if stop.is_set():
                        break
                if stop.is_set() or not pacer.wait(stop):
                    break
                t0 = time.perf_counter()
                feed = self.source.read()
                if feed is None:
                    _LOGGER.info("source %s ended after %d frames", self.options.source.describe(), index)
                    break
                t1 = time.perf_counter()
                outputs = runner.infer(feed, check=False)
                t2 = time.perf_counter()
                record = FrameRecord(index, "local" if builder is None else "remote", t0)
                record.capture_ms = (t1 - t0) * 1e3
                record.head_ms = (t2 - t1) * 1e3
                if builder is None:
                    prepared = _Prepared(record, feed, None, outputs)
                else:
                    encoded = builder.build(str(index), outputs)
                    record.encode_ms = encoded.encode_ms
                    record.tx_bytes = len(encoded.data)
                    record.payload_bytes = encoded.payload_bytes
                    prepared = _Prepared(record, feed, encoded.data, None)
                energy.frame_done(record, time.perf_counter())
                self.records.append(record)
                loop.call_soon_threadsafe(post, prepared)
                index += 1
        except BaseException as exc:  # surfaced by run(); the loop must not wait for ever
            self._worker_error = exc
        finally:
            loop.call_soon_threadsafe(post, None)

    # -- event loop -------------------------------------------------------------------------------
    async def _send_all(self, queue: asyncio.Queue[_Prepared | None]) -> None:
        client = self._client
        while (item := await queue.get()) is not None:
            if client is None:
                assert item.outputs is not None
                self._complete(item.record, item.inputs, item.outputs, time.perf_counter())
                continue
            assert item.data is not None
            await client.send(str(item.record.id), item.data, item)

    def _on_reply(self, entry: Pending, message: Any, arrived: float) -> None:
        prepared: _Prepared = entry.context
        record = prepared.record
        record.rtt_ms = (arrived - entry.sent_at) * 1e3
        record.sends = entry.sends
        reply = self.reader.parse(message)
        record.server = reply.server
        if reply.error is not None:
            record.error = reply.error
            self._failures += 1
            if self._failures <= 5:
                _LOGGER.warning("frame %d failed: %s", record.id, reply.error)
        self._complete(record, prepared.inputs, reply.outputs, arrived)

    def _complete(
        self, record: FrameRecord, inputs: Feed, outputs: dict[str, np.ndarray], now: float
    ) -> None:
        record.done = now
        record.e2e_ms = (now - record.captured) * 1e3
        self._credits.release()
        self._log.add(record)
        if self.on_result is not None and record.error is None:
            self.on_result(FrameResult(record, inputs, outputs))

    async def _drive(self, sender: asyncio.Task[None]) -> None:
        """Until the worker is done (frames, source end) or a stop, then drain: every frame
        captured gets its result unless ``drain_timeout_s`` passes or a second stop comes (those
        frames are reported lost)."""
        assert self._stop_async is not None and self._abort_async is not None
        stop = asyncio.ensure_future(self._stop_async.wait())
        try:
            await asyncio.wait({sender, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        deadline = time.perf_counter() + self.options.drain_timeout_s
        client = self._client
        if not sender.done():
            # stopped: the worker finishes its frame; hand what it captured to the client
            abort = asyncio.ensure_future(self._abort_async.wait())
            try:
                await asyncio.wait(
                    {sender, abort}, timeout=self.options.drain_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                abort.cancel()
        if sender.done() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
        if client is not None:
            if client.in_flight:
                _LOGGER.info("draining %d frame(s) in flight", client.in_flight)
            remaining = max(deadline - time.perf_counter(), 0.0)
            if not await client.drain(remaining, self._abort_async):
                left = len(client.abandon())
                _LOGGER.warning("%d frame(s) got no reply before shutdown; reported lost", left)

    async def _log_lines(self) -> None:
        while True:
            await asyncio.sleep(self.options.log_interval_s)
            in_flight = self._client.in_flight if self._client else 0
            _LOGGER.info("%s: %s", self.export.name, self._log.line(in_flight))


def run_agent(
    options: AgentOptions,
    on_result: Callable[[FrameResult], None] | None = None,
    *,
    handle_signals: bool = False,
) -> Report:
    """Run the agent to completion on a new event loop (``--frames``, the source's end, or a
    signal when ``handle_signals``) and return its report."""
    agent = Agent(options, on_result)
    return asyncio.run(agent.run(handle_signals=handle_signals))


@contextlib.contextmanager
def agent_thread(options: AgentOptions, on_result: Callable[[FrameResult], None] | None = None) -> Any:
    """Run an agent on a background thread: ``with agent_thread(opts) as (agent, result): ...``;
    leaving the block stops it (drain) and waits; ``result`` (a list) then holds the report."""
    agent = Agent(options, on_result)
    result: list[Any] = []

    def main() -> None:
        try:
            result.append(asyncio.run(agent.run()))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=main, name="splitpipe-agent", daemon=True)
    thread.start()
    try:
        yield agent, result
    finally:
        agent.stop()
        thread.join()
        if result and isinstance(result[0], BaseException):
            raise result[0]
