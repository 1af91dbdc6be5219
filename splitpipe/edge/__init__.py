"""The on-device agent: frame sources, head execution, encoding, the stream client, the report.

    from splitpipe.edge import AgentOptions, run_agent
    report = run_agent(AgentOptions("exports/s12", server="10.0.0.2:8001", frames=1000))
    print(report.summary["fps"], report.summary["latency"]["e2e_ms"])

Runs with numpy, onnxruntime, grpcio, protobuf and psutil only (Pillow for image files, OpenCV
for video and cameras, zstandard/lz4 for entropy-coded codecs, each imported when used).
See docs/agent.md.
"""

from splitpipe.edge.agent import Agent, FrameResult, Pacer, agent_thread, run_agent
from splitpipe.edge.client import Pending, StreamClient
from splitpipe.edge.manifest import EdgeExport, load_export
from splitpipe.edge.options import AgentOptions, ClientOptions, SourceSpec, parse_address, parse_source
from splitpipe.edge.report import FrameRecord, Report
from splitpipe.edge.sources import ImageSource, Source, SyntheticSource, VideoSource, open_source
from splitpipe.edge.wire import ReplyReader, RequestBuilder

__all__ = [
    "Agent",
    "AgentOptions",
    "ClientOptions",
    "EdgeExport",
    "FrameRecord",
    "FrameResult",
    "ImageSource",
    "Pacer",
    "Pending",
    "ReplyReader",
    "Report",
    "RequestBuilder",
    "Source",
    "SourceSpec",
    "StreamClient",
    "SyntheticSource",
    "VideoSource",
    "agent_thread",
    "load_export",
    "open_source",
    "parse_address",
    "parse_source",
    "run_agent",
]
