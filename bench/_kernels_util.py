"""Helpers for the codec benchmarks: real bottleneck tensors, side-by-side timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def single_thread() -> None:
    """One core for everything timed (kernels already run ORT with one thread)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def sample_image(size: int = 224) -> np.ndarray:
    """A real photograph shipped with scikit-learn (no download), ImageNet-normalised NCHW."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image("china.jpg")).resize((size, size), Image.BILINEAR)
    x = np.asarray(img, np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)[None].copy()


def bottleneck_tensors(image: np.ndarray) -> dict[str, np.ndarray]:
    """Activations at the usual split points of torchvision models with random weights, fed a
    real image, captured with forward hooks: resnet50 after layer1/2/3, mobilenet_v3_large
    after feature blocks 3, 6, 12 and 15."""
    import torch
    import torchvision

    torch.manual_seed(0)
    taps: dict[str, tuple[torch.nn.Module, list[tuple[str, torch.nn.Module]]]] = {}
    resnet = torchvision.models.resnet50(weights=None).eval()
    taps["resnet50"] = (resnet, [(f"layer{i}", getattr(resnet, f"layer{i}")) for i in (1, 2, 3)])
    mobile = torchvision.models.mobilenet_v3_large(weights=None).eval()
    taps["mobilenet_v3_large"] = (mobile, [(f"features.{i}", mobile.features[i]) for i in (3, 6, 12, 15)])
    out: dict[str, np.ndarray] = {}
    x = torch.from_numpy(image)
    for model_name, (model, points) in taps.items():
        handles = []
        for point, module in points:

            def hook(_m: Any, _i: Any, o: torch.Tensor, key: str = f"{model_name}/{point}") -> None:
                out[key] = o.detach().numpy().copy()

            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
    return out


def side_by_side(
    ops: dict[str, Callable[[], object]], *, min_reps: int = 15, budget_s: float = 3.0
) -> dict[str, dict[str, float]]:
    """Best and median seconds of each op, timed round-robin (one of each per round) so that
    load changes on a shared machine hit all of them alike. The best time is the one least
    disturbed by other jobs; the median shows how much they disturbed."""
    for fn in ops.values():
        fn()  # warm-up: sessions, caches
    times: dict[str, list[float]] = {k: [] for k in ops}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < budget_s and rounds < 200):
        for key, fn in ops.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return {
        k: {"best": float(np.min(v)), "median": float(np.median(v)), "n": len(v)} for k, v in times.items()
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    from splitpipe.kernels import quant

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        # which fast path the codecs took: the compiled kernels, or ONNX Runtime (and why)
        "codec_kernels": "compiled" if quant.C is not None else f"onnxruntime: {quant.C_MISSING}",
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=float))
    return path
