#!/usr/bin/env python3
"""Hinton KD on Fashion-MNIST in plain PyTorch, with the KD loss either written in PyTorch or
taken from distill (`--kd torch|distill`): the same training loop, data order and
initialisation, so the two differ only in the loss implementation.

A teacher MLP (784-512-10) is trained with cross-entropy, then a small student (784-32-10)
learns from it with 0.9 T^2 KL(teacher || student) + 0.1 CE at T = 4 (mdistiller's recipe).
Accuracy is measured on a validation split held out of the training files (never on the test
files) and reported as mean +- std over the seeds.

    /usr/bin/python3 bindings/torch/examples/fashion_mnist_kd.py --kd distill --seeds 0 1 2
    /usr/bin/python3 bindings/torch/examples/fashion_mnist_kd.py --kd both --train 60000 --epochs 10

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/*.gz).
"""
import argparse
import gzip
import os
import statistics
import time

import torch
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load(train, val):
    """`train` training and `val` validation images, both from the training files (disjoint)."""
    x = read_idx("train-images-idx3-ubyte.gz")[:train + val].float().div(255).flatten(1)
    y = read_idx("train-labels-idx1-ubyte.gz")[:train + val].long()
    x = (x - 0.2860) / 0.3530  # the training set's mean and std
    return (x[:train], y[:train]), (x[train:], y[train:])


def mlp(hidden):
    return torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def kd_loss_torch(s, t, y, T, alpha):
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True)
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)


def kd_loss_distill(s, t, y, T, alpha):
    import distill_torch
    return distill_torch.kl_teacher_student(s, t, temperature=T, labels=y, soft_weight=alpha, hard_label_weight=1 - alpha)


KD_LOSSES = {"torch": kd_loss_torch, "distill": kd_loss_distill}


def train(model, data, epochs, seed, loss_fn, lr=0.05, batch=128):
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(model(x[idx]), idx).backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model, data):
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item() * 100


def run(kd_impls, seeds, train_size=6000, val_size=2000, epochs=3, T=4.0, alpha=0.9, log=print):
    """Validation accuracy (%) per KD implementation and seed: {impl: [acc per seed]}, plus the teacher's."""
    train_set, val_set = load(train_size, val_size)
    torch.manual_seed(1234)
    teacher = train(mlp(512), train_set, epochs, 1234, lambda out, idx: F.cross_entropy(out, train_set[1][idx]))
    teacher.eval()
    with torch.no_grad():
        teacher_logits = teacher(train_set[0])
    results = {"teacher": [accuracy(teacher, val_set)]}
    log(f"teacher: {results['teacher'][0]:.2f}% validation accuracy")
    for impl in kd_impls:
        kd = KD_LOSSES[impl]
        accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            student = mlp(32)
            t0 = time.perf_counter()
            train(student, train_set, epochs, seed,
                  lambda out, idx: kd(out, teacher_logits[idx], train_set[1][idx], T, alpha))
            accs.append(accuracy(student, val_set))
            log(f"student, {impl} KD, seed {seed}: {accs[-1]:.2f}% ({time.perf_counter() - t0:.1f} s)")
        results[impl] = accs
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kd", choices=["torch", "distill", "both"], default="both")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    impls = ["torch", "distill"] if args.kd == "both" else [args.kd]
    res = run(impls, args.seeds, args.train, args.val, args.epochs)
    for impl in impls:
        a = res[impl]
        std = statistics.stdev(a) if len(a) > 1 else 0.0
        print(f"{impl:8s} KD student: {statistics.mean(a):.2f} +- {std:.2f} % over seeds {args.seeds}")


if __name__ == "__main__":
    main()
