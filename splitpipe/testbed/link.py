"""The emulated link: two network namespaces, a veth pair, tbf in both directions, netem if any.

The veth pair is created directly inside the two namespaces, so its interface names never
appear in the host namespace and several testbeds can run side by side. Each end shapes its
own egress: the device end shapes the uplink (device -> server), the server end the downlink.

tbf parameters (see :func:`tbf_params`):

- ``burst`` = one full frame (1514 bytes as tbf counts it) + 2 ms of the rate. The bucket
  must hold a full frame or tbf drops full-size packets; what it holds beyond that frame is
  the slack for late timer wake-ups: tokens that arrive while the bucket is full are lost,
  so a bucket of one frame and a little (1600 bytes) lost 5-15 % of 10 Mbit/s to ordinary
  wake-up jitter here, while 2 ms of slack reached the full rate. A bucket also lets its
  contents through at line speed after an idle spell: a small message arrives up to
  burst / rate early (8 ms at 2 Mbit/s, 3.2 ms at 10, 2.2 ms at 50). That is the price of the
  slack; a 3200-byte floor, tried first, had the same effect at 10 Mbit/s and twice it at 2.
- ``limit`` (the queue, bytes). With the user-space relay, the TCP connections across the link
  run between the relay and the server with a sub-millisecond RTT; a tail drop there costs a
  200 ms retransmission timeout (Linux's minimum), which showed as 20-40 % dips in 1 s rate
  measurements. So the queue holds max(128 KiB, 6 ms of the rate) and the relay caps its
  in-flight data on those connections (SO_SNDBUF and SO_RCVBUF, :func:`relay_socket_buffer`)
  to about two thirds of it: the queue does not overflow and nothing is dropped (0 drops in
  the 2, 10 and 50 Mbit/s runs here, against 30-80 with a 96 KiB queue and larger buffers).
  Under a bulk transfer the queue then adds up to about 0.4 s of delay at 2 Mbit/s, 90 ms at
  10 and 17 ms at 50, as a real bottleneck buffer would; idle, it adds nothing.
- With netem the delay is in the kernel and the TCP connections are the applications' own;
  the queue is then one bandwidth-delay product, at least 50 ms, so that TCP can fill the link.
"""

from __future__ import annotations

import logging
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

from splitpipe.errors import SplitpipeError
from splitpipe.testbed.options import (
    DEVICE_ADDR,
    DEVICE_IF,
    PREFIX_LEN,
    SERVER_ADDR,
    SERVER_IF,
    Names,
)

_LOGGER = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
_FRAME_BYTES = 1514  # an Ethernet frame at MTU 1500, as tbf counts it
_QUEUE_MS = 50.0
_BURST_SLACK_MS = 2.0
_MIN_RELAY_QUEUE = 128 * 1024
_TSO_MAX = 64 * 1024  # one TSO packet, by which a socket may overshoot its send buffer
_RELAY_QUEUE_MS = 6.0


class TestbedError(SplitpipeError):
    """A system command of the testbed failed (ip, tc, cgroup files)."""

    __test__ = False  # not a pytest test class, despite its name


def sh(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a system command; a failure becomes one line naming the command and its stderr."""
    _LOGGER.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise TestbedError(f"{argv[0]} not found; the testbed needs iproute2 (ip, tc)") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
        raise TestbedError(f"`{' '.join(argv)}` failed: {detail}")
    return proc


@dataclass(frozen=True)
class TbfParams:
    rate_bit: int
    burst_bytes: int
    limit_bytes: int

    def tc_args(self) -> list[str]:
        return [
            "tbf",
            "rate",
            f"{self.rate_bit}bit",
            "burst",
            str(self.burst_bytes),
            "limit",
            str(self.limit_bytes),
        ]

    @property
    def queue_ms(self) -> float:
        """How long a full queue takes to drain at the rate."""
        return self.limit_bytes * 8 / self.rate_bit * 1000


def tbf_params(rate_mbit: float, rtt_ms: float, netem: bool) -> TbfParams:
    rate_bit = round(rate_mbit * 1e6)
    bytes_per_ms = rate_bit / 8 / 1000
    burst = _FRAME_BYTES + math.ceil(bytes_per_ms * _BURST_SLACK_MS)
    if netem:
        limit = math.ceil(bytes_per_ms * max(_QUEUE_MS, rtt_ms)) + burst
    else:
        limit = max(_MIN_RELAY_QUEUE, math.ceil(bytes_per_ms * _RELAY_QUEUE_MS))
    return TbfParams(rate_bit, burst, limit)


def relay_socket_buffer(rate_mbit: float) -> int:
    """SO_SNDBUF/SO_RCVBUF for the relay's sockets across the link.

    In flight can be twice the value (the kernel doubles it) plus one TSO packet that a write
    may overshoot by; a third of what the queue holds beyond that packet leaves a third spare.
    """
    return (tbf_params(rate_mbit, 0.0, netem=False).limit_bytes - _TSO_MAX) // 3


def qdisc_commands(ns: str, dev: str, rate_mbit: float, rtt_ms: float, netem: bool) -> list[list[str]]:
    """tc commands that (re)configure one end's egress: tbf alone, or netem with tbf below it.

    ``replace`` creates the qdisc or changes it in place, so the same commands serve ``up`` and
    ``set``; netem's child survives a change of its delay.
    """
    tbf = tbf_params(rate_mbit, rtt_ms, netem)
    base = ["tc", "-n", ns, "qdisc", "replace", "dev", dev]
    if not netem:
        return [[*base, "root", *tbf.tc_args()]]
    one_way = rtt_ms / 2
    # netem holds a bandwidth-delay product of packets; its default of 1000 is too few at high rates
    limit = max(1000, math.ceil(2 * tbf.rate_bit / 8 * one_way / 1000 / _FRAME_BYTES))
    return [
        [*base, "root", "handle", "1:", "netem", "delay", f"{one_way:g}ms", "limit", str(limit)],
        [*base, "parent", "1:1", "handle", "10:", *tbf.tc_args()],
    ]


def netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def create(names: Names) -> None:
    """Both namespaces, the veth pair between them, addresses, links up (no shaping yet)."""
    dev_ns, srv_ns = names.device_ns, names.server_ns
    for ns in (dev_ns, srv_ns):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    sh(
        [
            "ip",
            "-n",
            dev_ns,
            "link",
            "add",
            DEVICE_IF,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            srv_ns,
        ]
    )
    for ns, dev, addr in ((dev_ns, DEVICE_IF, DEVICE_ADDR), (srv_ns, SERVER_IF, SERVER_ADDR)):
        # no IPv6 link-local address: no DAD or router solicitations crossing the shaped link
        sh(["ip", "-n", ns, "link", "set", "dev", dev, "addrgenmode", "none"])
        sh(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
        sh(["ip", "-n", ns, "link", "set", "dev", dev, "up"])


def netem_probe(names: Names) -> str | None:
    """None if tc accepts netem here, else the reason (the kernel's own words)."""
    proc = sh(
        ["tc", "-n", names.device_ns, "qdisc", "add", "dev", DEVICE_IF, "root", "netem", "delay", "1ms"],
        check=False,
    )
    if proc.returncode != 0:
        return (proc.stderr or proc.stdout).strip().replace("\n", "; ") or f"tc exit code {proc.returncode}"
    sh(["tc", "-n", names.device_ns, "qdisc", "del", "dev", DEVICE_IF, "root"])
    return None


def shape(names: Names, rate_mbit: float, rtt_ms: float, netem: bool) -> None:
    for ns, dev in ((names.device_ns, DEVICE_IF), (names.server_ns, SERVER_IF)):
        for argv in qdisc_commands(ns, dev, rate_mbit, rtt_ms, netem):
            sh(argv)


def qdiscs(ns: str) -> list[str]:
    """`tc qdisc show` lines of the testbed interface in a namespace ([] if it is gone)."""
    if not netns_exists(ns):
        return []
    dev = DEVICE_IF if ns.endswith("-device") else SERVER_IF
    proc = sh(["tc", "-n", ns, "qdisc", "show", "dev", dev], check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns``."""
    if not netns_exists(ns):
        return []
    proc = sh(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def delete(ns: str) -> bool:
    """Remove a namespace (its veth end goes with it); False if there was none."""
    if not netns_exists(ns):
        return False
    sh(["ip", "netns", "del", ns])
    return True
