"""Frozen matmul weights in autocast's dtype, cast once and reused across steps.

Under bf16 autocast every matmul casts its fp32 weight to bf16 each time it runs. Autocast keeps such a cast only for
a weight that requires grad, and only until its region ends (a step), so a frozen weight is cast again at every
forward: with GPT-2 small's default policy, 78 M weights of the eleven frozen blocks read and written each step
(docs/performance.md). Their values never change while they are frozen, so their casts are kept here, keyed by each
tensor's storage and version counter (a `load_state_dict` or `.to()` makes new ones), and handed to the module's
own forward through `torch.func.functional_call`. Autocast leaves a tensor already in its dtype as it is, so every
matmul gets the bytes it would have cast itself: the loss and the gradients are bitwise the same
(tests/test_weight_casts.py). The module's parameters stay fp32; checkpoints and the saved model do not change.

Only the weights and biases of matmul modules (`nn.Linear`, transformers' `Conv1D`) are cast: autocast runs
LayerNorm and embedding lookups in fp32, so a bf16 copy of their weights would change what they compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

MATMUL_MODULES = (nn.Linear, Conv1D)
"""Modules whose parameters autocast casts to its dtype (addmm, linear)."""


class FrozenWeightCasts:
    """The frozen matmul parameters under `root` in the autocast dtype, by name relative to `root`."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.parameters = {
            f"{module_name}.{name}" if module_name else name: parameter
            for module_name, module in root.named_modules()
            if isinstance(module, MATMUL_MODULES)
            for name, parameter in module.named_parameters(recurse=False)
        }
        self._casts: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self.enabled = True
        """Off: `root` casts under autocast as it would alone (bench.ablation, the tests' comparison)."""

    def casts(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """`dtype` copies of the parameters that are frozen now; made again only when one of them changed (a new
        storage or an in-place write) or was frozen or unfrozen since."""
        key = (dtype, *((p.data_ptr(), p._version, p.requires_grad) for p in self.parameters.values()))
        if self._casts is None or self._casts[0] != key:
            frozen = {name: p.detach().to(dtype) for name, p in self.parameters.items() if not p.requires_grad}
            self._casts = (key, frozen)
        return self._casts[1]

    def __call__(self, **kwargs: Any) -> Any:
        """`root(**kwargs)`, its frozen matmul weights taken from the casts when autocast is on."""
        device_type = next(iter(self.parameters.values())).device.type if self.parameters else "cpu"
        autocast = self.enabled and torch.is_autocast_enabled(device_type)
        casts = self.casts(torch.get_autocast_dtype(device_type)) if autocast else {}
        if not casts:  # autocast off, or nothing frozen
            return self.root(**kwargs)
        return torch.func.functional_call(self.root, casts, args=(), kwargs=kwargs, tie_weights=False, strict=False)
