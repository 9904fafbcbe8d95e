#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A data-parallel example run equals one process: runs an example's command once alone
(--threads 2) and once under `mpiexec -np RANKS` (--threads 1 a rank), each into its own fresh
output folder, and compares what they wrote. The runs differ only in the order of float
additions, so:
  - training losses (curves.csv columns named *loss*, and "  <name>: loss X" lines on stderr,
    printed with 4 decimals) agree to 2e-4 relative;
  - every other number of results.json and curves.csv (accuracies, fractions in [0, 1]) agrees
    to --accuracy-tolerance (default 0.01) absolute: training is chaotic (a rounding difference
    of 1e-8 in the first step grows to 1e-5 within two epochs of Adam), and a prediction near a
    tie flips; the losses are the precise check;
  - timings, loads, thread counts and the device are not compared.

  data_parallel_check.py --mpiexec mpiexec [--mpiexec-flags=--oversubscribe] --ranks 2
                         [--accuracy-tolerance 0.01] --out DIR -- PROGRAM ARGS...
"""
import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys

LOSS_LINE = re.compile(r"^  (\S+): loss ([0-9.eE+-]+)", re.M)
NOT_COMPARED = re.compile(r"second|time|load|wall|cpu|thread|device", re.I)


def run(cmd, out):
    shutil.rmtree(out, ignore_errors=True)  # nothing reused from an earlier run
    os.makedirs(out)
    p = subprocess.run(cmd + ["--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    curves = []
    if os.path.exists(os.path.join(out, "curves.csv")):
        with open(os.path.join(out, "curves.csv")) as f:
            curves = list(csv.DictReader(f))
    return results, curves, LOSS_LINE.findall(p.stderr), p.stderr


def leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, x


class Comparison:
    def __init__(self, tolerance):
        self.tolerance = tolerance
        self.bad, self.loss_gap, self.other_gap, self.count = [], 0.0, 0.0, 0

    def number(self, where, a, b):
        a, b = float(a), float(b)
        self.count += 1
        if "loss" in where.lower():
            gap = abs(a - b) / max(abs(a), 1.0)
            self.loss_gap = max(self.loss_gap, gap)
            ok = gap <= 2e-4
        else:
            gap = abs(a - b)
            self.other_gap = max(self.other_gap, gap)
            ok = gap <= self.tolerance
        if not ok:
            self.bad.append(f"{where}: {a} alone, {b} data-parallel")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--mpiexec-flags", default="")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--accuracy-tolerance", type=float, default=0.01)
    ap.add_argument("--out", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    res1, cur1, loss1, _ = run(cmd + ["--threads", "2"], os.path.join(a.out, "one_process"))
    launcher = [a.mpiexec, "-np", str(a.ranks)] + a.mpiexec_flags.split()
    res2, cur2, loss2, log = run(launcher + cmd + ["--threads", "1"], os.path.join(a.out, f"{a.ranks}_ranks"))
    if f"x {a.ranks} MPI ranks" not in json.dumps(res2):
        sys.exit(f"the run under {a.mpiexec} did not say it ran on {a.ranks} ranks:\n{log[-2000:]}")
    c = Comparison(a.accuracy_tolerance)
    l1, l2 = dict(leaves(res1)), dict(leaves(res2))
    if set(l1) != set(l2):
        c.bad.append(f"results.json entries differ: {sorted(set(l1) ^ set(l2))[:10]}")
    for k in sorted(set(l1) & set(l2)):
        v1, v2 = l1[k], l2[k]
        if NOT_COMPARED.search(k):
            continue
        if isinstance(v1, (int, float)) and not isinstance(v1, bool) and isinstance(v2, (int, float)):
            c.number("results.json" + k, v1, v2)
        elif v1 != v2:
            c.bad.append(f"results.json{k}: {v1!r} alone, {v2!r} data-parallel")
    if len(cur1) != len(cur2):
        c.bad.append(f"curves.csv: {len(cur1)} rows alone, {len(cur2)} data-parallel")
    for i, (r1, r2) in enumerate(zip(cur1, cur2)):
        for col in r1:
            if NOT_COMPARED.search(col):
                continue
            try:
                c.number(f"curves.csv row {i} {col}", r1[col], r2[col])
            except ValueError:
                if r1[col] != r2[col]:
                    c.bad.append(f"curves.csv row {i} {col}: {r1[col]!r} alone, {r2[col]!r} data-parallel")
    if len(loss1) != len(loss2):
        c.bad.append(f"{len(loss1)} loss lines alone, {len(loss2)} data-parallel")
    for (k1, v1), (k2, v2) in zip(loss1, loss2):
        if k1 != k2:
            c.bad.append(f"loss lines in another order: {k1} alone, {k2} data-parallel")
        c.number(f"stderr loss of {k1}", v1, v2)
    print(f"{c.count} numbers compared: largest relative loss difference {c.loss_gap:.1e}, "
          f"largest other difference {c.other_gap:.4f}")
    if c.bad or c.count == 0:
        sys.exit("the data-parallel run differs from one process:\n  " + "\n  ".join(c.bad[:40] or ["nothing was compared"]))


if __name__ == "__main__":
    main()
