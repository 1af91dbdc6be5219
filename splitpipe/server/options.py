"""Options of the edge server, one frozen dataclass (the CLI maps its flags onto it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from splitpipe.devices.runtimes import check_onnx_runtime
from splitpipe.errors import SplitpipeError
from splitpipe.tls import ServerTls

MIB = 1 << 20
#: the longest a batch may wait for more requests: a minute
_MAX_BATCH_TIMEOUT_US = 60_000_000
_GRPC_MAX_MESSAGE = 2**31 - 1

# ServerOptions fields that `splitpipe serve` sets from a flag: the flag, and one of its units in
# the field's (sizes are MiB on the command line, bytes here)
_FLAGS = {
    "max_batch": ("--max-batch", 1),
    "instances": ("--instances", 1),
    "max_message_bytes": ("--max-message-mb", MIB),
    "max_tensor_bytes": ("--max-tensor-mb", MIB),
}


def _named(name: str, value: int) -> tuple[str, int]:
    """How an error names the field ``name`` and the unit it counts ``value`` in: as the flag the
    user gave (sizes in MiB), or as the field where no flag sets it or ``value`` is not in whole
    MiB (the Python API takes bytes)."""
    flag, unit = _FLAGS.get(name, (name, 1))
    return (flag, unit) if value % unit == 0 else (name, 1)


@dataclass(frozen=True)
class RayOptions:
    """- ``address``: None starts a local Ray instance; ``auto`` or ``HOST:PORT`` joins a cluster.
    - ``replicas``: replicas of each tail; ``replica_cpus`` / ``replica_gpus``: what each asks of
      Ray (fractions allowed), which decides where Ray can place it.
    - ``timeout_s``: longest a tail run may take on a replica before the request fails."""

    address: str | None = None
    replicas: int = 2
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise SplitpipeError(f"--replicas must be at least 1, got {self.replicas}")
        for flag, value in (("--replica-cpus", self.replica_cpus), ("--replica-gpus", self.replica_gpus)):
            if not math.isfinite(value):
                raise SplitpipeError(
                    f"{flag} must be a finite number of CPUs or GPUs (e.g. 1 or 0.5), got {value}"
                )
        if self.replica_cpus < 0 or self.replica_gpus < 0 or self.replica_cpus + self.replica_gpus <= 0:
            raise SplitpipeError("each replica needs some CPU or GPU: --replica-cpus / --replica-gpus > 0")
        if self.timeout_s <= 0:
            raise SplitpipeError(f"the replica timeout must be > 0 s, got {self.timeout_s}")


@dataclass(frozen=True)
class ServerOptions:
    """How ``splitpipe serve`` loads, batches and runs tails.

    - ``max_batch``: most rows (summed over requests) that one tail run takes; 1 turns batching
      off. Only tails whose cut tensors have a free first dimension are batched.
    - ``batch_timeout_us``: how long the first request of a batch waits for more. 0 batches only
      what is already queued (no added latency; batches form under load, while a run is busy).
    - ``runtime``, ``threads``, ``providers``: the runner of every tail
      (``splitpipe.devices.runtimes``); ``threads`` None lets the runtime choose.
    - ``instances``: tail runs of one model that may execute at once (threads).
    - ``max_message_bytes``: gRPC send and receive limit (gRPC's default of 4 MiB is too small
      for large cut tensors).
    - ``max_tensor_bytes``: largest decoded tensor one request may claim; checked before any
      memory is allocated.
    - ``stream_window``: requests of one stream being processed at once; more wait in gRPC's
      flow control.
    - ``grace_s``: on shutdown, how long requests in flight may take before they are cancelled.
    - ``log_interval_s``: seconds between log lines with request rate and latency; 0 turns
      them off.
    - ``tls``: serve over TLS with this certificate (and ask clients for theirs when it names
      a client CA); None serves plaintext.
    - ``metrics_port``: serve Prometheus metrics on this HTTP port (0 picks a free one; None:
      no exporter), on the same host as gRPC.
    - ``ray``: run the tails on Ray Serve replicas (:mod:`splitpipe.server.ray_serve`); None
      runs them in this process.
    - ``use_compiled``: load the tail that ``splitpipe compile`` wrote, when the manifest has
      one built for ``runtime`` (False: always tail.onnx).
    """

    max_batch: int = 8
    batch_timeout_us: int = 0
    runtime: str = "ort"
    threads: int | None = 1
    providers: tuple[str, ...] = field(default=("cpu",))
    instances: int = 1
    max_message_bytes: int = 256 * MIB
    max_tensor_bytes: int = 256 * MIB
    stream_window: int = 64
    grace_s: float = 10.0
    log_interval_s: float = 0.0
    tls: ServerTls | None = None
    ray: RayOptions | None = None
    metrics_port: int | None = None
    use_compiled: bool = True

    def __post_init__(self) -> None:
        for field_name in (
            "max_batch",
            "instances",
            "max_message_bytes",
            "max_tensor_bytes",
            "stream_window",
        ):
            value = getattr(self, field_name)
            if value < 1:
                name, unit = _named(field_name, value)
                raise SplitpipeError(f"{name} must be at least 1, got {value // unit}")
        if self.batch_timeout_us < 0:
            raise SplitpipeError(f"batch timeout must be >= 0 microseconds, got {self.batch_timeout_us}")
        if self.batch_timeout_us > _MAX_BATCH_TIMEOUT_US:  # longer waits overflow the OS's timeouts
            raise SplitpipeError(
                f"--batch-timeout-us must be at most {_MAX_BATCH_TIMEOUT_US} (a minute), got {self.batch_timeout_us}"
            )
        if self.threads is not None and self.threads < 1:
            raise SplitpipeError(f"threads must be at least 1 (or unset), got {self.threads}")
        if self.max_message_bytes > _GRPC_MAX_MESSAGE:
            name, unit = _named("max_message_bytes", self.max_message_bytes)
            raise SplitpipeError(
                f"{name} must be at most {_GRPC_MAX_MESSAGE // unit} (gRPC's limit is 2 GiB - 1 bytes), "
                f"got {self.max_message_bytes // unit}"
            )
        for flag, value in (("--grace", self.grace_s), ("--log-interval", self.log_interval_s)):
            if not value >= 0:  # NaN too
                raise SplitpipeError(f"{flag} must be a number of seconds >= 0, got {value}")
        if not self.providers:
            raise SplitpipeError("at least one execution provider is needed, e.g. cpu")
        check_onnx_runtime(self.runtime)
        if self.ray is not None and self.runtime != "ort":
            raise SplitpipeError(
                f"--ray runs the tails on Ray Serve replicas with ONNX Runtime; --runtime {self.runtime} "
                "is for tails served in this process (leave out --ray or --runtime)"
            )
