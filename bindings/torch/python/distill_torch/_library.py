"""Loads the operator library (libdistill_torch_ops.so) into PyTorch's dispatcher.

The build places the library next to this file; DISTILL_TORCH_LIBRARY overrides the path.
"""
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
path = os.environ.get("DISTILL_TORCH_LIBRARY") or os.path.join(_HERE, "libdistill_torch_ops.so")
if not os.path.exists(path):
    raise ImportError(
        f"distill_torch: the operator library {path} does not exist; build it with "
        "`bash scripts/build_torch.sh` (see docs/torch.md) or point DISTILL_TORCH_LIBRARY at it")
torch.ops.load_library(path)
ops = torch.ops.distill
