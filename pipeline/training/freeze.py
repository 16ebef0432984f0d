"""The freeze policy (which parts of GPT-2 train) and parameter accounting.

Freezing goes by the model's structure (`transformer.h[-k:]`, `transformer.ln_f`, `lm_head`), never by matching
parameter names: a name filter such as "h.11" also catches "h.110" in a deeper model (PEFT's
`_mark_only_adapters_as_trainable` makes the same point).

GPT-2 ties `lm_head.weight` to the input embedding `transformer.wte.weight`: they are one tensor. So the head
mode is a decision, made explicit here:
- tied:   the shared tensor trains, as head *and* input embedding. Because the input embedding then needs a
          gradient, backward runs through every frozen block.
- untied: the head becomes its own copy of `wte` and trains; the input embedding stays frozen, so backward stops
          at the first trainable block. The saved model is untied (`tie_word_embeddings = False`).
- frozen: head and embeddings stay as pretrained; only blocks (and optionally ln_f) train.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import GPT2LMHeadModel

from pipeline.params import FreezeParams

HEAD_MODE_EXPLANATIONS = {
    "tied": "lm_head is tied to the input embedding wte: training the head trains the input embeddings too, "
    "and gradients flow back through every frozen block",
    "untied": "lm_head is an untied copy of wte and trains; the input embedding stays frozen, so no gradient "
    "flows through the frozen blocks",
    "frozen": "lm_head and the input embedding stay frozen (they are one tied tensor)",
}


def apply_freeze_policy(model: GPT2LMHeadModel, policy: FreezeParams) -> None:
    """Freeze everything, then unfreeze the parts the policy names."""
    model.requires_grad_(False)
    blocks = model.transformer.h
    first_trainable = len(blocks) - policy.trainable_blocks
    for block in blocks[first_trainable:]:
        block.requires_grad_(True)
    if policy.train_ln_f:
        model.transformer.ln_f.requires_grad_(True)
    if policy.head == "untied":
        untie_lm_head(model)
    if policy.head in ("tied", "untied"):
        model.lm_head.requires_grad_(True)


def head_is_tied(model: GPT2LMHeadModel) -> bool:
    """Whether lm_head and the input embedding are one tensor (GPT-2's default)."""
    return model.lm_head.weight is model.transformer.wte.weight


def untie_lm_head(model: GPT2LMHeadModel) -> None:
    """Give lm_head its own copy of the embedding weights; the config says so, so save/load keeps them apart."""
    if head_is_tied(model):
        model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
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
    def of(cls, model: GPT2LMHeadModel) -> FrozenLayout:
        transformer = model.transformer
        blocks = transformer.h
        first = next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())), None)
        return cls(
            head_tied=head_is_tied(model),
            first_trainable_block=len(blocks) if first is None else first,
            embedding_trains=transformer.wte.weight.requires_grad or transformer.wpe.weight.requires_grad,
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


def count_parameters(model: GPT2LMHeadModel) -> ParameterCounts:
    """Count every tensor once, whatever ties it: a tied lm_head adds nothing to `wte`'s count. LoRA adapters
    (pipeline/training/lora.py) count in the block they sit in, so while they train the total is the pretrained
    count plus theirs, as PEFT's `get_nb_trainable_parameters` counts it."""
    transformer = model.transformer
    groups = [("wte", transformer.wte), ("wpe", transformer.wpe)]
    groups += [(f"h.{index}", block) for index, block in enumerate(transformer.h)]
    groups += [("ln_f", transformer.ln_f), ("lm_head", model.lm_head)]
    seen: set[int] = set()
    modules = []
    for name, module in groups:
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        modules.append(
            ModuleCount(name, sum(p.numel() for p in fresh), sum(p.numel() for p in fresh if p.requires_grad))
        )
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(m.total for m in modules), "a GPT-2 parameter lies outside the counted modules"
    return ParameterCounts(total, sum(m.trainable for m in modules), tuple(modules))


def head_mode_description(head_mode: str) -> str:
    """What trains besides the blocks under method freeze, in words, for the parameter table."""
    return f"head mode {head_mode}: {HEAD_MODE_EXPLANATIONS[head_mode]}"


def format_parameter_table(counts: ParameterCounts, description: str) -> str:
    """A human-readable table ending with `description` (what the method trains); tied lm_head shows 0 because its
    tensor is counted under wte."""
    rows = [f"{'module':<10} {'params':>13} {'trainable':>13}"]
    rows += [f"{m.name:<10} {m.total:>13,} {m.trainable:>13,}" for m in counts.modules]
    rows.append(f"{'total':<10} {counts.total:>13,} {counts.trainable:>13,}")
    rows.append(
        f"trainable {counts.trainable:,} of {counts.total:,} ({counts.trainable_percent:.2f}%), "
        f"frozen {counts.frozen:,}; {description}"
    )
    return "\n".join(rows)
