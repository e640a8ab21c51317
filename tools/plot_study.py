#!/usr/bin/env python3
"""Plots a study's results: for each metric, every method's mean with its 95%
interval (over users) and a dot per seed, zero-shot and few-shot side by side.

    python3 tools/plot_study.py studies/out                # writes studies/out/plots/<metric>.png
    python3 tools/plot_study.py studies/out --metric hr@10 --metric mrr

Reads results.json (docs/FORMATS.md, "Studies"). Needs matplotlib
(pip install -r tools/requirements.txt). Errors are one line.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the study directory (holds results.json)")
    ap.add_argument("--metric", action="append", help="metric to plot (repeatable; default acc@1, hr@10, ndcg@10, mrr)")
    a = ap.parse_args()
    path = os.path.join(a.study, "results.json")
    if not os.path.isdir(a.study):
        sys.exit(f"error: {a.study}: no such study directory")
    try:
        with open(path) as f:
            results = json.load(f)
    except OSError:
        sys.exit(f"error: {path}: not found (has the study finished?)")
    except ValueError as e:
        sys.exit(f"error: {path}: not JSON ({e})")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is not installed: pip install -r tools/requirements.txt")
    methods = list(results["methods"])
    metrics = a.metric or ["acc@1", "hr@10", "ndcg@10", "mrr"]
    out = os.path.join(a.study, "plots")
    os.makedirs(out, exist_ok=True)
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.6))
        for k, setting in enumerate(["zero_shot", "few_shot"]):
            xs = [i + (k - 0.5) * 0.3 for i in range(len(methods))]
            for x, m in zip(xs, methods):
                r = results["methods"][m]
                if setting not in r["mean"] or metric not in r["mean"][setting]:
                    continue
                mean = r["mean"][setting][metric]
                lo, hi = r["ci95"][setting][metric]
                ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=f"C{k}", capsize=3,
                            label=setting.replace("_", "-") if x == xs[0] else None)
                seeds = [s[setting][metric] for s in r["seeds"].values() if setting in s]
                ax.scatter([x + 0.08] * len(seeds), seeds, s=8, color=f"C{k}", alpha=0.5)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([m + (" (baseline)" if m == results["baseline"] else "") for m in methods], rotation=30, ha="right")
        ax.set_ylabel(metric)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        target = os.path.join(out, f"{metric}.png")
        fig.savefig(target, dpi=120)
        plt.close(fig)
        print("wrote", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
