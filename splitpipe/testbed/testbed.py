"""The emulated testbed: a device and a server, a shaped and delayed link, a throttled CPU.

A :class:`Testbed` builds, changes, measures and removes one testbed; its state lives in
``/run/splitpipe-testbed/<name>/state.json`` so that separate CLI invocations (``up``, ``set``,
``run``, ``status``, ``down``) and the benchmarks act on the same one. Every resource has a
name derived from the testbed's, so :meth:`Testbed.down` removes all of it even after a crash
that lost the state file.

    with Testbed(TestbedOptions(rate_mbit=10, rtt_ms=40, device_cpu=0.25)) as tb:
        server = tb.popen("server", ["splitpipe", "serve", "--port", "8001"])
        agent = tb.run("device", ["splitpipe", "agent", "--server", tb.server_address(8001)])
        tb.set_rate(2)            # then run again and compare
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError
from splitpipe.testbed import cgroups, link
from splitpipe.testbed.cgroups import CgroupLayout, CpuGroup
from splitpipe.testbed.link import TestbedError
from splitpipe.testbed.measure import LinkMeasurement
from splitpipe.testbed.measure import measure as measure_testbed
from splitpipe.testbed.options import (
    RELAY_HOST,
    SERVER_ADDR,
    SIDES,
    STATE_ROOT,
    Names,
    TestbedOptions,
    check_side,
    validate_name,
)
from splitpipe.testbed.relay import RelayConfig

_LOGGER = logging.getLogger(__name__)

_RELAY_MODULE = "splitpipe.testbed.relay"
# joins the cgroups named before "--" (their cgroup.procs files), then execs the rest; it runs
# before `ip netns exec`, whose fresh /sys hides the cgroup mounts
_JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def require_root() -> None:
    if os.geteuid() != 0:
        raise SplitpipeError(
            "the testbed needs root (network namespaces, tc and cgroups are privileged); run it as root, e.g. with sudo"
        )
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise SplitpipeError(f"the testbed needs `{tool}` (iproute2), which is not on PATH")


@dataclass(frozen=True)
class SideStatus:
    netns: str
    netns_exists: bool
    qdiscs: tuple[str, ...]
    cgroup_exists: bool
    cpus: str | None
    quota_us: int | None
    period_us: int | None
    pids: tuple[int, ...]


@dataclass(frozen=True)
class TestbedStatus:
    """What exists of one testbed right now, and what its state file recorded."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    state_file: bool
    sides: dict[str, SideStatus]
    #: relayed port -> pid of its relay if alive, else None
    relays: dict[int, int | None]
    options: TestbedOptions | None
    delay_method: str | None
    netem_unavailable: str | None
    measurement: LinkMeasurement | None

    @property
    def up(self) -> bool:
        return (
            self.state_file
            and all(s.netns_exists and s.cgroup_exists for s in self.sides.values())
            and all(pid is not None for pid in self.relays.values())
        )

    @property
    def leftovers(self) -> bool:
        return self.state_file or any(s.netns_exists or s.cgroup_exists for s in self.sides.values())

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["up"] = self.up
        out["relays"] = {str(k): v for k, v in self.relays.items()}
        return out


class Testbed:
    """One named testbed. ``Testbed(options)`` or ``Testbed(name=..., rate_mbit=..., ...)``."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, options: TestbedOptions | None = None, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("pass either options or keyword arguments, not both")
        self._options = options if options is not None else TestbedOptions(**kwargs)
        self.names = Names(self._options.name)
        self._delay_method: str | None = None
        self._netem_unavailable: str | None = None
        self._layout: CgroupLayout | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self.last_measurement: LinkMeasurement | None = None

    # ----------------------------------------------------------------- state
    @property
    def options(self) -> TestbedOptions:
        return self._options

    @property
    def delay_method(self) -> str:
        """'netem' or 'relay' (known once the testbed is up)."""
        self._require_up()
        assert self._delay_method is not None
        return self._delay_method

    def _require_up(self) -> None:
        if self._delay_method is None:
            raise SplitpipeError(f"testbed {self.names.name!r} is not up")

    @property
    def _state_file(self) -> Path:
        return self.names.state_dir / "state.json"

    @property
    def _relay_config(self) -> Path:
        return self.names.state_dir / "relay.json"

    def _save(self) -> None:
        opts = dataclasses.asdict(self._options)
        opts["ports"] = list(self._options.ports)
        state = {
            "options": opts,
            "delay_method": self._delay_method,
            "netem_unavailable": self._netem_unavailable,
            "cgroup_version": self._layout.version if self._layout else None,
            "measurement": self.last_measurement.to_dict() if self.last_measurement else None,
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    @staticmethod
    def _load(name: str) -> dict[str, Any] | None:
        path = Names(name).state_dir / "state.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    @classmethod
    def attach(cls, name: str = "sp") -> Testbed:
        """The testbed of that name that is up (from its state file)."""
        validate_name(name)
        state = cls._load(name)
        if state is None or not all(link.netns_exists(Names(name).netns(s)) for s in SIDES):
            raise SplitpipeError(
                f"no testbed named {name!r} is up; start one with `splitpipe testbed up --name {name}`"
            )
        opts = dict(state["options"])
        opts["ports"] = tuple(opts["ports"])
        tb = cls(TestbedOptions(**opts))
        tb._delay_method = state["delay_method"]
        tb._netem_unavailable = state.get("netem_unavailable")
        if state.get("measurement"):
            tb.last_measurement = LinkMeasurement.from_dict(state["measurement"])
        return tb

    def layout(self) -> CgroupLayout:
        if self._layout is None:
            self._layout = cgroups.detect()
        return self._layout

    def group(self, side: str) -> CpuGroup:
        return CpuGroup(self.layout(), self.names.cgroup(side))

    # ----------------------------------------------------------------- up / down
    def up(self, measure: bool = True) -> LinkMeasurement | None:
        """Build the testbed (replacing any of the same name, leftovers included); measure it."""
        require_root()
        opts = self._options
        layout = self.layout()
        allowed = layout.allowed_cpus()
        for what, core in (("device", opts.device_core), ("server", opts.server_core)):
            if core not in allowed:
                raise SplitpipeError(f"{what} core {core} is not available; accepted: {sorted(allowed)}")
        if opts.device_core == opts.server_core:
            _LOGGER.warning(
                "device and server share core %d: server load will slow the device", opts.device_core
            )
        if self.down():
            _LOGGER.info("removed an earlier testbed named %r", opts.name)
        try:
            self.names.state_dir.mkdir(parents=True, exist_ok=True)
            link.create(self.names)
            self._netem_unavailable = link.netem_probe(self.names)
            if opts.delay == "netem" and self._netem_unavailable:
                raise SplitpipeError(
                    f"--delay netem asked for, but tc refuses netem here: {self._netem_unavailable}"
                )
            use_netem = opts.delay != "relay" and self._netem_unavailable is None
            self._delay_method = "netem" if use_netem else "relay"
            link.shape(self.names, opts.rate_mbit, opts.rtt_ms, use_netem)
            quota, period = opts.cpu_quota()
            self.group("device").create(str(opts.device_core), quota, period)
            self.group("server").create(str(opts.server_core), None, opts.cpu_period_us)
            if not use_netem:
                RelayConfig.for_link(opts.rate_mbit, opts.rtt_ms).write(self._relay_config)
                self._start_relays([*opts.ports, opts.probe_port])
            self._save()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self.measure() if measure else None

    def down(self) -> list[str]:
        """Remove everything of this testbed's name; idempotent. Returns what was removed."""
        require_root()
        removed: list[str] = []
        try:
            layout: CgroupLayout | None = self.layout()
        except SplitpipeError:
            layout = None
        groups = [CpuGroup(layout, self.names.cgroup(s)) for s in SIDES] if layout else []
        victims: set[int] = set()
        for pidfile in self.names.state_dir.glob("relay-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if _MODULE_MARK in _cmdline(pid):
                    victims.add(pid)
        for side in SIDES:
            victims.update(link.pids(self.names.netns(side)))
        for group in groups:
            victims.update(group.pids())
        victims -= {os.getpid(), os.getppid()}
        if victims:
            _terminate(victims)
            removed.append(f"{len(victims)} process(es)")
        for child in self._children:
            with contextlib.suppress(Exception):
                child.wait(timeout=1)
        self._children.clear()
        for side in SIDES:
            if link.delete(self.names.netns(side)):
                removed.append(f"netns {self.names.netns(side)}")
        for group in groups:
            if group.remove():
                removed.append(f"cgroup {group.name}")
        if self.names.state_dir.exists():
            shutil.rmtree(self.names.state_dir, ignore_errors=True)
            removed.append(f"state {self.names.state_dir}")
        self._delay_method = None
        return removed

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ----------------------------------------------------------------- changes
    def set(
        self,
        rate_mbit: float | None = None,
        rtt_ms: float | None = None,
        device_cpu: float | None = None,
        measure: bool = True,
    ) -> LinkMeasurement | None:
        """Change a running testbed. Link changes apply at once; with the relay, a new RTT
        applies to connections opened afterwards."""
        require_root()
        old = self._options
        new = dataclasses.replace(
            old,
            rate_mbit=old.rate_mbit if rate_mbit is None else rate_mbit,
            rtt_ms=old.rtt_ms if rtt_ms is None else rtt_ms,
            device_cpu=old.device_cpu if device_cpu is None else device_cpu,
        )
        method = self.delay_method
        if (new.rate_mbit, new.rtt_ms) != (old.rate_mbit, old.rtt_ms):
            link.shape(self.names, new.rate_mbit, new.rtt_ms, method == "netem")
            if method == "relay":
                RelayConfig.for_link(new.rate_mbit, new.rtt_ms).write(self._relay_config)
        if new.device_cpu != old.device_cpu:
            self.group("device").set_quota(*new.cpu_quota())
        self._options = new
        self.last_measurement = None
        self._save()
        return self.measure() if measure else None

    def set_rate(self, rate_mbit: float, measure: bool = True) -> LinkMeasurement | None:
        return self.set(rate_mbit=rate_mbit, measure=measure)

    def measure(self, rate: bool = True, rtt: bool = True, cpu: bool = True) -> LinkMeasurement:
        """Measure the link and the throttle now (about 3 s for all three); kept in the state."""
        require_root()
        result = measure_testbed(self, rate=rate, rtt=rtt, cpu=cpu)
        self.last_measurement = result
        self._save()
        return result

    # ----------------------------------------------------------------- addresses
    def server_address(self, port: int) -> str:
        """HOST:PORT the device dials to reach a server listening on ``port`` on the server side."""
        if self.delay_method == "netem":
            return f"{SERVER_ADDR}:{port}"
        if port not in (*self._options.ports, self._options.probe_port):
            raise SplitpipeError(
                f"port {port} has no delay relay; relayed ports: {list(self._options.ports)}; "
                f"add one with add_port({port}) or `splitpipe testbed up --port {port}`"
            )
        return f"{RELAY_HOST}:{port}"

    @staticmethod
    def server_listen_address(port: int) -> str:
        """HOST:PORT a server binds on the server side."""
        return f"{SERVER_ADDR}:{port}"

    def add_port(self, port: int) -> str:
        """Make ``port`` reachable from the device (starts its relay if needed); returns its address."""
        require_root()
        if port not in self._options.ports:
            new = dataclasses.replace(self._options, ports=(*self._options.ports, port))
            if self.delay_method == "relay":
                self._start_relays([port])
            self._options = new
            self._save()
        return self.server_address(port)

    def _start_relays(self, ports: Sequence[int]) -> None:
        procs = []
        for port in ports:
            pidfile = self.names.state_dir / f"relay-{port}.pid"
            pidfile.unlink(missing_ok=True)
            argv = [
                sys.executable,
                "-m",
                _RELAY_MODULE,
                "--listen",
                f"{RELAY_HOST}:{port}",
                "--connect",
                f"{SERVER_ADDR}:{port}",
                "--config",
                str(self._relay_config),
                "--pidfile",
                str(pidfile),
            ]
            with open(self.names.state_dir / f"relay-{port}.log", "ab") as log:
                # outside both cgroups, on any core: the relay is the network, not the device
                proc = self.popen(
                    "device",
                    argv,
                    cgroup=False,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append((port, pidfile, proc))
        deadline = time.monotonic() + 15
        for port, pidfile, proc in procs:
            while not pidfile.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_tail = (
                        (self.names.state_dir / f"relay-{port}.log").read_text().strip().splitlines()[-1:]
                    )
                    raise TestbedError(
                        f"delay relay for port {port} did not start: {log_tail or 'no output'}"
                    )
                time.sleep(0.01)

    # ----------------------------------------------------------------- processes
    def command(self, side: str, argv: Sequence[str], cgroup: bool = True) -> list[str]:
        """The argv that runs ``argv`` in a side's namespace (and cgroup, unless ``cgroup=False``)."""
        check_side(side)
        if not argv:
            raise SplitpipeError("no command given")
        inner = ["ip", "netns", "exec", self.names.netns(side), *argv]
        if not cgroup:
            return inner
        files = [str(f) for f in self.group(side).procs_files()]
        return ["sh", "-c", _JOIN_CGROUP, "splitpipe-testbed", *files, "--", *inner]

    def popen(
        self, side: str, argv: Sequence[str], cgroup: bool = True, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start a process on a side (its namespace and, by default, its cgroup)."""
        self._require_up()
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(side, argv, cgroup), **kwargs)
        self._children.append(proc)
        return proc

    def run(
        self, side: str, argv: Sequence[str], cgroup: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a process on a side to completion (keyword arguments as for subprocess.run)."""
        self._require_up()
        return subprocess.run(self.command(side, argv, cgroup), **kwargs)

    # ----------------------------------------------------------------- status
    def status(self) -> TestbedStatus:
        state = self._load(self.names.name)
        try:
            layout: CgroupLayout | None = self.layout()
        except SplitpipeError:
            layout = None
        sides = {}
        for side in SIDES:
            ns = self.names.netns(side)
            group = CpuGroup(layout, self.names.cgroup(side)) if layout else None
            quota = group.quota() if group else None
            sides[side] = SideStatus(
                netns=ns,
                netns_exists=link.netns_exists(ns),
                qdiscs=tuple(link.qdiscs(ns)),
                cgroup_exists=bool(group and group.exists()),
                cpus=group.cpus() if group else None,
                quota_us=quota[0] if quota else None,
                period_us=quota[1] if quota else None,
                pids=tuple(group.pids()) if group else (),
            )
        options = None
        relays: dict[int, int | None] = {}
        if state is not None:
            opts = dict(state["options"])
            opts["ports"] = tuple(opts["ports"])
            options = TestbedOptions(**opts)
            if state.get("delay_method") == "relay":
                for port in (*options.ports, options.probe_port):
                    relays[port] = _relay_pid(self.names.state_dir / f"relay-{port}.pid")
        return TestbedStatus(
            name=self.names.name,
            state_file=state is not None,
            sides=sides,
            relays=relays,
            options=options,
            delay_method=state.get("delay_method") if state else None,
            netem_unavailable=state.get("netem_unavailable") if state else None,
            measurement=LinkMeasurement.from_dict(state["measurement"])
            if state and state.get("measurement")
            else None,
        )


def list_testbeds() -> list[str]:
    """Names of testbeds with a state directory or a namespace left on this machine."""
    names = {p.name for p in STATE_ROOT.iterdir() if p.is_dir()} if STATE_ROOT.is_dir() else set()
    if link.NETNS_DIR.is_dir():
        for ns in link.NETNS_DIR.iterdir():
            for suffix in ("-device", "-server"):
                if ns.name.startswith("splitpipe-") and ns.name.endswith(suffix):
                    names.add(ns.name[len("splitpipe-") : -len(suffix)])
    return sorted(names)


_MODULE_MARK = _RELAY_MODULE.encode()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _relay_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if _MODULE_MARK in _cmdline(pid) else None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited already


def _terminate(pids: set[int], grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pids = {p for p in pids if _alive(p)}
            if not pids:
                return
            time.sleep(0.02)
    if pids:
        _LOGGER.warning("processes still alive after SIGKILL: %s", sorted(pids))
