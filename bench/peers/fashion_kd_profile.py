#!/usr/bin/env python3
"""Where the PyTorch peer of examples/fashion_kd spends a training step, by operator.

Times `--steps` cross-entropy steps of the peer's student (bench/peers/fashion_kd_peer.py's
StagedNet, SGD with Nesterov momentum, batch 128, random images) and prints torch.profiler's
table of self CPU time per operator, for comparison with a `perf record` of fashion_kd:

    OMP_WAIT_POLICY=passive /usr/bin/python3 bench/peers/fashion_kd_profile.py --threads 2
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_kd_peer import StagedNet  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--head", type=int, nargs="*", default=[64])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = StagedNet(a.channels, a.head)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(a.batch, 1, 28, 28), torch.randint(0, 10, (a.batch,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(20):  # warm-up
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t0) / a.steps
    print(f"step {dt * 1e3:.2f} ms, {a.batch / dt:.0f} images/s (without the profiler)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
