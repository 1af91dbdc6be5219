"""Tails the server hosts: an export directory's manifest, its checked tail.onnx, and a runner."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe._files import sha256_file
from splitpipe.devices.runtimes import ONNX_PLATFORMS, Runner, TensorSpec, create_runner
from splitpipe.devices.runtimes.compiled import CompiledFile, compiled_file, pick_file
from splitpipe.errors import SplitpipeError
from splitpipe.names import RULE as NAME_RULE
from splitpipe.names import valid_model_name
from splitpipe.proto.datatypes import kserve_datatype
from splitpipe.server.options import ServerOptions

_LOGGER = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "splitpipe-export"
MANIFEST_VERSIONS = (1,)
#: the only version of each model; requests may name it or leave the version empty
MODEL_VERSION = "1"


def _fail(directory: Path, message: str) -> SplitpipeError:
    return SplitpipeError(f"export {directory}: {message}")


def _tensors(directory: Path, manifest: dict[str, Any], key: str) -> list[TensorSpec]:
    entries = manifest.get(key)
    if not isinstance(entries, list) or not entries:
        raise _fail(directory, f"manifest field {key!r} must be a non-empty list of tensors")
    specs = []
    for entry in entries:
        try:
            shape = tuple(None if d is None else int(d) for d in entry["shape"])
            specs.append(TensorSpec(str(entry["name"]), np.dtype(entry["dtype"]), shape))
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(
                directory, f"manifest {key!r} entry {entry!r} is not {{name, dtype, shape}} ({exc})"
            ) from None
    return specs


def load_manifest(directory: Path) -> dict[str, Any]:
    """Read and check the fields of ``DIR/manifest.json`` that the server relies on."""
    path = directory / MANIFEST
    if not path.is_file():
        raise _fail(directory, f"no {MANIFEST} (is this a directory written by `splitpipe export`?)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(directory, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise _fail(directory, f'{MANIFEST} has no "format": {MANIFEST_FORMAT!r}')
    if manifest.get("version") not in MANIFEST_VERSIONS:
        raise _fail(
            directory,
            f"manifest version {manifest.get('version')!r} is not supported; supported: {list(MANIFEST_VERSIONS)}",
        )
    name = manifest.get("name")
    if not valid_model_name(name):
        raise _fail(directory, f"model name {name!r} must be {NAME_RULE}")
    tail = (manifest.get("files") or {}).get("tail")
    if tail is None and (manifest.get("split") or {}).get("id") == "local":
        raise _fail(directory, "a local export (the whole model runs on the device) has no tail to serve")
    if not isinstance(tail, dict) or not isinstance(tail.get("path"), str) or not tail.get("sha256"):
        raise _fail(directory, "manifest field files.tail must give the tail's path and sha256")
    return manifest


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


@dataclass
class TailModel:
    """One served tail. ``inputs`` are the cut tensors in manifest order, with the shapes of the
    ONNX file (which is what the runner accepts); ``batchable`` when every input and output has a
    free first dimension there."""

    name: str
    directory: Path
    manifest: dict[str, Any]
    runner: Runner
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batchable: bool
    remote: bool = False  # the runs happen elsewhere (Ray Serve replicas): never on the event loop
    #: the file the runner loaded (tail.onnx, or the compiled tail) and the compiled entry used
    file: Path | None = None
    compiled: CompiledFile | None = None
    platform: str = ONNX_PLATFORMS["ort"]  # ModelMetadata's platform, Triton's name for the runtime

    def __post_init__(self) -> None:
        self.input_index = {spec.name: i for i, spec in enumerate(self.inputs)}
        self.output_index = {spec.name: i for i, spec in enumerate(self.outputs)}
        self.input_datatypes = [kserve_datatype(s.dtype) for s in self.inputs]
        self.output_datatypes = [kserve_datatype(s.dtype) for s in self.outputs]
        self.all_outputs = list(range(len(self.outputs)))

    @property
    def codec(self) -> str | None:
        """The codec the manifest names for the cut (informational; requests say their own)."""
        codec = self.manifest.get("codec")
        return codec.get("name") if isinstance(codec, dict) else None

    def close(self) -> None:
        self.runner.deactivate()


def load_tail(directory: str | Path, options: ServerOptions) -> TailModel:
    """Load the tail of one export directory: manifest checks, sha256, runner, spec agreement."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SplitpipeError(f"{directory} is a file; give the export directory that holds manifest.json")
    if not directory.is_dir():
        raise SplitpipeError(f"export directory not found: {directory}")
    manifest = load_manifest(directory)
    tail_entry = manifest["files"]["tail"]
    root = directory.resolve()
    tail_path = (root / tail_entry["path"]).resolve()
    if root not in tail_path.parents:
        raise _fail(directory, f"tail path {tail_entry['path']!r} points outside the export directory")
    if not tail_path.is_file():
        raise _fail(directory, f"tail file {tail_entry['path']!r} not found")
    digest = sha256_file(tail_path)
    if digest != str(tail_entry["sha256"]).lower():
        raise _fail(
            directory,
            f"{tail_entry['path']} has sha256 {digest}, the manifest says {tail_entry['sha256']}; "
            "the file changed after export",
        )
    cut = _tensors(directory, manifest, "cut")
    declared_outputs = _tensors(directory, manifest, "outputs")
    available = compiled_file(directory, manifest, "tail")  # checked whenever the manifest lists one
    tail_path, compiled = pick_file(tail_path, available, options.runtime, options.use_compiled)
    runner_options: dict[str, Any] = {"threads": options.threads}
    if options.runtime == "ort":
        runner_options["providers"] = list(options.providers)
    runner = create_runner(options.runtime, tail_path, **runner_options)
    runner.activate()
    try:
        by_name = {s.name: s for s in runner.inputs}
        if sorted(by_name) != sorted(s.name for s in cut) or not all(s.agrees(by_name[s.name]) for s in cut):
            raise _fail(
                directory,
                f"the manifest's cut tensors ({_describe(cut)}) do not match the tail's inputs "
                f"({_describe(runner.inputs)})",
            )
        out_by_name = {s.name: s for s in runner.outputs}
        if sorted(out_by_name) != sorted(s.name for s in declared_outputs) or not all(
            s.agrees(out_by_name[s.name]) for s in declared_outputs
        ):
            raise _fail(
                directory,
                f"the manifest's outputs ({_describe(declared_outputs)}) do not match the tail's outputs "
                f"({_describe(runner.outputs)})",
            )
        inputs = [by_name[s.name] for s in cut]
        outputs = [out_by_name[s.name] for s in declared_outputs]
        for spec in inputs + outputs:
            try:
                kserve_datatype(spec.dtype)
            except KeyError:
                raise _fail(
                    directory, f"tensor {spec.name!r} has dtype {spec.dtype}, which the server cannot carry"
                ) from None
        batchable = all(len(s.shape) > 0 and s.shape[0] is None for s in inputs + outputs)
    except BaseException:
        runner.deactivate()
        raise
    if compiled is not None and (compiled.entry.get("error") or {}).get("within_budget") is False:
        _LOGGER.warning("%s: serving the compiled tail %s", manifest["name"], compiled.describe())
    model = TailModel(
        manifest["name"],
        directory,
        manifest,
        runner,
        inputs,
        outputs,
        batchable,
        file=tail_path,
        compiled=compiled,
        platform=ONNX_PLATFORMS[options.runtime],
    )
    _LOGGER.info(
        "loaded %s from %s (%s): inputs %s, outputs %s, %s",
        model.name,
        directory,
        f"the compiled tail {compiled.describe()}" if compiled is not None else tail_path.name,
        _describe(inputs),
        _describe(outputs),
        "batchable" if batchable else "fixed batch",
    )
    return model


def load_tails(directories: list[str | Path] | list[Path], options: ServerOptions) -> dict[str, TailModel]:
    """Load every export directory; model names must be unique."""
    models: dict[str, TailModel] = {}
    try:
        for directory in directories:
            model = load_tail(directory, options)
            if model.name in models:
                model.close()
                raise SplitpipeError(
                    f"model name {model.name!r} is served twice ({models[model.name].directory} and {directory}); "
                    "export the splits under different names"
                )
            models[model.name] = model
    except BaseException:
        for model in models.values():
            model.close()
        raise
    if not models:
        raise SplitpipeError("no export directory given")
    return models
