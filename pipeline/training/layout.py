"""Where a causal LM keeps the parts that training treats differently, for each supported family
(pipeline/params/families.py): input and position embeddings, the block list, the final norm, the head.

transformers' own accessors find what they can: the base model (`base_model`), the input embedding
(`get_input_embeddings`) and the head (`get_output_embeddings`), and whether the two are one tensor. It has none for
the block list, the final norm or a learned position table, whose attribute names differ by family; `FAMILY_PARTS`
names them. Every part is a module of the loaded model, so freezing goes by structure (PEFT's
`_mark_only_adapters_as_trainable` says why not by name).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.params.families import family_of


@dataclass(frozen=True)
class FamilyParts:
    """Attributes of a family's base model (`model.base_model`)."""

    blocks: str
    final_norm: str
    position_embedding: str | None
    """A learned position table added to the input embedding (GPT-2's `wpe`); None with rotary positions."""
    embedding_dropout: str | None
    """Dropout on the embedding's output, the first thing the frozen prefix runs in eval mode."""


FAMILY_PARTS = {
    "gpt2": FamilyParts(blocks="h", final_norm="ln_f", position_embedding="wpe", embedding_dropout="drop"),
    "llama": FamilyParts(blocks="layers", final_norm="norm", position_embedding=None, embedding_dropout=None),
    "gpt_neox": FamilyParts(
        blocks="layers", final_norm="final_layer_norm", position_embedding=None, embedding_dropout="emb_dropout"
    ),
}


@dataclass(frozen=True)
class ModelLayout:
    """The parts of one loaded causal LM, and their names as `named_modules()` spells them."""

    family: str
    body: nn.Module
    """The base model: embeddings, blocks, final norm; its forward gives the last hidden states."""
    input_embedding: nn.Embedding
    position_embedding: nn.Module | None
    embedding_dropout: nn.Module | None
    blocks: nn.ModuleList
    final_norm: nn.Module
    head: nn.Module
    names: dict[int, str]
    """id(module) -> its full name in the model (`transformer.h`), for the parts above."""

    @classmethod
    def of(cls, model: nn.Module) -> ModelLayout:
        family = family_of(model.config)
        if family is None:
            raise ValueError(f"no known layout for model_type {model.config.model_type!r}")
        parts, body = FAMILY_PARTS[family], model.base_model
        optional = {name: getattr(body, name) if name else None
                    for name in (parts.position_embedding, parts.embedding_dropout)}  # fmt: skip
        layout = {
            "input_embedding": model.get_input_embeddings(),
            "position_embedding": optional[parts.position_embedding],
            "embedding_dropout": optional[parts.embedding_dropout],
            "blocks": getattr(body, parts.blocks),
            "final_norm": getattr(body, parts.final_norm),
            "head": model.get_output_embeddings(),
        }
        wanted = {id(module) for module in (body, *layout.values()) if module is not None}
        names = {id(module): name for name, module in model.named_modules() if id(module) in wanted}
        return cls(family=family, body=body, names=names, **layout)

    @property
    def head_tied(self) -> bool:
        """Whether the head and the input embedding are one tensor (GPT-2's default; SmolLM2's, Qwen2.5-0.5B's and
        Llama-3.2-1B's too, as `config.tie_word_embeddings` says; Pythia's never)."""
        return self.head.weight is self.input_embedding.weight

    @property
    def head_weight_key(self) -> str:
        """The head's weight in the state dict (`lm_head.weight`, `embed_out.weight`)."""
        return f"{self.name(self.head)}.weight"

    def name(self, module: nn.Module) -> str:
        return self.names[id(module)]

    def short_name(self, module: nn.Module) -> str:
        """The name inside the base model (`wte`, `layers`), or in the model for the head (`lm_head`): the rows of
        the parameter table."""
        name, prefix = self.name(module), self.name(self.body) + "."
        return name.removeprefix(prefix) if module is not self.head else name

    def embeddings(self) -> list[nn.Module]:
        """The input embedding, and the position table if the family has one."""
        return [m for m in (self.input_embedding, self.position_embedding) if m is not None]

    def counted_modules(self) -> list[tuple[str, nn.Module]]:
        """Every part holding parameters, in the order the input flows through them, each block on its own row."""
        blocks = self.short_name(self.blocks)
        rows = [(self.short_name(m), m) for m in self.embeddings()]
        rows += [(f"{blocks}.{index}", block) for index, block in enumerate(self.blocks)]
        return [*rows, (self.short_name(self.final_norm), self.final_norm), (self.name(self.head), self.head)]
