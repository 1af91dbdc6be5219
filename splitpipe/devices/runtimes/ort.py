"""ONNX Runtime runner: CPU everywhere, CUDA and TensorRT execution providers where present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.runtimes.base import Runner, TensorSpec
from splitpipe.errors import SplitpipeError, UnavailableError

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def ort_dtype(type_str: str) -> np.dtype[Any]:
    try:
        return np.dtype(_ORT_TYPES[type_str])
    except KeyError:
        raise SplitpipeError(f"unsupported tensor type {type_str}; supported: {sorted(_ORT_TYPES)}") from None


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(arg.name, ort_dtype(arg.type), shape)


def resolve_providers(names: list[str]) -> list[str]:
    """Map short names (cpu, cuda, tensorrt) to ORT providers, checking that they exist here."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    out = []
    for name in names:
        full = _PROVIDERS.get(name, name)
        if full not in available:
            raise UnavailableError(
                f"Requested provider was: {name}, but available providers are: {available}"
            )
        out.append(full)
    return out


class OrtRunner(Runner):
    """Run an ONNX model (path or serialized bytes) with ONNX Runtime.

    ``threads`` pins intra-op threads (inter-op is 1, execution sequential) so that timings
    are reproducible; ``None`` lets ONNX Runtime choose.
    """

    name = "ort"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        threads: int | None = 1,
        providers: list[str] | None = None,
        optimization: str = "all",
        log_severity: int = 3,
    ) -> None:
        super().__init__()
        self._model = model
        self.threads = threads
        self.providers = providers or ["cpu"]
        self.optimization = optimization
        self.log_severity = log_severity
        self._session: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    def _activate(self) -> None:
        import onnxruntime as ort

        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = self.log_severity
        model = self._model
        if not isinstance(model, bytes):
            path = Path(model)
            if not path.is_file():
                raise SplitpipeError(f"ONNX model not found: {path}")
            model = str(path)
        try:
            self._session = ort.InferenceSession(model, so, providers=resolve_providers(self.providers))
        except UnavailableError:
            raise
        except Exception as exc:  # ORT raises its own exception types for corrupt models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SplitpipeError(f"ONNX Runtime cannot load the model: {first}") from None
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        return dict(zip(names, self._session.run(names, feed), strict=True))
