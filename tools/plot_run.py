#!/usr/bin/env python3
"""Turns a run directory's metrics.jsonl into PNG training curves.

    pip install -r tools/requirements.txt
    python3 tools/plot_run.py runs/fomaml            # writes runs/fomaml/curves.png
    python3 tools/plot_run.py runs/a runs/b -o cmp.png

Meta-training runs plot meta-loss per iteration and validation HR@10, NDCG@10
and MRR per evaluation; pretraining runs plot train/val loss and val HR@10 per
epoch. Several runs are overlaid for comparison.
"""
import argparse
import json
import os
import sys


def load(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isdir(run):
        sys.exit(f"error: {run}: no such run directory")
    if not os.path.exists(path):
        sys.exit(f"error: {path}: not found (has the run logged an iteration yet?)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{n}: not JSON ({e.msg})")
    if not rows:
        sys.exit(f"error: {path}: no metrics")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("-o", "--out", help="output PNG (default RUN/curves.png)")
    args = ap.parse_args()
    runs = [load(run) for run in args.runs]   # every run checked before anything is drawn
    try:
        import matplotlib
    except ImportError:
        sys.exit("error: matplotlib is not installed: pip install -r tools/requirements.txt")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, rows in zip(args.runs, runs):
        name = os.path.basename(os.path.normpath(run))
        x = "iteration" if "iteration" in rows[0] else "epoch"
        loss = "meta_loss" if x == "iteration" else "train_loss"
        axes[0].plot([r[x] for r in rows], [r[loss] for r in rows], label=f"{name} {loss}")
        if x == "epoch":
            axes[0].plot([r[x] for r in rows], [r["val_loss"] for r in rows], "--", label=f"{name} val_loss")
        ev = [r for r in rows if "val_hr@10" in r]
        for key, style in [("val_hr@10", "-"), ("val_ndcg@10", "--"), ("val_mrr", ":")]:
            axes[1].plot([r[x] for r in ev], [r[key] for r in ev], style, marker="o", ms=3, label=f"{name} {key}")
        axes[0].set_xlabel(x)
        axes[1].set_xlabel(x)
    axes[0].set_title("loss")
    axes[1].set_title("validation (few-shot)" if x == "iteration" else "validation")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    out = args.out or os.path.join(args.runs[0], "curves.png")
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main()
