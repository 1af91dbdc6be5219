#!/usr/bin/env python
"""The adaptive agent on the emulated testbed while the link rate changes under it (root).

A model is exported three ways: ``offload`` (int8 input), a late split (int8) and ``local``. On
a testbed with a throttled device CPU, the link runs through phases of different rates
(default: 200, 2, then 200 Mbit/s). The agent runs once adapting among the three exports and
once with each export alone, over the same phases, at the same capture rate; per phase it
reports the frames' e2e latency and which export they took, and, for the adaptive run, how long
after each rate change the agent switched. Every figure is measured (testbed link, real
processes); switch delays compare the bench's clock with the agent's, both CLOCK_MONOTONIC of
this one machine.

    sudo .venv/bin/python bench/adapt.py                                  # about 5 minutes
    sudo .venv/bin/python bench/adapt.py --model torchvision:resnet18 --phases 200:20,2:20,200:20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
PORT = 8001


def export_three(model: str, out: Path) -> dict[str, Path]:
    """offload (int8 input), the plan's best split at the slowest phase's rate (int8), local."""
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    req = PlanRequest(model=model, codec="int8", link="2mbit,4ms", profile_mode="analytic")
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    best = min(plan.candidates, key=lambda c: c.e2e_ms)
    dirs = {}
    for key, split, codec in (
        ("offload", "offload", "int8"),
        ("split", best.id, "int8"),
        ("local", "local", None),
    ):
        dirs[key] = export_split(
            req, split, out / key, plan=plan, analysis=analysis, codec=codec, name=f"adapt-{key}"
        ).out
        print(f"  exported {key}: split {split} ({dirs[key]})", flush=True)
    return dirs


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "splitpipe", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "SPLITPIPE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}


def run_agent(
    tb: Any, dirs: list[Path], phases: list[tuple[float, float]], fps: float, report: Path
) -> dict[str, Any]:
    """One agent run over the phases; returns its report and the clock times of the rate changes."""
    tb.set_rate(phases[0][0], measure=False)
    argv = _python(
        "agent", *map(str, dirs), "--server", tb.server_address(PORT), "--fps", str(fps),
        "--report", str(report), "--log-interval", "0", "--connect-timeout", "60", "--drain-timeout", "60",
    )  # fmt: skip
    proc = tb.popen("device", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), text=True)
    time.sleep(3.0)  # loading the heads and connecting
    changes = []
    for i, (rate, seconds) in enumerate(phases):
        if i:
            tb.set_rate(rate, measure=False)
        changes.append(time.perf_counter())
        time.sleep(seconds)
    ended = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"the agent failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return {"report": json.loads(report.read_text()), "changes": changes, "ended": ended}


def phase_figures(run: dict[str, Any], phases: list[tuple[float, float]]) -> list[dict[str, Any]]:
    frames = [f for f in run["report"]["frames"] if "error" not in f and f["e2e_ms"] is not None]
    bounds = [*run["changes"], run["ended"]]
    out = []
    for i, (rate, _) in enumerate(phases):
        inside = [f for f in frames if bounds[i] <= f["captured_s"] < bounds[i + 1]]
        e2e = np.array([f["e2e_ms"] for f in inside]) if inside else np.array([np.nan])
        splits: dict[str, int] = {}
        for f in inside:
            splits[f.get("split", "-")] = splits.get(f.get("split", "-"), 0) + 1
        out.append(
            {
                "rate_mbit": rate,
                "frames": len(inside),
                "e2e_ms_p50": float(np.median(e2e)),
                "e2e_ms_mean": float(np.mean(e2e)),
                "e2e_ms_p90": float(np.percentile(e2e, 90)),
                "splits": splits,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--phases", default="200:20,2:20,200:20", help="RATE_MBIT:SECONDS,...")
    parser.add_argument("--rtt-ms", type=float, default=4.0)
    parser.add_argument("--device-cpu", type=float, default=0.25, help="share of one core for the device")
    parser.add_argument("--fps", type=float, default=8.0, help="capture rate of every run")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--plots", type=Path, metavar="DIR", help="draw each run's report (splitpipe report --plot) here"
    )
    args = parser.parse_args()
    from splitpipe.testbed import Testbed, TestbedOptions, require_root

    require_root()
    phases = [(float(r), float(s)) for r, s in (p.split(":") for p in args.phases.split(","))]
    result: dict[str, Any] = {"measured": True, "argv": sys.argv, "load_before": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"exporting {args.model} three ways ...", flush=True)
        dirs = export_three(args.model, Path(tmp))
        options = TestbedOptions(
            name="spadapt",
            rate_mbit=phases[0][0],
            rtt_ms=args.rtt_ms,
            device_cpu=args.device_cpu,
            ports=(PORT,),
        )
        tb = Testbed(options)
        tb.up(measure=False)
        try:
            serve = tb.popen(
                "server",
                _python("serve", str(dirs["offload"]), str(dirs["split"]), "--host",
                        tb.server_listen_address(PORT).rpartition(":")[0], "--port", str(PORT),
                        "--log-interval", "0"),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), text=True,
            )  # fmt: skip
            assert serve.stdout is not None
            line = serve.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"splitpipe serve did not start: {line!r}")
            try:
                configs = {"adaptive": [dirs["offload"], dirs["split"], dirs["local"]]}
                configs.update({f"only {k}": [d] for k, d in dirs.items()})
                for name, config in configs.items():
                    print(f"{name}: phases {args.phases} Mbit/s:s ...", flush=True)
                    run = run_agent(tb, config, phases, args.fps, Path(tmp) / f"{name}.json")
                    figures = phase_figures(run, phases)
                    if args.plots is not None:
                        from splitpipe.edge.plot import plot_report

                        args.plots.mkdir(parents=True, exist_ok=True)
                        rates = [f"{r:g} Mbit/s" for r, _ in phases]
                        png = args.plots / f"adapt-{name.replace(' ', '-')}.png"
                        plot_report(run["report"], png, list(zip(run["changes"], rates, strict=False)))
                        print(f"  plot written to {png}", flush=True)
                    entry: dict[str, Any] = {"phases": figures}
                    adapt = run["report"].get("adapt")
                    if adapt:
                        switches = adapt["switches"]
                        entry["switches"] = [
                            {"t_after_change_s": round(s["clock_s"] - max(
                                [c for c in run["changes"] if c <= s["clock_s"]] or [run["changes"][0]]), 2),
                             "from": s["from"], "to": s["to"]}
                            for s in switches
                        ]  # fmt: skip
                        entry["options"] = adapt["options"]
                    result["runs"][name] = entry
                    for f in figures:
                        print(
                            f"  {f['rate_mbit']:6g} Mbit/s: {f['frames']:4d} frames, e2e p50 {f['e2e_ms_p50']:8.1f} ms "
                            f"mean {f['e2e_ms_mean']:8.1f} ms p90 {f['e2e_ms_p90']:8.1f} ms  {f['splits']}",
                            flush=True,
                        )
                    for s in entry.get("switches", []):
                        print(
                            f"  switch {s['from']} -> {s['to']} {s['t_after_change_s']:.2f} s after the rate change"
                        )
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(timeout=30)
        finally:
            tb.down()
    result["load_after"] = os.getloadavg()
    path = args.json or RESULTS / f"adapt-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
