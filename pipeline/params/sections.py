"""The sections of params.yaml that say what the pipeline reads, scores and reports (the training sections are in
pipeline/params/training.py). Every field says what it does and why its default is what it is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
"""The splits evaluate scores, and whose whole token stream tokenize keeps for it."""


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "gpt2-wikitext2-freeze"
    """MLflow experiment that every stage logs to; one experiment per project keeps runs comparable."""
    log_model: bool = True
    """Log the fine-tuned model as an MLflow LoggedModel (transformers flavour): a second copy of its weights in the
    artifact store (about 0.5 GB for GPT-2 small), made once per distinct model; false keeps only DVC's copy."""
    registered_model: str | None = None
    """Registered-model name that each pipeline run registers a new version of (needs `log_model`); null registers
    nothing, because a registry entry is a hand-over decision, not a side effect of every experiment."""


@dataclass(frozen=True)
class DataParams:
    source: Literal["hub", "local"] = "hub"
    """`hub`: `datasets.load_dataset(hub_dataset, hub_config)`; `local`: plain UTF-8 text files (air-gapped use)."""
    hub_dataset: str = "wikitext"
    """Dataset id on the Hugging Face Hub (or a local dataset folder) for `source: hub`."""
    hub_config: str | None = "wikitext-2-raw-v1"
    """Raw (not tokenized-and-<unk>ed) Wikitext-2, so the GPT-2 tokenizer sees the original text."""
    train_file: str | None = None
    """`source: local`, one file per split: path of the training text (relative to the repo root)."""
    validation_file: str | None = None
    """`source: local`, one file per split: path of the validation text."""
    test_file: str | None = None
    """`source: local`, one file per split: path of the test text."""
    single_file: str | None = None
    """`source: local`, one file for all splits: its documents are shuffled with `split_seed` and cut by fractions."""
    split_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.05, 0.05])
    """train/validation/test shares of `single_file`'s documents; Wikitext-2's own split is about 90/5/5."""
    split_seed: int = 0
    """Fixed seed for cutting `single_file`, so the test set is the same on every run."""
    max_train_lines: int | None = None
    """Keep only the first N lines of train (a prefix keeps articles whole and needs no seed); null keeps all."""
    max_validation_lines: int | None = None
    """Same for validation; null keeps all, which is what published perplexities use."""
    max_test_lines: int | None = None
    """Same for test."""

    def max_lines(self, split: str) -> int | None:
        return getattr(self, f"max_{split}_lines")

    def split_file(self, split: str) -> str | None:
        return getattr(self, f"{split}_file")


@dataclass(frozen=True)
class ModelParams:
    name_or_path: str = "gpt2"
    """Hub id or a local folder written by `save_pretrained`; GPT-2 small (124M) is the model this project tunes."""


@dataclass(frozen=True)
class TokenizeParams:
    block_size: int = 128
    """Tokens per training block. 128 keeps a CPU step short; must not exceed the model's context
    (GPT-2's `n_positions`, 1024; `max_position_embeddings` in the Llama family and GPT-NeoX)."""


@dataclass(frozen=True)
class EvaluateParams:
    context: int = 1024
    """Tokens fed per eval window, cut from each split's whole token stream (not the training blocks). GPT-2's full
    1,024 positions, as published perplexities use (docs/evaluation.md); at most the model's context (`n_positions` or
    `max_position_embeddings`), and no more than it was trained on: a longer window than the model learned scores
    worse, not better."""
    stride: int = 512
    """New tokens scored per window (every token but the first is scored once); each has at least `context - stride`
    tokens of context. 512 is HF's "Perplexity of fixed-length models" setting and costs about twice as much as
    `stride = context` (disjoint windows); docs/evaluation.md says which published number each matches."""
    batch_size: int = 8
    """Windows per forward pass; memory stays flat in the eval set size whatever this is."""
    bf16: bool = False
    """Evaluate in fp32 by default so base and fine-tuned numbers are exact and comparable across machines. `true`
    runs the body in bf16 autocast (with the one-kernel GELU) and the head and softmax in fp32: within 1e-4 nats of
    fp32 and 2.6x faster at 1,024 / 512 on a CPU with AMX (docs/performance.md)."""


@dataclass(frozen=True)
class SamplesParams:
    prompts: list[str] = dataclasses.field(
        default_factory=lambda: ["The river", "In the early years of the war ,", "The album was released"]
    )
    """Fixed prompts the evaluate stage continues with the base and the fine-tuned model, side by side; Wikitext's
    spacing (" ,") so the prompts look like the text the model was tuned on."""
    max_new_tokens: int = 30
    """Tokens generated per prompt, greedily (no sampling: reruns write the same file); a sentence or two."""


@dataclass(frozen=True)
class HarnessParams:
    target_tasks: list[str] = dataclasses.field(default_factory=lambda: ["wikitext"])
    """lm-evaluation-harness tasks in the fine-tuning domain, scored as lm-eval scores them (word perplexity, bits
    per byte): `wikitext` is Wikitext-2's test pages, the numbers papers quote (docs/evaluation.md)."""
    retention_tasks: list[str] = dataclasses.field(default_factory=lambda: ["lambada_openai", "arc_easy", "piqa"])
    """lm-eval tasks outside the target domain, each reporting accuracy (`acc`): how much of what the base model
    knew fine-tuning kept. Chosen for a GPT-2-sized model by signal over chance and cost (docs/evaluation.md):
    LAMBADA (one forward per example, GPT-2 small far above chance), ARC-Easy and PIQA (4 and 2 short choices);
    HellaSwag is left out: GPT-2 small sits a few points above chance there, at 4 long choices per example."""
    limit: int | None = 1000
    """Examples per task (the first N of its split; null: all). 1,000 puts the standard error of an accuracy near
    1.5 points at a fifth of the default tasks' full cost; Wikitext's 62 test pages are all scored either way."""
    batch_size: int = 8
    """Requests per forward pass in lm-eval's model wrapper; memory, not results, depends on it."""
    task_dir: str | None = None
    """A folder of lm-eval task YAMLs (and their data) searched before lm-eval's own tasks, under local/tasks/ so
    DVC tracks it; null: lm-eval's tasks only. The offline profile's tasks, over local generated files, live there."""
