"""GPT-2's activation in one kernel.

GPT-2's `gelu_new` is the tanh approximation of GELU written as five elementwise ops, each a pass over memory (and,
in training, an autograd node); torch's `gelu(approximate="tanh")` is the same function in one kernel
(transformers' `gelu_pytorch_tanh`), equal to it within one float32 rounding. The train stage trains and validates
with it, and the evaluate stage scores with it in bf16 (`evaluate.bf16`), where rounding moves scores far more. In
fp32, the evaluate and harness stages score the model as its config builds it: the one-kernel form would make
evaluation 1.11x faster but move every score in its 8th digit, so base scores recorded before would no longer
match (docs/performance.md). The config keeps saying `gelu_new`, so the saved model is unchanged.
"""

from __future__ import annotations

from torch import nn
from transformers.activations import ACT2FN, NewGELUActivation


def fuse_gelu_new(module: nn.Module) -> None:
    """Swap every `gelu_new` under `module` for the same function in one kernel; found by type, so whatever a
    family names its activation (families without one are left as they are)."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, ACT2FN["gelu_pytorch_tanh"])
