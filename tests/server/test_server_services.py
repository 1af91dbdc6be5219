"""gRPC health checking, server reflection, shutdown in-process, the periodic log line, loading."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server import ServerOptions, ServerThread, load_tail
from tests.server import tiny_tails, wire


def test_health_service_reports_serving(server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with wire.channel(server.port) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_the_inference_service(server: ServerThread) -> None:
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with wire.channel(server.port) as chan:
        database = ProtoReflectionDescriptorDatabase(chan)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelStreamInfer" in {m.name for m in service.methods}
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert request.fields_by_name["raw_input_contents"].number == 7


def test_stop_turns_health_off_and_refuses_new_calls(exports: dict[str, Path]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = ServerThread([exports["gemm"]]).start()
    try:
        with wire.channel(running.port) as chan:
            assert wire.stub(chan).ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            running.stop(grace=1.0)
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_health_watchers_see_not_serving_when_shutdown_begins(exports: dict[str, Path]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = ServerThread([exports["gemm"]]).start()
    try:
        with wire.channel(running.port) as chan:
            watch = health_pb2_grpc.HealthStub(chan).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            running.stop(grace=2.0)
            statuses: list[int] = []
            with pytest.raises(grpc.RpcError):  # the watch is cancelled once the grace period ends
                statuses.extend(reply.status for reply in watch)
            assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
    finally:
        running.stop()


def test_periodic_log_line(exports: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="splitpipe.server")
    with ServerThread([exports["gemm"]], ServerOptions(log_interval_s=0.2)) as running:
        with wire.channel(running.port) as chan:
            stub = wire.stub(chan)
            for _ in range(5):
                stub.ModelInfer(wire.make_request("gemm", {"x": np.ones((1, 16), np.float32)}), timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("req/s" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "req/s" in r.getMessage()]
    assert lines and lines[0].startswith("gemm: ") and "p99" in lines[0] and "(measured)" in lines[0]


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _rewrite(directory: Path, **changes: object) -> None:
    manifest = _manifest(directory)
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_load_tail_reads_batchability_from_the_onnx_file(tmp_path: Path) -> None:
    batched = load_tail(tiny_tails.relu_mean(tmp_path / "b"), ServerOptions())
    fixed = load_tail(tiny_tails.relu_mean(tmp_path / "f", batch=2), ServerOptions())
    try:
        assert batched.batchable and not fixed.batchable
        assert [s.shape for s in fixed.inputs] == [(2, 4, 3, 3)]
    finally:
        batched.close()
        fixed.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _rewrite(d, format="other"), 'no "format"'),
        (lambda d: _rewrite(d, version=9), "manifest version 9 is not supported"),
        (lambda d: _rewrite(d, name="bad name!"), "model name 'bad name!'"),
        (
            lambda d: _rewrite(d, files={"tail": {"path": "../tail.onnx", "sha256": "0"}}),
            "outside the export",
        ),
        (lambda d: _rewrite(d, files={"tail": {"path": "gone.onnx", "sha256": "0"}}), "not found"),
        (
            lambda d: _rewrite(d, cut=[{"name": "x", "dtype": "float16", "shape": [None, 4, 3, 3]}]),
            "do not match the tail's inputs",
        ),
        (
            lambda d: _rewrite(d, cut=[{"name": "x", "dtype": "float32", "shape": [None, 4, 3, 5]}]),
            "do not match the tail's inputs",
        ),
        (
            lambda d: _rewrite(d, outputs=[{"name": "mean", "dtype": "float32", "shape": [None, 4]}]),
            "outputs",
        ),
        (lambda d: _rewrite(d, cut=[{"name": "x"}]), "is not {name, dtype, shape}"),
    ],
)
def test_bad_export_dirs_are_refused_with_a_reason(tmp_path: Path, edit: object, message: str) -> None:
    directory = tiny_tails.relu_mean(tmp_path / "e")
    edit(directory)  # type: ignore[operator]
    with pytest.raises(SplitpipeError) as info:
        load_tail(directory, ServerOptions())
    assert message in str(info.value)


def test_two_exports_under_one_name_are_refused(tmp_path: Path) -> None:
    a = tiny_tails.relu_mean(tmp_path / "a", name="same")
    b = tiny_tails.fixed_gemm(tmp_path / "b", name="same")
    with pytest.raises(SplitpipeError, match="served twice"):
        ServerThread([a, b]).start()


def test_options_are_checked() -> None:
    # named as the flags of `splitpipe serve` (docs/server.md), in their units
    with pytest.raises(SplitpipeError, match=r"^--max-batch must be at least 1, got 0$"):
        ServerOptions(max_batch=0)
    with pytest.raises(SplitpipeError, match=r"^--max-tensor-mb must be at least 1, got -1$"):
        ServerOptions(max_tensor_bytes=-(1 << 20))
    # sizes that are not whole MiB, which only the Python API can give, as the fields, in bytes
    with pytest.raises(SplitpipeError, match=r"^max_tensor_bytes must be at least 1, got -5$"):
        ServerOptions(max_tensor_bytes=-5)
    with pytest.raises(SplitpipeError, match=r"^max_message_bytes must be at most 2147483647 \(gRPC"):
        ServerOptions(max_message_bytes=2**31 + 1)
    with pytest.raises(SplitpipeError, match=r"^stream_window must be at least 1, got 0$"):
        ServerOptions(stream_window=0)
    with pytest.raises(SplitpipeError, match="batch timeout"):
        ServerOptions(batch_timeout_us=-1)
