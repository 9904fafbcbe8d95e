#!/usr/bin/env python3
"""distill_torch (distill's operators called from PyTorch, autograd included) against the same
formulas in PyTorch eager and TorchScript (torch.jit.trace), in one Python process, forward + backward with
the gradient to the student input, on the CPU headline shapes of bench/ (the peers are those of
compare.py). The three are timed in alternating rounds, so a change of machine load hits all of
them alike; the table gives medians and the ratios, and the load average before and after.

    PYTHONPATH=build/python /usr/bin/python3 bench/peers/torch_binding.py --threads 2

Debian's PyTorch does its matrix products through the system's libblas.so.3: with the reference
BLAS (the default) the GEMM-bound peers (token NCE, relational pairing) ran 6 to 12 times slower
here than with OpenBLAS. Install libopenblas0-pthread, or point LD_LIBRARY_PATH at its openblas-pthread folder;
the header line names the BLAS library that was loaded.

Also measures the binding's own overhead on a tiny shape (KD on 4 x 10 logits): the autograd
function of distill_torch, the raw operator call, and PyTorch eager.
"""
import argparse
import importlib.util
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before OpenMP starts: a shared machine, no spinning
import torch  # noqa: E402

import distill_torch as dt  # noqa: E402

_spec = importlib.util.spec_from_file_location("compare", os.path.join(os.path.dirname(__file__), "compare.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)  # kd, attn_mse_softmax, at, adain, token_nce, RN: the peers of the C++ table


def traced(fn, args):
    """The peer compiled to TorchScript. torch.jit.script refuses compare.py's peers (their float
    defaults carry no annotation), so they are traced: the same graph executor and CPU fuser."""
    try:
        return torch.jit.trace(fn, args, check_trace=False)
    except Exception as e:  # noqa: BLE001 - a peer TorchScript cannot compile has no column
        print(f"# torch.jit.trace({getattr(fn, '__name__', fn)}): {e!r}"[:200])
        return None


def case_kd(N, C):
    s, t = torch.randn(N, C, requires_grad=True), torch.randn(N, C)
    j = traced(peers.kd, (s, t))
    return (s,), {"distill": lambda: dt.kl_teacher_student(s, t, temperature=2.0),
                  "eager": lambda: peers.kd(s, t), "jit": j and (lambda: j(s, t))}


def case_attn(B, H, L):
    s, t = torch.randn(B, H, L, L, requires_grad=True), torch.randn(B, H, L, L)
    j = traced(peers.attn_mse_softmax, (s, t))
    return (s,), {"distill": lambda: dt.attention_map_mse(s, t, reduction="mean"),
                  "eager": lambda: peers.attn_mse_softmax(s, t), "jit": j and (lambda: j(s, t))}


def case_feat(distill_fn, peer, B, C, H, W):
    fs, ft = torch.randn(B, C, H, W, requires_grad=True), torch.randn(B, C, H, W)
    j = traced(peer, (fs, ft))
    return (fs,), {"distill": lambda: distill_fn(fs, ft), "eager": lambda: peer(fs, ft), "jit": j and (lambda: j(fs, ft))}


def case_nce(M, D, K):
    q, k = torch.randn(M, D, requires_grad=True), torch.randn(M, D)
    queue = dt.SampleQueue(K, D)
    queue.enqueue(torch.randn(K, D))
    keys = queue.valid_keys()
    j = traced(peers.token_nce, (q, k, keys))
    return (q,), {"distill": lambda: dt.token_nce(q, k, queue, temperature=0.07),
                  "eager": lambda: peers.token_nce(q, k, keys), "jit": j and (lambda: j(q, k, keys))}


def case_rn(B, N, D, Q, H):
    m = peers.RN(D, Q, H)
    o, qv, mask = torch.randn(B, N, D, requires_grad=True), torch.randn(B, Q), torch.ones(B, N, N)
    inputs = (o, *m.parameters())
    j = traced(m, (o, qv, mask))
    return inputs, {"distill": lambda: dt.relational_pairing(o, qv, m.g, pair_mask=mask).sum(),
                    "eager": lambda: m(o, qv, mask).sum(), "jit": j and (lambda: j(o, qv, mask).sum())}


CASES = [
    ("soft_target_kl fwd_bwd 1024x32000", lambda: case_kd(1024, 32000)),
    ("soft_target_kl fwd_bwd 256x3129", lambda: case_kd(256, 3129)),
    ("soft_target_kl fwd_bwd 4096x10", lambda: case_kd(4096, 10)),
    ("attention_map_mse fwd_bwd 8x12x64x64", lambda: case_attn(8, 12, 64)),
    ("attention_transfer fwd_bwd 32x64x32x32", lambda: case_feat(dt.attention_transfer, peers.at, 32, 64, 32, 32)),
    ("adain_stats fwd_bwd 32x64x32x32", lambda: case_feat(dt.adain_stats_loss, peers.adain, 32, 64, 32, 32)),
    ("token_nce_queue fwd_bwd 512x256x8192", lambda: case_nce(512, 256, 8192)),
    ("relational_pairing fwd_bwd 64x6x8x256", lambda: case_rn(64, 6, 8, 11, 256)),
    ("relational_pairing fwd_bwd 16x25x26x256", lambda: case_rn(16, 25, 26, 11, 256)),
]


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(inputs, variants, rounds):
    """Median seconds of forward + backward per variant, the variants alternating every round."""
    runs = {name: (lambda v=v: torch.autograd.grad(v(), inputs)) for name, v in variants.items() if v is not None}
    times = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up (and TorchScript's profiling runs)
        for _ in range(3):
            run()
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: statistics.median(ts) for name, ts in times.items()}


def overhead(rounds):
    """Microseconds per forward + backward on 4 x 10 logits."""
    s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    ops = torch.ops.distill
    variants = {
        "distill_torch autograd": lambda: torch.autograd.grad(dt.kl_teacher_student(s, t, temperature=2.0), s),
        "raw operator (forward_backward)": lambda: ops.soft_target("kl_teacher_student", "forward_backward", s, t,
                                                                  temperature=2.0),
        "PyTorch eager": lambda: torch.autograd.grad(peers.kd(s, t), s),
    }
    times = {k: [] for k in variants}
    for fn in variants.values():
        for _ in range(200):
            fn()
    for _ in range(rounds):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(100):
                fn()
            times[k].append((time.perf_counter() - t0) / 100 * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--only", default="", help="substring of the case names to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = os.getloadavg()
    with open("/proc/self/maps") as maps:  # the BLAS PyTorch's matrix products went to (Linux)
        blas = next((line.split()[-1] for line in maps if "blas" in line), "none found")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
          f"PyTorch {torch.__version__}, BLAS {os.path.basename(blas)}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"load average {load0[0]:.1f}\n")
    print("| benchmark | distill_torch ms | PyTorch eager ms | TorchScript ms | eager / distill | TorchScript / distill |")
    print("|---|---|---|---|---|---|")
    for name, make in CASES:
        if args.only and args.only not in name:
            continue
        inputs, variants = make()
        m = measure(inputs, variants, args.rounds)
        d, e, j = m["distill"] * 1e3, m["eager"] * 1e3, m.get("jit")
        jit = f"{j * 1e3:.3f}" if j else "–"
        print(f"| `{name}` | {d:.3f} | {e:.3f} | {jit} | {e / d:.1f}× | {f'{j * 1e3 / d:.1f}×' if j else '–'} |",
              flush=True)
    print("\nBinding overhead, KD forward + backward on 4 x 10 logits (µs per call, median):\n")
    for k, v in overhead(args.rounds).items():
        print(f"- {k}: {v:.1f} µs")
    load1 = os.getloadavg()
    print(f"\nLoad average (1 min) before {load0[0]:.1f}, after {load1[0]:.1f}")


if __name__ == "__main__":
    main()
