"""One base exception for user errors.

A :class:`SplitpipeError` is something the user can fix (a bad model spec, a missing file,
an unknown option value); the CLI prints its message as one line and exits with code 2.
Any other exception is a bug in splitpipe and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class SplitpipeError(Exception):
    """A user error: bad input, missing file, unavailable backend."""


class UnavailableError(SplitpipeError):
    """A backend, meter or tool that this machine does not have."""


class CodecError(SplitpipeError):
    """A payload or its meta that cannot be decoded safely."""


def choices(what: str, got: object, accepted: Iterable[object]) -> SplitpipeError:
    """The usual 'unknown X: got, accepted are: ...' error."""
    listed = ", ".join(str(a) for a in accepted)
    return SplitpipeError(f"unknown {what} {got!r}; accepted: {listed}")


def check_output_file(path: str | Path, option: str, example: str = "out.json") -> Path:
    """An output file named by ``option`` (e.g. ``--report``), checked before any work is done
    rather than when the results are written: its folder must exist and it must not be a folder."""
    out = Path(path)
    if out.is_dir():
        raise SplitpipeError(f"{option} {out} is a directory; give a file name such as {out / example}")
    if out.exists() and not out.is_file():  # written beside and renamed over: as root, /dev/null went
        raise SplitpipeError(
            f"{option} {out} is not a regular file (a device or a pipe), which writing would replace; "
            f"give a file name such as {example}"
        )
    _check_parents(out, option)
    if not out.parent.is_dir():
        raise SplitpipeError(f"{option} {out}: folder {out.parent} does not exist")
    return out


def check_writable(path: str | Path, option: str, *, inside: bool = False) -> None:
    """Fail in one line now, rather than with a traceback after minutes of planning, training or
    streaming, where ``path`` (a file or folder that the command creates or replaces, with any
    missing parent folders; with ``inside``, a folder the command writes into) cannot be
    written: a probe file is made and removed in the nearest folder that exists. Permission
    bits alone do not tell (root ignores them; /proc and read-only mounts refuse anyway)."""
    import os
    import tempfile

    out = Path(path).absolute()
    folder = out if inside else out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".splitpipe-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SplitpipeError(
            f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); give a writable path"
        ) from None


def _check_parents(out: Path, option: str) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SplitpipeError(f"{option} {out}: {parent} is a file, not a folder")
            return


#: the suffixes matplotlib writes that plots are offered in
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_file(path: str | Path, option: str = "--plot", example: str = "plot.png") -> Path:
    """A plot file that can be written, in a format offered, and matplotlib to write it."""
    import importlib.util

    out = check_output_file(path, option, example)
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise SplitpipeError(f"{option} {out}: give a file ending in {', '.join(PLOT_SUFFIXES)}")
    if importlib.util.find_spec("matplotlib") is None:
        raise SplitpipeError(f"{option} needs matplotlib: pip install 'splitpipe[plot]' (or matplotlib)")
    return out


def check_output_dir(path: str | Path, option: str, contents: str) -> Path:
    """An output folder named by ``option``, checked before any work: it may exist or not (it
    is created), but it must not be a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SplitpipeError(f"{option} {out} is a file; give a directory for {contents}")
    _check_parents(out, option)
    return out
