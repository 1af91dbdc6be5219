"""Export one split: head.onnx, tail.onnx and manifest.json, verified against the whole model.

The export is written to a temporary folder beside the target and moved into place only once
tail(head(x)) has been checked against the whole model on random inputs, so a failed export
never leaves a half-written or wrong directory behind, and an existing folder that is not a
splitpipe export is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from splitpipe.errors import SplitpipeError, choices
from splitpipe.partition.cuts import Cut
from splitpipe.partition.graph import Graph, random_feed
from splitpipe.partition.load import IR_VERSION, OPSET
from splitpipe.partition.plan import Analysis, Plan, PlanRequest, analyse, make_plan
from splitpipe.partition.split import head_model, self_contained, tail_model, wire_name

if TYPE_CHECKING:
    import onnx

_LOGGER = logging.getLogger(__name__)

MANIFEST_FORMAT = "splitpipe-export"
MANIFEST_VERSION = 1
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    max_abs: float
    max_rel: float


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float]:
    """Max absolute difference, and the same relative to each output's largest magnitude."""
    max_abs = max_rel = 0.0
    for name, want in expected.items():
        have = got[name]
        if want.shape != have.shape:
            return float("inf"), float("inf")
        if want.size == 0:
            continue
        diff = float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64))))
        scale = float(np.max(np.abs(want.astype(np.float64))))
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def _run(
    model: str | bytes | Path, feed: dict[str, np.ndarray], quiet: bool = False
) -> dict[str, np.ndarray]:
    from splitpipe.devices.runtimes.ort import OrtRunner

    source = model if isinstance(model, bytes) else Path(model)
    with OrtRunner(source, threads=None, log_severity=4 if quiet else 3) as runner:
        return runner.infer(feed)


def batchable(tail: onnx.ModelProto, feed: dict[str, np.ndarray]) -> onnx.ModelProto | None:
    """The tail with a free batch dimension, if it computes a batch of 2 exactly as two batches of 1.

    Exported graphs often bake the batch size into Reshape targets (``[1, 2048]``); those are
    rewritten to ``-1`` where that is unambiguous, and the result is checked numerically.
    """
    import onnx

    if any(v.shape[:1] != (1,) for v in feed.values()):
        return None
    model = onnx.ModelProto()
    model.CopyFrom(tail)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            target = onnx.numpy_helper.to_array(inits[node.input[1]])
            if target.ndim == 1 and target.size and target[0] == 1 and -1 not in target[1:]:
                fixed = target.copy()
                fixed[0] = -1
                inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(fixed, node.input[1]))
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != 1:
            return None
        dims[0].Clear()
        dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    try:
        data = model.SerializeToString()
        # the second sample differs from the first so that a batch mixing samples would show
        pair = {
            k: np.concatenate([v, v * np.asarray(0.5, v.dtype)])
            if np.issubdtype(v.dtype, np.floating)
            else np.concatenate([v, v])
            for k, v in feed.items()
        }
        both = _run(data, pair, quiet=True)
        one = _run(data, {k: v[:1] for k, v in pair.items()})
        two = _run(data, {k: v[1:] for k, v in pair.items()})
    except Exception:  # a graph that bakes the batch size in fails to run at batch 2: not batchable
        return None
    for name, value in both.items():
        if value.shape[0] != 2:
            return None
        for i, single in enumerate((one[name], two[name])):
            _abs, rel = compare({name: single}, {name: value[i : i + 1]})
            if rel > 1e-5:
                return None
    return model


def export_split(
    req: PlanRequest,
    split_id: int,
    out: str | Path,
    *,
    plan: Plan | None = None,
    analysis: Analysis | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 2,
    name: str | None = None,
) -> ExportResult:
    """Write the split ``split_id`` of ``req.model`` to ``out`` and verify it."""
    import onnx

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise SplitpipeError(f"{out} exists and is not a splitpipe export directory; choose another --out")
    a = analysis or analyse(req)
    graph = a.graph
    by_id = {c.id: c for c in a.cuts}
    if split_id not in by_id:
        raise choices("split id", split_id, sorted(by_id))
    cut = by_id[split_id]
    if plan is None:
        plan = make_plan(PlanRequest(**{**asdict(req), "profile_mode": "analytic"}), analysis=a)
    predicted = plan.candidate(split_id)

    base = graph.model_path.parent if graph.model_path else Path(".")
    head = self_contained(head_model(graph, cut), base)
    tail = self_contained(tail_model(graph, cut), base)
    feeds = [random_feed((graph.info(t) for t in graph.inputs), seed=s) for s in range(samples)]
    tail_feed = _run(head.SerializeToString(), _head_feed(head, feeds[0]))
    batched = batchable(tail, tail_feed)
    if batched is not None:
        tail = batched

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        onnx.save_model(head, str(tmp / "head.onnx"))
        onnx.save_model(tail, str(tmp / "tail.onnx"))
        max_abs = max_rel = 0.0
        for feed in feeds:
            want = _run(graph.model_path or Path("missing"), feed)
            mid = _run(tmp / "head.onnx", _head_feed(head, feed))
            got = _run(tmp / "tail.onnx", mid)
            d_abs, d_rel = compare(want, got)
            max_abs, max_rel = max(max_abs, d_abs), max(max_rel, d_rel)
        if not max_rel <= tolerance:
            raise SplitpipeError(
                f"split {split_id}: tail(head(x)) differs from the model by {max_rel:.3g} (relative, max abs "
                f"{max_abs:.3g}), above the tolerance {tolerance:g}; nothing was written"
            )
        manifest = _manifest(req, a, cut, plan, predicted, tmp, batched is not None, name)
        manifest["verification"] = {
            "samples": samples,
            "max_abs": max_abs,
            "max_rel": max_rel,
            "tolerance": tolerance,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, max_abs, max_rel)


def _head_feed(head: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feed[i.name] for i in head.graph.input}


def _manifest(
    req: PlanRequest,
    a: Analysis,
    cut: Cut,
    plan: Plan,
    predicted: Any,
    folder: Path,
    batch: bool,
    name: str | None,
) -> dict[str, Any]:
    graph: Graph = a.graph

    def tensor(t: str, wire: bool = False, free_batch: bool = False) -> dict[str, Any]:
        info = graph.info(t).to_json()
        if wire:
            info["name"] = wire_name(graph, t)
        if free_batch:
            info["shape"] = [None, *info["shape"][1:]]
        return info

    files = {}
    for part in ("head", "tail"):
        path = folder / f"{part}.onnx"
        files[part] = {"path": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": name or f"{a.loaded.name}-s{cut.id}",
        "model": req.model,
        "split": {"id": cut.id, "label": cut.label},
        "inputs": [tensor(t) for t in graph.inputs],
        "cut": [tensor(t, wire=True, free_batch=batch) for t in cut.tensors],
        "outputs": [tensor(t, free_batch=batch) for t in graph.outputs],
        "files": files,
        "onnx": {"opset": OPSET, "ir_version": min(graph.model.ir_version, IR_VERSION)},
        "codec": {"name": plan.codec, "calibration": None},
        "preprocess": a.loaded.preprocess,
        "predictions": {
            **{k: v for k, v in asdict(predicted).items() if k not in ("tensors", "id", "label")},
            "device": plan.device["name"],
            "server": plan.server["name"],
            "link": plan.link,
        },
        "request": req.to_json(),
    }
