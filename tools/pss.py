#!/usr/bin/env python3
"""Runs a command and reports the memory of its whole process tree.

Every 0.2 s it reads /proc/PID/smaps_rollup of the command and all its
descendants and sums their proportional set size (PSS: a page shared by n
processes counts 1/n in each, so the sum is what the tree really costs) and
their resident set size (RSS: shared pages counted in every process). It prints
the peak of each sum, and each process's own figures at the PSS peak.

    tools/pss.py -- metatrain train --data data.h5 --run-dir runs/x --workers 2
"""
import os
import subprocess
import sys
import time


def children_of():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(root):
    kids, out, todo = children_of(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rollup(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return fields.get("Pss", 0), fields.get("Rss", 0), cmd


def main():
    args = sys.argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    proc = subprocess.Popen(args)
    peak_pss, peak_rss, at_peak = 0, 0, []
    while proc.poll() is None:
        rows = [r for r in (rollup(p) for p in tree(proc.pid)) if r]
        pss, rss = sum(r[0] for r in rows), sum(r[1] for r in rows)
        if pss > peak_pss:
            peak_pss, at_peak = pss, rows
        peak_rss = max(peak_rss, rss)
        time.sleep(0.2)
    print(f"peak PSS of the process tree: {peak_pss / 1024:.1f} MB (peak RSS summed: {peak_rss / 1024:.1f} MB)",
          file=sys.stderr)
    for pss, rss, cmd in at_peak:
        words = cmd.split()
        name = " ".join(words[:2]) if words else "?"
        print(f"  {pss / 1024:8.1f} MB PSS  {rss / 1024:8.1f} MB RSS  {name}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
