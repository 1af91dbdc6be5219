"""Open Inference Protocol datatypes and the numpy dtypes they carry (the server and the agent
both use this table; it needs numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

# KServe v2 datatype -> numpy dtype. BYTES and BF16 have no numpy equivalent a tail could take.
_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_KSERVE = {dtype: name for name, dtype in _NUMPY.items()}

# datatype -> the InferTensorContents field that carries it when raw_input_contents is not used
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def numpy_dtype(datatype: str) -> np.dtype[Any] | None:
    """The numpy dtype of a KServe datatype, or None if the server cannot take it."""
    return _NUMPY.get(datatype)


def kserve_datatype(dtype: np.dtype[Any]) -> str:
    """The KServe datatype of a numpy dtype (raises KeyError for dtypes the protocol lacks)."""
    return _KSERVE[np.dtype(dtype)]


def datatypes() -> list[str]:
    return list(_NUMPY)
