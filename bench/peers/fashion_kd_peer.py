#!/usr/bin/env python3
"""PyTorch peer of examples/fashion_kd: the same recipes, run the same way, printed the same way.

Same data (Debian's Fashion-MNIST files, the same stratified train/validation split, subsets,
normalisation, batch order and augmentation, reproduced from examples/common/random.hpp and
fashion_mnist.hpp with the same splitmix64 streams), the same architectures (conv 3x3 no bias ->
BN -> ReLU [-> max-pool] stages, a linear head), the same initialisation scheme (Kaiming normal
for convolutions, PyTorch's default for linear layers), optimiser (SGD, Nesterov momentum 0.9,
weight decay 5e-4, cosine learning rate per step), batch, epochs and loss weights. By default the
teacher is distill's own teacher checkpoint (<distill out>/teacher.ckpt, read here), so both
sides distil from the same network; --train-teacher trains one in PyTorch instead.

All methods of a seed see the same batches; the teacher's forward pass runs once per batch and
its time is added to every method that uses it (as fashion_kd does). Times exclude evaluation.

    /usr/bin/python3 bench/peers/fashion_kd_peer.py --preset cpu-small --methods ce kd \\
        --teacher fashion_out/teacher.ckpt --threads 2 --out peer_out

Methods: ce kd dkd at at_kd stats adain mlp_ce mlp_kd (FFSD is not ported).
"""
import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

M64 = (1 << 64) - 1

# ---- examples/common/random.hpp ------------------------------------------------------------------


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & M64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        threshold = ((1 << 64) - n) % n
        while True:
            r = self.next()
            if r >= threshold:
                return r % n


def mix64(x):
    return SplitMix64(x).next()


def shuffled_order(n, seed, epoch):
    order = list(range(n))
    rng = SplitMix64(mix64(mix64(seed) ^ ((0x5348554646 + epoch) & M64)))
    for i in range(n, 1, -1):
        j = rng.below(i)
        order[i - 1], order[j] = order[j], order[i - 1]
    return order


# ---- examples/common/fashion_mnist.hpp -----------------------------------------------------------


def read_idx(path, magic):
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist)")
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = magic & 0xFF
    got, *dims = struct.unpack(">" + "I" * (1 + rank), data[: 4 + 4 * rank])
    if got != magic:
        sys.exit(f"{path}: magic {got}, expected {magic}")
    n = math.prod(dims)
    payload = data[4 + 4 * rank:]
    if len(payload) != n:
        sys.exit(f"{path}: {len(payload)} data bytes, header announces {n}")
    return dims, payload


def load_split(folder, prefix):
    dims, pixels = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), 2051)
    _, labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
    images = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(dims[0], 28, 28)
    return images, torch.tensor(list(labels), dtype=torch.int64)


def split_train_validation(labels, per_class, seed):
    train, val = [], []
    for c in range(10):
        ids = [i for i, l in enumerate(labels.tolist()) if l == c]
        order = shuffled_order(len(ids), seed ^ 0x56414C4944, c)
        for k, o in enumerate(order):
            (val if k < per_class else train).append(ids[o])
    return sorted(train), sorted(val)


def take_per_class(labels, ids, per_class):
    taken, out = [0] * 10, []
    for i in ids:
        c = int(labels[i])
        if taken[c] < per_class:
            out.append(i)
        taken[c] += 1
    return out


def augmentation_draw(pad, flip, seed, epoch, image_id):
    rng = SplitMix64(mix64(((mix64(mix64(seed) ^ 0x4155474D) + epoch) & M64) ^ image_id))
    span = 2 * pad + 1
    dx = rng.below(span) - pad
    dy = rng.below(span) - pad
    return dx, dy, flip and (rng.next() >> 63) != 0


def make_batch(images, labels, ids, mean, std, pad, flip, seed, epoch):
    x = images[ids].float().div_(255.0).sub_(mean).div_(std)
    if pad or flip:
        zero = (0.0 - mean) / std
        out = torch.full_like(x, zero)
        for k, i in enumerate(ids):
            dx, dy, fl = augmentation_draw(pad, flip, seed, epoch, i)
            img = x[k].flip(-1) if fl else x[k]
            # out(y, x) = img(y + dy, x + dx), zero outside
            ys, xs = slice(max(0, -dy), min(28, 28 - dy)), slice(max(0, -dx), min(28, 28 - dx))
            out[k, ys, xs] = img[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
        x = out
    return x.unsqueeze(1), labels[ids]


# ---- models (examples/fashion_kd/src/models.hpp) ---------------------------------------------------


class StagedNet(nn.Module):
    def __init__(self, channels, head, dropout=0.0, pooled_stages=2):
        super().__init__()
        self.stages = nn.ModuleList()
        cin, side = 1, 28
        for k, c in enumerate(channels):
            s = nn.Sequential()
            s.add_module("conv", nn.Conv2d(cin, c, 3, padding=1, bias=False))
            s.add_module("bn", nn.BatchNorm2d(c))
            s.add_module("relu", nn.ReLU())
            if k < pooled_stages:
                s.add_module("pool", nn.MaxPool2d(2))
                side //= 2
            self.stages.append(s)
            cin = c
        features = cin * side * side if channels else 784
        layers = []
        for h in head + [10]:  # dropout before each linear layer, ReLU between them
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(features, h), nn.ReLU()]
            features = h
        layers.pop()  # no ReLU after the last layer
        self.head = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.features = []

    def forward(self, x):
        self.features = []
        for s in self.stages:
            x = s(x)
            self.features.append(x)
        return self.head(x.flatten(1))

    def head_linear_names(self):
        return [i for i, m in enumerate(self.head) if isinstance(m, nn.Linear)]


def load_distill_checkpoint(path, net, prefix="teacher"):
    """Reads a distill nn::checkpoint (DSTLCKPT version 1, nn/checkpoint.hpp) into `net`."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"DSTLCKPT" or data[-8:] != b"DSTLEND\0":
        sys.exit(f"{path} is not a distill checkpoint")
    body = data[:-16]
    (stored,) = struct.unpack("<Q", data[-16:-8])
    h = 0xCBF29CE484222325  # the format's checksum: FNV-1a constants over 8-byte LE words, then bytes
    words = len(body) // 8
    for (w,) in struct.iter_unpack("<Q", body[: words * 8]):
        h = ((h ^ w) * 0x100000001B3) & M64
    for b in body[words * 8:]:
        h = ((h ^ b) * 0x100000001B3) & M64
    if h != stored:
        sys.exit(f"{path}: checksum mismatch")
    version, bom, count = struct.unpack("<IIQ", body[8:24])
    pos, tensors = 24, {}
    for _ in range(count):
        (n,) = struct.unpack("<I", body[pos:pos + 4])
        name = body[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
        dtype, rank = struct.unpack("<II", body[pos:pos + 8])
        pos += 8
        shape = struct.unpack("<" + "q" * rank, body[pos:pos + 8 * rank])
        pos += 8 * rank
        (nbytes,) = struct.unpack("<Q", body[pos:pos + 8])
        pos += 8
        if dtype == 1:
            tensors[name] = torch.frombuffer(bytearray(body[pos:pos + nbytes]), dtype=torch.float32).view(*shape).clone()
        pos += nbytes
    linear = net.head_linear_names()
    state = {}
    for name, t in tensors.items():
        if not name.startswith(f"param/{prefix}."):
            continue
        key = name[len(f"param/{prefix}."):]
        if key.startswith("stage"):
            k, rest = key[5:].split(".", 1)
            state[f"stages.{k}.{rest}"] = t
        elif key.startswith("fc"):
            k, rest = key[2:].split(".", 1)
            state[f"head.{linear[int(k)]}.{rest}"] = t
    missing = [k for k in net.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        sys.exit(f"{path}: no values for {missing}")
    net.load_state_dict(state, strict=False)


# ---- losses (examples/fashion_kd/src/losses.hpp) ----------------------------------------------------


KD_LOSS = "torch"  # --kd-loss: PyTorch's formula, or distill's operator through distill_torch


def hinton_kd(s, t, y, T, alpha):
    if KD_LOSS == "distill":
        import distill_torch as dt  # built by scripts/build_torch.sh; PYTHONPATH=build/python
        kl = dt.kl_teacher_student(s, t.detach(), temperature=T)  # T^2 KL, batchmean
    else:
        kl = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T * T
    return (1 - alpha) * F.cross_entropy(s, y) + alpha * kl


def dkd(s, t, y, alpha, beta, T):
    gt = F.one_hot(y, 10).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T * T / s.shape[0]
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1), reduction="sum") * T * T / s.shape[0]
    return alpha * tckd + beta * nckd


def at_map(x):
    return F.normalize(x.pow(2).mean(1).flatten(1))


def at_loss(fs, ft):
    return (at_map(fs) - at_map(ft)).pow(2).mean()


def stats(x, eps=1e-5):
    return x.mean((2, 3)), torch.sqrt(x.var((2, 3), unbiased=False) + eps)


def stats_l2(fs, ft):
    ms, ss = stats(fs)
    mt, st = stats(ft)
    return ((ms - mt) ** 2 + (ss - st) ** 2).mean()


def adain_kd(fs, ft, head):
    ms, ss = stats(fs)
    mt, st = stats(ft)
    mixed = ss[..., None, None] * (ft - mt[..., None, None]) / st[..., None, None] + ms[..., None, None]
    return F.mse_loss(head(mixed.flatten(1)), head(ft.flatten(1)))


def connector(cs, ct):
    c = nn.Sequential(nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct), nn.ReLU())
    nn.init.kaiming_normal_(c[0].weight, nonlinearity="relu")
    return c


# ---- the run ------------------------------------------------------------------------------------


TITLES = {"ce": "student alone (CE)", "kd": "Hinton KD", "dkd": "DKD", "at": "AT", "at_kd": "AT + KD", "stats": "feature statistics L2",
          "adain": "AdaIN-KD", "mlp_ce": "MLP student alone (CE)", "mlp_kd": "MLP Hinton KD", "teacher": "teacher"}


def presets(name):
    c = dict(seeds=3, epochs=8, teacher_epochs=10, student_per_class=1500, teacher_per_class=0, validation_per_class=500, eval_images=0,
             batch=128, teacher_batch=128, lr=0.05, momentum=0.9, weight_decay=5e-4, teacher=([32, 64, 64], [256], 0.3), student=([8, 16], [64], 0.0),
             mlp=([], [96], 0.0), kd_t=2.0, kd_alpha=0.9, dkd_alpha=1.0, dkd_beta=2.0, dkd_t=4.0, dkd_warmup=1.0, at_beta=100.0, stats_w=0.1,
             adain_w=0.1, teacher_pad=0, teacher_flip=False, pad=0, flip=False)
    if name == "full":
        c.update(epochs=30, teacher_epochs=30, student_per_class=0, teacher_pad=2, teacher_flip=True)
    elif name == "smoke":
        c.update(seeds=1, epochs=1, teacher_epochs=1, student_per_class=30, teacher_per_class=40, validation_per_class=20, eval_images=200,
                 batch=32, teacher_batch=32)
    return c


def cosine(lr, t, total):
    return lr * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))


class Learner:
    def __init__(self, method, cfg, teacher, total_steps):
        self.method = method
        spec = cfg["mlp"] if method.startswith("mlp") else cfg["student"]
        self.net = StagedNet(*spec)
        params = list(self.net.parameters())
        self.conn = None
        if method in ("stats", "adain"):
            self.conn = connector(spec[0][-1], cfg["teacher"][0][-1])
            params += list(self.conn.parameters())
        self.opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=True)
        self.cfg, self.total, self.t = cfg, total_steps, 0
        self.teacher = teacher

    def step(self, x, y, epochs_done):
        c = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = cosine(c["lr"], self.t, self.total)
        self.net.train()
        z = self.net(x)
        m = self.method
        tz = self.teacher_logits
        if m in ("kd", "mlp_kd", "at_kd"):
            loss = hinton_kd(z, tz, y, c["kd_t"], c["kd_alpha"])
        else:
            loss = F.cross_entropy(z, y)
        if m == "dkd":
            loss = loss + min(1.0, epochs_done / c["dkd_warmup"]) * dkd(z, tz, y, c["dkd_alpha"], c["dkd_beta"], c["dkd_t"])
        if m in ("at", "at_kd"):
            tf = self.teacher.features
            for fs in self.net.features:
                ft = [f for f in tf if f.shape[2] == fs.shape[2]][-1]
                loss = loss + c["at_beta"] / 2 * at_loss(fs, ft)
        if m in ("stats", "adain"):
            r = self.conn(self.net.features[-1])
            ft = self.teacher.features[-1]
            loss = loss + (c["stats_w"] * stats_l2(r, ft) if m == "stats" else c["adain_w"] * adain_kd(r, ft, self.teacher.head))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.t += 1
        return float(loss)


def evaluate(net, images, labels, ids, mean, std):
    net.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(ids), 500):
            b = ids[i:i + 500]
            x, y = make_batch(images, labels, b, mean, std, 0, False, 0, 0)
            right += int((net(x).argmax(1) == y).sum())
    net.train()
    return right / max(1, len(ids))


def format_table(rows, heading):
    """The layout of fashion_kd's table (examples/fashion_kd/src/report.hpp)."""
    def ms(v, scale=100, d=2):
        if not v:
            return "n/a"
        m = sum(v) / len(v)
        s = f"{scale * m:.{d}f}"
        if len(v) > 1:
            sd = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))
            s += f" ± {scale * sd:.{d}f}"
        return s

    titles = ["method", "params", "val acc (%)", "test acc (%)", "s/epoch", "img/s"]
    cells = []
    seeds = max(len(r["runs"]) for r in rows)
    for r in rows:
        spe = [s["train_seconds"] / s["epochs"] for s in r["runs"]]
        ips = [s["images"] / s["train_seconds"] for s in r["runs"]]
        m = sum(spe) / len(spe)
        cells.append([TITLES[r["key"]], f"{r['params']:,}", ms([s["val"] for s in r["runs"]]), ms([s["test"] for s in r["runs"]]),
                      ms(spe, 1, 0 if m >= 100 else 1), f"{sum(ips) / len(ips):.0f}"])
    w = [max(len(t), *(len(c[k]) for c in cells)) for k, t in enumerate(titles)]
    out = [f"Fashion-MNIST accuracy, mean ± std over {seeds} seed{'s' if seeds > 1 else ''}; {heading}"]
    head = titles[0].ljust(w[0]) + "".join("  " + t.rjust(w[k]) for k, t in enumerate(titles) if k)
    out += [head, "-" * len(head)]
    for c in cells:
        out.append(c[0].ljust(w[0]) + "".join("  " + v.rjust(w[k]) for k, v in enumerate(c) if k))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=["smoke", "cpu-small", "full"])
    ap.add_argument("--methods", nargs="+", default=["ce", "kd"])
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--teacher", default="fashion_out/teacher.ckpt", help="distill's teacher checkpoint (fashion_kd --out DIR writes DIR/teacher.ckpt)")
    ap.add_argument("--train-teacher", action="store_true", help="train the teacher in PyTorch instead of loading distill's")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--student-train-per-class", type=int)
    ap.add_argument("--out", default="peer_out")
    ap.add_argument("--kd-loss", choices=["torch", "distill"], default="torch",
                    help="the KL term of KD: PyTorch's formula, or distill's operator (distill_torch; PYTHONPATH=build/python)")
    a = ap.parse_args()
    global KD_LOSS
    KD_LOSS = a.kd_loss
    torch.set_num_threads(a.threads)
    cfg = presets(a.preset)
    for k, v in (("seeds", a.seeds), ("epochs", a.epochs), ("student_per_class", a.student_train_per_class)):
        if v is not None:
            cfg[k] = v
    for m in a.methods:
        if m not in TITLES or m == "teacher":
            sys.exit(f"unknown method {m} (the peer has: ce kd dkd at at_kd stats adain mlp_ce mlp_kd)")

    train_images, train_labels = load_split(a.data_dir, "train")
    test_images, test_labels = load_split(a.data_dir, "t10k")
    train_ids, val_ids = split_train_validation(train_labels, cfg["validation_per_class"], 1)
    x = train_images[train_ids].double() / 255.0
    mean, std = float(x.mean()), float(x.std(unbiased=False))
    del x
    student_ids = take_per_class(train_labels, train_ids, cfg["student_per_class"]) if cfg["student_per_class"] else train_ids
    teacher_ids = take_per_class(train_labels, train_ids, cfg["teacher_per_class"]) if cfg["teacher_per_class"] else train_ids
    test_ids = list(range(len(test_labels)))
    if cfg["eval_images"]:
        val_ids = take_per_class(train_labels, val_ids, cfg["eval_images"] // 10)
        test_ids = take_per_class(test_labels, test_ids, cfg["eval_images"] // 10)
    heading = f"PyTorch {torch.__version__}, CPU, {a.threads} threads"
    print(f"fashion_kd_peer: preset {a.preset}, methods {' '.join(a.methods)}; {heading}", file=sys.stderr)

    rows = {}
    teacher = StagedNet(*cfg["teacher"])
    needs_teacher = any(m not in ("ce", "mlp_ce") for m in a.methods)
    if needs_teacher:
        if a.train_teacher:
            torch.manual_seed(a.first_seed)
            B, E = cfg["teacher_batch"], cfg["teacher_epochs"]
            steps = len(teacher_ids) // B
            opt = torch.optim.SGD(teacher.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=True)
            secs, t = 0.0, 0
            for e in range(E):
                order = shuffled_order(len(teacher_ids), a.first_seed, e)
                for s in range(steps):
                    ids = [teacher_ids[order[s * B + i]] for i in range(B)]
                    xb, yb = make_batch(train_images, train_labels, ids, mean, std, cfg["teacher_pad"], cfg["teacher_flip"], a.first_seed, e)
                    t0 = time.perf_counter()
                    for g in opt.param_groups:
                        g["lr"] = cosine(cfg["lr"], t, steps * E)
                    loss = F.cross_entropy(teacher(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    secs += time.perf_counter() - t0
                    t += 1
                print(f"  teacher epoch {e + 1}/{E}: test {100 * evaluate(teacher, test_images, test_labels, test_ids, mean, std):.2f}%", file=sys.stderr)
            trun = dict(seed=a.first_seed, train_seconds=secs, epochs=E, images=steps * B * E)
        else:
            load_distill_checkpoint(a.teacher, teacher)
            trun = dict(seed=a.first_seed, train_seconds=float("nan"), epochs=cfg["teacher_epochs"], images=0)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        trun.update(val=evaluate(teacher, train_images, train_labels, val_ids, mean, std),
                    test=evaluate(teacher, test_images, test_labels, test_ids, mean, std))
        rows["teacher"] = dict(key="teacher", params=sum(p.numel() for p in teacher.parameters()), runs=[trun])
        print(f"  teacher: validation {100 * trun['val']:.2f}%, test {100 * trun['test']:.2f}%", file=sys.stderr)

    B, E = cfg["batch"], cfg["epochs"]
    steps = len(student_ids) // B
    for k in range(cfg["seeds"]):
        seed = a.first_seed + k
        learners = {}
        for m in a.methods:
            torch.manual_seed(seed)  # every method of a seed starts from the same student
            learners[m] = Learner(m, cfg, teacher, steps * E)
        own = {m: 0.0 for m in a.methods}
        for e in range(E):
            order = shuffled_order(len(student_ids), seed, e)
            tsec = 0.0
            for s in range(steps):
                ids = [student_ids[order[s * B + i]] for i in range(B)]
                xb, yb = make_batch(train_images, train_labels, ids, mean, std, cfg["pad"], cfg["flip"], seed, e)
                if needs_teacher:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        tz = teacher(xb)
                    tsec += time.perf_counter() - t0
                for m, l in learners.items():
                    l.teacher_logits = tz if needs_teacher else None
                    t0 = time.perf_counter()
                    l.step(xb, yb, e + (s + 1) / steps)
                    own[m] += time.perf_counter() - t0
            for m, l in learners.items():
                if m not in ("ce", "mlp_ce"):
                    own[m] += tsec
            msg = " | ".join(f"{m} test {100 * evaluate(l.net, test_images, test_labels, test_ids, mean, std):.2f}%" for m, l in learners.items())
            print(f"  seed {seed} epoch {e + 1}/{E}: {msg}", file=sys.stderr)
        for m, l in learners.items():
            r = rows.setdefault(m, dict(key=m, params=sum(p.numel() for p in l.net.parameters()), runs=[]))
            r["runs"].append(dict(seed=seed, val=evaluate(l.net, train_images, train_labels, val_ids, mean, std),
                                  test=evaluate(l.net, test_images, test_labels, test_ids, mean, std), train_seconds=own[m], epochs=E,
                                  images=steps * B * E))

    table_rows = [rows[k] for k in ["teacher"] + a.methods if k in rows and (k != "teacher" or rows[k]["runs"][0]["images"])]
    print("\n" + format_table(table_rows, heading))
    if "teacher" in rows and not rows["teacher"]["runs"][0]["images"]:
        t = rows["teacher"]
        print(f"teacher: distill's checkpoint {a.teacher} ({t['params']:,} parameters): validation {100 * t['runs'][0]['val']:.2f}%, "
              f"test {100 * t['runs'][0]['test']:.2f}% as evaluated by PyTorch")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "peer_results.json"), "w") as f:
        json.dump(dict(preset=a.preset, config=cfg, heading=heading, rows=list(rows.values())), f, indent=2)


if __name__ == "__main__":
    main()
