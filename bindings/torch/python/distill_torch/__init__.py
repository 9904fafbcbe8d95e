"""distill from PyTorch: the library's fused knowledge-distillation primitives as differentiable
functions on your own tensors (CPU, and CUDA when built against a CUDA-enabled PyTorch).

    import distill_torch as dt
    loss = dt.kl_teacher_student(student_logits, teacher_logits.detach(), temperature=4.0)
    loss.backward()

docs/torch.md has the list of functions, their options and what ran where.
"""
from ._library import ops
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional
from .queue import NO_SAMPLE_ID, SampleQueue

__all__ = list(_functional) + ["SampleQueue", "NO_SAMPLE_ID", "ops"]
