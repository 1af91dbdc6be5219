"""The device's view of an export directory: the manifest checked, head.onnx's sha256 verified
(and a compiled head's, when ``splitpipe compile`` wrote one), and one codec per cut tensor
(static scales where the manifest has them).

Only numpy and the standard library are needed here; the device never reads tail.onnx.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe._files import sha256_file
from splitpipe.devices.runtimes import TensorSpec
from splitpipe.devices.runtimes.compiled import CompiledFile, compiled_file, pick_file
from splitpipe.errors import SplitpipeError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "splitpipe-export"
MANIFEST_VERSIONS = (1,)


def _fail(directory: Path, message: str) -> SplitpipeError:
    return SplitpipeError(f"export {directory}: {message}")


def _specs(
    directory: Path, manifest: dict[str, Any], key: str, allow_empty: bool = False
) -> tuple[TensorSpec, ...]:
    entries = manifest.get(key)
    if not isinstance(entries, list) or (not entries and not allow_empty):
        raise _fail(directory, f"manifest field {key!r} must be a non-empty list of tensors")
    specs = []
    for i, entry in enumerate(entries):
        where = f"manifest field {key}[{i}]"
        if not isinstance(entry, dict) or not all(k in entry for k in ("name", "dtype", "shape")):
            raise _fail(directory, f"{where} must be an object with name, dtype and shape; got {entry!r}")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str) or not name:
            raise _fail(directory, f"{where}.name must be a non-empty string, got {name!r}")
        try:
            if not isinstance(dtype, str):
                raise TypeError
            np_dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise _fail(
                directory, f"{where}.dtype must name a numpy dtype such as 'float32', got {dtype!r}"
            ) from None
        if not isinstance(shape, list) or not all(d is None or _count(d) for d in shape):
            raise _fail(
                directory,
                f"{where}.shape must be a list of non-negative integers (null: a free dimension), got {shape!r}",
            )
        specs.append(TensorSpec(name, np_dtype, tuple(shape)))
    return tuple(specs)


def _count(value: Any) -> bool:
    """A non-negative integer (JSON's true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    """A finite JSON number (not true or false)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _object(directory: Path, manifest: dict[str, Any], key: str) -> dict[str, Any]:
    """``manifest[key]`` when it is an object, {} when it is absent or null; else an error."""
    value = manifest.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(directory, f"manifest field {key!r} must be an object or null, got {value!r}")
    return value


def _check_preprocess(directory: Path, pre: dict[str, Any]) -> None:
    layout = pre.get("layout", "NCHW")
    if not isinstance(layout, str):
        raise _fail(
            directory, f"manifest field preprocess.layout must be a string such as 'NCHW', got {layout!r}"
        )
    size = pre.get("size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(_count(d) and d > 0 for d in size)
    ):
        raise _fail(
            directory, f"manifest field preprocess.size must be [height, width] in pixels, got {size!r}"
        )
    for key in ("mean", "std"):
        values = pre.get(key)
        if values is not None and not (
            isinstance(values, list) and values and all(_number(v) for v in values)
        ):
            raise _fail(
                directory,
                f"manifest field preprocess.{key} must be a list of numbers (one per channel), got {values!r}",
            )


def _check_predictions(directory: Path, planned: dict[str, Any]) -> None:
    """The plan's figures the agent starts adapting from: numbers or null."""
    for key in ("decode_ms", "tail_ms"):
        value = planned.get(key)
        if value is not None and not (_number(value) and value >= 0):
            raise _fail(
                directory, f"manifest field predictions.{key} must be a number >= 0 or null, got {value!r}"
            )
    link = planned.get("link")
    if link is None:
        return
    if not isinstance(link, dict):
        raise _fail(directory, f"manifest field predictions.link must be an object or null, got {link!r}")
    for key in ("bandwidth_mbps", "rtt_ms"):
        value = link.get(key)
        if value is not None and not (_number(value) and value >= 0):
            raise _fail(
                directory,
                f"manifest field predictions.link.{key} must be a number >= 0 or null, got {value!r}",
            )


@dataclass(frozen=True)
class EdgeExport:
    """An export directory as the agent uses it. ``local``: the head is the whole model, no server."""

    directory: Path
    name: str
    manifest: dict[str, Any]
    head_path: Path
    inputs: tuple[TensorSpec, ...]
    cut: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    local: bool
    codec_name: str
    calibration: dict[str, Any]
    preprocess: dict[str, Any] | None
    #: the head written by ``splitpipe compile`` (checked), if any
    compiled_head: CompiledFile | None = None

    def head_file(self, runtime: str, use_compiled: bool = True) -> tuple[Path, CompiledFile | None]:
        """The head file ``runtime`` loads: the compiled head when it was built for that
        runtime (and ``use_compiled``), else head.onnx; and the compiled entry used, if any."""
        return pick_file(self.head_path, self.compiled_head, runtime, use_compiled)

    @property
    def split_id(self) -> Any:
        return (self.manifest.get("split") or {}).get("id")

    @property
    def split_label(self) -> str:
        return str((self.manifest.get("split") or {}).get("label", ""))

    def codecs(self) -> dict[str, Any]:
        """Cut tensor name -> configured Codec, or None where the tensor travels plain.

        Plain ``raw`` sends the tensor's bytes with no codec parameters: the same bytes, and the
        server has no meta to check (docs/server.md, "plain")."""
        from splitpipe.kernels import Calibration, get_codec, parse_name

        spec = parse_name(self.codec_name)
        out: dict[str, Any] = {}
        for tensor in self.cut:
            if spec.plain:
                out[tensor.name] = None
                continue
            cal = self.calibration.get(tensor.name)
            calibration = Calibration.from_json(cal) if cal is not None else None
            out[tensor.name] = get_codec(self.codec_name, calibration=calibration)
        return out


def read_manifest(directory: Path) -> Any:
    """``DIR/manifest.json`` parsed (not yet checked); SplitpipeError when it cannot be read."""
    if directory.exists() and not directory.is_dir():
        raise SplitpipeError(f"{directory} is a file; give the export directory that holds manifest.json")
    if not directory.is_dir():
        raise SplitpipeError(f"export directory not found: {directory} (write one with `splitpipe export`)")
    path = directory / MANIFEST
    if not path.is_file():
        raise _fail(directory, f"no {MANIFEST} (is this a directory written by `splitpipe export`?)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(directory, f"{MANIFEST} is not valid JSON ({exc})") from None


def load_export(directory: str | Path) -> EdgeExport:
    """Read and check ``DIR/manifest.json`` and ``DIR/head.onnx`` (sha256) for the agent."""
    directory = Path(directory)
    return export_from_manifest(directory, read_manifest(directory))


def export_from_manifest(directory: Path, manifest: Any) -> EdgeExport:
    """The checks of :func:`load_export` on a manifest already read from ``directory``."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise _fail(directory, f'{MANIFEST} has no "format": {MANIFEST_FORMAT!r}')
    if manifest.get("version") not in MANIFEST_VERSIONS:
        raise _fail(
            directory,
            f"manifest version {manifest.get('version')!r} is not supported; supported: {list(MANIFEST_VERSIONS)}",
        )
    name = manifest.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(directory, "manifest field 'name' must be a non-empty string")

    files = _object(directory, manifest, "files")
    head = files.get("head")
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("path"), str)
        or not isinstance(head.get("sha256"), str)
    ):
        raise _fail(directory, "manifest field files.head must give the head's path and sha256")
    head_path = (directory / head["path"]).resolve()
    if not head_path.is_relative_to(directory.resolve()):
        raise _fail(directory, f"files.head.path {head['path']!r} points outside the export directory")
    if not head_path.is_file():
        raise _fail(directory, f"{head['path']} is missing")
    digest = sha256_file(head_path)
    if digest != head["sha256"].lower():
        raise _fail(
            directory,
            f"{head['path']} has sha256 {digest[:16]}..., the manifest says {head['sha256'][:16]}...; "
            "the file was changed or corrupted, export again",
        )

    split = _object(directory, manifest, "split")
    split_id, label = split.get("id"), split.get("label", "")
    if not (split_id is None or isinstance(split_id, str) or _count(split_id)) or not isinstance(label, str):
        raise _fail(
            directory,
            f"manifest field split must give an id (a number, 'local' or 'offload') and a label (a string); "
            f"got {split!r}",
        )
    has_tail = "tail" in files
    local = split_id == "local" or not has_tail
    inputs = _specs(directory, manifest, "inputs")
    cut = _specs(directory, manifest, "cut", allow_empty=local)
    outputs = _specs(directory, manifest, "outputs")
    if local and cut:
        raise _fail(directory, "a local export (no tail) must have an empty 'cut'")

    codec = manifest.get("codec") or {"name": "raw"}
    if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
        raise _fail(directory, "manifest field codec must be an object with a 'name'")
    calibration = codec.get("calibration") or {}
    if not isinstance(calibration, dict) or not all(isinstance(c, dict) for c in calibration.values()):
        raise _fail(directory, "manifest field codec.calibration must map cut tensor names to scales")
    unknown = sorted(set(calibration) - {t.name for t in cut})
    if unknown:
        raise _fail(directory, f"codec.calibration names {unknown}, which are not cut tensors")
    preprocess = manifest.get("preprocess")
    if preprocess is not None and not isinstance(preprocess, dict):
        raise _fail(directory, "manifest field preprocess must be an object or null")
    if preprocess is not None:
        _check_preprocess(directory, preprocess)
    _check_predictions(directory, _object(directory, manifest, "predictions"))
    compiled = _object(directory, manifest, "compiled").get("head")
    if isinstance(compiled, dict):
        for key in ("from", "error"):
            if compiled.get(key) is not None and not isinstance(compiled[key], dict):
                raise _fail(
                    directory, f"manifest field compiled.head.{key} must be an object, got {compiled[key]!r}"
                )
    export = EdgeExport(
        directory=directory,
        name=name,
        manifest=manifest,
        head_path=head_path,
        inputs=inputs,
        cut=cut,
        outputs=outputs,
        local=local,
        codec_name=codec["name"],
        calibration=calibration,
        preprocess=preprocess,
        compiled_head=compiled_file(directory, manifest, "head"),
    )
    if not local:
        try:
            export.codecs()  # an unknown codec or bad scales fail here, before any frame
        except SplitpipeError as exc:
            raise _fail(directory, f"codec: {exc}") from None
    return export
