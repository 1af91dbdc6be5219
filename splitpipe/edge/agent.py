"""The agent: capture, head, encode; stream, match replies, record.

Pipeline (docs/agent.md)::

    head worker:   [capture -> head (ONNX Runtime) -> encode]  frame n+1
    event loop:                        send frame n  ->  ... reply n -> record, callback

The head runs on a worker thread, so that the event loop keeps sending and receiving (and
timestamps replies as they arrive) while it runs; ONNX Runtime releases the GIL meanwhile. The
worker takes a credit before capturing (``window + 1`` credits: the window of frames sent and
unanswered, plus the one being prepared) and the loop returns it with the frame's result, so
the head of the next frame overlaps the transfer and tail of the earlier ones and nothing queues
without bound.

A head that takes well under a millisecond (a trivial or offload head) gains nothing from a
thread, whose hand-offs then cost more CPU than the head: with ``head_thread=None`` (auto) such
heads run on the event loop between sends, which still overlaps them with frames in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.edge.adapt import Chooser, Link, Option
from splitpipe.edge.client import Pending, StreamClient
from splitpipe.edge.manifest import EdgeExport, load_export
from splitpipe.edge.options import AgentOptions
from splitpipe.edge.report import EnergyShares, FrameRecord, IntervalLog, Report
from splitpipe.edge.sources import Feed, Source, SyntheticSource, open_source
from splitpipe.edge.wire import ReplyReader, RequestBuilder, kserve_datatype
from splitpipe.errors import SplitpipeError

_LOGGER = logging.getLogger(__name__)

#: with head_thread=None, heads (plus encode) faster than this run on the event loop
INLINE_HEAD_MS = 0.5


@dataclass(frozen=True)
class FrameResult:
    """Handed to ``on_result`` for every finished frame (on the agent's event loop thread)."""

    record: FrameRecord
    inputs: Feed
    outputs: dict[str, np.ndarray]


@dataclass(slots=True)
class _Prepared:
    record: FrameRecord
    inputs: Feed
    data: bytes | None  # the request; None for a local frame
    outputs: dict[str, np.ndarray] | None  # a local frame's result
    frame_id: str = ""  # the request id
    option: int = 0  # which export (when adapting among several)


class Pacer:
    """Starts frames at most ``fps`` times a second; a late frame starts at once and the
    schedule moves on from it (no burst to catch up)."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._due: float | None = None

    def delay(self) -> float:
        """Seconds to wait before the next frame; call :meth:`started` when it starts."""
        if not self.period:
            return 0.0
        now = time.perf_counter()
        if self._due is None or self._due < now - self.period:
            self._due = now
        return max(self._due - now, 0.0)

    def started(self) -> None:
        if self.period and self._due is not None:
            self._due += self.period


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
        #: the exports frames may run through: one, or several of one model to adapt among
        self.exports = [self.export, *(load_export(d) for d in options.more_exports)]
        _check_alternatives(self.exports)
        remote = [e for e in self.exports if not e.local]
        if remote and options.server is None:
            raise SplitpipeError(
                f"export {remote[0].directory} has a tail: give --server HOST:PORT (splitpipe serve)"
            )
        if not remote and options.server is not None:
            _LOGGER.info(
                "local export: everything runs on the device, --server %s is not used", options.server
            )
        self.on_result = on_result
        self.source = source or open_source(options.source, self.export.inputs, self.export.preprocess)
        self.builders = [None if e.local else RequestBuilder(e) for e in self.exports]
        self.readers = [ReplyReader(e.outputs) for e in self.exports]
        self.builder, self.reader = self.builders[0], self.readers[0]
        self.chooser: Chooser | None = None  # made at warm-up, with several exports
        #: the latest frames (all of them up to ``max_report_frames``)
        self.records: collections.deque[FrameRecord] = collections.deque(maxlen=options.max_report_frames)
        self.head_thread: bool | None = options.head_thread
        self._captured = 0
        self._completed = 0
        self._failed = 0
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_async: asyncio.Event | None = None
        self._stop_async: asyncio.Event | None = None
        # sequential: one credit, so that the next capture waits for the previous result
        self._credits = threading.Semaphore(1 if options.sequential else options.client.window + 1)
        self._ready: collections.deque[_Prepared | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._log = IntervalLog(options.log_interval_s)
        self._client: StreamClient | None = None
        self._worker_error: BaseException | None = None

    @property
    def completed(self) -> int:
        """Frames answered so far (failed ones not counted)."""
        return self._completed

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
        started: list[float] = []  # when streaming began, once it did
        try:
            await self._stream(energy, started)
        except BaseException:
            if started and self._captured and opts.report is not None:
                # the frames done before the error were measured: their report is not lost
                self._report(started[0], energy).write(opts.report)
                _LOGGER.warning(
                    "the run ended with an error; the report of its %d frame(s) is in %s",
                    self._captured,
                    opts.report,
                )
            raise
        report = self._report(started[0], energy)
        if opts.report is not None:
            report.write(opts.report)
        return report

    async def _stream(self, energy: EnergyShares, started: list[float]) -> None:
        """Load the heads, open the source, connect, then run the frames until the end and drain;
        appends the time streaming began to ``started``."""
        from splitpipe.devices.runtimes import create_runner

        opts = self.options
        connector: asyncio.Task[None] | None = None  # connecting while frames already run locally
        with contextlib.ExitStack() as stack:
            runners = [
                stack.enter_context(
                    create_runner(
                        opts.runtime,
                        self._head_file(e)[0],
                        threads=opts.threads,
                        providers=list(opts.providers),
                    )
                )
                for e in self.exports
            ]
            for export, runner in zip(self.exports, runners, strict=True):
                _check_head_inputs(export, runner.inputs)  # before the source makes frames of them
            stack.enter_context(self.source)
            self._warm_up(runners)
            remote = [e for e in self.exports if not e.local]
            if remote:
                assert opts.server is not None
                inputs = {e.name: [(t.name, kserve_datatype(t.dtype)) for t in e.cut] for e in remote}
                first = remote[0].name
                self._client = StreamClient(
                    opts.server,
                    first,
                    self._on_reply,
                    opts.client,
                    expected_inputs=inputs.pop(first),
                    more_models=dict(inputs),
                    # adapting, the chooser keeps off an export whose frames cannot be sent
                    give_up_unsendable=self.chooser is None,
                    expected_shapes={e.name: {t.name: t.shape for t in e.cut} for e in remote},
                )
                if self.chooser is not None and self.chooser.has_local:
                    # frames run on the local export until the server answers
                    connector = asyncio.create_task(self._client.start(abort=self._stop_async))
                else:
                    await self._client.start(abort=self._stop_async)
            energy.start()
            started.append(time.perf_counter())
            worker = None
            if self.head_thread:
                worker = threading.Thread(
                    target=self._work, args=(runners, energy), name="splitpipe-head", daemon=True
                )
                worker.start()
                sender = asyncio.create_task(self._send_prepared())
            else:
                sender = asyncio.create_task(self._produce_inline(runners, energy))
            logger = asyncio.create_task(self._log_lines()) if opts.log_interval_s > 0 else None
            try:
                await self._drive(sender, connector)
            finally:
                self._stop.set()
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                if connector is not None and not connector.done():
                    connector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await connector
                if worker is not None:
                    await asyncio.get_running_loop().run_in_executor(None, worker.join)
                if self._client is not None:
                    await self._client.close()
                if logger is not None:
                    logger.cancel()
                energy.stop()
        if self._worker_error is not None:
            raise self._worker_error

    def _report(self, started: float, energy: EnergyShares) -> Report:
        client = self._client
        counts = {
            "captured": self._captured,
            "completed": self._completed,
            "failed": self._failed,
            "lost": self._captured - self._completed - self._failed,
            "resent": client.resent if client else 0,
            "reconnects": client.reconnects if client else 0,
            "duplicate_replies": client.duplicates if client else 0,
            "unreadable_inputs": self.source.unreadable,
            "frames_in_report": len(self.records),
        }
        return Report(
            list(self.records), self._info(), counts, energy.to_json(), started, time.perf_counter()
        )

    def _info(self) -> dict[str, Any]:
        e = self.export
        o = self.options
        if self.chooser is not None:
            return {
                **self._info_of(e, o),
                "name": [x.name for x in self.exports],
                "split": [{"id": x.split_id, "label": x.split_label} for x in self.exports],
                "path": "adaptive",
                "codec": {x.name: None if x.local else x.codec_name for x in self.exports},
                "export": [str(x.directory) for x in self.exports],
                "head": [self._head_info(x) for x in self.exports],
                "adapt": self.chooser.to_json(),
            }
        return self._info_of(e, o)

    def _head_file(self, e: EdgeExport) -> tuple[Any, Any]:
        """The head file this run loads for ``e`` (a compiled head when built for the runtime)."""
        path, compiled = e.head_file(self.options.runtime, self.options.use_compiled)
        if compiled is not None:
            forced = (compiled.entry.get("error") or {}).get("within_budget") is False
            (_LOGGER.warning if forced else _LOGGER.info)(
                "%s: running the compiled head %s", e.name, compiled.describe()
            )
        elif e.compiled_head is not None:
            _LOGGER.info(
                "%s: not using the compiled head %s (%s); running %s",
                e.name,
                e.compiled_head.describe(),
                "--no-compiled"
                if not self.options.use_compiled
                else f"built for runtime {e.compiled_head.runtime}, this run uses {self.options.runtime}",
                path.name,
            )
        return path, compiled

    def _head_info(self, e: EdgeExport) -> dict[str, Any]:
        path, compiled = e.head_file(self.options.runtime, self.options.use_compiled)
        return {"file": path.name, "compiled": compiled.summary() if compiled is not None else None}

    def _info_of(self, e: EdgeExport, o: AgentOptions) -> dict[str, Any]:
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
            "sequential": o.sequential,
            "fps_limit": o.fps,
            "threads": o.threads,
            "runtime": o.runtime,
            "head": self._head_info(e),
            "head_thread": self.head_thread,
            "clock": "durations measured on the device's clock, except 'server' (the server's, from its replies)",
        }

    def _warm_up(self, runners: list[Any]) -> None:
        """Run each head on frames the source does not count: checks its outputs against the
        manifest before streaming, and times it to choose where it runs (``head_thread``) and,
        with several exports, to start the chooser from measured figures."""
        feed = SyntheticSource(self.export.inputs, seed=1 << 30).frame(0)
        options = []
        for export, runner, builder in zip(self.exports, runners, self.builders, strict=True):
            outputs = runner.infer(feed)
            if builder is not None:
                builder.check(outputs)
            best, size = float("inf"), 0
            for _ in range(3):
                start = time.perf_counter()
                outputs = runner.infer(feed, check=False)
                if builder is not None:
                    size = len(builder.build("warm-up", outputs).data)
                best = min(best, (time.perf_counter() - start) * 1e3)
            planned = export.manifest.get("predictions") or {}
            server_ms = float(planned.get("decode_ms") or 0) + float(planned.get("tail_ms") or 0)
            options.append(Option(export.name, not export.local, best, size, server_ms))
        best = max(o.device_ms for o in options)
        if len(options) > 1:
            self.chooser = Chooser(options, _planned_link(self.exports), self.options.adapt)
            _LOGGER.info(
                "adapting among %s; starting with %s (predicted from warm-up and the planned link)",
                ", ".join(o.name for o in options),
                options[self.chooser.current].name,
            )
        if self.head_thread is None:
            self.head_thread = best >= INLINE_HEAD_MS
            _LOGGER.info(
                "head%s takes %.3f ms: running it %s",
                "" if self.builder is None else " + encode",
                best,
                "on a worker thread"
                if self.head_thread
                else "on the event loop (a thread would cost more than it overlaps)",
            )

    # -- one frame: capture, head, encode (worker thread, or the loop for fast heads) ----------------
    def _step(self, runners: list[Any], energy: EnergyShares) -> _Prepared | None:
        index = self._captured
        chooser = self.chooser
        option = 0 if chooser is None else self._pick(chooser)
        t0 = time.perf_counter()
        feed = self.source.read()
        if feed is None:
            _LOGGER.info("source %s ended after %d frames", self.options.source.describe(), index)
            return None
        t1 = time.perf_counter()
        outputs = runners[option].infer(feed, check=False)  # _warm_up checked the head once
        t2 = time.perf_counter()
        builder = self.builders[option]
        record = FrameRecord(index, "local" if builder is None else "remote", t0)
        record.capture_ms = (t1 - t0) * 1e3
        record.head_ms = (t2 - t1) * 1e3
        if builder is None:
            prepared = _Prepared(record, feed, None, outputs, option=option)
        else:
            frame_id = str(index)
            encoded = builder.build(frame_id, outputs)
            record.encode_ms = encoded.encode_ms
            record.tx_bytes = len(encoded.data)
            record.payload_bytes = encoded.payload_bytes
            prepared = _Prepared(record, feed, encoded.data, None, frame_id, option)
        if chooser is not None:
            record.split = self.exports[option].name
            chooser.ran(option, record.device_ms, record.tx_bytes)
        energy.frame_done(record, time.perf_counter())
        self.records.append(record)
        self._captured = index + 1
        return prepared

    def _pick(self, chooser: Chooser) -> int:
        client = self._client
        if client is None:
            return chooser.pick()
        now = time.perf_counter()
        waiting: dict[int, float] = {}
        for entry in client.unanswered():  # the longest wait per option
            option = entry.context.option
            waiting[option] = max(waiting.get(option, 0.0), (now - entry.sent_at) * 1e3)
        return chooser.pick(now, remote_up=client.connected, waiting_ms=waiting)

    def _more(self) -> bool:
        limit = self.options.frames
        return not self._stop.is_set() and (limit is None or self._captured < limit)

    def _work(self, runners: list[Any], energy: EnergyShares) -> None:
        """The head worker thread: prepare frames while credits last, hand them to the loop."""
        loop = self._loop
        assert loop is not None
        pacer = Pacer(self.options.fps)
        stop = self._stop
        try:
            while self._more():
                while not self._credits.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                delay = pacer.delay()
                if delay > 0 and stop.wait(delay):
                    return
                pacer.started()
                prepared = self._step(runners, energy)
                if prepared is None:
                    return
                self._hand_over(loop, prepared)
        except BaseException as exc:  # surfaced by run(); the loop must not wait for ever
            self._worker_error = exc
        finally:
            self._hand_over(loop, None)

    def _hand_over(self, loop: asyncio.AbstractEventLoop, item: _Prepared | None) -> None:
        # A deque, and a wake-up only when the loop waits for it: a busy loop picks frames up
        # without a cross-thread call per frame.
        self._ready.append(item)
        if self._waiter is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _send_prepared(self) -> None:
        """Hand the worker's frames to the client (or finish local ones) as they come."""
        loop = asyncio.get_running_loop()
        ready = self._ready
        while True:
            while not ready:
                self._waiter = loop.create_future()
                if ready:  # handed over between the check and the future
                    break
                await self._waiter
            self._waiter = None
            item = ready.popleft()
            if item is None:
                return
            await self._dispatch(item)

    async def _produce_inline(self, runners: list[Any], energy: EnergyShares) -> None:
        """Fast heads: prepare each frame on the loop, between sends."""
        pacer = Pacer(self.options.fps)
        while self._more():
            delay = pacer.delay()
            if delay > 0:
                assert self._stop_async is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop_async.wait(), delay)
                if self._stop.is_set():
                    return
            pacer.started()
            prepared = self._step(runners, energy)
            if prepared is None:
                return
            await self._dispatch(prepared)
            if prepared.data is None:
                await asyncio.sleep(0)  # local frames: let signals, logging and replies in
            elif self.options.sequential and self._client is not None:
                await self._client.drain(None, self._abort_async)

    async def _dispatch(self, item: _Prepared) -> None:
        client = self._client
        if item.data is None:
            assert item.outputs is not None
            now = time.perf_counter()
            if self.chooser is not None:
                self.chooser.answered(item.option, now, None, None)
            self._complete(item.record, item.inputs, item.outputs, now)
            return
        assert client is not None
        await client.send(item.frame_id, item.data, item)

    # -- results (event loop) ---------------------------------------------------------------------
    def _on_reply(self, entry: Pending, message: Any, arrived: float) -> None:
        prepared: _Prepared = entry.context
        record = prepared.record
        record.rtt_ms = None if entry.refused else (arrived - entry.sent_at) * 1e3
        record.sends = entry.sends
        reply = self.readers[prepared.option].parse(message)
        record.server = reply.server
        if self.chooser is not None and reply.error is None:
            total = reply.server.get("total_us")
            self.chooser.answered(
                prepared.option, arrived, record.rtt_ms, None if total is None else total / 1e3
            )
        if reply.error is not None:
            record.error = reply.error
            if self.chooser is not None:
                self.chooser.failed(prepared.option, arrived)
            if self._failed < 5:
                _LOGGER.warning("frame %d failed: %s", record.id, reply.error)
        self._complete(record, prepared.inputs, reply.outputs, arrived)

    def _complete(
        self, record: FrameRecord, inputs: Feed, outputs: dict[str, np.ndarray], now: float
    ) -> None:
        record.done = now
        record.e2e_ms = (now - record.captured) * 1e3
        if record.error is None:
            self._completed += 1
        else:
            self._failed += 1
        if self.head_thread:
            self._credits.release()
        self._log.add(record)
        if self.on_result is not None and record.error is None:
            self.on_result(FrameResult(record, inputs, outputs))

    async def _drive(self, sender: asyncio.Task[None], connector: asyncio.Task[None] | None = None) -> None:
        """Until the frames are prepared (--frames, source end) or a stop, then drain: every frame
        captured gets its result unless ``drain_timeout_s`` passes or a second stop comes (those
        frames are reported lost). A ``connector`` still connecting that fails (the server does
        not serve a model, TLS, --connect-timeout) ends the run with its error."""
        assert self._stop_async is not None and self._abort_async is not None
        stop = asyncio.ensure_future(self._stop_async.wait())
        waits: set[asyncio.Future[Any]] = {sender, stop}
        if connector is not None:
            waits.add(connector)
        try:
            while True:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if connector in done:
                    waits.discard(connector)
                    if connector.exception() is not None:
                        raise connector.exception()  # type: ignore[misc]
                    if not done - {connector}:
                        continue  # connected: frames go on
                break
        finally:
            stop.cancel()
        deadline = time.perf_counter() + self.options.drain_timeout_s
        if not sender.done():
            # stopped: the worker finishes its frame; hand what it captured to the client
            abort = asyncio.ensure_future(self._abort_async.wait())
            try:
                await asyncio.wait(
                    {sender, abort}, timeout=self.options.drain_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                abort.cancel()
        # the frames in flight are drained before a failed sender's error is raised (a source that
        # failed, a frame that can never be sent): they were captured, they get their results
        error = sender.exception() if sender.done() and not sender.cancelled() else None
        client = self._client
        if client is not None:
            if client.in_flight:
                _LOGGER.info("draining %d frame(s) in flight", client.in_flight)
            remaining = max(deadline - time.perf_counter(), 0.0)
            if not await client.drain(remaining, self._abort_async):
                abandoned = client.abandon()
                for entry in abandoned:  # a lost frame's record says how often it was sent
                    entry.context.record.sends = entry.sends
                unsent = self._captured - self._completed - self._failed - len(abandoned)
                _LOGGER.warning(
                    "%d frame(s) got no reply before shutdown%s; reported lost",
                    len(abandoned),
                    f", {unsent} more captured and never sent" if unsent > 0 else "",
                )
        if error is not None:
            raise error

    async def _log_lines(self) -> None:
        while True:
            await asyncio.sleep(self.options.log_interval_s)
            in_flight = self._client.in_flight if self._client else 0
            label = "adaptive" if self.chooser is not None else self.export.name
            _LOGGER.info("%s: %s", label, self._log.line(in_flight))


def _check_alternatives(exports: list[EdgeExport]) -> None:
    """Several exports to adapt among must be of one model: the same inputs (so one source feeds
    them all), the same outputs, different names."""
    first = exports[0]
    names = [e.name for e in exports]
    if len(set(names)) != len(names):
        raise SplitpipeError(
            f"exports to adapt among need different names (the same export given twice?); got {names}"
        )

    for other in exports[1:]:
        for what, a, b in (
            ("inputs", [t.describe() for t in first.inputs], [t.describe() for t in other.inputs]),
            ("outputs", [t.name for t in first.outputs], [t.name for t in other.outputs]),
            ("preprocess", first.preprocess, other.preprocess),
        ):
            if a != b:
                raise SplitpipeError(
                    f"exports {first.directory} and {other.directory} differ in their {what} ({a} vs {b}); "
                    "the agent adapts only among splits of one model"
                )


def _check_head_inputs(export: EdgeExport, takes: list[Any]) -> None:
    """The manifest's ``inputs`` (what the source makes) are what the head file takes: names,
    dtypes and fixed dimensions."""
    head = {t.name: t for t in takes}
    if len(takes) != len(export.inputs) or not all(
        t.name in head and t.agrees(head[t.name]) for t in export.inputs
    ):
        raise SplitpipeError(
            f"export {export.directory}: the manifest's inputs ({', '.join(t.describe() for t in export.inputs)}) "
            f"do not match the head's ({', '.join(t.describe() for t in takes)}); export again"
        )


def _planned_link(exports: list[EdgeExport]) -> Link:
    """The link the plan assumed (the first manifest that names one), until frames measure it."""
    for e in exports:
        link = (e.manifest.get("predictions") or {}).get("link") or {}
        try:
            mbit, rtt = float(link["bandwidth_mbps"]), float(link["rtt_ms"])
        except (KeyError, TypeError, ValueError):
            continue
        if mbit > 0 and rtt >= 0:
            return Link(rtt, mbit * 1e6 / 8 / 1e3, "planned")
    return Link(0.0, float("inf"), "unknown")  # no plan: remote looks free until measured


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
