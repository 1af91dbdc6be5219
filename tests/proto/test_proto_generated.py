"""The generated code is current, wire-compatible with tritonclient, and imports beside it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_generate() -> Any:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current() -> None:
    stale = _load_generate().stale_files()
    assert stale == [], f"run `python proto/generate.py`; stale: {stale}"


def _field_sig(field: Any) -> tuple[Any, ...]:
    return (
        field.number,
        field.name,
        field.type,
        field.is_repeated if hasattr(field, "is_repeated") else field.label,
        field.message_type.full_name if field.message_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


def _message_sig(desc: Any) -> dict[str, Any]:
    sig: dict[str, Any] = {"fields": sorted(_field_sig(f) for f in desc.fields)}
    for nested in desc.nested_types:
        sig[nested.name] = _message_sig(nested)
    sig["map_entry"] = desc.GetOptions().map_entry
    return sig


def test_wire_compatible_with_tritonclient() -> None:
    from tritonclient.grpc import service_pb2 as triton

    from splitpipe.proto.inference import grpc_service_pb2 as ours

    ours_fd, triton_fd = ours.DESCRIPTOR, triton.DESCRIPTOR
    assert ours_fd.package == triton_fd.package == "inference"
    assert ours_fd.message_types_by_name, "no messages generated"
    for name, desc in ours_fd.message_types_by_name.items():
        assert name in triton_fd.message_types_by_name, f"tritonclient has no message {name}"
        assert _message_sig(desc) == _message_sig(triton_fd.message_types_by_name[name]), name

    service = ours_fd.services_by_name["GRPCInferenceService"]
    theirs = triton_fd.services_by_name["GRPCInferenceService"]
    assert service.full_name == theirs.full_name == "inference.GRPCInferenceService"
    names = {m.name for m in service.methods}
    assert names == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
    }
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


def test_messages_round_trip_through_tritonclient_classes() -> None:
    from tritonclient.grpc import service_pb2 as triton

    from splitpipe.proto.inference import grpc_service_pb2 as ours

    request = ours.ModelInferRequest(model_name="m", id="7")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.parameters["codec"].string_param = "int8"
    tensor.parameters["scale"].double_param = 0.5
    request.raw_input_contents.append(b"\x00" * 24)
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].parameters["scale"].double_param == 0.5
    assert ours.ModelInferRequest.FromString(theirs.SerializeToString()) == request


def test_descriptors_live_in_a_private_pool() -> None:
    from google.protobuf import descriptor_pool

    from splitpipe.proto import POOL
    from splitpipe.proto.inference import grpc_service_pb2 as ours

    assert ours.DESCRIPTOR.pool is POOL
    assert POOL is not descriptor_pool.Default()


@pytest.mark.parametrize(
    "imports",
    [
        "import tritonclient.grpc; import splitpipe.server",
        "import splitpipe.server; import tritonclient.grpc",
        "import tritonclient.grpc.aio; from splitpipe.proto.inference import grpc_service_pb2_grpc",
        "from splitpipe.proto.inference import grpc_service_pb2_grpc; import tritonclient.grpc.aio",
    ],
)
def test_imports_beside_tritonclient_in_either_order(imports: str) -> None:
    # A fresh interpreter per order: the default pool is process-wide.
    probe = subprocess.run(
        [sys.executable, "-c", imports + "; print('ok')"], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr
