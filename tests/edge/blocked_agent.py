"""Run ``splitpipe agent ARGS`` as a device would: torch, onnx, Pillow, OpenCV, zstandard, lz4 and
the server's extras cannot be imported (a sys.meta_path blocker refuses them).

    python tests/edge/blocked_agent.py EXPORT_DIR --server HOST:PORT ...
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from typing import Any

BLOCKED = {
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "tensorrt",
    "ray",
    "matplotlib",
    "rich",
    "zstandard",
    "lz4",
    "numba",
    "PIL",
    "cv2",
    "pynvml",
    "grpc_health",
    "grpc_reflection",
    "tritonclient",
}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: not installed on a device")
        return None


def main() -> int:
    sys.meta_path.insert(0, Blocker())
    from splitpipe import cli

    code = cli.main(["agent", *sys.argv[1:]])
    leaked = sorted(BLOCKED & {m.split(".")[0] for m in sys.modules})
    if leaked:
        print(f"leaked imports: {leaked}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
