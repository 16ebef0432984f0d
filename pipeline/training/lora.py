"""Method `lora`: low-rank adapters on a frozen GPT-2, through PEFT, and what they cost in parameters.

Every pretrained weight stays frozen, the tied head/input embedding included. Each targeted matrix W of the adapted
blocks gains a trainable product B A (A: rank x fan-in, B: fan-out x rank), scaled by alpha / rank; PEFT starts B at
zero, so training starts from the pretrained model's outputs.

Adapters are placed by structure: the targets are the full module names of the chosen blocks' matrices
(`transformer.h.11.attn.c_attn`), built from the model's block list, which PEFT matches exactly. PEFT's
`layers_to_transform` would pick the blocks by a regular expression over names instead (conventions: freeze by
structure). GPT-2's matrices are transformers' `Conv1D`, which stores W as fan-in x fan-out, hence
`fan_in_fan_out=True` (PEFT would warn and set it itself).

The adapters are injected in place (PEFT's `LoraModel`, which is what `inject_adapter_in_model` builds), so the model
stays a GPT2LMHeadModel: the trainee, the frozen-prefix cache, validation and checkpoints see the model they see
under method freeze, with the adapter tensors among its parameters and in its state dict
(`transformer.h.11.attn.c_attn.lora_A.default.weight`, the pretrained weight under `...c_attn.base_layer.weight`).
For the saved model, PEFT's `merge_and_unload` adds the scaled B A into each W and puts the plain `Conv1D` back:
a GPT-2 with the pretrained shapes and parameter count, which GPT2LMHeadModel and AutoModelForCausalLM load as is.
"""

from __future__ import annotations

from peft import LoraConfig, LoraModel
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.params import LoraParams

ADAPTER_NAME = "default"
"""PEFT's name for the one adapter; it appears in the adapter tensors' names (`lora_A.default.weight`)."""


def adapted_block_indices(n_layer: int, adapted_blocks: int | None) -> range:
    """The blocks that get adapters: the last `adapted_blocks` (every block when null)."""
    return range(n_layer - (n_layer if adapted_blocks is None else adapted_blocks), n_layer)


def adapter_module_names(n_layer: int, lora: LoraParams) -> list[str]:
    """Full names of the matrices that get an adapter, as `named_modules()` spells them."""
    blocks = adapted_block_indices(n_layer, lora.adapted_blocks)
    return [f"transformer.h.{index}.{target}" for index in blocks for target in lora.target_modules]


def lora_config(n_layer: int, lora: LoraParams) -> LoraConfig:
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=adapter_module_names(n_layer, lora),
        fan_in_fan_out=True,  # Conv1D's weight is fan-in x fan-out, the transpose of nn.Linear's
        bias="none",  # the biases stay pretrained: every trainable tensor is an adapter
    )


def add_adapters(model: GPT2LMHeadModel, lora: LoraParams) -> LoraModel:
    """Freeze `model` and inject trainable adapters into it, in place; return PEFT's tuner around it, whose
    `merge_and_unload()` gives the plain GPT-2 to save. A-matrices are drawn from torch's generator (seeded)."""
    model.requires_grad_(False)  # PEFT freezes all but the adapters too; said here, as the freeze policy says it
    return LoraModel(model, lora_config(model.config.n_layer, lora), ADAPTER_NAME)


def matrix_shapes(config: GPT2Config) -> dict[str, tuple[int, int]]:
    """(fan-in, fan-out) of each matrix of a GPT-2 block, from the config (`n_inner` null means 4 x n_embd)."""
    width, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    return {
        "attn.c_attn": (width, 3 * width),  # q, k and v in one matrix
        "attn.c_proj": (width, width),
        "mlp.c_fc": (width, inner),
        "mlp.c_proj": (inner, width),
    }


def lora_params_per_rank(config: GPT2Config, target_modules: list[str], adapted_blocks: int | None) -> int:
    """Trainable parameters that one unit of rank adds: an adapter on a fan-in x fan-out matrix holds
    rank x (fan-in + fan-out) (A and B, no bias), once per adapted block. GPT-2 small, all four matrices:
    12,288 per block (16 x n_embd), 147,456 over its 12 blocks."""
    shapes = matrix_shapes(config)
    blocks = len(adapted_block_indices(config.n_layer, adapted_blocks))
    return blocks * sum(sum(shapes[target]) for target in target_modules)


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
        "the tied head and input embedding included, stays frozen, and the saved model has the adapters merged in"
    )
