"""Dynamic batching: requests for one tail, from every stream and client, share tail runs.

One :class:`Batcher` per tail, with ``instances`` tail threads. The event loop appends checked
requests to a queue; a tail thread takes the queued prefix whose non-batch dimensions agree, up
to ``max_batch`` rows, waiting at most ``batch_timeout_us`` after the first one for more, runs
decode + tail + response building, and hands the results back to the loop in one callback. The
loop keeps receiving meanwhile, and a thread that finishes a run finds the requests that came in
during it already queued: that is why a timeout of 0 already batches under load, and why a busy
server pays one thread hand-off per batch rather than per request.

With no batch timeout, a tail whose runs take under :data:`INLINE_RUN_US` (a trivial tail, a
tiny model) runs on the event loop instead, whenever no thread run is busy and nothing is
queued: the hand-off to a thread and back would cost more CPU than the run itself. That is
judged by the wall times of runs on the loop only (the first runs of a tail, and while it runs
in threads one in :data:`_PROBE_EVERY` requests that find it idle), never by runs in threads,
whose wall times include waiting for the GIL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from typing import Union

import grpc
import numpy as np

from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server.metrics import Metrics
from splitpipe.server.models import TailModel
from splitpipe.server.options import ServerOptions
from splitpipe.server.request import InferError, Prepared, build_response

_LOGGER = logging.getLogger(__name__)

Result = Union[pb.ModelStreamInferResponse, InferError]  # noqa: UP007 (pb types are not subscriptable at runtime)
#: what :meth:`Batcher.submit` gives: the result (run on the loop) or its future (queued)
Outcome = Union[Result, "asyncio.Future[Result]"]

#: runs (decode, tail, responses) shorter than this run on the event loop: a hand-off to a tail
#: thread and back costs about 60 us of CPU per run on the development machine (thread wake-ups,
#: the loop's self-pipe, the GIL), which such a run does not win back by overlapping (the same
#: limit as the agent's for heads). Judged by the median of the latest few runs on the loop, so
#: that a session's slow first run or a moment the process was not scheduled do not count.
INLINE_RUN_US = 500
_PROBE_EVERY = 64


class Batcher:
    def __init__(self, model: TailModel, options: ServerOptions, metrics: Metrics) -> None:
        self.model = model
        self.max_rows = options.max_batch if model.batchable else 1
        self.timeout_s = options.batch_timeout_us / 1e6
        self.max_bytes = options.max_tensor_bytes
        # with remote runs (Ray Serve), one thread per replica keeps every replica busy
        self.instances = max(options.instances, options.ray.replicas) if options.ray else options.instances
        self._metrics = metrics
        # Shared by the event loop (appends) and the tail threads (take batches), under _cond.
        self._queue: deque[tuple[Prepared, asyncio.Future[Result]]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # thread runs in progress (under _cond)
        # the event loop's own: wall times of the latest runs on the loop (us), and the choice
        self._inline_us: deque[float] = deque(maxlen=5)
        # a batch timeout asks to wait for batches, and remote runs would block the loop: threads
        self.inline = self.timeout_s == 0 and not model.remote
        self._idle_submits = 0

    def start(self) -> None:
        """Start the tail threads; call from the event loop that will submit requests."""
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._serve, name=f"tail-{self.model.name}-{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Let running batches finish, stop the threads; requests still queued are answered
        UNAVAILABLE."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        threads, self._threads = self._threads, []

        def join() -> None:
            for thread in threads:
                thread.join()

        await asyncio.get_running_loop().run_in_executor(None, join)
        await asyncio.sleep(0)  # deliver what the threads handed over while stopping
        gone = InferError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        _deliver(left, [gone] * len(left))

    def submit(self, item: Prepared) -> Outcome:
        """Run a checked request now, on the loop (a fast tail with nothing else busy), or queue
        it for a tail thread; gives its response or InferError, or a future of it."""
        assert self._loop is not None, "Batcher.start() first"
        item.enqueued = start = time.perf_counter()
        with self._cond:
            here = (
                not self._queue
                and not self._busy
                and not self._stopping
                and self.timeout_s == 0
                and not self.model.remote
            )
            if here and not self.inline:
                self._idle_submits += 1
                here = self._idle_submits % _PROBE_EVERY == 0
            if not here:
                future: asyncio.Future[Result] = self._loop.create_future()
                self._queue.append((item, future))
                self._cond.notify()
                return future
        (result,) = self._run_batch([item])
        recent = self._inline_us
        recent.append((time.perf_counter() - start) * 1e6)
        self.inline = len(recent) < 3 or sorted(recent)[len(recent) // 2] < INLINE_RUN_US
        return result

    # -- forming batches (tail threads, under _cond) -----------------------------------------
    def _prefix(self) -> tuple[int, bool]:
        """How many queued requests the next batch takes, and whether it is complete (full, or
        stopped by a request that cannot join) rather than merely out of queued requests."""
        first = self._queue[0][0]
        rows, count = first.rows, 1
        for item, _ in itertools.islice(self._queue, 1, None):
            if item.key != first.key or rows + item.rows > self.max_rows:
                return count, True
            rows += item.rows
            count += 1
        return count, rows >= self.max_rows

    def _next_batch(self) -> list[tuple[Prepared, asyncio.Future[Result]]] | None:
        """Wait for a batch (None: stop). While a run is busy nobody waits here, so requests
        that arrive meanwhile form the next batch."""
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                if self.max_rows == 1:
                    self._busy += 1
                    return [self._queue.popleft()]
                if self.timeout_s > 0:
                    deadline = self._queue[0][0].enqueued + self.timeout_s
                    while self._queue and not self._stopping and not self._prefix()[1]:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if not self._queue or self._stopping:
                        continue  # another instance took them, or we are stopping
                count = self._prefix()[0]
                self._busy += 1
                return [self._queue.popleft() for _ in range(count)]

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        while (batch := self._next_batch()) is not None:
            results = self._run_batch([b[0] for b in batch])
            with self._cond:
                self._busy -= 1
            try:
                loop.call_soon_threadsafe(_deliver, batch, results)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                return

    # -- running a batch (tail thread, or the loop) -------------------------------------------
    def _run_batch(self, items: list[Prepared]) -> list[Result]:
        try:
            return self._execute(items)
        except Exception as exc:  # a bug in this module: fail the batch, keep serving
            _LOGGER.exception("batch of %s failed", self.model.name)
            return [InferError(grpc.StatusCode.INTERNAL, f"internal error: {exc}")] * len(items)

    def _execute(self, items: list[Prepared]) -> list[Result]:
        start = time.perf_counter()
        results: list[Result | None] = [None] * len(items)
        ready: list[int] = []
        for i, item in enumerate(items):
            try:
                item.decode(self.max_bytes)
                ready.append(i)
            except InferError as exc:
                results[i] = exc
        if ready:
            self._run(items, ready, results, start)
        return [r if r is not None else InferError(grpc.StatusCode.INTERNAL, "no result") for r in results]

    def _run(
        self, items: list[Prepared], ready: list[int], results: list[Result | None], start: float
    ) -> None:
        model = self.model
        batch = [items[i] for i in ready]
        rows = sum(item.rows for item in batch)
        if len(batch) == 1:
            arrays = batch[0].arrays
        else:
            arrays = [np.concatenate([item.arrays[k] for item in batch]) for k in range(len(model.inputs))]
        feed = {spec.name: array for spec, array in zip(model.inputs, arrays, strict=True)}
        tail_start = time.perf_counter()
        try:
            produced = model.runner.infer(feed, check=False)  # prepare() checked the feed already
            outputs = [produced[spec.name] for spec in model.outputs]
            if model.batchable and any(o.ndim == 0 or o.shape[0] != rows for o in outputs):
                raise RuntimeError(
                    f"a batch of {rows} rows gave outputs of shapes {[o.shape for o in outputs]}"
                )
        except Exception as exc:
            if len(ready) > 1:
                # what the tail fails on may be one request's values (an index out of range):
                # run each request alone, so that the others of the batch do not fail with it
                _LOGGER.warning(
                    "tail %s failed on a batch of %d requests; running them one by one",
                    model.name,
                    len(ready),
                )
                for i in ready:
                    self._run(items, [i], results, start)
                return
            _LOGGER.exception("tail %s failed on a batch of %d", model.name, rows)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            error = InferError(grpc.StatusCode.INTERNAL, f"the tail of {model.name!r} failed: {first}")
            for i in ready:
                results[i] = error
            return
        tail_us = int((time.perf_counter() - tail_start) * 1e6)
        self._metrics.batch_done(model.name, rows, len(batch), tail_us)
        offset = 0
        for i, item in zip(ready, batch, strict=True):
            results[i] = build_response(
                item,
                outputs,
                offset,
                offset + item.rows,
                queue_us=int((start - item.enqueued) * 1e6),
                tail_us=tail_us,
                batch_size=rows,
                instances=self.instances,
            )
            offset += item.rows


def _deliver(batch: list[tuple[Prepared, asyncio.Future[Result]]], results: list[Result]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():  # a cancelled call no longer waits
            future.set_result(result)
