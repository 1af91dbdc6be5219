"""What ``splitpipe compile`` gains on this machine: a head and a tail of torchvision CNNs
compiled for ONNX Runtime (offline-optimized, static int8 with int8 or uint8 activations),
each timed against the float part in alternating rounds and measured for error on held-out
frames (what ``splitpipe compile`` records in the manifest).

    .venv/bin/python bench/compile.py [--models resnet18:10,mobilenet_v3_large:8] [--rounds 7]

Weights are random (nothing is downloaded) and frames synthetic, so the error figures are those
of random networks on noise: a stress test of the quantization ranges, not an accuracy figure.
Writes bench/results/compile-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: model:split pairs (split ids of `splitpipe plan` for 1x3x224x224)
MODELS = "resnet18:10,resnet50:16"
RUNS = [
    ("head", "ort", {}),
    ("head", "ort-int8", {"activations": "int8"}),
    ("head", "ort-int8", {"activations": "uint8"}),
    ("tail", "ort", {}),
    ("tail", "ort-int8", {"activations": "int8"}),
    ("tail", "ort-int8", {"activations": "uint8"}),
]


def main() -> int:
    from splitpipe.errors import SplitpipeError
    from splitpipe.partition.compile import CompileOptions, compile_export
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for item in args.models.split(","):
            name, split = item.split(":")
            req = PlanRequest(
                model=f"torchvision:{name}", input_shape=(1, 3, 224, 224), profile_mode="analytic"
            )
            base = Path(work) / name
            export_split(req, int(split), base, codec="raw")
            for part, target, extra in RUNS:
                folder = Path(work) / f"{name}-{part}-{target}-{extra.get('activations', '')}"
                shutil.copytree(base, folder)
                options = CompileOptions(part=part, target=target, rounds=args.rounds, force=True, **extra)
                try:
                    entry = compile_export(folder, options).entry
                except SplitpipeError as exc:
                    print(f"{name} s{split} {part} {target}: {exc}")
                    continue
                err, lat = entry["error"], entry["latency"]
                model = err["model"] or err["part"]
                row = {
                    "model": name,
                    "split": int(split),
                    "part": part,
                    "target": target,
                    "activations": extra.get("activations"),
                    "float_ms": lat["float_ms"],
                    "compiled_ms": lat["compiled_ms"],
                    "speedup": lat["speedup"],
                    "speedup_range": lat["speedup_range"],
                    "load_ms": lat["load_ms"],
                    "part_max_rel": err["part"]["max_rel"],
                    "model_max_rel": model["max_rel"],
                    "top1_agreement": model.get("top1_agreement"),
                    "bytes": entry["bytes"],
                }
                rows.append(row)
                top1 = ", ".join(f"{v:.0%}" for v in (row["top1_agreement"] or {}).values()) or "-"
                print(
                    f"{name} s{split} {part:4} {target:8} {row['activations'] or '':5} "
                    f"float {row['float_ms']:7.2f} ms  compiled {row['compiled_ms']:7.2f} ms  "
                    f"x{row['speedup']:.2f} [{row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f}]  "
                    f"load {row['load_ms']['float']:.0f}->{row['load_ms']['compiled']:.0f} ms  "
                    f"err part {row['part_max_rel']:.3g} model {row['model_max_rel']:.3g} top1 {top1}",
                    flush=True,
                )
    out = ROOT / "bench" / "results" / f"compile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "python": platform.python_version(), "rounds": args.rounds}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
