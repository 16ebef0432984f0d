"""Trainable / total parameters of real models under the freeze policy, from their published config values.

    python -m bench.family_counts

No download: each config is built from the values its model card's config.json publishes, and the model is
instantiated on the meta device (shapes, no memory), then frozen and counted by the train stage's own code
(pipeline/training/freeze.py), each tied tensor once. The output is the table in docs/models.md.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.measure import markdown_table
from pipeline.params import FreezeParams
from pipeline.training.freeze import apply_freeze_policy, count_parameters
from pipeline.training.layout import ModelLayout

PUBLISHED_CONFIGS = {
    "SmolLM2-135M": ("llama", {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                               "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
                               "max_position_embeddings": 8192, "tie_word_embeddings": True}),
    "Qwen2.5-0.5B": ("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                               "num_key_value_heads": 2, "num_hidden_layers": 24, "vocab_size": 151936,
                               "max_position_embeddings": 32768, "tie_word_embeddings": True}),
    "Llama-3.2-1B": ("llama", {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
                               "num_key_value_heads": 8, "num_hidden_layers": 16, "vocab_size": 128256,
                               "max_position_embeddings": 131072, "tie_word_embeddings": True}),
    "Pythia-160M": ("gpt_neox", {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                 "num_hidden_layers": 12, "vocab_size": 50304, "max_position_embeddings": 2048,
                                 "rotary_pct": 0.25, "tie_word_embeddings": False}),
    "GPT-2 small": ("gpt2", {}),  # GPT2Config()'s defaults are GPT-2 small's
}  # fmt: skip
HEADS = ("tied", "untied", "frozen")


def meta_model(model_type: str, values: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values))


def count_row(name: str, model_type: str, values: dict) -> list[object]:
    """The model's shape counts, then trainable / total with the last block trainable under each head mode."""
    model = meta_model(model_type, values)
    layout = ModelLayout.of(model)
    counts = count_parameters(model)
    row = [name, "tied" if layout.head_tied else "untied", f"{counts.total:,}",
           f"{sum(p.numel() for p in layout.blocks[-1].parameters()):,}",
           f"{layout.input_embedding.weight.numel():,}"]  # fmt: skip
    for head in HEADS:
        model = meta_model(model_type, values)
        apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
        counts = count_parameters(model)
        row.append(f"{counts.trainable:,} / {counts.total:,}")
    return row


def main() -> None:
    headers = ["model", "head", "total", "one block", "input embedding", *(f"1 block, head {h}" for h in HEADS)]
    rows = [count_row(name, model_type, values) for name, (model_type, values) in PUBLISHED_CONFIGS.items()]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
