"""Compiled parts of an export directory: which file a runtime loads for the head or the tail.

``splitpipe compile`` records each compiled part under the manifest's ``compiled`` field
(docs/compile.md): ``compiled.head`` / ``compiled.tail`` = ``{path, sha256, bytes, target,
runtime, precision, from: {path, sha256}, ...}``. The agent (head) and the server (tail) check
such an entry whenever the manifest has one, and load its file when their runtime is the one
it was built for; otherwise they load the plain ONNX part. Only the standard library is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpipe._files import sha256_file
from splitpipe.errors import SplitpipeError

#: compile target -> the runner (splitpipe.devices.runtimes) that loads its file
TARGET_RUNTIMES = {"ort": "ort", "ort-int8": "ort", "tensorrt": "trt"}
PARTS = ("head", "tail")


@dataclass(frozen=True)
class CompiledFile:
    """One compiled part, its file checked against the manifest."""

    part: str
    path: Path
    entry: dict[str, Any]

    @property
    def runtime(self) -> str:
        return str(self.entry["runtime"])

    @property
    def target(self) -> str:
        return str(self.entry["target"])

    def describe(self) -> str:
        """``head.int8.onnx (ort-int8, int8)``, for messages and reports."""
        error = self.entry.get("error") or {}
        forced = (
            ", written with --force above its error budget" if error.get("within_budget") is False else ""
        )
        return f"{self.path.name} ({self.target}, {self.entry.get('precision', '?')}{forced})"

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path.name,
            "target": self.target,
            "precision": self.entry.get("precision"),
            "runtime": self.runtime,
        }


def compiled_file(directory: Path, manifest: dict[str, Any], part: str) -> CompiledFile | None:
    """The checked compiled ``part`` of an export, or None when the manifest lists none.

    SplitpipeError when the entry is malformed, its file is missing or changed, or it was built
    from another version of the part than the one the manifest lists now."""
    compiled = manifest.get("compiled")
    if compiled is None:
        return None
    if not isinstance(compiled, dict):
        raise SplitpipeError(f"export {directory}: manifest field 'compiled' must be an object")
    entry = compiled.get(part)
    if entry is None:
        return None
    what = f"export {directory}: compiled.{part}"
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), str) for k in ("path", "sha256", "target", "runtime")
    ):
        raise SplitpipeError(f"{what} must give path, sha256, target and runtime")
    root = directory.resolve()
    path = (root / entry["path"]).resolve()
    if not path.is_relative_to(root):
        raise SplitpipeError(f"{what}.path {entry['path']!r} points outside the export directory")
    if not path.is_file():
        raise SplitpipeError(f"{what}: {entry['path']} is missing (compile again, or remove the entry)")
    digest = sha256_file(path)
    if digest != entry["sha256"].lower():
        raise SplitpipeError(
            f"{what}: {entry['path']} has sha256 {digest[:16]}..., the manifest says "
            f"{entry['sha256'][:16]}...; the file was changed or corrupted, compile again"
        )
    source = (manifest.get("files") or {}).get(part) or {}
    built_from = entry.get("from") or {}
    if str(built_from.get("sha256", "")).lower() != str(source.get("sha256", "")).lower():
        raise SplitpipeError(
            f"{what}: {entry['path']} was compiled from another {part} than {source.get('path', part)}; "
            "compile again"
        )
    return CompiledFile(part, path, entry)


def pick_file(
    plain: Path, compiled: CompiledFile | None, runtime: str, use_compiled: bool = True
) -> tuple[Path, CompiledFile | None]:
    """The file ``runtime`` loads: the compiled one when it was built for that runtime."""
    if use_compiled and compiled is not None and compiled.runtime == runtime:
        return compiled.path, compiled
    return plain, None
