"""The edge server: serves exported tails over the Open Inference Protocol (KServe v2) gRPC API.

Requests carry the cut tensors (compressed by a codec, or plain), the server checks them,
decodes, batches requests for the same tail across streams and clients, runs the tail, and
answers with the outputs and its own stage durations. See docs/server.md.

    server, port = await create_server("0.0.0.0:8001", ["exports/s12"], ServerOptions())
    await server.start()
    ...
    await server.stop(grace=10)
"""

from splitpipe.proto.params import STAGE_PARAMS
from splitpipe.server.app import InferenceServer, ServerThread, create_server, serve
from splitpipe.server.models import TailModel, load_manifest, load_tail
from splitpipe.server.options import ServerOptions

__all__ = [
    "STAGE_PARAMS",
    "InferenceServer",
    "ServerOptions",
    "ServerThread",
    "TailModel",
    "create_server",
    "load_manifest",
    "load_tail",
    "serve",
]
