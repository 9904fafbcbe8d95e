"""Token-wise InfoNCE with the SampleQueue module, relational pairing and RoI Align through
distill_torch, against plain PyTorch (and torchvision's roi_align)."""
import pytest
import torch
import torch.nn.functional as F

import distill_torch as dt
from conftest import close, gradcheck


# ---- the sample queue ----

def test_queue_enqueue_is_a_ring_of_normalised_keys():
    q = dt.SampleQueue(5, 3, with_ids=True)
    assert len(q) == 0 and q.write_position == 0
    batches = [torch.randn(2, 3) * 4 for _ in range(4)]
    expected = []
    for i, b in enumerate(batches):
        q.enqueue(b, torch.arange(2) + 10 * i)
        expected += list(zip(F.normalize(b, dim=1), [10 * i, 10 * i + 1]))
    assert len(q) == 5 and q.write_position == 8 % 5
    # slot (write order) r holds row r of everything enqueued, modulo 5: the newest 5 survive
    for r, (key, sid) in enumerate(expected[-5:], start=3):
        close(q.keys[r % 5], key, "f32", f"slot {r % 5}")
        assert q.ids[r % 5].item() == sid
    q.enqueue(torch.randn(7, 3))  # more than the capacity: the last 5 rows
    assert len(q) == 5


def test_queue_save_load_and_state_dict_round_trip(tmp_path):
    q = dt.SampleQueue(6, 4, with_ids=True)
    q.enqueue(torch.randn(4, 4), torch.arange(4))
    path = tmp_path / "queue.bin"
    q.save(path)
    r = dt.SampleQueue(6, 4, with_ids=True)
    r.load(path)
    assert (len(r), r.write_position) == (4, 4)
    assert torch.equal(r.keys, q.keys) and torch.equal(r.ids, q.ids)
    s = dt.SampleQueue(6, 4, with_ids=True)
    s.load_state_dict(q.state_dict())
    assert (len(s), s.write_position) == (4, 4) and torch.equal(s.keys, q.keys)
    wrong = dt.SampleQueue(6, 5, with_ids=True)
    before = wrong.keys.clone()
    with pytest.raises(Exception, match=r"sample_queue_load"):
        wrong.load(path)  # another dimension: refused, queue unchanged
    assert torch.equal(wrong.keys, before) and len(wrong) == 0
    with pytest.raises(Exception, match=r"sample_queue_load"):
        r.load(tmp_path / "missing.bin")


def test_queue_init_random_fills_unit_keys():
    q = dt.SampleQueue(64, 8)
    q.init_random(seed=3)
    assert len(q) == 64
    close(q.keys.norm(dim=1), torch.ones(64), "f32", "unit keys")
    p = dt.SampleQueue(64, 8)
    p.init_random(seed=3)
    assert torch.equal(p.keys, q.keys)  # a pure function of the seed


# ---- token-wise InfoNCE ----

def nce_reference(z, y, queue_keys, tau, mask=None, ids=None, queue_ids=None, in_batch=False, reduction="mean"):
    """The peer of bench/peers/compare.py (cross-entropy over [positive, queue]) plus masks."""
    q, k = F.normalize(z, dim=1), F.normalize(y, dim=1)
    M = z.shape[0]
    logits = [(q * k).sum(1, keepdim=True)]
    neg = q @ queue_keys.to(q.dtype).t()
    if ids is not None and queue_ids is not None:
        neg = neg.masked_fill((ids[:, None] == queue_ids[None, :]) & (ids[:, None] >= 0), float("-inf"))
    logits.append(neg)
    valid = torch.ones(M, dtype=torch.bool) if mask is None else mask.bool()
    if in_batch:
        inb = q @ k.t()
        excluded = torch.eye(M, dtype=torch.bool) | ~valid[None, :]
        if ids is not None:
            excluded |= (ids[:, None] == ids[None, :]) & (ids[:, None] >= 0)
        logits.append(inb.masked_fill(excluded, float("-inf")))
    per = F.cross_entropy(torch.cat(logits, 1) / tau, torch.zeros(M, dtype=torch.long), reduction="none") * valid
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.sum() / valid.sum()


@pytest.mark.parametrize("in_batch,reduction", [(False, "mean"), (True, "mean"), (False, "none")])
def test_token_nce_matches_cross_entropy_over_the_queue(in_batch, reduction):
    M, D, K = 19, 16, 40
    queue = dt.SampleQueue(K, D, with_ids=True)
    queue.enqueue(torch.randn(K - 3, D), torch.arange(K - 3) % 7)
    z, y = torch.randn(M, D), torch.randn(M, D)
    mask = torch.rand(M) > 0.2
    ids = torch.randint(0, 10, (M,))
    zs, ys = z.clone().requires_grad_(), y.clone().requires_grad_()
    loss = dt.token_nce(zs, ys, queue, token_mask=mask, token_ids=ids, temperature=0.1, in_batch_negatives=in_batch,
                        reduction=reduction)
    up = torch.rand(M) if reduction == "none" else torch.tensor(1.0)
    g_z, g_y = torch.autograd.grad(loss, (zs, ys), up)
    z64, y64 = z.double().requires_grad_(), y.double().requires_grad_()
    ref = nce_reference(z64, y64, queue.valid_keys().double(), 0.1, mask, ids, queue.ids[:len(queue)], in_batch,
                        reduction)
    r_z, r_y = torch.autograd.grad(ref, (z64, y64), up.double())
    close(loss, ref, "f32_sum", "token NCE loss")
    close(g_z, r_z, "f32_sum", "token NCE student gradient")
    close(g_y, r_y, "f32_sum", "token NCE teacher gradient")


def test_token_nce_gradcheck_and_stop_gradient():
    M, D, K = 6, 5, 9
    queue = dt.SampleQueue(K, D, dtype=torch.float64)
    queue.enqueue(torch.randn(K, D, dtype=torch.float64))
    z, y = torch.randn(M, D, dtype=torch.float64), torch.randn(M, D, dtype=torch.float64)
    gradcheck(lambda a, b: dt.token_nce(a, b, queue, temperature=0.2, in_batch_negatives=True), z.requires_grad_(),
              y.requires_grad_())
    y2 = torch.randn(M, D, dtype=torch.float64)  # a teacher without grad gets none (MoCo's stop-gradient)
    loss = dt.token_nce(z, y2, queue)
    (g,) = torch.autograd.grad(loss, z)
    assert g.shape == z.shape


def test_token_nce_errors():
    queue = dt.SampleQueue(8, 4)
    with pytest.raises(ValueError, match=r"queue is empty and in_batch_negatives is off"):
        dt.token_nce(torch.randn(3, 4), torch.randn(3, 4), queue)
    queue.enqueue(torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"dimension 4 but the tokens have D = 5"):
        dt.token_nce(torch.randn(3, 5), torch.randn(3, 5), queue)
    with pytest.raises(TypeError, match=r"'queue keys' holds float32 but float64"):
        dt.token_nce(torch.randn(3, 4).double(), torch.randn(3, 4).double(), queue)


# ---- relational pairing ----

def rn_reference(o, q, layers, mask, object_mask=None, include_self_pairs=True):
    """A Relation Network's aggregation over every ordered pair, written out (the N^2 inputs)."""
    B, N, D = o.shape
    x = torch.cat([o[:, :, None].expand(B, N, N, D), o[:, None, :].expand(B, N, N, D),
                   q[:, None, None].expand(B, N, N, q.shape[1])], -1)
    for w, b in layers:
        x = torch.relu(x @ w.t() + b)
    keep = mask if mask is not None else torch.ones(B, N, N, dtype=o.dtype)
    if object_mask is not None:
        om = object_mask.bool()
        keep = keep * (om[:, :, None] & om[:, None, :])
    if not include_self_pairs:
        keep = keep * (1 - torch.eye(N, dtype=o.dtype))
    return (x * keep[..., None]).sum((1, 2))


def make_g(D, Q, H, L, dtype):
    g = torch.nn.Sequential(torch.nn.Linear(2 * D + Q, H), torch.nn.ReLU(),
                            *[m for _ in range(L - 1) for m in (torch.nn.Linear(H, H), torch.nn.ReLU())])
    return g.to(dtype)


def test_relational_pairing_matches_the_relation_network_and_its_gradients():
    B, N, D, Q, H, L = 3, 5, 4, 3, 8, 3
    g = make_g(D, Q, H, L, torch.float32)
    o, q = torch.randn(B, N, D), torch.randn(B, Q)
    mask = torch.rand(B, N, N) * (torch.rand(B, N, N) > 0.3)
    object_mask = torch.rand(B, N) > 0.2
    inputs = [o.requires_grad_(), q.requires_grad_(), mask.requires_grad_()]
    params = list(g.parameters())
    y = dt.relational_pairing(o, q, g, pair_mask=mask, object_mask=object_mask, include_self_pairs=False)
    up = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs + params, up)
    g64 = make_g(D, Q, H, L, torch.float64)
    g64.load_state_dict({k: v.double() for k, v in g.state_dict().items()})
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    layers = [(m.weight, m.bias) for m in g64 if isinstance(m, torch.nn.Linear)]
    ref = rn_reference(*inputs64[:2], layers, inputs64[2], object_mask, include_self_pairs=False)
    want = torch.autograd.grad(ref, inputs64 + list(g64.parameters()), up.double())
    close(y, ref, "f32_sum", "pairing output")
    names = ["objects", "question", "pair_mask"] + [n for n, _ in g.named_parameters()]
    for name, a, e in zip(names, got, want):
        close(a, e, "f32_sum", f"pairing gradient of {name}")


def test_relational_pairing_gradcheck():
    B, N, D, Q, H = 2, 3, 2, 2, 4
    g = make_g(D, Q, H, 2, torch.float64)
    o, q = torch.randn(B, N, D, dtype=torch.float64), torch.randn(B, Q, dtype=torch.float64)
    mask = torch.rand(B, N, N, dtype=torch.float64)
    w = [m.weight.detach().clone().requires_grad_() for m in g if isinstance(m, torch.nn.Linear)]
    b = [m.bias.detach().clone().requires_grad_() for m in g if isinstance(m, torch.nn.Linear)]
    gradcheck(lambda o_, q_, m_, *wb: dt.relational_pairing(o_, q_, ([x.t() for x in wb[:2]], list(wb[2:])),
                                                            pair_mask=m_),
              o.requires_grad_(), q.requires_grad_(), mask.requires_grad_(), *w, *b)


# ---- RoI Align ----

@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
    tv = pytest.importorskip("torchvision.ops", reason="torchvision is the reference semantics")
    x = torch.randn(2, 3, 12, 10)
    rois = torch.tensor([[0, 1.0, 1.5, 7.0, 9.0], [1, 0.0, 0.0, 9.5, 11.5], [0, 4.2, 3.3, 4.9, 6.0]])
    xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = dt.roi_align(xs, rois, (4, 3), spatial_scale=0.9, sampling_ratio=sampling_ratio, aligned=aligned)
    ref = tv.roi_align(xt, rois, (4, 3), spatial_scale=0.9, sampling_ratio=sampling_ratio, aligned=aligned)
    up = torch.randn_like(ref)
    (g,), (g_ref,) = torch.autograd.grad(y, xs, up), torch.autograd.grad(ref, xt, up)
    close(y, ref, "f32", "roi_align output")
    close(g, g_ref, "f32", "roi_align input gradient")
    gradcheck(lambda a: dt.roi_align(a, rois.double(), 3, sampling_ratio=2, aligned=aligned),
              x.double().requires_grad_())


def test_roi_align_refuses_a_batch_index_out_of_range():
    with pytest.raises(ValueError, match=r"roi_align_forward.*batch index"):
        dt.roi_align(torch.randn(1, 2, 5, 5), torch.tensor([[3.0, 0, 0, 2, 2]]), 2)
