"""``splitpipe testbed``: an emulated device, server and link on this machine (needs root).

Typical use: ``up --rate 10mbit --rtt 40ms --device-cpu 0.25``; ``run --side server -- SERVER``
(in the background); ``run -- CLIENT`` dialling the address that ``up`` prints; ``set --rate
2mbit``; ``status``; ``down``. See docs/testbed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_DEFAULT_NAME = "sp"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testbed",
        help="emulated device + server + shaped link on this machine (root)",
        description="Two network namespaces joined by a shaped veth link, a delay, and a CPU-throttled "
        "device cgroup: try a split on an emulated link before touching hardware. Needs root.",
    )
    sub = parser.add_subparsers(dest="testbed_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    def named(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--name", default=_DEFAULT_NAME, help=f"testbed name (default {_DEFAULT_NAME})")
        return p

    p = named(sub.add_parser("up", help="build a testbed (replaces one of the same name) and measure it"))
    p.add_argument(
        "--rate", default="10mbit", help="link rate, both directions: 2mbit, 500kbit, 1gbit (default 10mbit)"
    )
    p.add_argument("--rtt", default="20ms", help="round-trip time: 40ms, 0.1s (default 20ms)")
    p.add_argument(
        "--device-cpu", default="1.0", help="device CPU as a fraction of one core: 0.25 or 25%% (default 1.0)"
    )
    p.add_argument(
        "--port",
        type=int,
        action="append",
        dest="ports",
        metavar="PORT",
        help="server port the device dials (repeatable; default 8001)",
    )
    p.add_argument(
        "--delay",
        default="auto",
        choices=("auto", "netem", "relay"),
        help="how the delay is added: netem where tc has it, else a user-space relay (default auto)",
    )
    p.add_argument("--device-core", type=int, default=0, help="core of the device cgroup (default 0)")
    p.add_argument("--server-core", type=int, default=1, help="core of the server cgroup (default 1)")
    p.add_argument("--no-measure", action="store_true", help="skip measuring the link and the throttle")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the status and measurement as JSON")
    p.set_defaults(func=_up)

    p = named(sub.add_parser("down", help="remove a testbed and every process in it (idempotent)"))
    p.set_defaults(func=_down)

    p = named(
        sub.add_parser("status", help="what exists of a testbed, and its last measurement (exit 1 if not up)")
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_status)

    p = named(
        sub.add_parser("set", help="change the rate, RTT or device CPU of a running testbed, then measure")
    )
    p.add_argument("--rate", help="new link rate, e.g. 2mbit")
    p.add_argument("--rtt", help="new round-trip time, e.g. 40ms (relay: applies to new connections)")
    p.add_argument("--device-cpu", help="new device CPU share, e.g. 0.5")
    p.add_argument("--no-measure", action="store_true", help="skip measuring")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the measurement as JSON")
    p.set_defaults(func=_set)

    p = named(sub.add_parser("measure", help="measure a running testbed's link and throttle again"))
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the measurement as JSON")
    p.set_defaults(func=_measure)

    p = named(
        sub.add_parser(
            "run",
            help="run a command on one side (its namespace and cgroup)",
            usage="splitpipe testbed run [--name NAME] [--side device|server] [--no-cgroup] -- CMD ...",
        )
    )
    p.add_argument(
        "--side", default="device", choices=("device", "server"), help="which side (default device)"
    )
    p.add_argument(
        "--no-cgroup", action="store_true", help="namespace only, without the CPU throttle and pinning"
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=_run)


def _require_root() -> None:
    from splitpipe.testbed import require_root

    require_root()


def _check_json(path: Path | None) -> None:
    """Before the work: a --json that names a directory would fail after the measurement."""
    from splitpipe.errors import SplitpipeError

    if path is not None and path.is_dir():
        raise SplitpipeError(
            f"--json {path} is a directory; give a file name such as {path / 'testbed.json'}"
        )


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def _describe(tb: Any) -> list[str]:
    from splitpipe.testbed import DEVICE_ADDR, SERVER_ADDR
    from splitpipe.testbed.link import tbf_params

    st = tb.status()
    opts = tb.options
    lines = []
    if tb.delay_method == "relay":
        why = f", because tc refuses netem here: {st.netem_unavailable}" if st.netem_unavailable else ""
        lines.append(f"testbed {opts.name} is up (delay: user-space relay{why})")
    else:
        lines.append(f"testbed {opts.name} is up (delay: netem)")
    for side, addr in (("device", DEVICE_ADDR), ("server", SERVER_ADDR)):
        s = st.sides[side]
        quota = (
            f"quota {s.quota_us}/{s.period_us} us ({s.quota_us / s.period_us:.2f} of a core)"
            if s.quota_us
            else "no quota"
        )
        lines.append(f"  {side:<7} netns {s.netns}  {addr}  cgroup core {s.cpus}, {quota}")
    tbf = tbf_params(opts.rate_mbit, opts.rtt_ms, tb.delay_method == "netem")
    lines.append(
        f"  link    tbf {opts.rate_mbit:g} Mbit/s each way (burst {tbf.burst_bytes} B, queue "
        f"{tbf.limit_bytes} B = {tbf.queue_ms:.0f} ms), rtt {opts.rtt_ms:g} ms by {tb.delay_method}"
    )
    for port in opts.ports:
        via = "delay relay" if tb.delay_method == "relay" else "direct"
        lines.append(
            f"  server listens on {tb.server_listen_address(port)}; the device dials "
            f"{tb.server_address(port)} ({via})"
        )
    if tb.last_measurement is not None:
        lines.append(f"  {tb.last_measurement.summary()}")
    else:
        lines.append("  not measured")
    lines.append(f"  run: splitpipe testbed run --name {opts.name} --side server|device -- CMD ...")
    return lines


def _up(args: argparse.Namespace) -> int:
    from splitpipe.testbed import Testbed, TestbedOptions, parse_duration_ms, parse_rate, parse_share

    opts = TestbedOptions(
        name=args.name,
        rate_mbit=parse_rate(args.rate),
        rtt_ms=parse_duration_ms(args.rtt),
        device_cpu=parse_share(args.device_cpu),
        ports=tuple(args.ports or (8001,)),
        delay=args.delay,
        device_core=args.device_core,
        server_core=args.server_core,
    )
    _check_json(args.json)
    _require_root()
    tb = Testbed(opts)
    tb.up(measure=not args.no_measure)
    print("\n".join(_describe(tb)))
    _write_json(args.json, tb.status().to_dict())
    return 0


def _down(args: argparse.Namespace) -> int:
    _require_root()
    from splitpipe.testbed import Testbed
    from splitpipe.testbed.options import validate_name

    validate_name(args.name)
    # no options needed: every resource is found by name
    removed = Testbed(name=args.name).down()
    print(
        f"testbed {args.name}: removed {', '.join(removed)}"
        if removed
        else f"testbed {args.name}: nothing to remove"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    _require_root()
    from splitpipe.testbed import Testbed, list_testbeds
    from splitpipe.testbed.options import validate_name

    validate_name(args.name)
    st = Testbed(name=args.name).status()
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
        return 0 if st.up else 1
    if st.up:
        print("\n".join(_describe(Testbed.attach(args.name))))
    elif st.leftovers:
        print(f"testbed {args.name} is not fully up; left over:")
        for side, s in st.sides.items():
            print(
                f"  {side}: netns {'present' if s.netns_exists else 'absent'}, "
                f"cgroup {'present' if s.cgroup_exists else 'absent'}, processes {list(s.pids)}"
            )
        for port, pid in st.relays.items():
            print(f"  relay for port {port}: {'pid ' + str(pid) if pid else 'not running'}")
        print(f"  remove it with: splitpipe testbed down --name {args.name}")
    else:
        others = [n for n in list_testbeds() if n != args.name]
        print(f"testbed {args.name} is not up" + (f"; others here: {', '.join(others)}" if others else ""))
    return 0 if st.up else 1


def _set(args: argparse.Namespace) -> int:
    from splitpipe.errors import SplitpipeError
    from splitpipe.testbed import Testbed, parse_duration_ms, parse_rate, parse_share

    if args.rate is None and args.rtt is None and args.device_cpu is None:
        raise SplitpipeError("nothing to set; give --rate, --rtt and/or --device-cpu")
    rate = parse_rate(args.rate) if args.rate is not None else None
    rtt = parse_duration_ms(args.rtt) if args.rtt is not None else None
    cpu = parse_share(args.device_cpu) if args.device_cpu is not None else None
    _check_json(args.json)
    _require_root()
    tb = Testbed.attach(args.name)
    result = tb.set(rate_mbit=rate, rtt_ms=rtt, device_cpu=cpu, measure=not args.no_measure)
    print("\n".join(_describe(tb)))
    if result is not None:
        _write_json(args.json, result.to_dict())
    return 0


def _measure(args: argparse.Namespace) -> int:
    _check_json(args.json)
    _require_root()
    from splitpipe.testbed import Testbed

    result = Testbed.attach(args.name).measure()
    print(result.summary())
    _write_json(args.json, result.to_dict())
    return 0


def _run(args: argparse.Namespace) -> int:
    _require_root()
    from splitpipe.errors import SplitpipeError
    from splitpipe.testbed import Testbed

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SplitpipeError(
            "no command given; usage: splitpipe testbed run [--side device|server] -- CMD ..."
        )
    if shutil.which(cmd[0]) is None:
        raise SplitpipeError(f"command not found: {cmd[0]}")
    argv = Testbed.attach(args.name).command(args.side, cmd, cgroup=not args.no_cgroup)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: the command's exit code, signals and terminal are its own
    os.execvp(argv[0], argv)
