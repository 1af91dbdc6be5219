"""Client side of the wire format, written from docs/server.md, with our generated stubs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from splitpipe.proto.datatypes import kserve_datatype
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.inference import grpc_service_pb2_grpc as pb_grpc
from splitpipe.proto.params import parameters_dict, set_parameters

MIB = 1 << 20


def make_request(
    model: str, arrays: Mapping[str, np.ndarray], codec: str | None = None, request_id: str = ""
) -> pb.ModelInferRequest:
    """One input per array; ``codec`` compresses each with splitpipe.kernels, None sends it plain."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=kserve_datatype(array.dtype), shape=array.shape)
        if codec is None:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        else:
            from splitpipe.kernels import get_codec

            payload, meta = get_codec(codec).encode(array)
            set_parameters(tensor.parameters, meta.to_params())
            request.raw_input_contents.append(payload)
    return request


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    from splitpipe.proto.datatypes import numpy_dtype

    return {
        t.name: np.frombuffer(raw, dtype=numpy_dtype(t.datatype)).reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def stage_params(response: pb.ModelInferResponse) -> dict[str, Any]:
    return parameters_dict(response.parameters)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)],
    )


def stub(chan: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(chan)
