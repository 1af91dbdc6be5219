"""Environment variables, read in one place."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where exported ONNX models and measured profiles are cached (SPLITPIPE_CACHE_DIR)."""
    base = os.environ.get("SPLITPIPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "splitpipe"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_level() -> str:
    """Default log level for entry points (SPLITPIPE_LOG_LEVEL), e.g. INFO or DEBUG."""
    return os.environ.get("SPLITPIPE_LOG_LEVEL", "INFO").upper()
