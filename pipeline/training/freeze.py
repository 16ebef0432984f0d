"""The freeze policy (which parts of the model train) and parameter accounting.

Freezing goes by the model's structure (the last blocks of its block list, its final norm, its head: found by
pipeline/training/layout.py), never by matching parameter names: a name filter such as "h.11" also catches "h.110"
in a deeper model (PEFT's `_mark_only_adapters_as_trainable` makes the same point).

GPT-2 ties its head to the input embedding (`lm_head.weight` is `wte.weight`: one tensor), as do SmolLM2,
Qwen2.5-0.5B and Llama-3.2-1B; Pythia and larger Llama-family models keep two. So the head mode is a decision, made
explicit here, and means the same on both kinds:
- tied:   the head and the input embedding train: one shared tensor on a tied model, two tensors on an untied
          one. Because the input embedding then needs a gradient, backward runs through every frozen block.
- untied: the head trains and the input embedding stays frozen, so backward stops at the first trainable block.
          A tied model's head first becomes its own copy of the embedding, and the saved model is untied
          (`tie_word_embeddings = False`); an untied model's head simply trains.
- frozen: head and embeddings stay as pretrained; only blocks (and optionally the final norm) train.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.params import FreezeParams
from pipeline.training.layout import ModelLayout

HEAD_MODE_EXPLANATIONS = {
    "tied": "the head and the input embedding train (one tensor where the model ties them, two where it does not), "
    "and gradients flow back through every frozen block",
    "untied": "the head trains (an untied copy of the input embedding where the model tied them); the input "
    "embedding stays frozen, so no gradient flows through the frozen blocks",
    "frozen": "the head and the input embedding stay frozen",
}


def apply_freeze_policy(model: nn.Module, policy: FreezeParams) -> None:
    """Freeze everything, then unfreeze the parts the policy names."""
    layout = ModelLayout.of(model)
    model.requires_grad_(False)
    first_trainable = len(layout.blocks) - policy.trainable_blocks
    for block in layout.blocks[first_trainable:]:
        block.requires_grad_(True)
    if policy.train_ln_f:
        layout.final_norm.requires_grad_(True)
    if policy.head == "untied":
        untie_lm_head(model)
    if policy.head in ("tied", "untied"):
        layout.head.requires_grad_(True)
    if policy.head == "tied":
        layout.input_embedding.requires_grad_(True)  # the head's own tensor on a tied model; its own on an untied one


def head_is_tied(model: nn.Module) -> bool:
    """Whether the head and the input embedding are one tensor (GPT-2's default)."""
    return ModelLayout.of(model).head_tied


def untie_lm_head(model: nn.Module) -> None:
    """Give the head its own copy of the embedding weights; the config says so, so save/load keeps them apart."""
    layout = ModelLayout.of(model)
    if layout.head_tied:
        layout.head.weight = nn.Parameter(layout.input_embedding.weight.detach().clone())
    model.config.tie_word_embeddings = False


@dataclass(frozen=True)
class FrozenLayout:
    """What the freeze policy made of a model's structure, read once from its tensors (not from params), for the
    parts of training that depend on it: which modules run without dropout, what the prefix cache may skip, how a
    tied head is saved, how far backward reaches."""

    head_tied: bool
    first_trainable_block: int
    """Index of the lowest block with a trainable parameter; the number of blocks when none trains."""
    embedding_trains: bool

    @classmethod
    def of(cls, model: nn.Module) -> FrozenLayout:
        layout = ModelLayout.of(model)
        blocks = layout.blocks
        first = next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())), None)
        return cls(
            head_tied=layout.head_tied,
            first_trainable_block=len(blocks) if first is None else first,
            embedding_trains=any(p.requires_grad for module in layout.embeddings() for p in module.parameters()),
        )

    @property
    def prefix_is_frozen(self) -> bool:
        """The embedding and every block below the first trainable one stay fixed, so their output for a block of
        tokens never changes while training (false with the `tied` head, whose embedding trains)."""
        return not self.embedding_trains


@dataclass(frozen=True)
class ModuleCount:
    name: str
    total: int
    trainable: int


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int
    modules: tuple[ModuleCount, ...]

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def as_metrics(self) -> dict[str, float]:
        return {
            "params.total": self.total,
            "params.trainable": self.trainable,
            "params.frozen": self.frozen,
            "params.trainable_percent": round(self.trainable_percent, 4),
        }

    def as_json(self) -> dict:
        """Totals plus the per-module table, for the train stage's metrics file."""
        modules = {m.name: {"total": m.total, "trainable": m.trainable} for m in self.modules}
        return {"trainable": self.trainable, "total": self.total, "frozen": self.frozen, "modules": modules}


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count every tensor once, whatever ties it: a tied head adds nothing to the input embedding's count. LoRA
    adapters (pipeline/training/lora.py) count in the block they sit in, so while they train the total is the
    pretrained count plus theirs, as PEFT's `get_nb_trainable_parameters` counts it. Rows are named as the model
    names its parts (`wte`, `h.0`, `ln_f`, `lm_head` on GPT-2; `embed_tokens`, `layers.0`, `norm` on Llama)."""
    seen: set[int] = set()
    modules = []
    for name, module in ModelLayout.of(model).counted_modules():
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        modules.append(
            ModuleCount(name, sum(p.numel() for p in fresh), sum(p.numel() for p in fresh if p.requires_grad))
        )
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(m.total for m in modules), "a parameter lies outside the counted modules"
    return ParameterCounts(total, sum(m.trainable for m in modules), tuple(modules))


def head_mode_description(head_mode: str) -> str:
    """What trains besides the blocks under method freeze, in words, for the parameter table."""
    return f"head mode {head_mode}: {HEAD_MODE_EXPLANATIONS[head_mode]}"


def format_parameter_table(counts: ParameterCounts, description: str) -> str:
    """A human-readable table ending with `description` (what the method trains); a tied head shows 0 because its
    tensor is counted under the input embedding."""
    width = max(10, *(len(m.name) for m in counts.modules))
    rows = [f"{'module':<{width}} {'params':>13} {'trainable':>13}"]
    rows += [f"{m.name:<{width}} {m.total:>13,} {m.trainable:>13,}" for m in counts.modules]
    rows.append(f"{'total':<{width}} {counts.total:>13,} {counts.trainable:>13,}")
    rows.append(
        f"trainable {counts.trainable:,} of {counts.total:,} ({counts.trainable_percent:.2f}%), "
        f"frozen {counts.frozen:,}; {description}"
    )
    return "\n".join(rows)
