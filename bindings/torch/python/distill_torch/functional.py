"""distill's primitives as differentiable PyTorch functions.

Each function calls an operator of ``torch.ops.distill`` (see ``ops.hpp``) inside a
``torch.autograd.Function``. Losses run distill's fused pass: the gradient is computed together
with the value in ``forward`` (one read of the inputs) and saved; ``backward`` only scales it by
the upstream gradient (nothing at all when that is exactly 1 on the CPU). When no gradient is
needed (``torch.no_grad()``, inputs that do not require grad) only the forward pass runs.

Tensors are used where they are, with their strides (no copy); outputs are contiguous. CPU calls
run on ``torch.get_num_threads()`` threads, CUDA calls on the tensors' device and current stream.
Bad arguments raise ``ValueError`` / ``TypeError`` carrying distill's message, which names the
argument (e.g. ``shape_mismatch: kl_teacher_student_forward_backward: 'teacher' has 9 columns
but 'student' has 10``).

Teachers are frozen in distillation, and distill computes no gradient for them (except
``token_nce(..., teacher_grad)``): passing a teacher that requires grad while grad mode is on
raises ``ValueError`` instead of silently returning none; pass ``teacher.detach()``.
"""
import torch
from torch.autograd.function import once_differentiable

from ._library import ops

__all__ = [
    "kl_teacher_student", "kl_student_teacher", "jsd", "soft_cross_entropy", "dkd", "kl_topk_teacher_student",
    "multilabel_soft_target", "attention_transfer", "attention_map_mse", "attention_map_kl", "feature_stats",
    "stats_matching", "adain", "adain_stats_loss", "embedding_alignment", "token_nce", "relational_pairing",
    "roi_align",
]


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------

def _frozen(teacher, name="teacher"):
    if teacher is not None and teacher.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"distill: '{name}' requires grad, but this loss gives it no gradient (teachers are frozen); "
                         f"pass {name}.detach()")
    return teacher


def _accumulation(x):
    """distill's accumulation type for inputs of x's dtype: float64 for float64, else float32
    (the dtype of losses, statistics, weights and temperatures)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scaled(grad, upstream, row_shape):
    """grad * upstream: a scalar upstream for a reduced loss, one value per row otherwise."""
    if grad is None:
        return None
    if row_shape is None:
        if upstream.device.type == "cpu" and upstream.item() == 1.0:
            return grad  # loss.backward() on the loss itself: the fused gradient as it is
        return grad * upstream.to(grad.dtype)
    return grad * upstream.reshape(row_shape).to(grad.dtype)


class _FusedLoss(torch.autograd.Function):
    """A loss of the differentiable `inputs` (and nothing else) computed by `run(pass_, needs)`,
    which returns (loss, one gradient per input, None where `needs` says none is wanted). With
    reduction 'none', `row_shape` views the upstream gradient so it scales each row's gradient
    (every row's loss depends on its own row only)."""

    @staticmethod
    def forward(ctx, run, row_shape, *inputs):
        needs = ctx.needs_input_grad[2:]
        loss, *grads = run("forward_backward" if any(needs) else "forward", needs)
        ctx.row_shape = row_shape
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, upstream):
        return (None, None, *(_scaled(grad, upstream, ctx.row_shape) for grad in ctx.saved_tensors))


def _fused_loss(run, student, reduction, row_shape):
    """A loss of `student` alone: `run(pass_)` returns (loss, grad_student)."""
    return _FusedLoss.apply(lambda pass_, needs: run(pass_), row_shape if reduction == "none" else None, student)


# ---------------------------------------------------------------------------------------------
# Soft targets
# ---------------------------------------------------------------------------------------------

class _SoftTarget(torch.autograd.Function):
    """Soft-target losses, with an optional learnable temperature (a tensor of one element).
    Reduced losses: fused pass, both gradients saved. Reduction 'none': the forward pass only;
    backward runs distill's backward with row weights multiplied by the upstream gradient, which
    is exact for the temperature too."""

    @staticmethod
    def forward(ctx, call, reduction, row_weights, student, temperature):
        wants = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        fused = wants and reduction != "none"
        loss, grad, grad_t = call("forward_backward" if fused else "forward", row_weights)
        ctx.call, ctx.reduction, ctx.row_weights = call, reduction, row_weights
        ctx.t_shape = None if temperature is None else temperature.shape
        ctx.save_for_backward(grad, grad_t)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, upstream):
        grad, grad_t = ctx.saved_tensors
        if ctx.reduction == "none":
            weights = upstream if ctx.row_weights is None else upstream * ctx.row_weights
            _, grad, grad_t = ctx.call("backward", weights.contiguous())
        else:
            grad, grad_t = _scaled(grad, upstream, None), _scaled(grad_t, upstream, None)
        if grad_t is not None:
            grad_t = grad_t.reshape(ctx.t_shape)
        return None, None, None, grad, grad_t


def _soft_target(loss, student, teacher, *, teacher_indices=None, labels=None, row_weights=None, temperature=1.0,
                 scale_by_t_squared=True, reduction="batchmean", soft_weight=1.0, hard_label_weight=0.0,
                 ignore_index=-100, **extra):
    _frozen(teacher)
    acc = _accumulation(student)
    t_tensor = temperature if isinstance(temperature, torch.Tensor) else None
    t_value = 1.0 if t_tensor is not None else float(temperature)
    t_view = None if t_tensor is None else t_tensor.detach().reshape(1).to(acc)
    if row_weights is not None:
        row_weights = row_weights.to(acc)

    def call(pass_, weights):
        return ops.soft_target(loss, pass_, student, teacher, teacher_indices, labels, weights, t_view, t_value,
                               scale_by_t_squared, reduction, soft_weight, hard_label_weight, ignore_index, 1.0, **extra)

    return _SoftTarget.apply(call, reduction, row_weights, student, t_tensor)


def kl_teacher_student(student, teacher, *, temperature=1.0, **options):
    """Hinton KD: T^2 KL(softmax(teacher/T) || softmax(student/T)), per row, reduced.

    student, teacher: (N, C) logits (float32/64, float16, bfloat16). temperature: a float, or a
    tensor of one element to learn it (it then gets a gradient). Options (distill's
    soft_target_options): scale_by_t_squared=True, reduction='batchmean' ('none', 'sum', 'mean'),
    soft_weight=1, hard_label_weight=0 with labels (N,) int32/int64 for the hard CE mixed in,
    ignore_index=-100, row_weights (N,). The Hinton recipe of mdistiller: temperature=4,
    soft_weight=0.9, hard_label_weight=0.1, labels=y.
    """
    return _soft_target("kl_teacher_student", student, teacher, temperature=temperature, **options)


def kl_student_teacher(student, teacher, *, temperature=1.0, **options):
    """Reverse KL(softmax(student/T) || softmax(teacher/T)) (mode-seeking); options as kl_teacher_student."""
    return _soft_target("kl_student_teacher", student, teacher, temperature=temperature, **options)


def soft_cross_entropy(student, teacher, *, temperature=1.0, **options):
    """Cross-entropy of the student against the teacher's soft targets; options as kl_teacher_student."""
    return _soft_target("soft_cross_entropy", student, teacher, temperature=temperature, **options)


def jsd(student, teacher, *, beta=0.5, scaling="continuous", temperature=1.0, **options):
    """Generalised Jensen-Shannon divergence JSD(beta) (GKD). scaling 'continuous' (distill's
    default: JSD / (beta (1 - beta)), continuous at 0 and 1) or 'trl' (TRL's values; set
    scale_by_t_squared=False to match TRL)."""
    return _soft_target("jsd", student, teacher, temperature=temperature, jsd_beta=beta, jsd_scaling=scaling, **options)


def dkd(student, teacher, labels, *, alpha=1.0, beta=8.0, temperature=1.0, **options):
    """Decoupled KD: alpha TCKD + beta NCKD with the target classes `labels` (N,)."""
    return _soft_target("dkd", student, teacher, labels=labels, temperature=temperature, dkd_alpha=alpha, dkd_beta=beta,
                        **options)


def kl_topk_teacher_student(student, teacher_indices, teacher_logprobs, *, variant="renormalized", temperature=1.0,
                            **options):
    """KL from a sparse top-k teacher (indices (N, k) int64, values (N, k)) to the full student
    softmax; variant 'renormalized' or 'rest_bucket'."""
    _frozen(teacher_logprobs, "teacher_logprobs")
    return _soft_target("kl_topk_teacher_student", student, teacher_logprobs, teacher_indices=teacher_indices,
                        temperature=temperature, topk_variant=variant, **options)


def multilabel_soft_target(student, teacher, *, labels=None, mask=None, row_weights=None, class_weights=None,
                           pos_weights=None, temperature=1.0, scale_by_t_squared=True, reduction="batchmean",
                           soft_weight=1.0, hard_label_weight=0.0, subtract_teacher_entropy=False):
    """Sigmoid soft targets per class (Liu et al. 2018) plus BCE with 0/1 labels (N, C) (uint8 or
    bool); mask (N, C) drops elements. Liu et al.'s stage 2: temperature=5,
    scale_by_t_squared=False, hard_label_weight=1."""
    _frozen(teacher)
    weights = [None if w is None else w.to(_accumulation(student)) for w in (row_weights, class_weights, pos_weights)]

    def run(pass_):
        return ops.multilabel_soft_target(pass_, student, teacher, labels, mask, *weights, temperature,
                                          scale_by_t_squared, reduction, soft_weight, hard_label_weight,
                                          subtract_teacher_entropy, 1.0)

    return _fused_loss(run, student, reduction, (-1, 1))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

def attention_transfer(student, teacher, *, p=2.0, beta=1.0, form="squared_mean", reduction="mean", eps=1e-12):
    """Attention transfer (Zagoruyko & Komodakis) between (B, C_s, H, W) and (B, C_t, H, W)
    features. The authors' code is beta=1e3 with form 'squared_mean'; the paper's equation is
    form 'paper_norm'. reduction 'none' gives one loss per sample."""
    _frozen(teacher)

    def run(pass_):
        return ops.attention_transfer(pass_, student, teacher, p, beta, form, reduction, eps, 1.0)

    return _fused_loss(run, student, reduction, (-1, 1, 1, 1))


def _attention_map(divergence, student, teacher, key_mask, query_mask, student_input, teacher_input, head_map,
                   teacher_heads, reduction):
    _frozen(teacher)

    def run(pass_):
        return ops.attention_map(divergence, pass_, student, teacher, key_mask, query_mask, student_input,
                                 teacher_input, head_map, list(teacher_heads), reduction, 1.0)

    rows = tuple(student.shape[:3]) + (1,) if student.dim() == 4 else None
    return _fused_loss(run, student, reduction, rows)


def attention_map_mse(student, teacher, *, key_mask=None, query_mask=None, student_input="logits",
                      teacher_input="logits", head_map="one_to_one", teacher_heads=(), reduction="mean"):
    """MSE between attention distributions (B, H, Lq, Lk) (DistillVLM); logits are softmaxed over
    the valid keys inside the loss. key_mask (B, Lk), query_mask (B, Lq): bool or uint8, nonzero =
    valid. head_map 'one_to_one', 'group_mean' or 'index' (with teacher_heads)."""
    return _attention_map("mse", student, teacher, key_mask, query_mask, student_input, teacher_input, head_map,
                          teacher_heads, reduction)


def attention_map_kl(student, teacher, *, key_mask=None, query_mask=None, student_input="logits",
                     teacher_input="logits", head_map="one_to_one", teacher_heads=(), reduction="mean"):
    """KL(teacher || student) between attention distributions (TinyBERT / MiniLM); as attention_map_mse."""
    return _attention_map("kl_teacher_student", student, teacher, key_mask, query_mask, student_input, teacher_input,
                          head_map, teacher_heads, reduction)


# ---------------------------------------------------------------------------------------------
# Feature statistics, AdaIN, embeddings
# ---------------------------------------------------------------------------------------------

class _FeatureStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, token_mask, eps, unbiased):
        mean, std = ops.feature_stats(x, token_mask, eps, unbiased)
        ctx.save_for_backward(x, token_mask)
        ctx.eps, ctx.unbiased = eps, unbiased
        return mean, std

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean, grad_std):
        x, token_mask = ctx.saved_tensors
        shape = (x.shape[0], x.shape[2] if x.dim() == 3 else x.shape[1])
        acc = _accumulation(x)
        zeros = lambda: torch.zeros(shape, dtype=acc, device=x.device)  # noqa: E731 - an unused output
        grad_mean = zeros() if grad_mean is None else grad_mean.to(acc)
        grad_std = zeros() if grad_std is None else grad_std.to(acc)
        return ops.feature_stats_backward(x, grad_mean, grad_std, token_mask, ctx.eps, ctx.unbiased), None, None, None


def feature_stats(x, *, token_mask=None, eps=1e-5, unbiased=False):
    """Per-channel mean and std sqrt(var + eps) of (B, C, H, W) maps, or per-feature ones of
    (B, L, D) tokens over the valid tokens (token_mask (B, L)). Returns (mean, std), each (B, C)
    or (B, D), float32 (float64 for float64 x); differentiable."""
    return _FeatureStats.apply(x, token_mask, eps, unbiased)


def stats_matching(student, teacher, *, student_mask=None, teacher_mask=None, eps=1e-5, unbiased=False,
                   mean_weight=1.0, std_weight=1.0, reduction="mean"):
    """Statistics-matching loss sum_bc w_mu (mu_s - mu_t)^2 + w_sigma (sigma_s - sigma_t)^2, reduced
    ('mean' over B*C, 'batchmean', 'sum'); (B, C, H, W) maps or (B, L, D) tokens with masks.
    std_weight=0 is the mean-only statm_loss."""
    _frozen(teacher)

    def run(pass_):
        return ops.stats_matching(pass_, student, teacher, student_mask, teacher_mask, eps, unbiased, mean_weight,
                                  std_weight, reduction, 1.0)

    return _fused_loss(run, student, reduction, None)


class _AdaIN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, content, style, eps, unbiased):
        ctx.save_for_backward(content, style)
        ctx.eps, ctx.unbiased = eps, unbiased
        return ops.adain(content, style, eps, unbiased)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        content, style = ctx.saved_tensors
        grad_content, grad_style = ops.adain_backward(content, style, grad_out.to(content.dtype),
                                                      ctx.needs_input_grad[0], ctx.eps, ctx.unbiased)
        return grad_content, grad_style if ctx.needs_input_grad[1] else None, None, None


def adain(content, style, *, eps=1e-5, unbiased=False):
    """AdaIN(content; style) = sigma_style (content - mu_content) / sigma_content + mu_style per
    channel of (B, C, H, W) maps (spatial sizes may differ); differentiable in both."""
    return _AdaIN.apply(content, style, eps, unbiased)


def adain_stats_loss(student, teacher, *, eps=1e-5, unbiased=False, adain_weight=1.0, mean_weight=1.0,
                     std_weight=1.0, reduction="mean"):
    """mse(AdaIN(teacher; student), teacher) + mse(mu_s, mu_t) + mse(sqrt(v_s), sqrt(v_t)) with
    weights, computed from per-channel statistics in one pass (docs/losses/features.md)."""
    _frozen(teacher)

    def run(pass_):
        return ops.adain_stats_loss(pass_, student, teacher, eps, unbiased, adain_weight, mean_weight, std_weight,
                                    reduction, 1.0)

    return _fused_loss(run, student, reduction, None)


def embedding_alignment(student, teacher, *, metric="mse", normalize="none", norm_eps=1e-12, scale=1.0,
                        reduction="mean", row_weights=None, row_mask=None):
    """Row-wise alignment of (N, D) embeddings: metric 'mse', 'squared_l2', 'l1' or 'cosine',
    optional L2 normalisation first ('clamp' as F.normalize, 'zero_below_eps'), row weights and
    mask, reduction 'mean' (weighted), 'batchmean', 'sum' or 'none'. F.mse_loss(s, t) is
    metric='mse', reduction='batchmean'."""
    _frozen(teacher)
    if row_weights is not None:
        row_weights = row_weights.to(_accumulation(student))

    def run(pass_):
        return ops.embedding_alignment(pass_, student, teacher, row_weights, row_mask, metric, normalize, norm_eps,
                                       scale, reduction, 1.0)

    return _fused_loss(run, student, reduction, (-1, 1))


# ---------------------------------------------------------------------------------------------
# Token-wise InfoNCE against a sample queue
# ---------------------------------------------------------------------------------------------

def token_nce(student, teacher, queue, *, token_mask=None, token_ids=None, temperature=0.07, reduction="mean",
              in_batch_negatives=False, normalize_eps=1e-12, precision="fp32"):
    """Token-wise InfoNCE (DistillVLM / MoCo) of (M, D) student tokens against their (M, D) teacher
    tokens, with the keys of `queue` (a SampleQueue, or None with in_batch_negatives) as
    negatives; both sides L2-normalised inside. token_mask (M,) drops padding, token_ids (M,)
    int64 masks false negatives of the same sample. The teacher gets a gradient only if it
    requires grad (MoCo: stop-gradient). The queue is not updated: call queue.enqueue(keys)."""
    want_t = teacher.requires_grad and torch.is_grad_enabled()
    if want_t and reduction == "none" and in_batch_negatives:
        raise ValueError("distill: token_nce with reduction='none' and in_batch_negatives cannot give the teacher a "
                         "gradient (each token's loss then depends on every teacher token); reduce the loss, or "
                         "pass teacher.detach()")
    keys = ids = None
    write_position = size = 0
    if queue is not None:
        keys, ids, write_position, size = queue.keys, queue.ids, queue.write_position, len(queue)

    def run(pass_, needs):
        loss, _, grad_s, grad_t = ops.token_nce(pass_, student, teacher, keys, ids, write_position, size, token_mask,
                                                token_ids, needs[1], False, temperature, reduction, in_batch_negatives,
                                                normalize_eps, 1.0, precision)
        return loss, grad_s, grad_t

    return _FusedLoss.apply(run, (-1, 1) if reduction == "none" else None, student, teacher)


# ---------------------------------------------------------------------------------------------
# Relational pairing and RoI Align
# ---------------------------------------------------------------------------------------------

class _RelationalPairing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, objects, question, pair_mask, object_mask, n_layers, *params):
        weights, biases = list(params[:n_layers]), list(params[n_layers:])
        ctx.options, ctx.n_layers = options, n_layers
        ctx.save_for_backward(objects, question, pair_mask, object_mask, *params)
        return ops.relational_pairing(objects, question, pair_mask, object_mask, weights, biases, **options)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        objects, question, pair_mask, object_mask, *params = ctx.saved_tensors
        n = ctx.n_layers
        weights, biases = params[:n], params[n:]
        need = ctx.needs_input_grad
        wants_g = any(need[6:])
        g_o, g_q, g_m, g_w, g_b = ops.relational_pairing_backward(
            objects, question, pair_mask, object_mask, weights, biases, grad_out.contiguous(),
            [int(need[1]), int(need[2]), int(need[3] and pair_mask is not None), int(wants_g)], **ctx.options)
        if not wants_g:
            g_w, g_b = [None] * n, [None] * len(biases)
        g_b = [g if b is not None and needed else None for g, b, needed in zip(g_b, biases, need[6 + n:])]
        g_w = [g if needed else None for g, needed in zip(g_w, need[6:6 + n])]
        return (None, g_o if need[1] else None, g_q if need[2] else None, g_m if need[3] else None, None, None,
                *g_w, *g_b)


def relational_pairing(objects, question, g, *, pair_mask=None, object_mask=None, include_self_pairs=True,
                       last_relu=True, mask_scale=1.0, precision="fp32", tile_pairs=0):
    """Relation-Network aggregation y_b = s sum_{i,j} M_bij g(o_bi, o_bj, q_b) without the N^2 pair
    inputs: objects (B, N, D), question (B, Q), pair_mask (B, N, N) (differentiable), object_mask
    (B, N) (bool/uint8, nonzero = present). g: the MLP as a sequence of nn.Linear layers (the
    first takes 2D + Q inputs; ReLU after each, the last too unless last_relu=False), or a pair
    (weights, biases) of lists with weights (in, out). Differentiable in objects, question,
    pair_mask and every weight and bias; the Linear weights are used as they are (no copy)."""
    if isinstance(g, tuple) and len(g) == 2:
        weights, biases = list(g[0]), list(g[1])
    else:
        layers = list(g.children()) if isinstance(g, torch.nn.Module) and not isinstance(g, torch.nn.Linear) else list(g)
        layers = [m for m in layers if isinstance(m, torch.nn.Linear)]
        weights, biases = [m.weight.t() for m in layers], [m.bias for m in layers]
    options = dict(include_self_pairs=include_self_pairs, last_relu=last_relu, mask_scale=mask_scale,
                   precision=precision, tile_pairs=tile_pairs)
    return _RelationalPairing.apply(options, objects, question, pair_mask, object_mask, len(weights), *weights, *biases)


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.shape, ctx.options = list(input.shape), (spatial_scale, sampling_ratio, aligned)
        return ops.roi_align(input, rois, output_size[0], output_size[1], spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        grad = ops.roi_align_backward(rois, grad_output, ctx.shape, *ctx.options)
        return grad, None, None, None, None, None


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoI Align with torchvision's semantics: input (B, C, H, W), rois (K, 5) rows (batch index,
    x1, y1, x2, y2) -> (K, C, ph, pw). Differentiable in input (not in rois)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    return _RoIAlign.apply(input, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
