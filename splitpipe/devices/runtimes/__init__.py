"""Runner registry: backends register by name and fail soft.

``available_runners()`` tells which backends this machine can use and, for the others, why
not. Backends are imported only when asked for, so a device with only numpy and onnxruntime
never imports torch or tensorrt.
"""

from __future__ import annotations

import importlib
from typing import Any

from splitpipe.devices.runtimes.base import Runner, TensorSpec
from splitpipe.errors import SplitpipeError, UnavailableError, choices

__all__ = [
    "ONNX_PLATFORMS",
    "Runner",
    "TensorSpec",
    "available_runners",
    "check_onnx_runtime",
    "create_runner",
    "runner_names",
]

# name -> (module, class, the package whose import decides availability)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "ort": ("splitpipe.devices.runtimes.ort", "OrtRunner", "onnxruntime"),
    "trt": ("splitpipe.devices.runtimes.trt", "TrtRunner", "tensorrt"),
    "torch": ("splitpipe.devices.runtimes.torch", "TorchRunner", "torch"),
}

#: the runners of an export's ONNX files (heads and tails), with the platform Triton names each
ONNX_PLATFORMS = {"ort": "onnxruntime_onnx", "trt": "tensorrt_plan"}


def check_onnx_runtime(name: str) -> str:
    """``name`` if it can run an export's head and tail (the torch runner takes modules)."""
    if name not in ONNX_PLATFORMS:
        raise SplitpipeError(
            f"--runtime {name!r} cannot run an export's ONNX files; accepted: {', '.join(ONNX_PLATFORMS)}"
        )
    return name


def runner_names() -> list[str]:
    return list(_BACKENDS)


def _probe(name: str) -> str | None:
    module, _cls, package = _BACKENDS[name]
    try:
        importlib.import_module(package)
        mod = importlib.import_module(module)
    except Exception as exc:  # one broken backend must not break the others
        return f"{package} cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]
    probe = getattr(mod, "unavailable_reason", None)
    return probe() if callable(probe) else None


def available_runners() -> dict[str, str | None]:
    """Backend name -> None when usable here, else the reason it is unavailable."""
    return {name: _probe(name) for name in _BACKENDS}


def create_runner(name: str, model: Any, **options: Any) -> Runner:
    """Create a runner of backend ``name``; raises UnavailableError with the reason if it cannot run here."""
    if name not in _BACKENDS:
        raise choices("runtime", name, _BACKENDS)
    reason = _probe(name)
    if reason:
        raise UnavailableError(f"runtime {name!r} is unavailable: {reason}")
    module, cls, _ = _BACKENDS[name]
    runner_cls = getattr(importlib.import_module(module), cls)
    runner: Runner = runner_cls(model, **options)
    return runner
