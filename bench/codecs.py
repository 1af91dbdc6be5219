"""Codec throughput, compression and error on real bottleneck tensors, one core, one run.

    .venv/bin/python bench/codecs.py [--codecs raw,fp16,int8,...] [--budget 2]

For each tensor (resnet50 after layer1/2/3, mobilenet_v3_large after blocks 3/6/12/15; random
weights, a real photograph from scikit-learn as input) and each codec: encode and decode speed as
a fraction of ``numpy`` copy speed of the same float32 array (timed round-robin in the same run,
best of
the rounds, medians kept in the JSON), compression ratio (float32 bytes / payload bytes), relative L2 error and cosine
similarity. Prints a table; writes JSON to bench/results/codecs-*.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _kernels_util as util

DEFAULT_CODECS = (
    "raw,fp16,int8,int8/sym,int8/ch,int8/sym/ch,uint4,uint4/ch,uint2,uint2/ch,"
    "raw+zstd,raw+lz4,fp16+zstd,int8+zstd,int8+lz4,int8/ch+zstd,uint4+zstd,uint2+zstd"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default=DEFAULT_CODECS, help="comma-separated codec names")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per tensor")
    args = parser.parse_args(argv)
    util.single_thread()

    from splitpipe.kernels import decode, get_codec
    from splitpipe.kernels.measure import cosine_similarity, relative_l2

    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    codecs = {n: get_codec(n) for n in names}
    load_before = util.machine()["loadavg"]
    tensors = util.bottleneck_tensors(util.sample_image())
    rows = []
    for tname, x in tensors.items():
        encoded = {n: c.encode(x) for n, c in codecs.items()}
        ops = {"copy": x.copy}
        for n, c in codecs.items():
            payload, meta = encoded[n]
            ops[f"enc:{n}"] = lambda c=c, x=x: c.encode(x)
            ops[f"dec:{n}"] = lambda p=payload, m=meta: decode(p, m)
        timing = util.side_by_side(ops, budget_s=args.budget)
        best = {k: v["best"] for k, v in timing.items()}
        med = {k: v["median"] for k, v in timing.items()}
        for n in names:
            payload, meta = encoded[n]
            y = decode(payload, meta)
            enc, dec = f"enc:{n}", f"dec:{n}"
            rows.append(
                {
                    "tensor": tname,
                    "shape": list(x.shape),
                    "bytes": int(x.nbytes),
                    "codec": n,
                    "payload_bytes": len(payload),
                    "compression": x.nbytes / len(payload),
                    "copy_gbps": x.nbytes / best["copy"] / 1e9,
                    "encode_vs_copy": best["copy"] / best[enc],
                    "decode_vs_copy": best["copy"] / best[dec],
                    "encode_vs_copy_median": med["copy"] / med[enc],
                    "decode_vs_copy_median": med["copy"] / med[dec],
                    "encode_gbps": x.nbytes / best[enc] / 1e9,
                    "decode_gbps": x.nbytes / best[dec] / 1e9,
                    "encode_us": best[enc] * 1e6,
                    "decode_us": best[dec] * 1e6,
                    "encode_us_median": med[enc] * 1e6,
                    "decode_us_median": med[dec] * 1e6,
                    "rounds": timing["copy"]["n"],
                    "rel_l2": relative_l2(x, y),
                    "cosine": cosine_similarity(x, y),
                }
            )
        print(_table([r for r in rows if r["tensor"] == tname], tname, x), flush=True)
    info = util.machine()
    info["loadavg_before"] = load_before
    path = util.write_json("codecs", {"machine": info, "measured": True, "rows": rows})
    print(_summary(rows))
    print(f"load average before/after: {load_before} / {info['loadavg']} (2 cores shared: >1 means busy)")
    print(f"codec fast path: {info['codec_kernels']}")
    print(f"wrote {path}")
    return 0


def _table(rows: list[dict[str, object]], tname: str, x: np.ndarray) -> str:
    first = rows[0]
    head = (
        f"\n{tname} {tuple(x.shape)} {x.nbytes / 1024:.0f} KiB, numpy copy {first['copy_gbps']:.1f} GB/s\n"
        f"{'codec':<14} {'ratio':>7} {'enc/copy':>9} {'dec/copy':>9} {'enc us':>8} {'dec us':>8} "
        f"{'(median':>8} {'ratios)':>7} {'rel L2':>9} {'cosine':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['codec']:<14} {r['compression']:>7.2f} {r['encode_vs_copy']:>9.3f} {r['decode_vs_copy']:>9.3f} "
            f"{r['encode_us']:>8.1f} {r['decode_us']:>8.1f} {r['encode_vs_copy_median']:>8.3f} "
            f"{r['decode_vs_copy_median']:>7.3f} {r['rel_l2']:>9.2e} {r['cosine']:>8.5f}"
        )
    return "\n".join(lines)


def _summary(rows: list[dict[str, object]]) -> str:
    lines = ["\ntarget: int8 and fp16 encode and decode >= 0.25 of copy speed"]
    for codec in ("fp16", "int8", "int8/sym", "int8/ch"):
        sel = [r for r in rows if r["codec"] == codec]
        if not sel:
            continue
        worst = min(sel, key=lambda r: min(r["encode_vs_copy"], r["decode_vs_copy"]))  # type: ignore[type-var]
        ok = [r["tensor"] for r in sel if min(r["encode_vs_copy"], r["decode_vs_copy"]) >= 0.25]  # type: ignore[type-var]
        lines.append(
            f"  {codec:<10} meets it on {len(ok)}/{len(sel)} tensors; worst {worst['tensor']}: "
            f"enc {worst['encode_vs_copy']:.3f}, dec {worst['decode_vs_copy']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
