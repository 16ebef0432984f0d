"""Method `lora`: low-rank adapters on a frozen causal LM, through PEFT, and what they cost in parameters.

Every pretrained weight stays frozen, the head and input embedding included. Each targeted matrix W of the adapted
blocks gains a trainable product B A (A: rank x fan-in, B: fan-out x rank), scaled by alpha / rank; PEFT starts B at
zero, so training starts from the pretrained model's outputs.

`lora.target_modules` names matrices by role, the same on every family, and `ROLE_MATRICES` maps each role to that
family's matrices: GPT-2 and GPT-NeoX fuse q, k and v in one matrix where the Llama family keeps three, and the
Llama family's MLP has two input matrices (gate and up) where the others have one.

Adapters are placed by structure: the targets are the full module names of the chosen blocks' matrices
(`transformer.h.11.attn.c_attn`, `model.layers.11.self_attn.q_proj`), built from the model's block list, which PEFT
matches exactly. PEFT's `layers_to_transform` would pick the blocks by a regular expression over names instead
(conventions: freeze by structure). GPT-2's matrices are transformers' `Conv1D`, which stores W as fan-in x fan-out,
hence `fan_in_fan_out=True` there (PEFT would warn and set it itself); the other families' are `nn.Linear`.

The adapters are injected in place (PEFT's `LoraModel`, which is what `inject_adapter_in_model` builds), so the model
stays its own class: the trainee, the frozen-prefix cache, validation and checkpoints see the model they see
under method freeze, with the adapter tensors among its parameters and in its state dict
(`transformer.h.11.attn.c_attn.lora_A.default.weight`, the pretrained weight under `...c_attn.base_layer.weight`).
For the saved model, PEFT's `merge_and_unload` adds the scaled B A into each W and puts the plain matrix back:
a model with the pretrained shapes and parameter count, which its class and AutoModelForCausalLM load as is.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, LoraModel
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from pipeline.params import LoraParams
from pipeline.params.families import depth, family_of
from pipeline.training.layout import ModelLayout

ADAPTER_NAME = "default"
"""PEFT's name for the one adapter; it appears in the adapter tensors' names (`lora_A.default.weight`)."""

ROLE_MATRICES = {
    "gpt2": {
        "attn_qkv": ("attn.c_attn",),  # q, k and v in one matrix
        "attn_out": ("attn.c_proj",),
        "mlp_in": ("mlp.c_fc",),
        "mlp_out": ("mlp.c_proj",),
    },
    "llama": {
        "attn_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),  # SwiGLU: both read the block's input
        "mlp_out": ("mlp.down_proj",),
    },
    "gpt_neox": {
        "attn_qkv": ("attention.query_key_value",),
        "attn_out": ("attention.dense",),
        "mlp_in": ("mlp.dense_h_to_4h",),
        "mlp_out": ("mlp.dense_4h_to_h",),
    },
}
"""Role (`lora.target_modules`) -> the matrices that play it, by their path inside a block, per family."""


def adapted_block_indices(n_layer: int, adapted_blocks: int | None) -> range:
    """The blocks that get adapters: the last `adapted_blocks` (every block when null)."""
    return range(n_layer - (n_layer if adapted_blocks is None else adapted_blocks), n_layer)


def block_matrices(family: str, roles: list[str]) -> list[str]:
    """Paths inside a block of the matrices that play `roles`."""
    return [path for role in roles for path in ROLE_MATRICES[family][role]]


def adapter_module_names(model: nn.Module, lora: LoraParams) -> list[str]:
    """Full names of the matrices that get an adapter, as `named_modules()` spells them."""
    layout = ModelLayout.of(model)
    blocks = layout.name(layout.blocks)
    indices = adapted_block_indices(len(layout.blocks), lora.adapted_blocks)
    return [
        f"{blocks}.{index}.{path}" for index in indices for path in block_matrices(layout.family, lora.target_modules)
    ]


def lora_config(model: nn.Module, lora: LoraParams) -> LoraConfig:
    targets = adapter_module_names(model, lora)
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        # Conv1D's weight is fan-in x fan-out, the transpose of nn.Linear's; a family uses one kind throughout.
        fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
        bias="none",  # the biases stay pretrained: every trainable tensor is an adapter
    )


def add_adapters(model: nn.Module, lora: LoraParams) -> LoraModel:
    """Freeze `model` and inject trainable adapters into it, in place; return PEFT's tuner around it, whose
    `merge_and_unload()` gives the plain model to save. A-matrices are drawn from torch's generator (seeded)."""
    model.requires_grad_(False)  # PEFT freezes all but the adapters too; said here, as the freeze policy says it
    return LoraModel(model, lora_config(model, lora), ADAPTER_NAME)


def matrix_shapes(config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Weight shape of each matrix of a block (path inside the block -> shape), read from the model the config
    builds on the meta device: no memory, no weights, and no formula per family to keep right."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    block = ModelLayout.of(model).blocks[0]
    paths = block_matrices(family_of(config), list(ROLE_MATRICES[family_of(config)]))
    return {path: tuple(block.get_submodule(path).weight.shape) for path in paths}


def lora_params_per_rank(config: PretrainedConfig, target_modules: list[str], adapted_blocks: int | None) -> int:
    """Trainable parameters that one unit of rank adds: an adapter on a fan-in x fan-out matrix holds
    rank x (fan-in + fan-out) (A and B, no bias), once per adapted block. GPT-2 small, all four roles:
    12,288 per block (16 x n_embd), 147,456 over its 12 blocks."""
    shapes = matrix_shapes(config)
    blocks = len(adapted_block_indices(depth(config)[1], adapted_blocks))
    return blocks * sum(sum(shapes[path]) for path in block_matrices(family_of(config), target_modules))


def rank_for_budget(trainable: int, per_rank: int) -> int:
    """The rank whose adapters' count is nearest to a trainable budget (a freezing point's count, say), at least 1.

    GPT-2 small, all four matrices of all 12 blocks: one unfrozen block's 7,087,872 gives rank 48 (7,077,888)."""
    return max(1, round(trainable / per_rank))


def describe_adapters(lora: LoraParams, n_layer: int) -> str:
    """One line for the parameter table: what trains under method lora, and what stays frozen."""
    blocks = adapted_block_indices(n_layer, lora.adapted_blocks)
    return (
        f"method lora: rank {lora.rank} adapters (scaled by alpha/rank = {lora.alpha}/{lora.rank}) on "
        f"{', '.join(lora.target_modules)} of blocks {blocks.start}-{blocks.stop - 1}; every pretrained weight, "
        "the head and input embedding included, stays frozen, and the saved model has the adapters merged in"
    )
