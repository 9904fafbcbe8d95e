"""Soft-target losses and multi-label soft targets through distill_torch, against plain PyTorch
implementations of the formulas in losses/*.hpp, gradcheck in double, strided inputs, errors."""
import pytest
import torch
import torch.nn.functional as F

import distill_torch as dt
from conftest import close, gradcheck, grads

KINDS = ["kl_teacher_student", "kl_student_teacher", "soft_cross_entropy", "jsd", "dkd"]


def xlogy(x, y):
    return torch.where(x == 0, torch.zeros_like(x), x * y)


def reference(kind, zs, zt, *, temperature=1.0, scale_by_t_squared=True, reduction="batchmean", soft_weight=1.0,
              hard_label_weight=0.0, labels=None, ignore_index=-100, row_weights=None, beta=0.5, scaling="continuous",
              alpha=1.0, dkd_beta=8.0):
    """Plain PyTorch, row by row as in soft_target_common.hpp; differentiable in zs and T."""
    T = temperature
    ls, lt = F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1)
    q, p = ls.exp(), lt.exp()
    if kind == "kl_teacher_student":
        f = (xlogy(p, lt) - p * ls).sum(-1)
    elif kind == "kl_student_teacher":
        f = (q * (ls - lt)).sum(-1)
    elif kind == "soft_cross_entropy":
        f = -(p * ls).sum(-1)
    elif kind == "jsd":
        lm = torch.log(beta * p + (1 - beta) * q)
        js = beta * (xlogy(p, lt) - p * lm).sum(-1) + (1 - beta) * (q * (ls - lm)).sum(-1)
        f = js / (beta * (1 - beta)) if scaling == "continuous" else js
    elif kind == "dkd":  # mdistiller's decomposition, the non-target softmax by masking with -inf
        gt = F.one_hot(labels.clamp(min=0), zs.shape[1]).bool()
        pt, qt = p[gt], q[gt]
        tckd = xlogy(pt, pt.log() - qt.log()) + xlogy(1 - pt, torch.log1p(-pt) - torch.log1p(-qt))
        lsn = F.log_softmax((zs / T).masked_fill(gt, float("-inf")), -1)
        ltn = F.log_softmax((zt / T).masked_fill(gt, float("-inf")), -1)
        pn = ltn.exp()
        nckd = (xlogy(pn, ltn) - torch.where(gt, torch.zeros_like(lsn), pn * lsn)).sum(-1)
        f = alpha * tckd + dkd_beta * nckd
    c = T * T if scale_by_t_squared else 1.0
    row = soft_weight * c * f
    valid = torch.ones(zs.shape[0], dtype=torch.bool) if labels is None else labels != ignore_index
    if hard_label_weight:
        ce = F.cross_entropy(zs, labels, reduction="none", ignore_index=ignore_index)
        row = row + hard_label_weight * ce
    w = torch.ones(zs.shape[0], dtype=zs.dtype) if row_weights is None else row_weights.to(zs.dtype)
    w = torch.where(valid, w, torch.zeros_like(w))
    row = torch.where(valid, w * row, torch.zeros_like(row))
    if reduction == "none":
        return row
    if reduction == "sum":
        return row.sum()
    if reduction == "batchmean":
        return row.sum() / zs.shape[0]
    return row.sum() / w.sum()


def distill_loss(kind, zs, zt, **kw):
    if kind == "jsd":
        kw = dict(kw, beta=kw.pop("beta", 0.5))
        return dt.jsd(zs, zt, **{k: v for k, v in kw.items() if k not in ("alpha", "dkd_beta")})
    if kind == "dkd":
        labels = kw.pop("labels")
        kw.pop("scaling", None)
        kw.pop("beta", None)
        return dt.dkd(zs, zt, labels, alpha=kw.pop("alpha", 1.0), beta=kw.pop("dkd_beta", 8.0), **kw)
    kw = {k: v for k, v in kw.items() if k not in ("beta", "scaling", "alpha", "dkd_beta")}
    return getattr(dt, kind)(zs, zt, **kw)


def inputs(n, c, dtype=torch.float32, scale=3.0):
    return torch.randn(n, c, dtype=dtype) * scale, torch.randn(n, c, dtype=dtype) * scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_float_matches_pytorch_formula(kind, reduction):
    n, c = 37, 23
    zs, zt = inputs(n, c)
    labels = torch.randint(0, c, (n,))
    labels[::7] = -100  # ignored rows
    kw = dict(temperature=2.5, reduction=reduction, labels=labels, hard_label_weight=0.3, soft_weight=0.7,
              row_weights=torch.rand(n) + 0.5, beta=0.3, alpha=1.5, dkd_beta=2.0)
    s = zs.clone().requires_grad_()
    loss = distill_loss(kind, s, zt, **kw)
    upstream = torch.rand(n) if reduction == "none" else torch.tensor(1.7)
    (g,) = torch.autograd.grad(loss, s, upstream)
    s64 = zs.double().requires_grad_()
    ref = reference(kind, s64, zt.double(), **kw)
    (g_ref,) = torch.autograd.grad(ref, s64, upstream.double())
    close(loss, ref, "f32_sum", f"{kind} loss")
    close(g, g_ref, "f32", f"{kind} gradient")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_gradcheck_student_and_learnable_temperature(kind, reduction):
    n, c = 5, 7
    zs, zt = inputs(n, c, torch.float64, 2.0)
    labels = torch.randint(0, c, (n,))
    s = zs.requires_grad_()
    T = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    kw = dict(reduction=reduction, labels=labels, hard_label_weight=0.5)
    gradcheck(lambda s_, T_: distill_loss(kind, s_, zt, temperature=T_, **kw), s, T)


def test_learnable_temperature_gradient_matches_pytorch():
    zs, zt = inputs(16, 9)
    T = torch.tensor(2.0, requires_grad=True)
    s = zs.clone().requires_grad_()
    g_s, g_t = grads(lambda a, b: dt.kl_teacher_student(a, zt, temperature=b), s, T)
    s64, T64 = zs.double().requires_grad_(), torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    r_s, r_t = grads(lambda a, b: reference("kl_teacher_student", a, zt.double(), temperature=b), s64, T64)
    assert g_t.shape == T.shape
    close(g_s, r_s, "f32", "dL/dstudent")
    close(g_t, r_t, "f32_sum", "dL/dT")


@pytest.mark.parametrize("variant", ["renormalized", "rest_bucket"])
def test_topk_teacher(variant):
    n, c, k = 12, 30, 5
    zs, zt = inputs(n, c)
    lp = F.log_softmax(zt.double(), -1)
    values, idx = lp.topk(k, -1)
    idx[0, -1] = -1  # an unused slot
    s = zs.clone().requires_grad_()
    loss = dt.kl_topk_teacher_student(s, idx, values.float(), variant=variant, temperature=1.0)
    (g,) = torch.autograd.grad(loss, s)

    s64 = zs.double().requires_grad_()
    lq = F.log_softmax(s64, -1)
    valid = idx >= 0
    v = values.masked_fill(~valid, float("-inf"))
    lqi = lq.gather(1, idx.clamp(min=0))
    if variant == "renormalized":
        lpt = F.log_softmax(v, -1)
        f = torch.where(valid, lpt.exp() * (lpt - lqi), torch.zeros_like(lpt)).sum(-1)
    else:
        pt = v.exp()
        r = 1 - pt.sum(-1)
        s_rest = 1 - torch.where(valid, lqi.exp(), torch.zeros_like(lqi)).sum(-1)
        f = torch.where(valid, pt * (v - lqi), torch.zeros_like(pt)).sum(-1) + xlogy(r, r.log() - s_rest.log())
    ref = f.sum() / n
    (g_ref,) = torch.autograd.grad(ref, s64)
    close(loss, ref, "f32_sum", "top-k loss")
    close(g, g_ref, "f32", "top-k gradient")
    gradcheck(lambda a: dt.kl_topk_teacher_student(a, idx, values, variant=variant, temperature=1.3),
              zs.double().requires_grad_())


def test_strided_and_non_contiguous_inputs_are_read_in_place():
    n, c = 19, 13
    big_s = torch.randn(n, 2 * c + 3) * 3
    student = big_s[:, 1:2 * c + 1:2]            # column stride 2
    teacher = (torch.randn(c, n) * 3).t()          # column-major
    labels = torch.randint(0, c, (2 * n,))[::2]    # strided labels
    assert not student.is_contiguous() and not teacher.is_contiguous() and not labels.is_contiguous()
    s = student.detach().requires_grad_()
    loss = dt.kl_teacher_student(s, teacher, temperature=2.0, labels=labels, hard_label_weight=0.5)
    (g,) = torch.autograd.grad(loss, s)
    s64 = student.contiguous().double().requires_grad_()
    ref = reference("kl_teacher_student", s64, teacher.contiguous().double(), temperature=2.0, labels=labels,
                    hard_label_weight=0.5)
    (g_ref,) = torch.autograd.grad(ref, s64)
    close(loss, ref, "f32_sum", "strided loss")
    close(g, g_ref, "f32", "strided gradient")


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, "bf16_in"), (torch.float16, "f16_in")])
def test_16bit_inputs_accumulate_in_float(dtype, tol):
    zs, zt = inputs(24, 40, dtype)
    s = zs.clone().requires_grad_()
    loss = dt.kl_teacher_student(s, zt, temperature=2.0)
    (g,) = torch.autograd.grad(loss, s)
    assert loss.dtype == torch.float32 and g.dtype == dtype
    s64 = zs.double().requires_grad_()
    ref = reference("kl_teacher_student", s64, zt.double(), temperature=2.0)
    (g_ref,) = torch.autograd.grad(ref, s64)
    close(loss, ref, tol, "16-bit loss")
    close(g, g_ref, tol, "16-bit gradient")


def test_no_gradient_work_under_no_grad():
    zs, zt = inputs(8, 6)
    with torch.no_grad():
        loss = dt.kl_teacher_student(zs.requires_grad_(), zt)
    assert not loss.requires_grad
    close(loss, reference("kl_teacher_student", zs.double(), zt.double()), "f32_sum", "loss under no_grad")


def test_loss_is_zero_when_student_equals_teacher():
    z = torch.randn(10, 8) * 4
    for kind in ("kl_teacher_student", "kl_student_teacher", "jsd"):
        close(distill_loss(kind, z, z.clone()), torch.tensor(0.0), "f32", kind)


def test_bad_inputs_raise_with_distill_message_naming_the_argument():
    zs, zt = inputs(6, 5)
    with pytest.raises(ValueError, match=r"shape_mismatch: kl_teacher_student.*'teacher'"):
        dt.kl_teacher_student(zs, zt[:, :4])
    with pytest.raises(TypeError, match=r"'teacher' holds float64"):
        dt.kl_teacher_student(zs, zt.double())
    with pytest.raises(TypeError, match=r"'student' holds int64; this call takes float32, float64"):
        dt.kl_teacher_student(zs.long(), zt)
    with pytest.raises(ValueError, match=r"'temperature'"):
        dt.kl_teacher_student(zs, zt, temperature=-1.0)
    with pytest.raises(ValueError, match=r"'labels'.*label 9 of row"):
        dt.kl_teacher_student(zs, zt, labels=torch.full((6,), 9), hard_label_weight=1.0)
    with pytest.raises(ValueError, match=r"reduction 'avg' is not one of none, sum, mean, batchmean"):
        dt.kl_teacher_student(zs, zt, reduction="avg")
    with pytest.raises(ValueError, match=r"'teacher' requires grad"):
        dt.kl_teacher_student(zs.requires_grad_(), zt.requires_grad_())


def multilabel_reference(zs, zt, labels, mask, T, hard_weight, pos_weights, reduction):
    y, x = zs / T, zt / T
    p = torch.sigmoid(x)
    soft = p * F.softplus(-y) + (1 - p) * F.softplus(y)
    hard = pos_weights * labels * F.softplus(-zs) + (1 - labels) * F.softplus(zs)
    e = mask.to(zs.dtype)
    el = e * (T * T * soft + hard_weight * hard)
    if reduction == "none":
        return el.sum(-1)
    return el.sum() / (zs.shape[0] if reduction == "batchmean" else e.sum() if reduction == "mean" else 1.0)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
def test_multilabel_soft_target(reduction):
    n, c = 21, 11
    zs, zt = inputs(n, c)
    labels = torch.rand(n, c) > 0.6
    mask = torch.rand(n, c) > 0.1
    pw = torch.rand(c) + 0.5
    s = zs.clone().requires_grad_()
    loss = dt.multilabel_soft_target(s, zt, labels=labels, mask=mask, pos_weights=pw, temperature=3.0,
                                     hard_label_weight=0.4, reduction=reduction)
    up = torch.rand(n) if reduction == "none" else torch.tensor(1.0)
    (g,) = torch.autograd.grad(loss, s, up)
    s64 = zs.double().requires_grad_()
    ref = multilabel_reference(s64, zt.double(), labels.double(), mask, 3.0, 0.4, pw.double(), reduction)
    (g_ref,) = torch.autograd.grad(ref, s64, up.double())
    close(loss, ref, "f32_sum", "multilabel loss")
    close(g, g_ref, "f32", "multilabel gradient")
    gradcheck(lambda a: dt.multilabel_soft_target(a, zt.double(), labels=labels, mask=mask, temperature=2.0,
                                                  hard_label_weight=0.4, reduction=reduction),
              zs.double().requires_grad_())
