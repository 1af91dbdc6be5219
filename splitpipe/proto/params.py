"""Plain dicts to and from the Open Inference Protocol's ``map<string, InferParameter>``.

Codec meta (``CodecMeta.to_params()``) travels in an input's parameters and the server's stage
durations in a response's; both sides use these two functions, so the mapping of Python types to
the ``parameter_choice`` oneof lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

ParamValue = bool | int | float | str

#: response parameters the server sets with its own stage durations and batching (all int64;
#: durations in microseconds; docs/server.md)
STAGE_PARAMS = ("queue_us", "decode_us", "tail_us", "batch_size", "tail_instances", "total_us")


def set_parameters(target: MutableMapping[str, Any], params: Mapping[str, ParamValue]) -> None:
    """Write ``params`` into an InferParameter map: bool -> bool_param, int -> int64_param,
    float -> double_param, str -> string_param (bool first: a bool is an int in Python)."""
    for key, value in params.items():
        entry = target[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.int64_param = value
        elif isinstance(value, float):
            entry.double_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            raise TypeError(f"parameter {key!r}: {type(value).__name__} cannot travel as an InferParameter")


def parameters_dict(source: Mapping[str, Any]) -> dict[str, ParamValue | None]:
    """An InferParameter map as a plain dict (an unset parameter reads as None)."""
    out: dict[str, ParamValue | None] = {}
    for key, entry in source.items():
        choice = entry.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(entry, choice)
    return out
