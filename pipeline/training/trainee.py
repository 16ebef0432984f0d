"""What the Trainer trains: the causal LM behind a thin module whose loss fuses the head
(pipeline.training.linear_cross_entropy) and whose frozen blocks run without dropout.

Frozen blocks run in eval mode: they learn nothing, so their dropout would only add noise to the trainable blocks'
input, and it is costly (the random masks, and attention falling back from the fused kernel to the unfused one when
dropout is on; docs/performance.md). It also makes the prefix a fixed function of the tokens, which is what lets
pipeline.training.prefix_cache train on its cached output and get the same loss.
The embedding dropout (GPT-2's and GPT-NeoX's; Llama has none) counts as part of the prefix unless the embedding
trains (the `tied` head).

GPT-2's activation, `gelu_new` (five elementwise ops), runs as the same function in one kernel
(pipeline/activations.py) wherever a block holds one; the config is left as it is, so the saved model is unchanged.
Under autocast, the frozen matmul weights (the frozen blocks', a frozen head's) are cast once and reused, not at
every step (pipeline/training/weight_casts.py).

The module's state dict is the wrapped model's, key for key, so the Trainer's checkpoints load into the model's
own class and back.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from pipeline.activations import fuse_gelu_new
from pipeline.training.freeze import FrozenLayout
from pipeline.training.layout import ModelLayout
from pipeline.training.linear_cross_entropy import VOCAB_MULTIPLE, causal_lm_loss
from pipeline.training.weight_casts import FrozenWeightCasts


class Trainee(nn.Module):
    """Shared by the whole-model and the cached-prefix trainees: state dict, train mode, and the head's loss."""

    loss_type = "ForCausalLM"
    """Tells the Trainer the loss shifts its labels, so its `num_items_in_batch` counts the B x (S-1) positions
    scored, not B x S (it checks this attribute, as on transformers' own models); tests/test_trainee.py holds
    the logged loss to an independent mean."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # the Trainer reads it
        self.parts = ModelLayout.of(model)
        self.layout = FrozenLayout.of(model)
        self.frozen_prefix = list(self.parts.blocks[: self.layout.first_trainable_block])
        if self.layout.prefix_is_frozen and self.parts.embedding_dropout is not None:
            self.frozen_prefix.insert(0, self.parts.embedding_dropout)
        self.body_forward = FrozenWeightCasts(self.parts.body)  # frozen matmul weights cast once
        self._head_casts = FrozenWeightCasts(self.parts.head)
        self.vocab_multiple = VOCAB_MULTIPLE  # rows a trainable head is padded to (the ablation turns it off)
        for block in self.parts.blocks:
            fuse_gelu_new(block)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_prefix:
            module.eval()
        return self

    def state_dict(self, *args, **kwargs):
        """The wrapped model's own keys; a tied head is stored once, as `save_pretrained` stores it (safetensors
        refuses shared tensors)."""
        state = self.model.state_dict(*args, **kwargs)
        if self.layout.head_tied:
            state.pop(self.parts.head_weight_key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Into the wrapped model; a tied head, missing from the file, comes back as `wte` and is not reported
        missing (the Trainer would warn, or look for attributes this module does not have)."""
        result = self.model.load_state_dict(state_dict, strict=False, assign=assign)
        head_key = self.parts.head_weight_key
        missing = [key for key in result.missing_keys if not (self.layout.head_tied and key == head_key)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"state dict does not fit: missing {missing}, unexpected {result.unexpected_keys}")
        return result._replace(missing_keys=missing)

    def head_weight(self) -> torch.Tensor:
        """The head's weight. Under autocast a frozen one is cast once and reused: autocast would recast GPT-2's
        38.6M-weight head at every step (docs/performance.md)."""
        weight = self.parts.head.weight
        device_type = weight.device.type
        if weight.requires_grad or not torch.is_autocast_enabled(device_type):
            return weight
        return self._head_casts.casts(torch.get_autocast_dtype(device_type))["weight"]

    def loss(self, last_hidden_states: torch.Tensor, labels: torch.Tensor, loss_kwargs: dict) -> CausalLMOutput:
        """Loss of the head on `last_hidden_states` (after the final norm). `loss_kwargs` carries the Trainer's
        `num_items_in_batch`, the scored positions of the whole accumulated batch (see `loss_type`), so the
        micro-batch losses sum to the mean cross-entropy of the optimizer step (the Trainer passes it because
        forward takes **kwargs)."""
        num_items = loss_kwargs.get("num_items_in_batch")
        loss = causal_lm_loss(last_hidden_states, self.head_weight(), labels, num_items, self.vocab_multiple)
        return CausalLMOutput(loss=loss)


class WholeModelTrainee(Trainee):
    """The whole model, on token blocks."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **loss_kwargs) -> CausalLMOutput:
        # The final norm applied; no key/value cache, which training never reads.
        last_hidden_states = self.body_forward(input_ids=input_ids, use_cache=False).last_hidden_state
        return self.loss(last_hidden_states, labels, loss_kwargs)
