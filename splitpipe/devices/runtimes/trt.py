"""TensorRT runner for serialized engines, written against the TensorRT 10 Python API.

Named I/O tensors (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``) and ``execute_async_v3`` on a CUDA stream with device buffers. Device
memory comes from cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``) or, if
that is missing, from torch's CUDA allocator. tensorrt, cuda-python and torch are imported
only when a runner is probed or activated, so the agent imports this module on a Raspberry Pi.

An engine is specific to the GPU and TensorRT version that built it: build it on the target
(``engine_from_onnx`` here, or ``trtexec``) rather than copying it between machines.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.runtimes.base import Runner, TensorSpec
from splitpipe.errors import SplitpipeError, UnavailableError

BUFFER_BACKENDS = ("cuda-python", "torch")


def _cudart() -> Any:
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")


def _backend_reason(name: str) -> str | None:
    """Why the buffer backend ``name`` cannot allocate GPU memory here, or None if it can."""
    try:
        if name == "cuda-python":
            cudart = _cudart()
            err, count = cudart.cudaGetDeviceCount()
            if int(err) != 0 or count < 1:
                return f"cuda-python sees no CUDA device ({err})"
            return None
        torch = importlib.import_module("torch")
        return None if torch.cuda.is_available() else "torch is installed without a usable CUDA device"
    except Exception as exc:
        return f"{name} cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]


def pick_backend(preferred: str | None = None) -> str:
    """The first buffer backend that works here; raises UnavailableError with every reason."""
    names = [preferred] if preferred else list(BUFFER_BACKENDS)
    reasons = []
    for name in names:
        if name not in BUFFER_BACKENDS:
            raise SplitpipeError(
                f"unknown CUDA buffer backend {name!r}; accepted: {', '.join(BUFFER_BACKENDS)}"
            )
        reason = _backend_reason(name)
        if reason is None:
            return name
        reasons.append(reason)
    raise UnavailableError("no CUDA buffer library: " + "; ".join(reasons))


def unavailable_reason() -> str | None:
    """None when TensorRT 10+ and a way to allocate GPU buffers exist here."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        return f"tensorrt cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 10:
        return f"TensorRT {getattr(trt, '__version__', '?')} found; TrtRunner needs TensorRT 10 or newer"
    try:
        pick_backend()
    except UnavailableError as exc:
        return str(exc)
    return None


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (error, value...): raise on an error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise SplitpipeError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class _CudaPython:
    """Device buffers and a stream from cuda-python's runtime API."""

    def __init__(self) -> None:
        self.rt = _cudart()
        self._stream = _check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self._stream)

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        ptr = _check(self.rt.cudaMalloc(nbytes), "cudaMalloc")
        return ptr, int(ptr)

    def free(self, handle: Any) -> None:
        _check(self.rt.cudaFree(handle), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(
            self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self._stream),
            "copy to device",
        )

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self._stream), "copy to host"
        )

    def sync(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        _check(self.rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")


class _TorchCuda:
    """Device buffers and a stream from torch's CUDA caching allocator."""

    def __init__(self) -> None:
        self.torch = importlib.import_module("torch")
        self._stream = self.torch.cuda.Stream()
        self.handle = int(self._stream.cuda_stream)
        #: pointer -> the tensor that owns it (copies go through the tensor, not the pointer)
        self._tensors: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> tuple[Any, int]:
        tensor = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        ptr = int(tensor.data_ptr())
        self._tensors[ptr] = tensor
        return tensor, ptr

    def free(self, handle: Any) -> None:
        # the caching allocator reclaims the memory when the last reference goes
        self._tensors.pop(int(handle.data_ptr()), None)

    def _bytes(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(array.reshape(-1).view(np.uint8))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self._stream):
            self._tensors[ptr][: array.nbytes].copy_(self._bytes(array), non_blocking=True)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self._stream):
            self._bytes(array).copy_(self._tensors[ptr][: array.nbytes], non_blocking=True)

    def sync(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._tensors.clear()


class TrtRunner(Runner):
    """Run a serialized TensorRT engine (path or bytes) on the GPU.

    ``buffers`` picks the CUDA library for device memory (``cuda-python`` or ``torch``; by
    default the first that works). Inputs with dynamic dimensions take their shape from each
    feed, within the engine's optimization profile 0.
    """

    name = "trt"

    def __init__(self, engine: str | os.PathLike[str] | bytes, *, buffers: str | None = None) -> None:
        super().__init__()
        self._engine_src = engine
        self._backend_name = buffers
        self._engine: Any = None
        self._context: Any = None
        self._cuda: Any = None
        self._buffers: dict[str, tuple[Any, int, int]] = {}
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    def _activate(self) -> None:
        trt = importlib.import_module("tensorrt")
        data = self._engine_src
        if not isinstance(data, bytes):
            path = Path(data)
            if not path.is_file():
                raise SplitpipeError(f"TensorRT engine not found: {path}")
            data = path.read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise SplitpipeError(
                "TensorRT cannot deserialize the engine: it was built by another TensorRT version or for another GPU"
            )
        self._context = self._engine.create_execution_context()
        self._inputs, self._outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_location(name) == trt.TensorLocation.HOST:
                raise SplitpipeError(f"engine tensor {name!r} is a host shape tensor: not supported")
            try:
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            except TypeError:
                raise SplitpipeError(
                    f"engine tensor {name!r} has type {self._engine.get_tensor_dtype(name)}, which numpy cannot hold"
                ) from None
            shape = tuple(int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, shape)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
            else:
                self._outputs.append(spec)
        backend = pick_backend(self._backend_name)
        self._cuda = _CudaPython() if backend == "cuda-python" else _TorchCuda()

    def _deactivate(self) -> None:
        if self._cuda is not None:
            for handle, _ptr, _n in self._buffers.values():
                self._cuda.free(handle)
            self._cuda.close()
        self._buffers = {}
        self._cuda = None
        self._context = None
        self._engine = None

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name``, kept between calls."""
        nbytes = max(nbytes, 1)
        held = self._buffers.get(name)
        if held is not None and held[2] >= nbytes:
            return int(held[1])
        if held is not None:
            self._cuda.free(held[0])
        handle, ptr = self._cuda.alloc(nbytes)
        self._buffers[name] = (handle, ptr, nbytes)
        return ptr

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, cuda = self._context, self._cuda
        for spec in self._inputs:
            array = np.ascontiguousarray(feed[spec.name], dtype=spec.dtype)
            if None in spec.shape and not context.set_input_shape(spec.name, tuple(array.shape)):
                raise SplitpipeError(
                    f"input {spec.name!r} shape {tuple(array.shape)} is outside the engine's optimization profile"
                )
            ptr = self._buffer(spec.name, array.nbytes)
            cuda.to_device(ptr, array)
            context.set_tensor_address(spec.name, ptr)
        unresolved = context.infer_shapes()
        if unresolved:
            raise SplitpipeError(f"TensorRT cannot infer shapes; unspecified inputs: {list(unresolved)}")
        results: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            shape = tuple(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise SplitpipeError(
                    f"output {spec.name!r} has a data-dependent shape {shape}: not supported"
                )
            out = np.empty(shape, dtype=spec.dtype)
            context.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes))
            results[spec.name] = out
        if not context.execute_async_v3(cuda.handle):
            raise SplitpipeError("TensorRT execution failed (see the TensorRT log above)")
        for name, out in results.items():
            cuda.to_host(out, self._buffers[name][1])
        cuda.sync()
        return results


def engine_from_onnx(
    onnx_model: str | os.PathLike[str] | bytes,
    *,
    fp16: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    workspace_bytes: int = 1 << 30,
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX model on this machine's GPU.

    ``shapes`` fixes dynamic input dimensions (one optimization profile, min = opt = max).
    """
    trt = importlib.import_module("tensorrt")
    data = onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SplitpipeError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = [
        network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if not shapes or tensor.name not in shapes:
                raise SplitpipeError(
                    f"input {tensor.name!r} has dynamic shape {tuple(tensor.shape)}: pass shapes="
                )
            shape = tuple(shapes[tensor.name])
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SplitpipeError("TensorRT could not build an engine (see the TensorRT log above)")
    return bytes(serialized)
