"""Plain dicts to and from InferParameter maps."""

from __future__ import annotations

import pytest

from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import parameters_dict, set_parameters


def test_round_trip_keeps_python_types() -> None:
    params: dict[str, bool | int | float | str] = {
        "flag": True,
        "count": -(2**62),
        "scale": 0.125,
        "codec": "int8/ch+zstd",
        "off": False,
        "zero": 0,
    }
    tensor = pb.ModelInferRequest.InferInputTensor()
    set_parameters(tensor.parameters, params)
    assert tensor.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert tensor.parameters["zero"].WhichOneof("parameter_choice") == "int64_param"
    back = parameters_dict(
        pb.ModelInferRequest.InferInputTensor.FromString(tensor.SerializeToString()).parameters
    )
    assert back == params
    assert all(type(back[k]) is type(v) for k, v in params.items())


def test_unset_parameter_reads_as_none_and_bad_types_are_refused() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor()
    tensor.parameters["empty"].SetInParent()
    assert parameters_dict(tensor.parameters) == {"empty": None}
    with pytest.raises(TypeError, match="list"):
        set_parameters(tensor.parameters, {"shape": [1, 2]})  # type: ignore[dict-item]
