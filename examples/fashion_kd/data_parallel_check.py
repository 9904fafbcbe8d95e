#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Data-parallel fashion_kd equals one process: runs the given fashion_kd command once alone
(--threads 2) and once under `mpiexec -np RANKS` (--threads 1 a rank), each in its own output
folder, then compares the per-epoch training losses each run printed (the runs differ only in the
order of float additions) and the validation and test accuracies in
results.json (1 % absolute: a rounding difference can flip an image's prediction). The losses
are printed with 4 decimals: they must agree to 2e-4.

  data_parallel_check.py --mpiexec mpiexec [--mpiexec-flags=--oversubscribe] --ranks 2 --out DIR -- fashion_kd ARGS...
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

LOSS = re.compile(r"^  (\S+): loss ([0-9.eE+-]+)", re.M)


def run(cmd, out):
    shutil.rmtree(out, ignore_errors=True)  # nothing reused from an earlier run
    os.makedirs(out)
    p = subprocess.run(cmd + ["--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    losses = LOSS.findall(p.stderr)
    with open(os.path.join(out, "results.json")) as f:
        return losses, json.load(f), p.stderr


def accuracies(results):
    acc = {}
    for row in [results.get("teacher")] + results.get("rows", []):
        if not row:
            continue
        for r in row.get("seeds", []):
            acc[(row["key"], r["seed"])] = (r["val_accuracy"], r["test_accuracy"])
    return acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--mpiexec-flags", default="")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    alone_losses, alone, _ = run(cmd + ["--threads", "2"], os.path.join(a.out, "one_process"))
    launcher = [a.mpiexec, "-np", str(a.ranks)] + a.mpiexec_flags.split()
    par_losses, par, log = run(launcher + cmd + ["--threads", "1"], os.path.join(a.out, f"{a.ranks}_ranks"))
    if f"x {a.ranks} MPI ranks" not in par.get("device", ""):
        sys.exit(f"the run under {a.mpiexec} did not run on {a.ranks} ranks:\n{log[-2000:]}")
    bad = []
    if len(alone_losses) != len(par_losses) or not alone_losses:
        bad.append(f"{len(alone_losses)} loss lines alone, {len(par_losses)} on {a.ranks} ranks")
    worst = 0.0
    for (k1, l1), (k2, l2) in zip(alone_losses, par_losses):
        diff = abs(float(l1) - float(l2))
        worst = max(worst, diff)
        if k1 != k2 or diff > 2e-4:
            bad.append(f"loss of {k1}: {l1} alone, {k2} {l2} on {a.ranks} ranks")
    acc1, acc2 = accuracies(alone), accuracies(par)
    if set(acc1) != set(acc2) or not acc1:
        bad.append(f"rows differ: {sorted(acc1)} vs {sorted(acc2)}")
    gap = 0.0
    for k in acc1.keys() & acc2.keys():
        for name, x, y in zip(("val", "test"), acc1[k], acc2[k]):
            gap = max(gap, abs(x - y))
            if abs(x - y) > 0.01:
                bad.append(f"{name} accuracy of {k}: {x:.4f} alone, {y:.4f} on {a.ranks} ranks")
    print(f"{len(alone_losses)} epoch losses: largest difference {worst:.1e}; "
          f"{len(acc1)} rows: largest accuracy difference {100 * gap:.2f} %")
    if bad:
        sys.exit("data-parallel run differs from one process:\n  " + "\n  ".join(bad))


if __name__ == "__main__":
    main()
