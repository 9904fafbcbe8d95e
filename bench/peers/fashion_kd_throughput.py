#!/usr/bin/env python3
"""Training throughput of examples/fashion_kd against its PyTorch peer, measured side by side.

Runs fashion_kd and bench/peers/fashion_kd_peer.py on the same recipe (methods, seeds, epochs,
images, threads) alternately, `--rounds` times each, and prints the images per second of every
method on both sides, their ratio, and the machine's load average at each run (on a shared
machine the ratio of runs made at the same time is what means something).

    /usr/bin/python3 bench/peers/fashion_kd_throughput.py --fashion-kd build/examples/fashion_kd/fashion_kd \\
        --teacher-out fashion_out --methods ce kd --epochs 1 --rounds 2 --threads 2

--teacher-out is a fashion_kd output folder whose teacher.ckpt matches the preset (both sides
then distil from the same teacher and fashion_kd does not retrain it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fashion-kd", required=True)
    ap.add_argument("--teacher-out", required=True)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--methods", nargs="+", default=["ce", "kd"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--student-train-per-class", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="throughput_work")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    teacher = os.path.join(a.teacher_out, "teacher.ckpt")
    common = ["--preset", a.preset, "--methods", *a.methods, "--seeds", "1", "--epochs", str(a.epochs),
              "--student-train-per-class", str(a.student_train_per_class), "--threads", str(a.threads)]
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    ours, peer = {m: [] for m in a.methods}, {m: [] for m in a.methods}
    for r in range(a.rounds):
        out = os.path.join(a.work, f"distill_{r}")
        os.makedirs(out, exist_ok=True)
        shutil.copy(teacher, os.path.join(out, "teacher.ckpt"))
        l0 = load()
        subprocess.run([a.fashion_kd, *common, "--out", out], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(out, "results.json")) as f:
            for row in json.load(f)["rows"]:
                if row["key"] in ours:
                    ours[row["key"]].append((row["images_per_second"]["mean"], l0, load()))
        pout = os.path.join(a.work, f"peer_{r}")
        l0 = load()
        subprocess.run([sys.executable, os.path.join(here, "fashion_kd_peer.py"), *common, "--teacher", teacher, "--out", pout], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(pout, "peer_results.json")) as f:
            for row in json.load(f)["rows"]:
                if row["key"] in peer:
                    s = row["runs"][0]
                    peer[row["key"]].append((s["images"] / s["train_seconds"], l0, load()))
    print(f"Training throughput, images/s ({a.threads} threads; load average before / after each run)")
    print(f"{'method':10} {'round':>5} {'distill':>10} {'load':>11} {'PyTorch':>10} {'load':>11} {'ratio':>7}")
    for m in a.methods:
        for r, (o, p) in enumerate(zip(ours[m], peer[m])):
            print(f"{m:10} {r:>5} {o[0]:>10.0f} {o[1]:>5}/{o[2]:<5} {p[0]:>10.0f} {p[1]:>5}/{p[2]:<5} {o[0] / p[0]:>6.1f}x")


if __name__ == "__main__":
    main()
