"""The codecs' compiled kernels (docs/codecs.md); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install goes on and the codecs use ONNX
Runtime kernels instead (same bytes, slower on small tensors). Extensions stay here because
setuptools calls their pyproject.toml table experimental.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "splitpipe.kernels._cquant",
            sources=["splitpipe/kernels/_cquant.c"],
            extra_compile_args=["-O3", "-fno-trapping-math", "-fopenmp-simd"],
            optional=True,
        )
    ]
)
