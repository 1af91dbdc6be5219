"""The agent's environment: numpy and onnxruntime only. Codecs must work without onnx, torch,
numba; +zstd/+lz4 without their packages fail with a clear message, at get_codec time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"onnx", "torch", "numba", "zstandard", "lz4", "scipy", "sklearn"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} blocked for this test")
    sys.meta_path.insert(0, Block())

    import numpy as np
    from splitpipe.errors import CodecError, UnavailableError
    from splitpipe.kernels import CodecMeta, decode, get_codec
    x = np.maximum(np.random.default_rng(0).standard_normal((1, 8, 5, 5), dtype=np.float32), 0)
    for name in ("raw", "fp16", "int8", "int8/ch", "int8/sym", "uint4", "uint2/ch"):
        payload, meta = get_codec(name).encode(x)
        y = decode(payload, CodecMeta.from_params(meta.to_params()))
        assert y.shape == x.shape, name
    for name in ("int8+zstd", "fp16+lz4"):
        try:
            get_codec(name)
        except UnavailableError as exc:
            print("unavailable:", exc)
    meta = CodecMeta(codec="int8+zstd", dtype="float32", shape=(1,), scale=1.0, zero_point=0)
    try:
        decode(b"x", meta)
    except CodecError as exc:
        print("decode:", exc)
    print("ok", sorted(m for m in ("onnx", "torch", "numba") if m in sys.modules))
    """
)


def test_codecs_work_with_only_numpy_and_onnxruntime() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "unavailable: codec stage +zstd needs the zstandard package" in out
    assert "unavailable: codec stage +lz4 needs the lz4 package" in out
    assert "decode: payload uses +zstd but it cannot be decoded here" in out
    assert out.strip().endswith("ok []")
