"""``splitpipe demo``: plan, export, serve and stream a default model on loopback, end to end.

Plans the model on this machine, exports the planner's best split and the two baselines (all
on the device, everything offloaded), starts ``splitpipe serve`` on 127.0.0.1, runs the agent
for a few hundred frames on each, and prints the measured figures beside the planner's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "torchvision:mobilenet_v3_small"
DEFAULT_LINK = "20mbit,10ms"
DEFAULT_CODEC = "int8"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole flow on loopback: plan, export, serve, stream, measure",
        description=(
            "Plan a default model on this machine, export the best split and the local and "
            "offload baselines, start `splitpipe serve` on 127.0.0.1, stream a few hundred frames "
            "through each with the agent, and print the measured latency breakdown, bytes and "
            "frames per second beside the planner's predictions. Nothing leaves this machine."
        ),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    parser.add_argument("--input-shape", help="e.g. 1,3,224,224 (default for torch models: 1,3,224,224)")
    parser.add_argument(
        "--link", default=DEFAULT_LINK, help=f"link the planner assumes (default {DEFAULT_LINK})"
    )
    parser.add_argument(
        "--codec", default=DEFAULT_CODEC, help=f"bottleneck codec, or auto (default {DEFAULT_CODEC})"
    )
    parser.add_argument(
        "--device", default="local", help="device profile to plan for (default local: measured here)"
    )
    parser.add_argument("--server", default="local", help="server profile to plan for (default local)")
    parser.add_argument(
        "--frames", type=int, default=300, help="frames streamed per configuration (default 300)"
    )
    parser.add_argument("--window", type=int, default=4, help="frames in flight (default 4)")
    parser.add_argument(
        "--out", type=Path, help="keep the exports and reports here (default: a temporary folder)"
    )
    parser.set_defaults(func=run)


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.t0 = time.perf_counter()
        self._start = self.t0

    def begin(self, text: str) -> None:
        self.n += 1
        self._start = time.perf_counter()
        print(f"[{self.n}/{self.total}] {text} ...", flush=True)

    def end(self, text: str = "") -> None:
        took = time.perf_counter() - self._start
        print(f"      done in {took:.1f} s{': ' + text if text else ''}", flush=True)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from splitpipe.errors import SplitpipeError, check_output_dir, check_writable

    if args.frames < 10:
        raise SplitpipeError(f"--frames must be at least 10, got {args.frames}")
    if args.window < 1:  # checked now, not after planning and exporting
        raise SplitpipeError(f"--window must be at least 1 frame in flight, got {args.window}")
    _terminate_cleanly()
    if args.out is not None:
        out = check_output_dir(args.out, "--out", "the exports and reports")
        check_writable(out, "--out")  # now, before the minutes of planning and exporting
        out.mkdir(parents=True, exist_ok=True)
        return _demo(args, args.out)
    with tempfile.TemporaryDirectory(prefix="splitpipe-demo-") as tmp:
        _CLEANUP.append(Path(tmp))
        return _demo(args, Path(tmp))


#: what SIGTERM must undo: the server process started, the temporary folder made
_CLEANUP: list[Any] = []


def _terminate_cleanly() -> None:
    """SIGTERM stops the server the demo started and removes its temporary folder, then ends
    the demo (exit 143) at once, wherever it was: the agent's event loop is not unwound."""
    import os
    import shutil
    import signal
    import sys

    def terminate(signum: int, frame: Any) -> None:
        for item in reversed(_CLEANUP):
            if isinstance(item, Path):
                shutil.rmtree(item, ignore_errors=True)
            else:  # its streams stay open (the agent stopped where it was): a short grace
                _stop_server(item, grace_s=2.0)
        sys.stderr.write("terminated\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminate)


def _demo(args: argparse.Namespace, work: Path) -> int:
    import logging

    from splitpipe.commands.plan import progress_bar
    from splitpipe.errors import SplitpipeError
    from splitpipe.partition.export import export_split
    from splitpipe.partition.load import parse_shape
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    # the demo's own progress lines say what happens; library chatter would bury them
    for name in ("onnxscript", "onnx_ir", "splitpipe.partition", "splitpipe.edge", "splitpipe.devices"):
        logging.getLogger(name).setLevel(logging.WARNING)
    steps = _Steps(5)
    req = PlanRequest(
        model=args.model,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        device=args.device,
        server=args.server,
        link=args.link,
        codec=args.codec,
        repeats=3,
        warmup=1,
        calibration_samples=1,
    )
    steps.begin(f"loading {req.model} (the first run exports it to ONNX and caches it; about a minute)")
    analysis = analyse(req)
    steps.end(f"{analysis.graph.n} nodes, {len(analysis.cuts)} cuts")

    steps.begin(
        f"planning on this machine: device {req.device}, server {req.server}, link {req.link}, codec {req.codec}"
    )
    bar, update = progress_bar()
    with bar:
        plan = make_plan(req, progress=update, analysis=analysis)
    best_id = plan.best["latency"]
    candidates = sorted(plan.candidates, key=lambda c: c.e2e_ms)
    if not candidates:
        raise SplitpipeError(f"{req.model} has no cut with one crossing tensor to split at")
    split = candidates[0] if not isinstance(best_id, int) else plan.candidate(best_id)
    steps.end(
        f"fastest split {split.id} (after {split.label}), predicted {split.e2e_ms:.1f} ms end to end; "
        f"planner's overall best: {_name(best_id)}"
    )

    steps.begin("exporting the split and the two baselines (each verified against the whole model)")
    exports: dict[str, Path] = {}
    for key, split_id in (("split", split.id), ("local", "local"), ("offload", "offload")):
        out = work / ("split" if key == "split" else key)
        exports[key] = export_split(req, split_id, out, plan=plan, analysis=analysis).out
    steps.end()

    steps.begin("starting `splitpipe serve` on 127.0.0.1 (a separate process, like a server would be)")
    server, port = _start_server([exports["split"], exports["offload"]])
    _CLEANUP.append(server)
    try:
        steps.end(f"listening on 127.0.0.1:{port}")
        steps.begin(f"streaming {args.frames} frames through each configuration with the agent")
        reports = {}
        for key in ("split", "local", "offload"):
            reports[key] = _run_agent(exports[key], port, args, work / f"report-{key}.json")
            s = reports[key].summary
            print(f"      {key:8s} {s['completed']} frames, {s['fps']:.1f} fps, {s['lost']} lost", flush=True)
        steps.end()
    finally:
        _stop_server(server)
    _print_results(plan, split, reports, args)
    print(
        f"whole demo: {time.perf_counter() - steps.t0:.0f} s"
        + (f"; exports and reports in {work}" if args.out else "")
    )
    return 0


def _name(option_id: Any) -> str:
    return {"local": "local (all on the device)", "offload": "offload (input sent as it is)"}.get(
        str(option_id), f"split {option_id}"
    )


def _start_server(dirs: list[Path]) -> tuple[Any, int]:
    import os
    import re
    import subprocess
    import sys

    from splitpipe.errors import SplitpipeError

    proc = subprocess.Popen(
        [sys.executable, "-m", "splitpipe", "serve", *map(str, dirs), "--host", "127.0.0.1", "--port", "0",
         "--log-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SPLITPIPE_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on [\d.]+:(\d+)", line)
    if not match:
        err = proc.stderr.read() if proc.stderr else ""
        proc.kill()
        raise SplitpipeError(f"splitpipe serve did not start: {(err or line).strip().splitlines()[-1:]}")
    return proc, int(match.group(1))


def _stop_server(proc: Any, grace_s: float = 30.0) -> None:
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_agent(export: Path, port: int, args: argparse.Namespace, report: Path) -> Any:
    from splitpipe.edge import AgentOptions, ClientOptions, load_export, run_agent

    local = load_export(export).local
    options = AgentOptions(
        export,
        server=None if local else f"127.0.0.1:{port}",
        frames=args.frames,
        client=ClientOptions(window=args.window, connect_timeout_s=30),
        log_interval_s=0,
        report=report if args.out else None,
    )
    return run_agent(options)


def _print_results(plan: Any, split: Any, reports: dict[str, Any], args: argparse.Namespace) -> None:
    def p(summary: dict[str, Any], key: str, q: str = "p50") -> str:
        v = summary["latency"].get(key)
        return "-" if v is None else f"{v[q]:.2f}"

    predicted = {"split": split, "local": plan.baselines["local"], "offload": plan.baselines["offload"]}
    label = {
        "split": f"split {split.id} ({split.label})",
        "local": "local (all on device)",
        "offload": "offload (send input)",
    }
    print()
    print(
        f"{plan.model}, codec {plan.codec}; measured on loopback, {args.frames} frames each, window {args.window}"
    )
    head = (
        f"{'':24} {'bytes/frame':>11} {'head':>7} {'encode':>7} {'rtt':>7} {'server':>7} {'e2e p50':>8} "
        f"{'e2e p90':>8} {'fps':>7} {'bound':>12} | {'planned e2e':>11}"
    )
    print(head)
    print("-" * len(head))
    for key in ("split", "local", "offload"):
        s = reports[key].summary
        bound = s["bound"]
        bound_text = f"{bound['stage']} {bound['fps']:.0f}" if bound else "-"
        print(
            f"{label[key]:24} {s['bytes_per_frame']:>11,.0f} {p(s, 'head_ms'):>7} {p(s, 'encode_ms'):>7} "
            f"{p(s, 'rtt_ms'):>7} {p(s, 'server_total_ms'):>7} {p(s, 'e2e_ms'):>8} {p(s, 'e2e_ms', 'p90'):>8} "
            f"{s['fps']:>7.1f} {bound_text:>12} | {predicted[key].e2e_ms:>9.1f} ~"
        )
    print(
        "ms, p50 unless noted; rtt = send to reply on the device's clock, including the server's total; "
        "bound = slowest stage and its frames/s; all measured (~ = planner's prediction)."
    )
    energy = reports["split"].summary["energy"]
    if energy.get("energy_source"):
        per = {k: reports[k].summary["energy_mj_per_frame"] for k in reports}
        how = (
            f"ESTIMATED from CPU utilisation ({energy['source']}), no sensor here"
            if energy["energy_source"] == "estimated"
            else f"measured ({energy['source']})"
        )
        print(
            "device energy per frame (mJ): "
            + ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v)
            + f"; {how}"
        )
    print(
        f"Note: the link here is loopback, not the planned {plan.link['bandwidth_mbps']:g} Mbit/s with "
        f"{plan.link['rtt_ms']:g} ms round trip, and device and server share this machine's CPU; "
        "the planner's e2e includes that link. For a shaped link and a throttled device CPU run the "
        "emulated testbed (`splitpipe testbed`, root)."
    )
    best = plan.best["latency"]
    if not isinstance(best, int):
        print(
            f"The planner's fastest option for this device, server and link is {_name(best)}; the demo also "
            f"ran its fastest split ({split.id})."
        )
