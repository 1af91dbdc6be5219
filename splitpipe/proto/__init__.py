"""Python code generated from proto/ by proto/generate.py; do not edit the generated modules.

- :mod:`splitpipe.proto.inference.grpc_service_pb2` and ``..._pb2_grpc``: the Open Inference
  Protocol (KServe v2) gRPC service ``inference.GRPCInferenceService``.

All descriptors live in the private pool :data:`POOL` (see :mod:`splitpipe.proto._pool`), so
these modules import beside tritonclient in one process, in either order.
"""

from splitpipe.proto._pool import POOL

__all__ = ["POOL"]
