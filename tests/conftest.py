"""Test tiers: unit tests always run; ``slow``, ``testbed``, ``gpu`` and ``trt`` skip with a reason
when this machine cannot run them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _has_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and cgroups"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "needs iproute2 (ip, tc)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces unavailable: {probe.stderr.strip()}"
    return None


def _has_gpu() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "no CUDA execution provider (no NVIDIA GPU here)"
    return None


def _has_trt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"tensorrt unavailable: {type(exc).__name__}"
    return _has_gpu()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"testbed": _has_namespaces, "gpu": _has_gpu, "trt": _has_trt}
    cache: dict[str, str | None] = {}
    for item in items:
        for marker, probe in reasons.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=cache[marker]))
