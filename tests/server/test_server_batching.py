"""Dynamic batching: requests from several streams share tail runs and still get their own rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe.server import ServerOptions, ServerThread
from tests.server import tiny_tails, wire

# A long timeout makes batches form deterministically in a test; benchmarks measure real settings.
TIMEOUT_US = 300_000


@pytest.fixture(scope="module")
def batching(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    free = tiny_tails.free_length(tmp_path_factory.mktemp("free") / "free-length")
    dirs = [exports["relu-mean"], exports["gemm"], free]
    with ServerThread(dirs, ServerOptions(max_batch=8, batch_timeout_us=TIMEOUT_US)) as running:
        yield running


def _streams(port: int, per_stream: list[list[Any]]) -> list[list[Any]]:
    """Send each list of requests on its own channel and stream, all at once."""
    results: list[list[Any]] = [[] for _ in per_stream]
    barrier = threading.Barrier(len(per_stream))

    def run(index: int) -> None:
        with wire.channel(port) as chan:
            stub = wire.stub(chan)
            barrier.wait()
            results[index] = list(stub.ModelStreamInfer(iter(per_stream[index]), timeout=60))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(per_stream))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_streams_share_batches_with_correct_rows(
    batching: ServerThread, exports: dict[str, Path]
) -> None:
    rng = np.random.default_rng(7)
    inputs = [[rng.standard_normal((1, 4, 3, 3)).astype(np.float32) for _ in range(4)] for _ in range(4)]
    requests = [
        [wire.make_request("relu-mean", {"x": x}, request_id=f"s{s}-{i}") for i, x in enumerate(xs)]
        for s, xs in enumerate(inputs)
    ]
    before = batching.metrics.snapshot()["models"].get("relu-mean", {"batches": 0})["batches"]
    results = _streams(batching.port, requests)
    sizes = []
    for s, (xs, responses) in enumerate(zip(inputs, results, strict=True)):
        assert [r.infer_response.id for r in responses] == [f"s{s}-{i}" for i in range(4)]
        for x, response in zip(xs, responses, strict=True):
            assert response.error_message == ""
            want = tiny_tails.run_tail(exports["relu-mean"], {"x": x})
            got = wire.outputs(response.infer_response)
            np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
            np.testing.assert_allclose(got["peak"], want["peak"], rtol=1e-6)
            sizes.append(wire.stage_params(response.infer_response)["batch_size"])
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8
    after = batching.metrics.snapshot()["models"]["relu-mean"]["batches"]
    assert after - before < 16, "16 requests ran in fewer tail runs than requests"


def test_batches_respect_max_rows(batching: ServerThread) -> None:
    xs = [np.full((3, 4, 3, 3), i, np.float32) for i in range(6)]
    responses = _streams(batching.port, [[wire.make_request("relu-mean", {"x": x})] for x in xs])
    for x, (response,) in zip(xs, responses, strict=True):
        params = wire.stage_params(response.infer_response)
        assert 3 <= params["batch_size"] <= 8  # two requests of 3 rows fit, a third does not
        np.testing.assert_array_equal(wire.outputs(response.infer_response)["peak"], x[:, :, 0, 0])


def test_fixed_batch_tail_is_never_batched(batching: ServerThread) -> None:
    xs = [np.full((1, 16), i, np.float32) for i in range(6)]
    responses = _streams(batching.port, [[wire.make_request("gemm", {"x": x})] for x in xs])
    assert all(wire.stage_params(r.infer_response)["batch_size"] == 1 for (r,) in responses)


def test_requests_batch_only_with_matching_shapes(batching: ServerThread) -> None:
    lengths = [5, 7, 5, 7, 9, 5]
    xs = [np.arange(n, dtype=np.float32)[None, :] * (i + 1) for i, n in enumerate(lengths)]
    responses = _streams(batching.port, [[wire.make_request("free-length", {"x": x})] for x in xs])
    for x, (response,) in zip(xs, responses, strict=True):
        assert response.error_message == ""
        np.testing.assert_allclose(wire.outputs(response.infer_response)["y"], x.sum(axis=1))
        assert wire.stage_params(response.infer_response)["batch_size"] <= lengths.count(x.shape[1])


def test_fast_tails_run_on_the_event_loop_slow_ones_in_threads(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    slow = tiny_tails.slow_chain(tmp_path / "slow")
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 3)).astype(np.float32)
    h = np.random.default_rng(4).standard_normal((1, 1024)).astype(np.float32)
    with (
        ServerThread([exports["relu-mean"], slow], ServerOptions()) as running,
        wire.channel(running.port) as chan,
    ):
        stub = wire.stub(chan)
        # one by one, so that each request finds its tail idle; more than _PROBE_EVERY of the slow one
        for i in range(80):
            fast_reply = stub.ModelInfer(wire.make_request("relu-mean", {"x": x}), timeout=30)
            if i < 10:
                slow_reply = stub.ModelInfer(wire.make_request("slow-chain", {"x": h}), timeout=30)
        for _ in range(70):
            slow_reply = stub.ModelInfer(wire.make_request("slow-chain", {"x": h}), timeout=30)
        batchers = running.server._batchers  # type: ignore[union-attr]
        assert batchers["relu-mean"].inline, "a tail of microseconds runs on the loop"
        assert not batchers["slow-chain"].inline, "a tail of milliseconds runs in a thread"
    np.testing.assert_allclose(
        wire.outputs(fast_reply)["mean"],
        tiny_tails.run_tail(exports["relu-mean"], {"x": x})["mean"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        wire.outputs(slow_reply)["y"], tiny_tails.run_tail(slow, {"x": h})["y"], rtol=1e-4
    )


def test_a_batch_timeout_keeps_even_fast_tails_in_threads(batching: ServerThread) -> None:
    stub_requests = [wire.make_request("gemm", {"x": np.ones((1, 16), np.float32)}) for _ in range(3)]
    with wire.channel(batching.port) as chan:
        for request in stub_requests:
            wire.stub(chan).ModelInfer(request, timeout=30)
    assert not batching.server._batchers["gemm"].inline  # type: ignore[union-attr]
