"""Export one split: head.onnx, tail.onnx and manifest.json, verified against the whole model.

The export is written to a temporary folder beside the target and moved into place only once
tail(head(x)) has been checked against the whole model on random inputs, so a failed export
never leaves a half-written or wrong directory behind, and an existing folder that is not a
splitpipe export is never overwritten.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from splitpipe._files import replace_dir, sha256_file
from splitpipe.errors import SplitpipeError, choices
from splitpipe.names import RULE as NAME_RULE
from splitpipe.names import valid_model_name
from splitpipe.partition.cuts import Cut
from splitpipe.partition.graph import Graph, random_feed
from splitpipe.partition.load import IR_VERSION, OPSET
from splitpipe.partition.plan import Analysis, Plan, PlanRequest, analyse, make_plan, with_codec
from splitpipe.partition.split import build_model, head_model, self_contained, tail_model, wire_name

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


#: what an export directory holds besides the files its manifest lists
_EXPORT_FILES = {"manifest.json", "head.onnx", "tail.onnx"}
#: what a learned bottleneck adds (docs/bottleneck.md): the trained student, which only a new
#: bottleneck replaces (an export of one of the student's splits into its folder would delete it)
BOTTLENECK_FILES = ("student.onnx", "student.pt")


def _foreign_entries(out: Path, also: tuple[str, ...] = ()) -> list[str]:
    """Entries of an existing export directory that neither an export (with ``also``) nor its
    manifest's compiled parts account for: replacing the folder would delete them."""
    if not (out / "manifest.json").is_file():
        return []
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        listed = {str(f["path"]) for f in manifest.get("files", {}).values()}
        listed |= {str(c["path"]) for c in (manifest.get("compiled") or {}).values()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = set()  # a damaged manifest: the export being written replaces it
    return sorted(p.name for p in out.iterdir() if p.name not in _EXPORT_FILES | set(also) | listed)


def check_export_target(out: str | Path, name: str | None = None, replaces: tuple[str, ...] = ()) -> Path:
    """``out`` (and ``name``) as an export can be written there, checked before any work (a
    learned bottleneck trains for minutes first): a new folder, an empty one, or an earlier
    export holding nothing that replacing it would lose. See :func:`export_split`."""
    if name is not None and not valid_model_name(name):
        raise SplitpipeError(f"--name {name!r}: a served model's name must be {NAME_RULE}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise SplitpipeError(f"{out} exists and is not a splitpipe export directory; choose another --out")
    here = Path.cwd().resolve()
    if out.resolve() in (here, *here.parents):
        raise SplitpipeError(
            f"--out {out} is the current folder (or holds it), which exporting replaces as a whole; "
            "give a folder below it, such as ./export"
        )
    foreign = _foreign_entries(out, replaces)
    if set(foreign) & set(BOTTLENECK_FILES):
        raise SplitpipeError(
            f"{out} holds a learned bottleneck's trained student ({', '.join(sorted(set(foreign) & set(BOTTLENECK_FILES)))}), "
            "which exporting into the folder would delete; choose another --out"
        )
    if foreign:
        raise SplitpipeError(
            f"{out} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which no export wrote, "
            "and exporting replaces the folder; move them, or choose another --out"
        )
    return out


def export_split(
    req: PlanRequest,
    split_id: int | str,
    out: str | Path,
    *,
    plan: Plan | None = None,
    analysis: Analysis | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 2,
    name: str | None = None,
    codec: str | None = None,
    calibrate: bool = False,
    fold_qdq: bool = False,
    replaces: tuple[str, ...] = (),
) -> ExportResult:
    """Write the split ``split_id`` of ``req.model`` to ``out`` and verify it.

    ``split_id`` is a candidate id from the plan, or a baseline: ``offload`` (the head only
    passes the input on, the tail is the whole model) or ``local`` (the head is the whole
    model and there is no tail), so that the baselines run through the same agent and server.

    ``codec`` defaults to the plan's choice for this split. ``calibrate`` stores static scales
    (from the cut tensors of ``req.calibration_samples`` random inputs) in the manifest.
    ``fold_qdq`` (symmetric int8 codecs) bakes the quantization into the graphs: the head ends
    in QuantizeLinear and sends int8, the tail starts with DequantizeLinear, so that runtimes
    that know only standard ONNX (TensorRT, a stock Triton server) carry the compression.
    ``replaces`` names further files an earlier export in ``out`` may hold that this one replaces
    (a learned bottleneck's student); any other file that no export wrote stops the export.
    """
    import onnx

    from splitpipe.kernels import get_codec, parse_name

    out = check_export_target(out, name, replaces)
    a = analysis or analyse(req)
    graph = a.graph
    by_id: dict[int | str, Cut] = {c.id: c for c in a.cuts}
    by_id["offload"] = Cut(id=-1, head=0, tensors=tuple(graph.inputs), label="input sent as it is")
    by_id["local"] = Cut(id=-1, head=graph.full, tensors=(), label="all on the device")
    if split_id not in by_id:
        raise choices("split id", split_id, [*(c.id for c in a.cuts), "local", "offload"])
    cut = by_id[split_id]
    local = split_id == "local"
    if plan is None:
        plan = make_plan(PlanRequest(**{**asdict(req), "profile_mode": "analytic"}), analysis=a)
    predicted = plan.option(split_id)
    _check_plan_fits(plan, predicted, graph, cut, req.model)
    codec_name = codec or (predicted.codec if predicted.codec != "none" else "raw")
    get_codec(codec_name)  # an unknown name fails here, listing the accepted forms
    if local and codec_name != "raw":  # the manifest would name a codec nothing uses
        raise SplitpipeError(
            f"--codec {codec_name}: the local export sends nothing to encode; leave --codec out"
        )
    if not local and codec_name != predicted.codec:  # the plan predicted another codec: predict this one
        predicted = with_codec(plan, predicted, graph, codec_name, a.loaded.preprocess)
    spec = parse_name(codec_name)
    if fold_qdq and not (spec.base == "int8" and spec.symmetric):
        raise SplitpipeError(
            "--fold-qdq needs a symmetric int8 codec (int8/sym or int8/sym/ch, optionally with +zstd or +lz4), "
            f"got {codec_name}"
        )
    if calibrate and not spec.quantized:
        raise SplitpipeError(
            f"codec {codec_name} has no scales to calibrate; --calibrate applies to int8, uint4, uint2"
        )
    calibrations = (
        _calibrate(graph, cut, spec.quant_name, req.calibration_samples) if calibrate or fold_qdq else {}
    )
    codec_entry: dict[str, Any] = {
        "name": codec_name,
        "calibration": {wire_name(graph, t): c.to_json() for t, c in calibrations.items()} or None,
    }

    base = graph.model_path.parent if graph.model_path else Path(".")
    if local:
        head = self_contained(build_model(graph, graph.full, graph.inputs, graph.outputs, name="model"), base)
        tail = None
    else:
        head = self_contained(head_model(graph, cut), base)
        tail = self_contained(tail_model(graph, cut), base)
    feeds = [random_feed((graph.info(t) for t in graph.inputs), seed=s) for s in range(samples)]
    verification = _verify(graph, head, tail, feeds, split_id, tolerance)
    if fold_qdq and tail is not None:
        folded_head, folded_tail = fold(graph, cut, head, tail, calibrations)
        verification.update(
            _verify_folded(graph, cut, head, tail, folded_head, folded_tail, calibrations, feeds, tolerance)
        )
        head, tail = folded_head, folded_tail
        # The wire now carries the int8 tensors as they are; only a lossless stage is left to apply.
        codec_entry["folded"] = spec.quant_name
        codec_entry["name"] = "raw" + codec_name[len(spec.quant_name) :]
    batched = (
        None if tail is None else batchable(tail, _run(head.SerializeToString(), _head_feed(head, feeds[0])))
    )
    if batched is not None:
        tail = batched

    tmp: Path | None = None
    target = out.resolve()  # `--out .` has no name to put a folder beside; a link keeps pointing
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # a folder of its own beside the target: two exports to one place do not share it
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        onnx.save_model(head, str(tmp / "head.onnx"))
        if tail is not None:
            onnx.save_model(tail, str(tmp / "tail.onnx"))
        manifest = _manifest(
            req, a, split_id, cut, plan, predicted, tmp, batched is not None, name, head, codec_entry
        )
        manifest["verification"] = verification
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, target)
    except OSError as exc:
        raise SplitpipeError(
            f"cannot write the export to {out}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; the folder was left as it was"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, verification["max_abs"], verification["max_rel"])


def _check_plan_fits(plan: Plan, predicted: Any, graph: Graph, cut: Cut, model: str) -> None:
    """The plan's option must describe this cut of the model as it is now: a model file or
    factory changed since planning numbers its cuts anew, and the plan's predictions (and its
    split id) would then belong to another cut."""

    def described(tensors: list[tuple[Any, list[Any]]]) -> str:
        return ", ".join(f"{n} {s}" for n, s in tensors) or "nothing"

    here_io = [(t, list(graph.info(t).shape)) for t in [*graph.inputs, *graph.outputs]]
    planned_io = [(t.get("name"), list(t.get("shape") or [])) for t in [*plan.inputs, *plan.outputs]]
    here = [(t, list(graph.info(t).shape)) for t in cut.tensors]
    planned = [(t.get("name"), list(t.get("shape") or [])) for t in predicted.tensors]
    if planned_io != here_io or planned != here:
        what = (
            f"inputs and outputs {described(planned_io)}, the model now {described(here_io)}"
            if planned_io != here_io
            else f"split {predicted.id} sends {described(planned)}, the model now {described(here)}"
        )
        raise SplitpipeError(
            f"the plan does not fit {model} as it is now (plan: {what}); the model changed since it "
            "was planned: plan it again"
        )


def _verify(
    graph: Graph,
    head: onnx.ModelProto,
    tail: onnx.ModelProto | None,
    feeds: list[dict[str, np.ndarray]],
    split_id: int | str,
    tolerance: float,
) -> dict[str, Any]:
    """tail(head(x)) (or head(x) alone, for local) against the whole model; SplitpipeError above ``tolerance``."""
    head_b = head.SerializeToString()
    tail_b = tail.SerializeToString() if tail is not None else None
    max_abs = max_rel = 0.0
    for feed in feeds:
        want = _run(graph.model_path or Path("missing"), feed)
        got = _run(head_b, _head_feed(head, feed))
        if tail_b is not None:
            got = _run(tail_b, got)
        d_abs, d_rel = compare(want, got)
        max_abs, max_rel = max(max_abs, d_abs), max(max_rel, d_rel)
    if not max_rel <= tolerance:
        raise SplitpipeError(
            f"split {split_id}: tail(head(x)) differs from the model by {max_rel:.3g} (relative, max abs "
            f"{max_abs:.3g}), above the tolerance {tolerance:g}; nothing was written"
        )
    return {"samples": len(feeds), "max_abs": max_abs, "max_rel": max_rel, "tolerance": tolerance}


def _verify_folded(
    graph: Graph,
    cut: Cut,
    head: onnx.ModelProto,
    tail: onnx.ModelProto,
    folded_head: onnx.ModelProto,
    folded_tail: onnx.ModelProto,
    calibrations: dict[str, Any],
    feeds: list[dict[str, np.ndarray]],
    tolerance: float,
) -> dict[str, Any]:
    """The folded graphs must send the same int8 codes as the kernel codec and compute the same result.

    Reference: the plain head, then the kernel codec with the same static scales (encode and
    decode), then the plain tail. The folded halves must match it code for code on the wire,
    and within ``tolerance`` at the output. The quantization's own effect on the output (folded
    pipeline against the float model) is reported, not judged: choosing the codec is the plan's job.
    """
    from splitpipe.kernels import get_codec

    codecs = {wire_name(graph, t): get_codec(c.codec, calibration=c) for t, c in calibrations.items()}
    worst_rel = codes_differ = 0.0
    quant_rel = 0.0
    for feed in feeds:
        hf = _head_feed(head, feed)
        plain_mid = _run(head.SerializeToString(), hf)
        folded_mid = _run(folded_head.SerializeToString(), hf)
        restored = {}
        for wire, codec in codecs.items():
            payload, meta = codec.encode(plain_mid[wire])
            codes_differ += int(
                np.count_nonzero(np.frombuffer(payload, np.int8) != folded_mid[wire].reshape(-1))
            )
            restored[wire] = codec.decode(payload, meta)
        reference = _run(tail.SerializeToString(), restored)
        got = _run(folded_tail.SerializeToString(), folded_mid)
        worst_rel = max(worst_rel, compare(reference, got)[1])
        quant_rel = max(quant_rel, compare(_run(graph.model_path or Path("missing"), feed), got)[1])
    if codes_differ or not worst_rel <= tolerance:
        raise SplitpipeError(
            f"folded QuantizeLinear/DequantizeLinear disagree with the int8 codec ({int(codes_differ)} codes differ, "
            f"outputs by {worst_rel:.3g} relative); nothing was written"
        )
    return {
        "folded_vs_codec_max_rel": worst_rel,
        "folded_codes_differing": 0,
        "quantized_vs_model_max_rel": quant_rel,
    }


def _head_feed(head: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feed[i.name] for i in head.graph.input}


def _calibrate(graph: Graph, cut: Cut, quant_name: str, count: int) -> dict[str, Any]:
    """Static scales per cut tensor, from its values for ``count`` random inputs."""
    from splitpipe.kernels import calibrate
    from splitpipe.partition.profile import probe

    feeds = [random_feed((graph.info(t) for t in graph.inputs), seed=100 + s) for s in range(count)]
    values = probe(graph, list(cut.tensors), feeds)
    return {t: calibrate(quant_name, [v[t] for v in values]) for t in cut.tensors}


def fold(
    graph: Graph, cut: Cut, head: onnx.ModelProto, tail: onnx.ModelProto, calibrations: dict[str, Any]
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Copies of the halves with QuantizeLinear after the head's cut outputs and DequantizeLinear
    before the tail's cut inputs. The int8 tensor keeps the cut tensor's wire name; the float
    tensor is renamed inside each half."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from splitpipe.kernels import qdq_params

    head, tail = _copy(head), _copy(tail)
    for t in cut.tensors:
        wire = wire_name(graph, t)
        params = qdq_params(calibrations[t])
        attrs: dict[str, Any] = {} if params.axis is None else {"axis": params.axis}
        q_args = [f"{wire}/float", f"{wire}/scale", f"{wire}/zero_point"]
        for part in (head, tail):
            part.graph.initializer.extend(
                [
                    numpy_helper.from_array(params.scale.astype(np.float32), q_args[1]),
                    numpy_helper.from_array(params.zero_point.astype(np.int8), q_args[2]),
                ]
            )
            _rename(part.graph, wire, q_args[0])
        head.graph.node.append(
            helper.make_node("QuantizeLinear", q_args, [wire], name=f"{wire}/quantize", **attrs)
        )
        for vi in head.graph.output:
            if vi.name == q_args[0]:
                vi.name = wire
                vi.type.tensor_type.elem_type = TensorProto.INT8
        dq = helper.make_node(
            "DequantizeLinear", [wire, *q_args[1:]], [q_args[0]], name=f"{wire}/dequantize", **attrs
        )
        tail.graph.node.insert(0, dq)
        for vi in tail.graph.input:
            if vi.name == q_args[0]:
                vi.name = wire
                vi.type.tensor_type.elem_type = TensorProto.INT8
    onnx.checker.check_model(head)
    onnx.checker.check_model(tail)
    return head, tail


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` in node inputs and outputs, graph inputs, outputs and value infos."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _manifest(
    req: PlanRequest,
    a: Analysis,
    split_id: int | str,
    cut: Cut,
    plan: Plan,
    predicted: Any,
    folder: Path,
    batch: bool,
    name: str | None,
    head: onnx.ModelProto,
    codec_entry: dict[str, Any],
) -> dict[str, Any]:
    import onnx

    graph: Graph = a.graph
    head_types = {o.name: o.type.tensor_type.elem_type for o in head.graph.output}
    split_name = f"s{split_id}" if isinstance(split_id, int) else split_id

    def tensor(t: str, wire: bool = False, free_batch: bool = False) -> dict[str, Any]:
        info = graph.info(t).to_json()
        if wire:
            info["name"] = wire_name(graph, t)
            info["dtype"] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(head_types[info["name"]])).name
        if free_batch:
            info["shape"] = [None, *info["shape"][1:]]
        return info

    files = {}
    for part in ("head", "tail"):
        path = folder / f"{part}.onnx"
        if not path.is_file():
            continue
        files[part] = {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": name or re.sub(r"[^A-Za-z0-9._-]", "_", f"{a.loaded.name}-{split_name}")[:128],
        "model": req.model,
        "split": {"id": split_id, "label": cut.label},
        "inputs": [tensor(t) for t in graph.inputs],
        "cut": [tensor(t, wire=True, free_batch=batch) for t in cut.tensors],
        "outputs": [tensor(t, free_batch=batch) for t in graph.outputs],
        "files": files,
        "onnx": {"opset": OPSET, "ir_version": min(graph.model.ir_version, IR_VERSION)},
        "codec": codec_entry,
        "preprocess": a.loaded.preprocess,
        "predictions": {
            **{k: v for k, v in asdict(predicted).items() if k not in ("tensors", "id", "label")},
            "device": plan.device["name"],
            "server": plan.server["name"],
            "link": plan.link,
        },
        "request": req.to_json(),
    }
