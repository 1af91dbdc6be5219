"""PyTorch reference runner: a ``torch.nn.Module``, a TorchScript file or an ExportedProgram, on CPU.

It exists to check the other runtimes against the model's own framework, not for speed. torch
is imported only when a runner is created or activated.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.runtimes.base import Runner, TensorSpec
from splitpipe.errors import SplitpipeError

#: file suffixes of the two serialized forms torch can load without the model's Python code
EXPORTED_SUFFIXES = (".pt2",)


def unavailable_reason() -> str | None:
    return None


def _torch() -> Any:
    return importlib.import_module("torch")


def _np_dtype(dtype: Any) -> np.dtype[Any]:
    torch = _torch()
    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except TypeError:
        raise SplitpipeError(f"torch dtype {dtype} has no numpy equivalent") from None


def _flatten(out: Any) -> list[Any]:
    """Outputs as a flat list of tensors (tuples, lists and dicts of tensors are common)."""
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return [out]


class TorchRunner(Runner):
    """Run a PyTorch model on CPU under ``torch.inference_mode``.

    ``model``: a ``torch.nn.Module``, or a path to a TorchScript file (``torch.jit.save``) or an
    ExportedProgram (``torch.export.save``, ``.pt2``). ``inputs``: the input specs, as
    TensorSpecs or ``{name: shape}`` (float32); an ExportedProgram carries its own. ``threads``
    sets torch's intra-op threads, which is process-wide: left alone when None.
    """

    name = "torch"

    def __init__(
        self,
        model: Any,
        *,
        inputs: Sequence[TensorSpec] | Mapping[str, Sequence[int | None]] | None = None,
        output_names: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self._model = model
        self._given_inputs = inputs
        self._output_names = list(output_names) if output_names else None
        self.threads = threads
        self._module: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    # -- loading ---------------------------------------------------------------------------
    def _load(self) -> tuple[Any, list[TensorSpec] | None]:
        torch = _torch()
        model = self._model
        if isinstance(model, torch.nn.Module):
            return model.eval(), None
        if not isinstance(model, (str, os.PathLike)):
            raise SplitpipeError(
                f"TorchRunner takes a torch.nn.Module or a model file, got {type(model).__name__}"
            )
        path = Path(model)
        if not path.is_file():
            raise SplitpipeError(f"torch model file not found: {path}")
        if path.suffix in EXPORTED_SUFFIXES:
            try:
                program = torch.export.load(str(path))
            except Exception as exc:
                raise SplitpipeError(
                    f"{path}: not a loadable ExportedProgram ({type(exc).__name__}: {exc})"
                ) from None
            return program.module(), _exported_inputs(program)
        try:
            return torch.jit.load(str(path), map_location="cpu").eval(), None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SplitpipeError(
                f"{path}: not a TorchScript file ({first}); ExportedPrograms must end in {EXPORTED_SUFFIXES[0]}"
            ) from None

    def _input_specs(self, module: Any, found: list[TensorSpec] | None) -> list[TensorSpec]:
        given = self._given_inputs
        if given is None:
            if found is not None:
                return found
            raise SplitpipeError(
                "TorchRunner needs inputs=[TensorSpec(...)] or {name: shape} for a module or TorchScript file; "
                f"forward takes {_forward_names(module)}"
            )
        if isinstance(given, Mapping):
            return [TensorSpec(n, np.dtype(np.float32), tuple(shape)) for n, shape in given.items()]
        return list(given)

    def _activate(self) -> None:
        torch = _torch()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        module, found = self._load()
        self._module = module
        self._inputs = self._input_specs(module, found)
        self._outputs = []
        if all(d is not None for spec in self._inputs for d in spec.shape):
            # a dry run on zeros learns the outputs and warms up the allocator
            feed = {s.name: np.zeros(tuple(d or 0 for d in s.shape), s.dtype) for s in self._inputs}
            self._infer(feed)

    def _deactivate(self) -> None:
        self._module = None

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Known after activation for fixed input shapes, else after the first inference."""
        return self._outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        args = [torch.from_numpy(_writable(feed[s.name])) for s in self._inputs]
        with torch.inference_mode():
            out = _flatten(self._module(*args))
        arrays = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in out]
        names = self._output_names or (
            ["output"] if len(arrays) == 1 else [f"output_{i}" for i in range(len(arrays))]
        )
        if len(names) != len(arrays):
            raise SplitpipeError(
                f"the model returned {len(arrays)} outputs but output_names has {len(names)}"
            )
        self._outputs = [TensorSpec(n, a.dtype, tuple(a.shape)) for n, a in zip(names, arrays, strict=True)]
        return dict(zip(names, arrays, strict=True))


def _writable(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy shares memory and warns on read-only arrays: copy only those."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def _forward_names(module: Any) -> list[str]:
    try:
        return [p for p in inspect.signature(module.forward).parameters if p != "self"]
    except (TypeError, ValueError):  # TorchScript methods have a schema instead of a signature
        schema = getattr(getattr(module, "forward", None), "schema", None)
        return [a.name for a in schema.arguments[1:]] if schema is not None else []


def _exported_inputs(program: Any) -> list[TensorSpec]:
    """User inputs of an ExportedProgram, from its placeholders' fake tensors."""
    user = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise SplitpipeError(f"ExportedProgram input {node.name!r} is not a tensor")
        shape = tuple(int(d) if str(d).lstrip("-").isdigit() else None for d in val.shape)
        specs.append(TensorSpec(node.name, _np_dtype(val.dtype), shape))
    return specs
