"""Attention transfer, attention maps, feature statistics, statistics matching, AdaIN, the AdaIN
statistics loss and embedding alignment through distill_torch, against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F

import distill_torch as dt
from conftest import close, gradcheck


def check(distill_fn, reference_fn, student, *, upstream=None, loss_tol="f32_sum", grad_tol="f32", what=""):
    """distill's loss and input gradient (float) against the reference (double, same float inputs)."""
    s = student.clone().requires_grad_()
    loss = distill_fn(s)
    up = torch.ones_like(loss) if upstream is None else upstream
    (g,) = torch.autograd.grad(loss, s, up)
    s64 = student.double().requires_grad_()
    ref = reference_fn(s64)
    (g_ref,) = torch.autograd.grad(ref, s64, up.double())
    close(loss, ref, loss_tol, f"{what} loss")
    close(g, g_ref, grad_tol, f"{what} gradient")


# ---- attention transfer ----

def at_reference(fs, ft, p=2.0, beta=1.0, form="squared_mean", reduction="mean"):
    us = F.normalize(fs.abs().pow(p).mean(1).flatten(1), dim=1)
    ut = F.normalize(ft.abs().pow(p).mean(1).flatten(1), dim=1)
    per = beta * (us - ut).pow(2).mean(1) if form == "squared_mean" else beta / 2 * (us - ut).norm(dim=1)
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


@pytest.mark.parametrize("p,form,reduction", [(2.0, "squared_mean", "mean"), (3.0, "paper_norm", "sum"),
                                              (1.5, "squared_mean", "none")])
def test_attention_transfer(p, form, reduction):
    fs, ft = torch.randn(6, 8, 5, 7), torch.randn(6, 3, 5, 7)  # channel counts may differ
    up = torch.rand(6) if reduction == "none" else None
    beta = 1e3 if form == "squared_mean" else 1.0  # the authors' recipe; gradients of order 1 either way
    check(lambda s: dt.attention_transfer(s, ft, p=p, beta=beta, form=form, reduction=reduction),
          lambda s: at_reference(s, ft.double(), p, beta, form, reduction), fs, upstream=up, what="attention transfer")
    small_teacher = ft[:3, :, :3, :5].double()
    gradcheck(lambda s: dt.attention_transfer(s, small_teacher, p=p, form=form, reduction=reduction),
              torch.randn(3, 4, 3, 5, dtype=torch.float64, requires_grad=True))


def test_attention_transfer_reads_channels_last_memory_in_place():
    fs = torch.randn(4, 6, 5, 5).to(memory_format=torch.channels_last)
    ft = torch.randn(4, 6, 5, 5)
    assert not fs.is_contiguous()
    check(lambda s: dt.attention_transfer(s, ft), lambda s: at_reference(s, ft.double()), fs, what="channels_last AT")


# ---- attention maps ----

def attention_map_reference(kind, s, t, key_mask=None, query_mask=None, group=1, reduction="mean"):
    B, H, Lq, Lk = s.shape
    km = torch.ones(B, Lk, dtype=torch.bool) if key_mask is None else key_mask.bool()
    qm = torch.ones(B, Lq, dtype=torch.bool) if query_mask is None else query_mask.bool()
    kmask = km[:, None, None, :]
    ps = F.softmax(s.masked_fill(~kmask, float("-inf")), -1)
    pt = F.softmax(t.masked_fill(~kmask, float("-inf")), -1).reshape(B, H, group, Lq, Lk).mean(2)
    ps, pt = torch.nan_to_num(ps), torch.nan_to_num(pt)  # rows without a valid key
    if kind == "mse":
        rows = (ps - pt).pow(2).masked_fill(~kmask, 0).sum(-1)
    else:
        rows = torch.where(pt > 0, pt * (pt.log() - ps.log()), torch.zeros_like(pt)).masked_fill(~kmask, 0).sum(-1)
    rows = rows * qm[:, None, :]
    if reduction == "none":
        return rows.reshape(-1)
    if reduction == "sum":
        return rows.sum()
    if reduction == "batchmean":
        return rows.sum() / B
    nq, nk = qm.sum(1).double(), km.sum(1).double()
    divisor = H * (nq * nk).sum() if kind == "mse" else H * (nq * (nk > 0)).sum()
    return rows.sum() / divisor


@pytest.mark.parametrize("kind", ["mse", "kl_teacher_student"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_attention_maps_with_masks_and_group_mean_heads(kind, reduction):
    B, Hs, G, Lq, Lk = 3, 2, 3, 5, 6
    s, t = torch.randn(B, Hs, Lq, Lk) * 2, torch.randn(B, Hs * G, Lq, Lk) * 2
    key_mask = torch.rand(B, Lk) > 0.3
    key_mask[:, 0] = True
    query_mask = torch.rand(B, Lq) > 0.2
    fn = dt.attention_map_mse if kind == "mse" else dt.attention_map_kl
    up = torch.rand(B * Hs * Lq) if reduction == "none" else None
    check(lambda a: fn(a, t, key_mask=key_mask, query_mask=query_mask, head_map="group_mean", reduction=reduction),
          lambda a: attention_map_reference(kind, a, t.double(), key_mask, query_mask, G, reduction), s, upstream=up,
          what=f"attention map {kind}")
    gradcheck(lambda a: fn(a, t.double(), key_mask=key_mask, head_map="group_mean", reduction=reduction),
              (torch.randn(B, Hs, Lq, Lk, dtype=torch.float64) * 2).requires_grad_())


def test_attention_map_peer_of_the_benchmarks():
    """The peer of bench/peers/compare.py: F.mse_loss(softmax(s), softmax(t))."""
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    check(lambda a: dt.attention_map_mse(a, t), lambda a: F.mse_loss(a.softmax(-1), t.double().softmax(-1)), s,
          what="attention map peer")


# ---- feature statistics, statistics matching, AdaIN ----

def stats_reference(x, token_mask=None, eps=1e-5, unbiased=False):
    if x.dim() == 4:
        flat = x.flatten(2)
        mean, var = flat.mean(2), flat.var(2, unbiased=unbiased)
    else:
        m = torch.ones(x.shape[:2], dtype=torch.bool) if token_mask is None else token_mask.bool()
        w = m[..., None].to(x.dtype)
        n = w.sum(1)
        mean = (x * w).sum(1) / n
        var = ((x - mean[:, None]) ** 2 * w).sum(1) / (n - 1 if unbiased else n)
    return mean, (var + eps).sqrt()


@pytest.mark.parametrize("layout", ["channels", "tokens"])
def test_feature_stats(layout):
    x = torch.randn(3, 4, 5, 6) * 2 + 1 if layout == "channels" else torch.randn(3, 7, 5) * 2 + 1
    mask = None if layout == "channels" else torch.rand(3, 7) > 0.3
    if mask is not None:
        mask[:, :2] = True
    features = x.shape[1] if layout == "channels" else x.shape[2]
    wm, ws = torch.randn(3, features), torch.randn(3, features)  # a loss that uses both outputs
    check(lambda a: sum((o * w).sum() for o, w in zip(dt.feature_stats(a, token_mask=mask, unbiased=True), (wm, ws))),
          lambda a: sum((o * w.double()).sum() for o, w in zip(stats_reference(a, mask, unbiased=True), (wm, ws))), x,
          what=f"feature stats ({layout})")
    gradcheck(lambda a: dt.feature_stats(a, token_mask=mask), x.double().requires_grad_())
    gradcheck(lambda a: dt.feature_stats(a, token_mask=mask)[1], x.double().requires_grad_())  # mean unused


def test_stats_matching_and_adain_stats_loss_match_the_benchmark_peers():
    fs, ft = torch.randn(4, 5, 6, 7) * 1.5 + 0.3, torch.randn(4, 5, 8, 6)

    def stats_matching_ref(a):
        (ms, ss), (mt, st) = stats_reference(a), stats_reference(ft.double())
        return ((ms - mt) ** 2 + 0.5 * (ss - st) ** 2).mean()

    check(lambda a: dt.stats_matching(a, ft, std_weight=0.5), stats_matching_ref, fs, what="stats matching")

    def adain_peer(a, b, eps=1e-5):  # bench/peers/compare.py's `adain`, spatial sizes equal there
        ms, vs = a.mean((2, 3), keepdim=True), a.var((2, 3), keepdim=True, unbiased=False)
        mt, vt = b.mean((2, 3), keepdim=True), b.var((2, 3), keepdim=True, unbiased=False)
        out = (b - mt) / torch.sqrt(vt + eps) * torch.sqrt(vs + eps) + ms
        return F.mse_loss(out, b) + F.mse_loss(ms, mt) + F.mse_loss(vs.sqrt(), vt.sqrt())

    check(lambda a: dt.adain_stats_loss(a, ft), lambda a: adain_peer(a, ft.double()), fs, what="AdaIN statistics loss")
    gradcheck(lambda a: dt.adain_stats_loss(a, ft.double(), adain_weight=0.7), fs.double().requires_grad_())
    tokens_s, tokens_t = torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(3, 9, 4, dtype=torch.float64)
    student_mask = torch.rand(3, 6) > 0.2
    student_mask[:, 0] = True
    gradcheck(lambda a: dt.stats_matching(a, tokens_t, student_mask=student_mask), tokens_s.requires_grad_())


def test_adain_in_both_inputs():
    content, style = torch.randn(2, 3, 5, 4) * 2 + 1, torch.randn(2, 3, 6, 6) + 0.5

    def reference(c, s, eps=1e-5):
        mc, sc = stats_reference(c, eps=eps)
        ms, ss = stats_reference(s, eps=eps)
        return ss[..., None, None] * (c - mc[..., None, None]) / sc[..., None, None] + ms[..., None, None]

    c, s = content.clone().requires_grad_(), style.clone().requires_grad_()
    out = dt.adain(c, s)
    up = torch.randn_like(out)
    g_c, g_s = torch.autograd.grad(out, (c, s), up)
    c64, s64 = content.double().requires_grad_(), style.double().requires_grad_()
    ref = reference(c64, s64)
    r_c, r_s = torch.autograd.grad(ref, (c64, s64), up.double())
    close(out, ref, "f32_sum", "AdaIN output")
    close(g_c, r_c, "f32_sum", "AdaIN content gradient")
    close(g_s, r_s, "f32_sum", "AdaIN style gradient")
    gradcheck(dt.adain, content.double().requires_grad_(), style.double().requires_grad_())
    close(dt.adain(content, content), content, "f32", "AdaIN(x; x) = x")


# ---- embedding alignment ----

@pytest.mark.parametrize("metric,normalize,reduction", [("mse", "none", "batchmean"), ("cosine", "clamp", "mean"),
                                                        ("l1", "clamp", "none"), ("squared_l2", "none", "sum")])
def test_embedding_alignment(metric, normalize, reduction):
    n, d = 17, 9
    s, t = torch.randn(n, d), torch.randn(n, d)
    w = torch.rand(n) + 0.5
    mask = torch.rand(n) > 0.2

    def reference(a):
        u, v = (F.normalize(a, dim=1), F.normalize(t.double(), dim=1)) if normalize != "none" or metric == "cosine" \
            else (a, t.double())
        rows = {"mse": lambda: (u - v).pow(2).mean(1), "squared_l2": lambda: (u - v).pow(2).sum(1),
                "l1": lambda: (u - v).abs().sum(1), "cosine": lambda: 1 - (u * v).sum(1)}[metric]()
        ww = w.double() * mask.double()
        rows = ww * rows
        return {"none": rows, "sum": rows.sum(), "batchmean": rows.sum() / n, "mean": rows.sum() / ww.sum()}[reduction]

    up = torch.rand(n) if reduction == "none" else None
    check(lambda a: dt.embedding_alignment(a, t, metric=metric, normalize=normalize, reduction=reduction, row_weights=w,
                                           row_mask=mask), reference, s, upstream=up, what=f"embedding {metric}")
    if metric != "l1":  # |x| has a kink: no finite-difference check
        gradcheck(lambda a: dt.embedding_alignment(a, t.double(), metric=metric, normalize=normalize,
                                                   reduction=reduction, row_weights=w), s.double().requires_grad_())


def test_feature_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"'teacher'"):
        dt.attention_transfer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 4))
    with pytest.raises(TypeError, match=r"'student' holds float16; this call takes float32, float64"):
        dt.embedding_alignment(torch.randn(3, 4).half(), torch.randn(3, 4).half())
    with pytest.raises(ValueError, match=r"'eps'"):
        dt.feature_stats(torch.randn(2, 3, 4, 4), eps=0.0)
    with pytest.raises(ValueError, match=r"shape_mismatch: .*'x'|'x' has 2 dimensions"):
        dt.feature_stats(torch.randn(2, 3))
