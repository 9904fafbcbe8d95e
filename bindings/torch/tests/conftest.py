"""Shared helpers of the distill_torch tests: the library's tolerance table, seeded inputs,
comparisons against plain PyTorch references written from the formulas in the headers."""
import os
import re

import pytest
import torch

import distill_torch  # noqa: F401 - fails loudly if the package was not built

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _tolerances():
    """The `tol` table of test/support/compare.hpp (|a - e| <= atol + rtol |e|), read from the
    header so the C++ and Python tests share one table."""
    text = open(os.path.join(ROOT, "test", "support", "compare.hpp")).read()
    table = {name: (float(a), float(r)) for name, a, r in
             re.findall(r"inline constexpr tolerance (\w+)\{([-+.eE\d]+), ([-+.eE\d]+)\}", text)}
    assert {"f64", "f32", "f32_sum", "bf16_in", "f16_in", "fd"} <= set(table), table
    return table


TOL = _tolerances()


def close(actual, expected, tol, what=""):
    """Element-wise |actual - expected| <= atol + rtol |expected| (NaNs and equal infinities match),
    in double, with a message naming the worst element."""
    atol, rtol = TOL[tol] if isinstance(tol, str) else tol
    a = torch.as_tensor(actual).detach().double().cpu().reshape(-1)
    e = torch.as_tensor(expected).detach().double().cpu().reshape(-1)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
    same = (a == e) | (a.isnan() & e.isnan())
    excess = (a - e).abs() - (atol + rtol * e.abs())
    bad = ~same & ~(excess <= 0)
    if bad.any():
        i = int(torch.where(bad, excess.nan_to_num(1e300), torch.full_like(excess, -1e300)).argmax())
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond {tol} "
                             f"(atol {atol}, rtol {rtol}); worst at {i}: {a[i].item()!r} vs {e[i].item()!r}")


def grads(fn, *inputs):
    """Gradients of fn(*inputs) (a scalar) with respect to every input that requires grad."""
    xs = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    return torch.autograd.grad(fn(*inputs), xs)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(int(os.environ.get("DISTILL_TEST_SEED", "20261126")))
    torch.set_num_threads(2)
    yield


def gradcheck(fn, *inputs):
    """torch.autograd.gradcheck in double with the finite-difference tolerance of the table."""
    atol, rtol = TOL["fd"]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=atol, rtol=rtol)
