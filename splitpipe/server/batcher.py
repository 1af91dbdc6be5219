"""Dynamic batching: requests for one tail, from every stream and client, share tail runs.

One :class:`Batcher` per tail. Requests queue in arrival order; a worker takes the queued
prefix whose non-batch dimensions agree, up to ``max_batch`` rows, waiting at most
``batch_timeout_us`` after the first one for more, and runs decode + tail + response building
in a thread, so the event loop keeps receiving while the tail runs. While a run is busy the
next batch fills up by itself, which is why a timeout of 0 already batches under load.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
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


class Batcher:
    def __init__(self, model: TailModel, options: ServerOptions, metrics: Metrics) -> None:
        self.model = model
        self.max_rows = options.max_batch if model.batchable else 1
        self.timeout_s = options.batch_timeout_us / 1e6
        self.max_bytes = options.max_tensor_bytes
        self.instances = options.instances
        self._metrics = metrics
        self._queue: deque[tuple[Prepared, asyncio.Future[Result]]] = deque()
        self._wakeup = asyncio.Event()
        self._forming = asyncio.Lock()
        self._executor = ThreadPoolExecutor(options.instances, thread_name_prefix=f"tail-{model.name}")
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{self.model.name}-{i}")
            for i in range(self.instances)
        ]

    async def stop(self) -> None:
        """Stop the workers; requests still queued are answered UNAVAILABLE."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        gone = InferError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_result(gone)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def submit(self, item: Prepared) -> asyncio.Future[Result]:
        """Queue a checked request; the future resolves to its response or its InferError."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        item.enqueued = time.perf_counter()
        self._queue.append((item, future))
        self._wakeup.set()
        return future

    # -- forming batches (event loop) -------------------------------------------------------
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

    async def _next_batch(self) -> list[tuple[Prepared, asyncio.Future[Result]]]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.max_rows > 1 and self.timeout_s > 0:
            deadline = self._queue[0][0].enqueued + self.timeout_s
            while not self._prefix()[1]:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
        count = self._prefix()[0] if self.max_rows > 1 else 1
        return [self._queue.popleft() for _ in range(count)]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._forming:
                batch = await self._next_batch()
            try:
                results = await loop.run_in_executor(self._executor, self._execute, [b[0] for b in batch])
            except asyncio.CancelledError:
                gone = InferError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
                results = [gone] * len(batch)
                raise
            except Exception as exc:  # a bug in this module: fail the batch, keep serving
                _LOGGER.exception("batch of %s failed", self.model.name)
                results = [InferError(grpc.StatusCode.INTERNAL, f"internal error: {exc}")] * len(batch)
            finally:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    # -- running a batch (tail thread) ------------------------------------------------------
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
            )
            offset += item.rows
