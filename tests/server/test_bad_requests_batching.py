"""A request whose values the tail fails on must not fail the other requests of its batch."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from splitpipe.server import ServerOptions, ServerThread
from tests.server import wire
from tests.server.tiny_tails import _tensor_json, write_export


def _lookup(directory: Path) -> Path:
    """i int64 [N] -> y = T[i] float32 [N,4], T a 10x4 table: an index beyond 9 fails the tail."""
    from onnx import helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "T")
    return write_export(
        directory,
        "lookup",
        [helper.make_node("Gather", ["T", "i"], ["y"], axis=0)],
        cut=[_tensor_json("i", "int64", [None])],
        outputs=[_tensor_json("y", "float32", [None, 4])],
        initializers=[table],
    )


def test_a_request_the_tail_fails_on_fails_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before, the whole batch got INTERNAL: one client's bad index failed another client's frames."""
    export = _lookup(tmp_path / "lookup")
    indices = [[1, 2], [99], [3, 4], [0]]  # 6 rows: one full batch
    requests = [
        wire.make_request("lookup", {"i": np.array(i, np.int64)}, request_id=str(n))
        for n, i in enumerate(indices)
    ]
    options = ServerOptions(max_batch=6, batch_timeout_us=5_000_000)
    with (
        caplog.at_level(logging.WARNING, logger="splitpipe.server.batcher"),
        ServerThread([export], options) as running,
        wire.channel(running.port) as chan,
    ):
        responses = list(wire.stub(chan).ModelStreamInfer(iter(requests), timeout=60))
    assert any("running them one by one" in r.getMessage() for r in caplog.records)  # they were one batch
    assert [r.infer_response.id for r in responses] == ["0", "1", "2", "3"]
    assert [bool(r.error_message) for r in responses] == [False, True, False, False]
    assert "the tail of 'lookup' failed" in responses[1].error_message
    assert responses[1].infer_response.parameters["error_code"].string_param == grpc.StatusCode.INTERNAL.name
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    for n in (0, 2, 3):
        np.testing.assert_array_equal(wire.outputs(responses[n].infer_response)["y"], table[indices[n]])
