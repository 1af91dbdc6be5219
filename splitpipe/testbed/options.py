"""What a testbed is asked to be: link rate, round-trip time, device CPU share, and names.

Everything here is plain data and parsing; nothing touches the system. The names of every
resource (namespaces, cgroups, state directory) derive from the testbed's name alone, so that
``down`` can find and remove them after a crash even when the state file is gone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from splitpipe.errors import SplitpipeError, choices

#: sides of the testbed: the device runs the head, the server the tail
SIDES = ("device", "server")
#: how the round-trip delay is injected: netem where the kernel has it, else a user-space relay
DELAY_METHODS = ("auto", "netem", "relay")

#: the private /30 that exists only on the veth pair inside the testbed's own namespaces
DEVICE_ADDR = "10.77.0.1"
SERVER_ADDR = "10.77.0.2"
PREFIX_LEN = 30
#: interface names inside the namespaces (not visible in the host namespace, so no clashes)
DEVICE_IF = "sp-device"
SERVER_IF = "sp-server"
#: where the delay relay listens inside the device namespace (a sidecar, one port per server port)
RELAY_HOST = "127.0.0.1"

STATE_ROOT = Path("/run/splitpipe-testbed")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")
#: the slowest link the testbed can measure: below it the probes' bulk transfers carry too few
#: frames, and what the link's queue still holds from one phase stalls the next (at 0.01 Mbit/s
#: every measurement failed: "too few samples to estimate a rate")
MIN_RATE_MBIT = 0.05
# the kernel refuses a CFS quota below 1 ms, so tiny shares get a longer period
_MIN_QUOTA_US = 1000


@dataclass(frozen=True)
class TestbedOptions:
    """A testbed's configuration. Rates are Mbit/s on the wire (tbf counts Ethernet frames)."""

    __test__ = False  # not a pytest test class, despite its name

    name: str = "sp"
    rate_mbit: float = 10.0
    rtt_ms: float = 20.0
    #: fraction of one core the device side gets (CFS quota / period); 1.0 = a whole core
    device_cpu: float = 1.0
    #: server ports the device dials; with the relay, each gets a delaying forwarder
    ports: tuple[int, ...] = (8001,)
    delay: str = "auto"
    device_core: int = 0
    server_core: int = 1
    #: CFS period; short, so a throttled device runs in 2.5 ms slices rather than 25 ms ones
    cpu_period_us: int = 10_000
    #: port of the measurement probe on the server side (relayed like the others)
    probe_port: int = 5201

    def __post_init__(self) -> None:
        validate_name(self.name)
        if not (MIN_RATE_MBIT <= self.rate_mbit <= 10_000):
            raise SplitpipeError(
                f"link rate {self.rate_mbit} Mbit/s is out of range; accepted: {MIN_RATE_MBIT:g} to 10000"
            )
        if not (0 <= self.rtt_ms <= 10_000):
            raise SplitpipeError(f"round-trip time {self.rtt_ms} ms is out of range; accepted: 0 to 10000")
        if not (0.01 <= self.device_cpu <= 1.0):
            raise SplitpipeError(
                f"device CPU share {self.device_cpu} is out of range; accepted: 0.01 to 1.0 of one core"
            )
        if self.delay not in DELAY_METHODS:
            raise choices("delay method", self.delay, DELAY_METHODS)
        for port in (*self.ports, self.probe_port):
            if not (1 <= port <= 65535):
                raise SplitpipeError(f"port {port} is out of range; accepted: 1 to 65535")
        if self.probe_port in self.ports:
            raise SplitpipeError(f"port {self.probe_port} is the measurement probe's; choose another")
        if len(set(self.ports)) != len(self.ports):
            raise SplitpipeError(f"ports listed twice: {list(self.ports)}")
        if self.device_core < 0 or self.server_core < 0:
            raise SplitpipeError("core numbers must be >= 0")
        if not (1000 <= self.cpu_period_us <= 1_000_000):
            raise SplitpipeError(
                f"CPU period {self.cpu_period_us} us is out of range; accepted: 1000 to 1000000"
            )

    @property
    def one_way_delay_ms(self) -> float:
        return self.rtt_ms / 2

    def cpu_quota(self) -> tuple[int | None, int]:
        """(quota_us or None for unlimited, period_us) for the device cgroup."""
        return cpu_quota(self.device_cpu, self.cpu_period_us)


def cpu_quota(share: float, period_us: int) -> tuple[int | None, int]:
    if share >= 1.0:
        return None, period_us
    period = max(period_us, math.ceil(_MIN_QUOTA_US / share))
    return round(share * period), period


@dataclass(frozen=True)
class Names:
    """Every named resource of one testbed."""

    name: str

    @property
    def device_ns(self) -> str:
        return f"splitpipe-{self.name}-device"

    @property
    def server_ns(self) -> str:
        return f"splitpipe-{self.name}-server"

    def netns(self, side: str) -> str:
        check_side(side)
        return self.device_ns if side == "device" else self.server_ns

    def cgroup(self, side: str) -> str:
        check_side(side)
        return f"splitpipe-{self.name}-{side}"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise SplitpipeError(
            f"bad testbed name {name!r}; accepted: 1-24 characters of a-z, 0-9, '-', '_', starting with a letter or digit"
        )
    return name


def check_side(side: str) -> str:
    if side not in SIDES:
        raise choices("side", side, SIDES)
    return side


def parse_share(text: str) -> float:
    """'0.25' or '25%' -> 0.25 (a fraction of one core)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise SplitpipeError(
            f"bad CPU share {text!r}; accepted: a fraction of one core (0.25) or a percentage (25%)"
        ) from None
    if not math.isfinite(value):
        raise SplitpipeError(f"bad CPU share {text!r}; accepted: a finite fraction of one core")
    return value
