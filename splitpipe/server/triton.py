"""Tails for a stock Triton server: model repository entries written from export directories.

Triton's ONNX Runtime backend runs ``tail.onnx`` as it is, so the cut has to arrive as plain
tensors: an export with codec ``raw``, or one whose int8 quantization is folded into the graphs
(``splitpipe export --fold-qdq`` with no lossless stage), which sends int8 and lets the tail's
DequantizeLinear undo it. The agent sends such tensors as plain ``raw_input_contents`` without
codec parameters, which is what Triton reads. Each entry is::

    REPO/NAME/config.pbtxt     platform onnxruntime_onnx, inputs and outputs, batching, instances
    REPO/NAME/1/model.onnx     the export's tail.onnx, or the tail that ``splitpipe compile``
                               built for ONNX Runtime (sha256 checked; ``use_compiled``)
    REPO/NAME/splitpipe.json   where it came from (export directory, split, sha256)

Entries are written beside their final place and moved there whole; an existing folder is
replaced only if splitpipe wrote it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpipe._files import replace_dir
from splitpipe.errors import SplitpipeError, choices
from splitpipe.proto.datatypes import kserve_datatype
from splitpipe.server.models import TailModel, load_tails, sha256_file
from splitpipe.server.options import ServerOptions

MARKER = "splitpipe.json"
MARKER_FORMAT = "splitpipe-triton-entry"
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class TritonOptions:
    """- ``max_batch``: Triton's ``max_batch_size`` for tails with a free batch dimension
      (others get 0: no batching).
    - ``queue_delay_us``: ``dynamic_batching.max_queue_delay_microseconds``.
    - ``instances``, ``kind``: one ``instance_group`` (``auto``, ``cpu`` or ``gpu``).
    - ``tensorrt``: run the tail through ONNX Runtime's TensorRT execution provider on GPUs
      (``optimization.execution_accelerators``).
    - ``use_compiled``: write the tail ``splitpipe compile`` built for ONNX Runtime (``ort``,
      ``ort-int8``) where the export has one, as ``splitpipe serve`` would run it; False: always
      tail.onnx. A tail optimized at the ``extended`` level runs only on ONNX Runtime's CPU
      provider, so it needs ``kind`` cpu."""

    max_batch: int = 8
    queue_delay_us: int = 0
    instances: int = 1
    kind: str = "auto"
    tensorrt: bool = False
    use_compiled: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.instances < 1:
            raise SplitpipeError(
                f"max batch and instances must be at least 1, got {self.max_batch} and {self.instances}"
            )
        if self.queue_delay_us < 0:
            raise SplitpipeError(f"queue delay must be >= 0 microseconds, got {self.queue_delay_us}")
        if self.kind not in KINDS:
            raise choices("instance kind", self.kind, list(KINDS))
        if self.tensorrt and self.kind == "cpu":
            raise SplitpipeError("TensorRT runs on GPUs: use --kind gpu or auto with --tensorrt")


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 bytes outside printable ASCII as octal)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _dims(spec: Any, batched: bool) -> list[int]:
    """Triton's dims: without the batch dimension when Triton batches; free ones as -1."""
    return [-1 if d is None else int(d) for d in (spec.shape[1:] if batched else spec.shape)]


def _tensor(spec: Any, batched: bool) -> list[str]:
    dims = _dims(spec, batched)
    lines = [
        "  {",
        f"    name: {_quote(spec.name)}",
        f"    data_type: TYPE_{kserve_datatype(spec.dtype)}",
    ]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:  # Triton wants at least one dim: a per-row scalar is [1], reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return [*lines, "  }"]


def model_config(model: TailModel, options: TritonOptions) -> str:
    """The ``config.pbtxt`` of one tail (Triton's ModelConfig in protobuf text format)."""
    split = model.manifest.get("split") or {}
    batched = model.batchable
    lines = [
        f"# written by splitpipe from the export {model.directory.resolve()}",
        f"# split {split.get('id')} of {model.manifest.get('model')} ({split.get('label', '')})",
        f"name: {_quote(model.name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {options.max_batch if batched else 0}",
    ]
    for key, specs in (("input", model.inputs), ("output", model.outputs)):
        lines.append(f"{key} [")
        for i, spec in enumerate(specs):
            block = _tensor(spec, batched)
            if i < len(specs) - 1:
                block[-1] += ","
            lines += block
        lines.append("]")
    if batched:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}"]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        f"    kind: {KINDS[options.kind]}",
        "  }",
        "]",
    ]
    if options.tensorrt:
        lines += [
            "optimization {",
            "  execution_accelerators {",
            '    gpu_execution_accelerator: [ { name: "tensorrt" } ]',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _check_plain(model: TailModel) -> None:
    from splitpipe.kernels import parse_name

    codec = model.codec or "raw"
    if parse_name(codec).plain:
        return
    folded = (model.manifest.get("codec") or {}).get("folded")
    if folded:
        fix = f"export again with --fold-qdq and codec {folded} (no lossless stage)"
    else:
        fix = "export with --codec raw, or with --codec int8/sym --fold-qdq to send int8 that the tail dequantizes"
    raise SplitpipeError(
        f"export {model.directory}: its cut travels as codec {codec!r}, which a stock Triton server cannot "
        f"decode (it reads plain tensors only); {fix}"
    )


@dataclass(frozen=True)
class TritonEntry:
    path: Path
    model: str
    batched: bool
    inputs: list[str]  # "name TYPE[dims]" as Triton sees them
    source: str  # the file written as model.onnx: "tail.onnx" or the compiled tail's description


def write_repository(
    exports: list[str | Path] | list[Path], repo: str | Path, options: TritonOptions | None = None
) -> list[TritonEntry]:
    """Write one Triton model repository entry per export directory into ``repo``.

    Every tail is loaded first (sha256, ONNX Runtime session, manifest agreement: what
    ``splitpipe serve`` checks) and every codec checked, so that nothing is written unless all
    exports can be served by Triton."""
    options = options or TritonOptions()
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise SplitpipeError(f"{repo} exists and is not a directory; --repo needs a model repository folder")
    models = load_tails(list(exports), ServerOptions(use_compiled=options.use_compiled))
    try:
        for model in models.values():
            _check_plain(model)
            _check_compiled(model, options)
            target = repo / model.name
            if target.exists() and not (target / MARKER).is_file():
                raise SplitpipeError(
                    f"{target} exists and was not written by splitpipe; remove it or write to another --repo"
                )
        repo.mkdir(parents=True, exist_ok=True)
        return [_write_entry(model, repo, options) for model in models.values()]
    finally:
        for model in models.values():
            model.close()


def _check_compiled(model: TailModel, options: TritonOptions) -> None:
    compiled = model.compiled
    level = ((compiled.entry.get("build") or {}).get("level")) if compiled is not None else None
    if compiled is not None and level == "extended" and options.kind != "cpu":
        raise SplitpipeError(
            f"export {model.directory}: its compiled tail {compiled.describe()} was optimized at the "
            "extended level, which only ONNX Runtime's CPU provider runs; use --kind cpu, or "
            "--no-compiled for tail.onnx"
        )


def _write_entry(model: TailModel, repo: Path, options: TritonOptions) -> TritonEntry:
    # the file the check loaded: tail.onnx, or the compiled tail (both sha256 checked by then)
    compiled = model.compiled
    tail = compiled.entry if compiled is not None else model.manifest["files"]["tail"]
    source = (model.directory / tail["path"]).resolve()
    target = repo / model.name
    tmp = repo / f".{model.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "1").mkdir(parents=True)
    try:
        shutil.copyfile(source, tmp / "1" / "model.onnx")
        digest = sha256_file(tmp / "1" / "model.onnx")
        if digest != str(tail["sha256"]).lower():  # changed between the check and the copy
            raise SplitpipeError(f"{source} changed while it was copied; run again")
        (tmp / "config.pbtxt").write_text(model_config(model, options))
        marker = {
            "format": MARKER_FORMAT,
            "export": str(model.directory.resolve()),
            "model": model.manifest.get("model"),
            "split": model.manifest.get("split"),
            "codec": model.manifest.get("codec"),
            "files": {"model": {"path": "1/model.onnx", "sha256": digest}},
            "compiled": compiled.summary() if compiled is not None else None,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        replace_dir(tmp, target)  # an earlier entry stays whole until this one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    batched = model.batchable
    inputs = [
        f"{s.name} TYPE_{kserve_datatype(s.dtype)}[{', '.join(map(str, _dims(s, batched)))}]"
        for s in model.inputs
    ]
    described = compiled.describe() if compiled is not None else source.name
    return TritonEntry(target, model.name, batched, inputs, described)
