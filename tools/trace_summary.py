#!/usr/bin/env python3
"""Says where a traced run's meta-iterations spent their time.

    metatrain train ... --workers 2 --trace runs/fomaml/trace
    python3 tools/trace_summary.py runs/fomaml/trace            # every *.jsonl in the directory
    python3 tools/trace_summary.py coordinator.jsonl w1.jsonl w2.jsonl --skip 10

Each iteration runs from one weights broadcast ("published") to the next. Per
worker it is computing or idle at the start, between units, in the tail
(waiting for the last worker) or at the end (last result to broadcast); this is
the breakdown `metatrain bench` prints (Sources/Runtime/Trace.swift). Then the
path from the last computation to the next one, in medians: the result's
encoding, its transfer, the coordinator's reduce + Adam + broadcast, and the
broadcast's arrival at the workers.
"""
import argparse
import glob
import json
import os
import statistics
import sys


def load(paths):
    records = []
    for p in paths:
        try:
            f = open(p)
        except OSError as e:
            sys.exit(f"error: {p}: {e.strerror}")
        with f:
            for i, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                    records.append((float(r["t"]), r["process"], r["event"], int(r["n"])))
                except (ValueError, KeyError, TypeError) as e:
                    sys.exit(f"error: {p}:{i}: not a trace record ({e})")
    records.sort()
    return records


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="trace files, or a directory of them")
    ap.add_argument("--skip", type=int, default=5, help="leading iterations to leave out (start-up)")
    a = ap.parse_args()
    paths = []
    for p in a.paths:
        paths += sorted(glob.glob(os.path.join(p, "*.jsonl"))) if os.path.isdir(p) else [p]
    recs = load(paths)
    coord = [r for r in recs if r[1] == "coordinator"]
    if not coord:
        sys.exit("error: no coordinator trace among " + ", ".join(paths))
    published = {n: t for t, _, e, n in coord if e == "published"}
    results = {n: t for t, _, e, n in coord if e == "result"}
    workers = sorted({r[1] for r in recs} - {"coordinator"})
    spans, opened, sent, computed, weights = {w: [] for w in workers}, {}, {}, {}, {}
    for t, p, e, n in recs:
        if p == "coordinator":
            continue
        if e == "compute":
            opened[p] = t
        elif e == "computed" and p in opened:
            spans[p].append((opened.pop(p), t)); computed[n] = t
        elif e == "sent":
            sent[n] = t
        elif e == "weights":
            weights.setdefault(n, []).append(t)

    parts = {k: [] for k in ("length", "compute", "start", "between", "tail", "end")}
    path = {k: [] for k in ("encode", "transfer", "coordinator", "broadcast")}
    versions = sorted(published)[1 + a.skip:]
    for v in versions:
        if v - 1 not in published:
            continue
        lo, hi = published[v - 1], published[v]
        ends, c, s, b = [], 0.0, 0.0, 0.0
        for w in workers:
            inside = [x for x in spans[w] if x[0] >= lo and x[1] <= hi]
            if not inside:
                continue
            busy = sum(y - x for x, y in inside)
            c += busy; s += inside[0][0] - lo; b += inside[-1][1] - inside[0][0] - busy
            ends.append(inside[-1][1])
        if not ends:
            continue
        k, last = len(ends), max(ends)
        parts["length"].append(hi - lo); parts["compute"].append(c / k); parts["start"].append(s / k)
        parts["between"].append(b / k); parts["tail"].append(sum(last - x for x in ends) / k)
        parts["end"].append(hi - last)
        arrived = [(t, n) for n, t in results.items() if lo < t <= hi]
        if arrived:
            t, n = max(arrived)
            if n in sent and n in computed:
                path["encode"].append(sent[n] - computed[n]); path["transfer"].append(t - sent[n])
            path["coordinator"].append(hi - t)
        if v in weights:
            path["broadcast"].append(statistics.median(weights[v]) - hi)
    if not parts["length"]:
        sys.exit("error: no complete iterations after --skip")
    ms = lambda xs: 1000 * statistics.mean(xs)
    print(f"{len(parts['length'])} iterations, {len(workers)} worker(s): {ms(parts['length']):.1f} ms each")
    print(f"  per worker: computing {ms(parts['compute']):.1f} ms; idle {ms(parts['start']):.1f} at the start, "
          f"{ms(parts['between']):.1f} between units, {ms(parts['tail']):.1f} in the tail, {ms(parts['end']):.1f} at the end")
    med = lambda xs: f"{1000 * statistics.median(xs):.2f}" if xs else "-"
    print(f"  last result to next computation (medians, ms): encode {med(path['encode'])}, transfer {med(path['transfer'])}, "
          f"coordinator {med(path['coordinator'])}, broadcast to workers {med(path['broadcast'])}")


if __name__ == "__main__":
    main()
