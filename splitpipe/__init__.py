"""splitpipe: split computing at the edge.

Plan where to cut a DNN between a device and an edge server, compress the tensor at the cut,
compile both halves, and run them as an on-device agent streaming to a server.

Importing this package is cheap and needs only the core dependencies; the heavy parts
(torch, onnx, tensorrt, ray) are imported by the functions that need them.
"""

from splitpipe.errors import SplitpipeError

__version__ = "0.1.0"
__all__ = ["SplitpipeError", "__version__"]
