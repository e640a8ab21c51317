#!/usr/bin/env python3
"""Writes Tests/StudiesTests/Fixtures/paired_stats.json: inputs and scipy's
answers for the study statistics, for the Swift test to compare against.

    pip install numpy scipy && python3 tools/make_stats_fixture.py

- Paired sign-flip permutation p-values: scipy.stats.permutation_test on the
  per-user differences with permutation_type="samples" (each difference's
  sign flips), statistic = mean, two-sided, exact (every sign pattern).
- Benjamini-Hochberg adjusted p-values: scipy.stats.false_discovery_control.
"""
import json
import os
import sys

try:
    import numpy as np
    from scipy import stats
except ImportError as e:
    sys.exit(f"error: {e.name} is not installed (pip install numpy scipy)")

rng = np.random.default_rng(12)
cases = []
for n, shift in [(6, 0.0), (8, 0.3), (10, 0.1), (12, 0.5), (11, -0.2), (9, 0.0)]:
    d = np.round(rng.normal(shift, 1.0, size=n), 6)
    if n == 9:
        d[:3] = 0.25  # ties
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                 n_resamples=np.inf, vectorized=False)
    cases.append({"d": d.tolist(), "mean": float(np.mean(d)), "p": float(res.pvalue)})
p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.5, 0.041, 0.9, 0.0001, 0.04]
out = {"scipy": __import__("scipy").__version__, "sign_flip": cases,
       "bh": {"p": p, "adjusted": stats.false_discovery_control(p, method="bh").tolist()}}
path = os.path.join(os.path.dirname(__file__), "..", "Tests", "StudiesTests", "Fixtures", "paired_stats.json")
with open(path + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
os.replace(path + ".tmp", path)
print("wrote", os.path.normpath(path))
