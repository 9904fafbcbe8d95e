#!/usr/bin/env python3
"""PyTorch peer of the RoI Align benchmarks (bench/detection/), measured side by side.

Times torchvision.ops.roi_align forward and forward+backward (gradient to the feature map) on
the shapes of bench/detection/roi_align_shapes.hpp, and, when --bench points to distill_bench,
runs distill's roi_align benchmarks in the same session and prints the ratios.

Without torchvision (Debian: apt-get install python3-torchvision) it falls back to the same math
in plain torch ops (bilinear gathers + autograd; fixed sampling_ratio only), and says so.

    /usr/bin/python3 bench/peers/roi_align_peer.py --bench build/bench/distill_bench --threads 2
    python3 bench/peers/roi_align_peer.py --bench build-gpu/bench/distill_bench --cuda
"""
import argparse
import json
import math
import subprocess
import time

import torch

SHAPES = [("scene", 8, 64, 24, 24, 64, 7, 0.25), ("rcnn", 2, 256, 50, 50, 512, 7, 1.0 / 16)]


def rois_of(B, H, W, per_image, scale):
    """Same boxes as roi_align_rois() in roi_align_shapes.hpp."""
    out = []
    iw, ih = W / scale, H / scale
    for b in range(B):
        for k in range(per_image):
            u, v = math.fmod(0.618033988749895 * (k + 1), 1.0), math.fmod(0.754877666246693 * (k + 1), 1.0)
            w = 8 + (0.6 * iw - 8) * math.fmod(0.569840290998053 * (k + 1), 1.0)
            h = 8 + (0.6 * ih - 8) * math.fmod(0.41421356237 * (k + 1), 1.0)
            x1, y1 = u * (iw - w), v * (ih - h)
            out.append([b, x1, y1, x1 + w, y1 + h])
    return torch.tensor(out, dtype=torch.float32)


def roi_align_plain(x, rois, out, scale, sampling, aligned):
    """torchvision's roi_align in plain torch ops (fixed sampling ratio)."""
    B, C, H, W = x.shape
    off = 0.5 if aligned else 0.0
    b = rois[:, 0].long()
    x1, y1 = rois[:, 1] * scale - off, rois[:, 2] * scale - off
    w, h = rois[:, 3] * scale - off - x1, rois[:, 4] * scale - off - y1
    if not aligned:
        w, h = w.clamp(min=1), h.clamp(min=1)
    steps = (torch.arange(out * sampling, dtype=x.dtype, device=x.device) + 0.5) / sampling  # in bins

    def axis(start, size, n):
        pos = start[:, None] + steps[None, :] * (size / out)[:, None]
        valid = (pos >= -1) & (pos <= n)
        pos = pos.clamp(min=0)
        lo = pos.floor().long()
        edge = lo >= n - 1
        lo = torch.where(edge, torch.full_like(lo, n - 1), lo)
        hi = torch.where(edge, lo, lo + 1)
        pos = torch.where(edge, lo.to(pos.dtype), pos)
        whi = (pos - lo) * valid
        wlo = (1 - (pos - lo)) * valid
        return lo, hi, wlo, whi

    ylo, yhi, wylo, wyhi = axis(y1, h, H)
    xlo, xhi, wxlo, wxhi = axis(x1, w, W)
    xb = x[b]  # [K, C, H, W]
    K = rois.shape[0]

    def gather(yi, xi):
        idx = (yi[:, :, None] * W + xi[:, None, :]).reshape(K, 1, -1).expand(K, C, -1)
        return xb.reshape(K, C, H * W).gather(2, idx).reshape(K, C, yi.shape[1], xi.shape[1])

    v = (gather(ylo, xlo) * (wylo[:, None, :, None] * wxlo[:, None, None, :]) +
         gather(ylo, xhi) * (wylo[:, None, :, None] * wxhi[:, None, None, :]) +
         gather(yhi, xlo) * (wyhi[:, None, :, None] * wxlo[:, None, None, :]) +
         gather(yhi, xhi) * (wyhi[:, None, :, None] * wxhi[:, None, None, :]))
    return v.reshape(K, C, out, sampling, out, sampling).mean((3, 5))


def time_ms(fn, device, repeats):
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best.append((time.perf_counter() - t) * 1e3)
    best.sort()
    return best[len(best) // 2]  # median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", help="path to distill_bench (optional)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of peer and distill per benchmark")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if args.cuda else "cpu"
    try:
        from torchvision.ops import roi_align as tv_roi_align
        peer_name = "torchvision.ops.roi_align"

        def peer(x, r, out, scale):
            return tv_roi_align(x, r, (out, out), spatial_scale=scale, sampling_ratio=2, aligned=True)
    except ImportError:
        peer_name = "plain torch ops (torchvision not installed)"

        def peer(x, r, out, scale):
            return roi_align_plain(x, r, out, scale, 2, True)

    print(f"peer: {peer_name}, torch {torch.__version__}, device {device}, threads {args.threads}")
    backend = "cuda" if args.cuda else "cpu"
    rows = []
    for name, B, C, H, W, per_image, out, scale in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, W, generator=g).to(device).requires_grad_(True)
        r = rois_of(B, H, W, per_image, scale).to(device)
        y = peer(x, r, out, scale)
        go = torch.randn(y.shape, generator=g).to(device)
        check = (roi_align_plain(x, r, out, scale, 2, True) - y).abs().max().item()
        key = f"{name}_{B}x{C}x{H}x{W}_k{B * per_image}"
        print(f"  {key}: plain-torch check max |diff| {check:.2e}")
        for pass_ in ("fwd", "bwd"):
            # Rounds alternate the peer and distill so that a busy machine slows both alike; the
            # peer's backward is (forward + backward) - forward.
            peer_runs, distill_runs = [], []
            for _ in range(args.rounds):
                fwd = time_ms(lambda: peer(x, r, out, scale), device, args.repeats)
                if pass_ == "fwd":
                    peer_runs.append(fwd)
                else:
                    both = time_ms(lambda: torch.autograd.grad(peer(x, r, out, scale), x, go), device, args.repeats)
                    peer_runs.append(max(both - fwd, 1e-6))
                if args.bench:
                    distill_runs.append(distill_ms(args.bench, f"^roi_align/{backend}/{pass_}/{key}/"))
            peer_med = sorted(peer_runs)[len(peer_runs) // 2]
            if distill_runs:
                ratios = sorted(p / d for p, d in zip(peer_runs, distill_runs))
                dist_med = sorted(distill_runs)[len(distill_runs) // 2]
                rows.append(f"| roi_align/{backend}/{pass_}/{key} | {dist_med:.3f} | {peer_med:.3f} | "
                            f"{ratios[len(ratios) // 2]:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) |")
            else:
                print(f"  {pass_}: {peer_med:.3f} ms")
    if rows:
        print(f"\n| benchmark | distill ms | {peer_name} ms | speed-up, median of {args.rounds} rounds (range) |\n|---|---|---|---|")
        print("\n".join(rows))


def distill_ms(bench, pattern):
    res = subprocess.run([bench, f"--benchmark_filter={pattern}", "--benchmark_format=json", "--benchmark_min_time=0.5"],
                         capture_output=True, text=True, check=True)
    b = json.loads(res.stdout)["benchmarks"][0]
    return b["real_time"] * {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]


if __name__ == "__main__":
    main()
