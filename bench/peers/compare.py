#!/usr/bin/env python3
"""Side-by-side comparison of distill_bench with the PyTorch peer, in one run on one machine.

For every headline benchmark of distill_bench this script times the same computation in PyTorch
(forward + backward, gradient to the student input, same shapes and formulas as
the founding team's peer scripts), then prints one table:

    benchmark | distill ms | peer ms (eager [, compile]) | speed-up | target ms | roofline

Usage (CPU, Debian's python3-torch: `apt-get install -y python3-torch libopenblas0-pthread`):
    OMP_WAIT_POLICY=passive /usr/bin/python3 bench/peers/compare.py --bench build/bench/distill_bench --threads 2
The header line names the instruction set distill_bench was built for (its benchmark context:
-march and SIMD width); compare builds of one level only. An AVX2 table on an AVX-512 machine:
a build with -DDISTILL_MARCH=x86-64-v3, and ATEN_CPU_CAPABILITY=avx2 for PyTorch.
On a machine busy with other jobs, wall times measure the queue; compare CPU work instead:
    ... compare.py --bench ... --threads 1 --cpu-time
On a GPU machine with PyTorch (eager and torch.compile):
    python3 bench/peers/compare.py --bench build-gpu/bench/distill_bench --cuda
Writes the table as markdown to stdout and everything as JSON to --out (default compare.json).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# ---- the peers' definitions (the founding team's PyTorch peers, unchanged) -------------------


def kd(s, t, T=2.0):
    return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True) * T * T


def attn_mse_softmax(sl, tl):
    return F.mse_loss(torch.softmax(sl, -1), torch.softmax(tl, -1))


def at(fs, ft):
    qs = F.normalize(fs.pow(2).mean(1).flatten(1))
    qt = F.normalize(ft.pow(2).mean(1).flatten(1))
    return (qs - qt).pow(2).mean()


def adain(fs, ft, eps=1e-5):
    ms, vs = fs.mean((2, 3), keepdim=True), fs.var((2, 3), keepdim=True, unbiased=False)
    mt, vt = ft.mean((2, 3), keepdim=True), ft.var((2, 3), keepdim=True, unbiased=False)
    out = (ft - mt) / torch.sqrt(vt + eps) * torch.sqrt(vs + eps) + ms
    return F.mse_loss(out, ft) + F.mse_loss(ms, mt) + F.mse_loss(vs.sqrt(), vt.sqrt())


def token_nce(q, k, queue, tau=0.07):
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / tau
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class RN(torch.nn.Module):
    def __init__(s, D, Q, Hd):
        super().__init__()
        s.g = torch.nn.Sequential(torch.nn.Linear(2 * D + Q, Hd), torch.nn.ReLU(),
                                  *[m for _ in range(3) for m in (torch.nn.Linear(Hd, Hd), torch.nn.ReLU())])

    def forward(s, o, q, mask):
        B, N, D = o.shape
        oi = o.unsqueeze(2).expand(B, N, N, D)
        oj = o.unsqueeze(1).expand(B, N, N, D)
        qq = q[:, None, None, :].expand(B, N, N, q.shape[1])
        return (s.g(torch.cat([oi, oj, qq], -1)) * mask.unsqueeze(-1)).sum((1, 2))


# ---- one case per headline benchmark: (distill name, make(device) -> closure, target ms) -----


def case_kd(N, C, dtype=torch.float32):
    def make(dev):
        s = torch.randn(N, C, device=dev, dtype=dtype, requires_grad=True)
        t = torch.randn(N, C, device=dev, dtype=dtype)
        return lambda f: torch.autograd.grad(f(kd)(s, t), s)
    return make


def case_attn(B, H, L):
    def make(dev):
        sl = torch.randn(B, H, L, L, device=dev, requires_grad=True)
        tl = torch.randn(B, H, L, L, device=dev)
        return lambda f: torch.autograd.grad(f(attn_mse_softmax)(sl, tl), sl)
    return make


def case_feat(fn, B, C, H, W):
    def make(dev):
        fs = torch.randn(B, C, H, W, device=dev, requires_grad=True)
        ft = torch.randn(B, C, H, W, device=dev)
        return lambda f: torch.autograd.grad(f(fn)(fs, ft), fs)
    return make


def case_nce(M, D, K, tf32=False):
    def make(dev):
        q = torch.randn(M, D, device=dev, requires_grad=True)
        k = torch.randn(M, D, device=dev)
        queue = F.normalize(torch.randn(K, D, device=dev), dim=1)

        def run(f):
            if dev == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = tf32
            r = torch.autograd.grad(f(token_nce)(q, k, queue), q)
            if dev == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = False
            return r
        return run
    return make


def case_rn(B, N, D, Q, Hd):
    def make(dev):
        m = RN(D, Q, Hd).to(dev)
        o = torch.randn(B, N, D, device=dev, requires_grad=True)
        qv = torch.randn(B, Q, device=dev)
        mask = torch.ones(B, N, N, device=dev)  # distill's headline uses a dense mask: same work
        params = [o] + list(m.parameters())
        return lambda f: torch.autograd.grad(f(m)(o, qv, mask).sum(), params)
    return make


def case_linear(Nrows, In, Out):
    def make(dev):
        lin = torch.nn.Linear(In, Out).to(dev)
        x = torch.randn(Nrows, In, device=dev, requires_grad=True)
        params = [x] + list(lin.parameters())
        return lambda f: torch.autograd.grad(f(lin)(x).sum(), params)
    return make


def case_conv(B, Cin, H, W, Cout, k, s):
    def make(dev):
        conv = torch.nn.Conv2d(Cin, Cout, k, stride=s, padding=k // 2).to(dev)
        x = torch.randn(B, Cin, H, W, device=dev, requires_grad=True)
        params = [x] + list(conv.parameters())
        return lambda f: torch.autograd.grad(f(conv)(x).sum(), params)
    return make


def case_mha(B, L, E, heads):
    def make(dev):
        mha = torch.nn.MultiheadAttention(E, heads, batch_first=True).to(dev)
        x = torch.randn(B, L, E, device=dev, requires_grad=True)
        params = [x] + list(mha.parameters())
        return lambda f: torch.autograd.grad(f(lambda a: mha(a, a, a, need_weights=True)[0])(x).sum(), params)
    return make


CPU_CASES = [
    ("soft_target_kl/cpu/fwd_bwd/1024x32000", case_kd(1024, 32000), 35),
    ("soft_target_kl/cpu/fwd_bwd/256x3129", case_kd(256, 3129), 1.5),
    ("soft_target_kl/cpu/fwd_bwd/4096x10", case_kd(4096, 10), 0.1),
    ("attention_map_mse/cpu/fwd_bwd/8x12x64x64", case_attn(8, 12, 64), 0.5),
    ("attention_transfer/cpu/fwd_bwd/32x64x32x32", case_feat(at, 32, 64, 32, 32), 2.5),
    ("adain_stats/cpu/fwd_bwd/32x64x32x32", case_feat(adain, 32, 64, 32, 32), 2.5),
    ("token_nce_queue/cpu/fwd_bwd/512x256x8192", case_nce(512, 256, 8192), 60),
    ("relational_pairing/cpu/fwd_bwd/64x6x8x256", case_rn(64, 6, 8, 11, 256), 25),
    ("relational_pairing/cpu/fwd_bwd/16x25x26x256", case_rn(16, 25, 26, 11, 256), 110),
    ("nn_linear/cpu/fwd_bwd/4096x256x256", case_linear(4096, 256, 256), None),
    ("nn_conv2d/cpu/fwd_bwd/64x3x75x75_k3s2", case_conv(64, 3, 75, 75, 24, 3, 2), None),
    ("nn_attention/cpu/fwd_bwd/32x64x128h4", case_mha(32, 64, 128, 4), None),
]

CUDA_CASES = [
    ("soft_target_kl/cuda/fwd_bwd/8192x32000/f32", case_kd(8192, 32000), 1.25),
    ("soft_target_kl/cuda/fwd_bwd/8192x32000/bf16", case_kd(8192, 32000, torch.bfloat16), 0.65),
    ("soft_target_kl/cuda/fwd_bwd/4096x128256/bf16", case_kd(4096, 128256, torch.bfloat16), 1.30),
    ("soft_target_kl/cuda/fwd_bwd/512x3129/f32", case_kd(512, 3129), 0.03),
    ("attention_map_mse/cuda/fwd_bwd/64x12x128x128", case_attn(64, 12, 128), 0.07),
    ("attention_transfer/cuda/fwd_bwd/128x256x32x32", case_feat(at, 128, 256, 32, 32), 0.17),
    ("adain_stats/cuda/fwd_bwd/128x256x32x32", case_feat(adain, 128, 256, 32, 32), 0.17),
    ("token_nce_queue/cuda/fwd_bwd/4096x256x65536/tf32", case_nce(4096, 256, 65536, tf32=True), 2.0),
    ("token_nce_queue/cuda/fwd_bwd/4096x256x65536/f32", case_nce(4096, 256, 65536), 9.0),
    ("token_nce_queue/cuda/fwd_bwd/2048x768x4096/tf32", case_nce(2048, 768, 4096, tf32=True), 0.5),
    ("relational_pairing/cuda/fwd_bwd/64x25x26x256", case_rn(64, 25, 26, 11, 256), 0.6),
    ("relational_pairing/cuda/fwd_bwd/32x64x64x256", case_rn(32, 64, 64, 32, 256), 1.0),
    ("nn_linear/cuda/fwd_bwd/4096x256x256", case_linear(4096, 256, 256), None),
    ("nn_conv2d/cuda/fwd_bwd/64x3x75x75_k3s2", case_conv(64, 3, 75, 75, 24, 3, 2), None),
    ("nn_attention/cuda/fwd_bwd/32x64x128h4", case_mha(32, 64, 128, 4), None),
]


def time_cpu(fn, reps=15, clock=time.perf_counter):
    fn()
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def time_cuda(fn, reps=100):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        ts.append(start.elapsed_time(stop))
    return sorted(ts)[len(ts) // 2]


def run_distill(bench, names, threads, env_extra=None, cpu_time=False):
    # Google Benchmark appends /real_time or /manual_time to names that use those timers.
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")(/real_time|/manual_time)?$"
    env = dict(os.environ, DISTILL_BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **(env_extra or {}))
    out = subprocess.run([bench, f"--benchmark_filter={pattern}", "--benchmark_format=json",
                          "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"],
                         capture_output=True, text=True, env=env, check=True).stdout
    res = {}
    data = json.loads(out)
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = re.sub(r"/(real_time|manual_time)$", "", b["run_name"])
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        # the roofline counters come from wall time: meaningless beside CPU times
        res[name] = {"ms": b["cpu_time" if cpu_time else "real_time"] * scale, "roofline": None if cpu_time else b.get("roofline"),
                     "GBps": b.get("GBps"), "GFLOPs": b.get("GFLOPs")}
    return res, data.get("context", {})


def measure_ceilings(bench, threads, cuda):
    """This machine's roofline, measured by distill_bench's ceiling/ benchmarks in the same session;
    passed to the main run so its roofline counters use it (not the anchors of another machine)."""
    if cuda:
        names = ["ceiling/cuda/copy/1GiB", "ceiling/cuda/gemm/8192/f32", "ceiling/cuda/gemm/8192/tf32", "ceiling/cuda/gemm/8192/bf16"]
    else:
        names = ["ceiling/cpu/copy/128MiB", "ceiling/cpu/gemm/1024x1024x1024/f32"]
    res, _ = run_distill(bench, names, threads)
    if cuda:
        return {"DISTILL_BENCH_GPU_GBPS": res[names[0]]["GBps"], "DISTILL_BENCH_GPU_TFLOPS_F32": res[names[1]]["GFLOPs"] / 1e3,
                "DISTILL_BENCH_GPU_TFLOPS_TF32": res[names[2]]["GFLOPs"] / 1e3, "DISTILL_BENCH_GPU_TFLOPS_BF16": res[names[3]]["GFLOPs"] / 1e3}
    return {"DISTILL_BENCH_CPU_GBPS": res[names[0]]["GBps"], "DISTILL_BENCH_CPU_GFLOPS": res[names[1]]["GFLOPs"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="build/bench/distill_bench")
    ap.add_argument("--cuda", action="store_true", help="compare the CUDA benchmarks (needs a GPU and PyTorch with CUDA)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filter", default="", help="regex: only these benchmark names")
    ap.add_argument("--out", default="compare.json")
    ap.add_argument("--reps", type=int, default=15, help="timed PyTorch calls per CPU case (the median is reported)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="CPU time instead of wall time on both sides (with --threads 1: the whole work of a call), "
                         "for a machine busy with other jobs, where wall times measure the queue")
    args = ap.parse_args()
    if args.cpu_time and (args.cuda or args.threads != 1):
        ap.error("--cpu-time compares CPU work on one thread: use it with --threads 1 and without --cuda")

    cases = CUDA_CASES if args.cuda else CPU_CASES
    cases = [c for c in cases if re.search(args.filter, c[0])]
    dev = "cuda" if args.cuda else "cpu"
    torch.set_num_threads(args.threads)
    ceilings = measure_ceilings(args.bench, args.threads, args.cuda)
    ours, context = run_distill(args.bench, [c[0] for c in cases], args.threads, {k: f"{v:.6g}" for k, v in ceilings.items()},
                                args.cpu_time)

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "CPU")
    machine = torch.cuda.get_device_name() if args.cuda else f"{cpu_model}, {context.get('num_cpus', '?')} cores, {args.threads} threads"
    compilers = [("eager", lambda f: f)]
    if args.cuda:
        compilers.append(("compile", lambda f, cache={}: cache.setdefault(id(f), torch.compile(f))))
    clock = time.process_time if args.cpu_time else time.perf_counter
    timer = time_cuda if args.cuda else (lambda fn: time_cpu(fn, args.reps, clock))

    # which instruction set distill's CPU paths were built for (the benchmark context), and
    # which one PyTorch dispatches to (ATEN_CPU_CAPABILITY caps it, e.g. avx2)
    isa = f"distill built for {context.get('distill_march', '?')} ({context.get('distill_simd', '?')})"
    if not args.cuda:
        isa += f"; PyTorch CPU capability {os.environ.get('ATEN_CPU_CAPABILITY', 'default (best available)')}"
    rows, results = [], {"machine": machine, "isa": isa, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                         "ceilings": ceilings, "rows": []}
    for name, make, target in cases:
        closure = make(dev)
        peer = {}
        for cname, wrap in compilers:
            try:
                peer[cname] = timer(lambda: closure(wrap))
            except Exception as e:  # one failing peer must not cost the run
                print(f"# {name} {cname}: {e!r}"[:300], file=sys.stderr)
        d = ours.get(name)
        r = {"name": name, "distill_ms": d and d["ms"], "roofline": d and d["roofline"], "target_ms": target, **{f"torch_{k}_ms": v for k, v in peer.items()}}
        results["rows"].append(r)
        best_peer = min(peer.values()) if peer else None
        speedup = (best_peer / d["ms"]) if (d and best_peer) else None
        fmt = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"
        rows.append(f"| `{name}` | {fmt(d and d['ms'])} | " + " | ".join(fmt(peer.get(c)) for c, _ in compilers)
                    + f" | {fmt(speedup, 1)}× | {fmt(target, 2)} | {fmt(d and d['roofline'], 2)} |")
        del closure

    head = "| benchmark | distill ms | " + " | ".join(f"torch {c} ms" for c, _ in compilers) + " | speed-up vs best peer | target ms | roofline |"
    sep = "|" + "---|" * (5 + len(compilers))
    clock_name = "CPU time (one thread)" if args.cpu_time else "wall time"
    results["clock"] = clock_name
    print(f"Machine: {machine}; PyTorch {torch.__version__}; {results['date']}; {clock_name}; load average {os.getloadavg()[0]:.1f}")
    print(isa)
    print("Roofline measured in the same session: " + ", ".join(f"{k[14:]}={v:.4g}" for k, v in ceilings.items()) + "\n")
    print(head)
    print(sep)
    print("\n".join(rows))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
