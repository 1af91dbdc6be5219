#!/usr/bin/env python
"""What running the tails on Ray Serve costs on one machine: `splitpipe serve` with its tails in
the process (two tail threads) against `splitpipe serve --ray` (two replicas of one CPU each),
the same export, the same agent, in alternating rounds.

Per configuration: the agent's frames/s with a window of 8 (throughput) and its e2e p50 with one
frame at a time (latency). One machine cannot show what Ray is for, more machines; this shows
its price per request, which a cluster has to win back.

    .venv/bin/python bench/ray_serve.py                       # about 3 minutes
    .venv/bin/python bench/ray_serve.py --model torchvision:resnet18 --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline import agent_round, start_serve, stop  # noqa: E402

RESULTS = REPO / "bench" / "results"


def offload_export(model: str, out: Path) -> Path:
    """The whole model as the tail (offload, int8 input): the heaviest tail a model has."""
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest

    req = PlanRequest(model=model, codec="int8", profile_mode="analytic")
    return export_split(req, "offload", out, codec="int8", name="ray-bench").out


def sequential_p50(export: Path, port: int, frames: int) -> float:
    from splitpipe.edge import AgentOptions, ClientOptions, run_agent

    report = run_agent(
        AgentOptions(
            export, server=f"127.0.0.1:{port}", frames=frames, sequential=True, log_interval_s=0,
            client=ClientOptions(window=1),
        )
    )  # fmt: skip
    return float(report.summary["latency"]["e2e_ms"]["p50"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=100, help="frames of each latency measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "measured": True,
        "argv": sys.argv,
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    configs = {
        "in process, 2 tail threads": ["--instances", "2"],
        "Ray Serve, 2 replicas x 1 CPU": ["--ray", "--replicas", "2", "--replica-cpus", "1"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        print(f"exporting {args.model} (offload, int8) ...", flush=True)
        export = offload_export(args.model, Path(tmp) / "offload")
        servers = {name: start_serve(export, extra) for name, extra in configs.items()}
        try:
            runs: dict[str, dict[str, list[float]]] = {k: {"fps": [], "p50": []} for k in configs}
            for _, port in servers.values():  # warm-up
                agent_round(export, port, 8, 1.0)
            for _ in range(args.rounds):
                for name, (_, port) in servers.items():
                    runs[name]["fps"].append(agent_round(export, port, 8, args.seconds)["steady_fps"])
                    runs[name]["p50"].append(sequential_p50(export, port, args.frames))
        finally:
            for proc, _ in servers.values():
                stop(proc)
    out = {}
    for name, r in runs.items():
        out[name] = {
            "fps": float(np.median(r["fps"])),
            "e2e_p50_ms": float(np.median(r["p50"])),
            "fps_rounds": r["fps"],
            "p50_rounds": r["p50"],
        }
        print(
            f"  {name:32s} {out[name]['fps']:7.1f} fps (window 8), e2e p50 {out[name]['e2e_p50_ms']:6.2f} ms "
            f"(one at a time); rounds fps {', '.join(f'{x:.1f}' for x in r['fps'])}",
            flush=True,
        )
    result["configs"] = out
    result["load_after"] = os.getloadavg()
    path = args.json or RESULTS / f"ray-serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
