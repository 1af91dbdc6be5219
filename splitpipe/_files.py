"""File helpers shared by the planner, the agent and the server (standard library only)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from splitpipe.errors import SplitpipeError


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (models can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_whole(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a file beside it renamed over it, so that an earlier
    file stays whole until the new one is complete; a link keeps pointing at the file written,
    and a device or a pipe at ``path`` is refused (the rename would replace it). OSError on
    failure, with nothing left beside it."""
    out = Path(path).resolve()
    if out.exists() and not out.is_file():
        raise SplitpipeError(f"{path} is not a regular file; not replacing it")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(new: Path, out: Path) -> None:
    """Move folder ``new`` to ``out``, replacing an earlier ``out`` only once ``new`` is in place:
    a failure or an interrupt on the way leaves the earlier one whole."""
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()  # only the unique name is needed
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
