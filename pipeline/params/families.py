"""The model families the pipeline fine-tunes, read from a model's config alone (so params are checked against the
model before any work): which `model_type`s belong to each, and the config fields that hold the context length and
the depth, which the families name differently.

A family shares one module layout (pipeline/training/layout.py): GPT-2; the Llama family, whose Mistral, Qwen2,
Qwen3 and SmolLM (a Llama) models differ in config values, not in where their parts sit; GPT-NeoX (Pythia).
"""

from __future__ import annotations

from typing import Any

FAMILIES = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt_neox": "gpt_neox",
}
"""config.model_type -> family."""
CONTEXT_FIELD = {"gpt2": "n_positions", "llama": "max_position_embeddings", "gpt_neox": "max_position_embeddings"}
"""The config field holding the positions the model was trained on (its learned position table, for GPT-2)."""
DEPTH_FIELD = {"gpt2": "n_layer", "llama": "num_hidden_layers", "gpt_neox": "num_hidden_layers"}


def family_of(config: Any) -> str | None:
    """The family of a model config, or None when the pipeline does not support its `model_type`."""
    return FAMILIES.get(getattr(config, "model_type", None))


def unsupported_model_issue(config: Any) -> str:
    """One paragraph for a model whose type has no known layout: what is supported, and what to do."""
    model_types = ", ".join(sorted(FAMILIES))
    return (
        f"model.name_or_path: model_type {getattr(config, 'model_type', None)!r} is not supported; the pipeline "
        f"freezes, counts and adapts a model by where its parts sit, which it knows for GPT-2, the Llama family "
        f"(Llama, Mistral, Qwen2, Qwen3, SmolLM) and GPT-NeoX (Pythia), that is model_type one of {model_types}. "
        "Point model.name_or_path at such a model."
    )


def context_length(config: Any) -> tuple[str, int]:
    """(field name, value) of the model's context length."""
    field = CONTEXT_FIELD[family_of(config)]
    return field, getattr(config, field)


def depth(config: Any) -> tuple[str, int]:
    """(field name, value) of the model's number of blocks."""
    field = DEPTH_FIELD[family_of(config)]
    return field, getattr(config, field)
