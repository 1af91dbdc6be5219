"""Options of the on-device agent, as frozen dataclasses (the CLI maps its flags onto them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splitpipe.devices.runtimes import check_onnx_runtime
from splitpipe.edge.adapt import AdaptOptions
from splitpipe.errors import SplitpipeError, check_output_file, check_writable
from splitpipe.tls import ClientTls

MIB = 1 << 20
#: the slowest capture rate: one frame a day
MIN_FPS = 1 / 86400

#: source kinds and the argument each takes (None: no argument)
SOURCE_KINDS: dict[str, str | None] = {
    "synthetic": None,
    "images": "DIR",
    "video": "FILE",
    "camera": "N",
}
SOURCE_FORMS = "synthetic, images DIR, video FILE, camera N"


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from.

    - ``synthetic``: random frames of the model's input shape, from ``seed`` (a small pool of
      distinct frames is made once and cycled, so capturing costs nothing measurable);
    - ``images DIR``: the image files of DIR in name order, decoded with Pillow and resized and
      normalised as the manifest's ``preprocess`` says;
    - ``video FILE`` / ``camera N``: OpenCV (the ``video`` extra).

    ``loop`` starts images and video files over at their end; otherwise the source ends there.
    """

    kind: str = "synthetic"
    target: str | None = None
    loop: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise SplitpipeError(f"unknown source {self.kind!r}; accepted: {SOURCE_FORMS}")
        wants = SOURCE_KINDS[self.kind]
        if wants is None and self.target is not None:
            raise SplitpipeError(f"source {self.kind} takes no argument, got {self.target!r}")
        if wants is not None and not self.target:
            raise SplitpipeError(f"source {self.kind} needs {wants}; accepted: {SOURCE_FORMS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SplitpipeError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if self.kind == "camera":
            try:
                index = int(str(self.target))
            except ValueError:
                index = -1
            if index < 0:
                raise SplitpipeError(f"camera takes a device number (0, 1, ...), got {self.target!r}")

    def describe(self) -> str:
        return self.kind if self.target is None else f"{self.kind} {self.target}"


def parse_source(tokens: str | Sequence[str], *, loop: bool = False, seed: int = 0) -> SourceSpec:
    """``"synthetic"``, ``"images DIR"``, ``["video", "FILE"]``, ``"camera 0"`` -> SourceSpec."""
    parts = tokens.split(maxsplit=1) if isinstance(tokens, str) else list(tokens)
    if not parts or len(parts) > 2:
        raise SplitpipeError(f"a source is one of: {SOURCE_FORMS}; got {' '.join(parts)!r}")
    kind = parts[0].lower()
    return SourceSpec(kind, parts[1] if len(parts) == 2 else None, loop=loop, seed=seed)


def parse_address(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) checked and returned as gRPC wants it."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise SplitpipeError(f"server address must be HOST:PORT with a port 1..65535, got {text!r}")
    if "/" in host or any(c.isspace() for c in host) or host.startswith("[") != host.endswith("]"):
        # gRPC would take 'http://host' or 'dns:///host' as a host name and retry it for ever
        raise SplitpipeError(
            f"server address must be HOST:PORT (a name or address, no scheme or path; [v6]:PORT for "
            f"IPv6), got {text!r}"
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{int(port)}"


@dataclass(frozen=True)
class ClientOptions:
    """How the stream client connects, and reconnects when the server is down or the stream breaks.

    - ``window``: frames sent and not yet answered; the next frame's head runs meanwhile.
    - ``backoff_initial_s`` .. ``backoff_max_s``: wait between connection attempts, doubling.
    - ``connect_timeout_s``: give up (an error) when no server answered for this long; None
      waits for ever, as a daemon should.
    - ``rpc_timeout_s``: limit of the one metadata call that checks a connection.
    - ``max_message_bytes``: gRPC send and receive limit; the server's must be as large.
    - ``keepalive_s``: interval of HTTP/2 keepalive pings on the stream (a dead server or link
      is noticed within about twice this); at least 10 s, the server's minimum.
    - ``tls``: connect over TLS, verifying the server (and presenting a client certificate
      for mutual TLS) as it says; None connects in plaintext.
    """

    window: int = 4
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    connect_timeout_s: float | None = None
    rpc_timeout_s: float = 5.0
    max_message_bytes: int = 256 * MIB
    keepalive_s: float = 20.0
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise SplitpipeError(f"window must be at least 1 frame, got {self.window}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise SplitpipeError("backoff must satisfy 0 < initial <= max seconds")
        if self.connect_timeout_s is not None and not self.connect_timeout_s > 0:
            raise SplitpipeError(f"connect timeout must be > 0 seconds, got {self.connect_timeout_s}")
        if not 1 <= self.max_message_bytes <= 2**31 - 1:
            raise SplitpipeError("max message size must be 1 byte .. 2 GiB - 1")
        if self.keepalive_s < 10:
            raise SplitpipeError(
                f"keepalive must be at least 10 s (the server's limit), got {self.keepalive_s}"
            )


@dataclass(frozen=True)
class AgentOptions:
    """Everything one agent run depends on.

    - ``export_dir``: written by ``splitpipe export`` (a ``local`` export runs with no server).
    - ``server``: ``HOST:PORT`` of ``splitpipe serve``; required unless the export is local.
    - ``frames``: stop after this many frames (None: until stopped or the source ends).
    - ``fps``: capture at most this many frames per second (None: as fast as the pipeline goes).
    - ``threads``: ONNX Runtime intra-op threads of the head (None: the runtime chooses).
    - ``log_interval_s``: seconds between log lines with fps and latency (0: off).
    - ``drain_timeout_s``: on stop, how long frames in flight may take (across reconnects).
    - ``device_profile``: profile whose power figures the energy estimate uses where no
      sensor exists (None: a generic guess); sensors are always preferred.
    - ``report``: write the agent report (JSON) here.
    - ``max_report_frames``: frames the report keeps (the latest); counts stay exact, the
      percentiles cover the frames kept. Bounds the memory of a daemon that runs for days.
    - ``head_thread``: run capture, head and encode on a worker thread (True), on the event
      loop (False), or choose by the head's time at warm-up (None: a thread from 0.5 ms).
    - ``more_exports``: further exports of the same model (other splits, ``offload``,
      ``local``): the agent then chooses the split per frame from measured figures, as
      ``adapt`` says (:mod:`splitpipe.edge.adapt`).
    - ``sequential``: capture the next frame only once the previous one's result is in, so that
      each frame's ``e2e_ms`` is its latency alone (no overlap with, or wait behind, the frame
      before it); for latency measurements. Otherwise the next frame's head overlaps the
      frames in flight (the throughput setting).
    - ``use_compiled``: run the head that ``splitpipe compile`` wrote, when the manifest has one
      built for ``runtime`` (False: always head.onnx).
    """

    export_dir: Path
    server: str | None = None
    source: SourceSpec = field(default_factory=SourceSpec)
    frames: int | None = None
    fps: float | None = None
    threads: int | None = 1
    runtime: str = "ort"
    providers: tuple[str, ...] = ("cpu",)
    client: ClientOptions = field(default_factory=ClientOptions)
    log_interval_s: float = 5.0
    drain_timeout_s: float = 30.0
    device_profile: str | None = None
    report: Path | None = None
    max_report_frames: int = 100_000
    head_thread: bool | None = None
    sequential: bool = False
    more_exports: tuple[Path, ...] = ()
    adapt: AdaptOptions = field(default_factory=AdaptOptions)
    use_compiled: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "export_dir", Path(self.export_dir))
        object.__setattr__(self, "more_exports", tuple(Path(p) for p in self.more_exports))
        check_onnx_runtime(self.runtime)
        if self.report is not None:  # checked now: a report that cannot be written would lose the run
            # the report goes to a file beside it, renamed over it at the end: a regular file or
            # a new one (never a device), in a folder this process can write
            object.__setattr__(self, "report", check_output_file(self.report, "--report", "report.json"))
            check_writable(self.report, "--report")
        if self.server is not None:
            object.__setattr__(self, "server", parse_address(self.server))
        if self.frames is not None and self.frames < 1:
            raise SplitpipeError(f"--frames must be at least 1, got {self.frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise SplitpipeError(f"--fps must be a positive number, got {self.fps}")
        if self.fps is not None and self.fps < MIN_FPS:  # a longer wait overflows the OS's timeouts
            raise SplitpipeError(f"--fps must be at least {MIN_FPS:.3g} (one frame a day), got {self.fps}")
        if self.threads is not None and self.threads < 1:
            raise SplitpipeError(f"--threads must be at least 1 (or unset), got {self.threads}")
        if self.max_report_frames < 1:
            raise SplitpipeError(f"max_report_frames must be at least 1, got {self.max_report_frames}")
        for flag, value in (
            ("--log-interval", self.log_interval_s),
            ("--drain-timeout", self.drain_timeout_s),
        ):
            if not value >= 0:  # NaN too
                raise SplitpipeError(f"{flag} must be a number of seconds >= 0, got {value}")
