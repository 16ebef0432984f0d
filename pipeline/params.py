"""The one typed loader for params.yaml.

Every section of params.yaml is a frozen dataclass below; every field says what it does and why its default is
what it is. Loading collects *every* problem (unknown or missing keys, wrong types, out-of-range values, and,
when asked, conflicts with the model's config) and raises one `ParamsError` listing them all, so a user fixes
params.yaml once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError
from pipeline.input_paths import is_local_path, untracked_path_issue

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
"""The splits evaluate scores, and whose whole token stream tokenize keeps for it."""


class ParamsError(UserError):
    """params.yaml is unreadable or invalid; the message lists every problem found."""


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
    """Tokens per training block. 128 keeps a CPU step short; must not exceed the model's `n_positions` (1024)."""


@dataclass(frozen=True)
class FinetuneParams:
    method: Literal["freeze", "lora", "full"] = "freeze"
    """`freeze` (the original script's method) trains the parts of GPT-2 the `freeze` section names; `lora` keeps
    the whole pretrained model frozen, head and tied embedding included, and trains low-rank adapters (the `lora`
    section), merged into the weights they adapt for the saved model; `full` trains every parameter, the position
    embedding too (the reference point a freezing study measures against). With `lora` or `full` the `freeze`
    section is not read."""


@dataclass(frozen=True)
class FreezeParams:
    trainable_blocks: int = 1
    """How many of the last transformer blocks train; the original script trained only the last one."""
    train_ln_f: bool = False
    """Whether the final LayerNorm trains; off, as in the original script (45,685,248 trainable on GPT-2 small)."""
    head: Literal["tied", "untied", "frozen"] = "tied"
    """GPT-2 ties `lm_head` to the input embedding `wte`. `tied` (the original script) trains both, so gradients
    flow back through every frozen block; `untied` trains a copy of `wte` as the head and keeps the input
    embedding frozen; `frozen` trains neither."""


LoraTarget = Literal["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
"""A weight matrix of a GPT-2 block, by its path inside the block (not a name suffix: `c_proj` alone names two)."""
LORA_TARGETS: tuple[str, ...] = typing.get_args(LoraTarget)


@dataclass(frozen=True)
class LoraParams:
    """Method `lora` only (pipeline/training/lora.py; README "LoRA")."""

    rank: int = 8
    """Rank r of each adapter (W + B A, with A: r x fan-in and B: fan-out x r); 8 is PEFT's default and in the range
    where the LoRA paper (Hu et al., 2021, sec. 7.2) found adapted GPT-3 no worse than larger r. To match a freezing
    point's trainable count, pick r with `lora_params_per_rank` (GPT-2 small, all four matrices of all 12 blocks:
    r = 48 trains 7,077,888, against 7,087,872 for one unfrozen block)."""
    alpha: float = 16.0
    """The adapter's output is scaled by alpha / rank: 2 x rank, PEFT's usual example. As the LoRA paper (sec. 4.1)
    does, keep it fixed when rank changes: with Adam, tuning alpha is about the same as tuning the learning rate."""
    dropout: float = 0.1
    """Dropout on the adapters' input, in [0, 1): 0.1, GPT-2's own dropout rate (`resid_pdrop`), so the adapters are
    regularized as the weights beside them were in pretraining; QLoRA (Dettmers et al., 2023, App. A) found LoRA
    dropout helps smaller models."""
    target_modules: list[LoraTarget] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))
    """The block matrices that get an adapter: all four by default, since adapting every matrix, MLP included, beat
    attention-only adapters in QLoRA (Dettmers et al., 2023, sec. 4). `attn.c_attn` is q, k and v fused in one
    matrix, so GPT-2 cannot adapt q and v alone as the LoRA paper did."""
    adapted_blocks: int | None = None
    """Adapters in the last N blocks only; null puts them in every block (LoRA's usual setting). Fewer blocks leave a
    frozen prefix, which `train.cache_frozen_prefix` can skip, and a shorter backward pass."""


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    """Seeds Python, NumPy, torch and the Trainer's data order."""
    epochs: float = 1.0
    """Passes over the training blocks; one is enough to see the gain of tuning the last block."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides `epochs`); null trains for `epochs`."""
    batch_size: int = 8
    """Blocks per micro-batch; 8 x 128 tokens keeps a 2-core CPU busy without waiting on memory."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; raise it to get a larger effective batch in the same memory."""
    processes: int = 1
    """Training processes (torch.distributed ranks, each with its own shard of every batch; docs/distributed.md).
    `batch_size` stays per process: the global batch is batch_size x grad_accum_steps x processes, so halve
    `batch_size` when doubling this to train the same run. 1 is the plain single process, the only choice on a
    2-core machine that gains (docs/performance.md)."""
    learning_rate: float = 5.0e-5
    """AdamW peak learning rate, the Trainer's default and a safe one for fine-tuning GPT-2."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up (the Trainer's names)."""
    warmup_steps: int = 0
    """Linear warm-up steps; the pretrained weights need none for this small learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay; zero, as in the Trainer's defaults."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (the Trainer's default)."""
    bf16: bool = True
    """bf16 autocast with fp32 master weights where the hardware has bf16 arithmetic (its matmuls run several times
    faster there; docs/performance.md); ignored, with a warning, where it does not."""
    attention: Literal["eager", "sdpa"] = "eager"
    """Attention kernel while training (transformers' `attn_implementation`). `eager`, because on a CPU `sdpa`'s
    fused backward is slower at short sequences; use `sdpa` past 512-token blocks (the stage warns; it keeps no
    T x T attention maps) and on a GPU. Measured in docs/performance.md. Evaluate always uses the model's default."""
    logging_steps: int = 10
    """Optimizer steps between points of the training curve."""
    eval_steps: int | None = 200
    """Optimizer steps between validation losses (the validation curve, pipeline/training/validation.py); null: no
    validation during training. Every 200 steps of 64 blocks costs GPT-2 small a few percent of training time
    (docs/performance.md)."""
    eval_blocks: int | None = 64
    """The validation subset scored at each point: the first N blocks of the tokenized validation split (a fixed
    subset, so points compare); null scores the whole split."""
    early_stopping_patience: int | None = None
    """Stop when this many validation points in a row bring no lower loss, and keep the weights of the best one;
    null trains to the end and keeps the last weights. Needs `eval_steps`."""
    cache_frozen_prefix: bool = False
    """With head `untied` or `frozen`, or method lora (its prefix: the blocks below `lora.adapted_blocks`), compute
    the frozen embedding + blocks once and train the tail on their cached output (frozen blocks run without dropout
    either way, pipeline/training/trainee.py). Same loss as uncached; costs tokens x n_embd x 4 bytes on disk (7.4 GB
    for Wikitext-2 train on GPT-2 small), so it is opt-in. Ignored with the `tied` head."""
    deterministic: bool = True
    """`torch.use_deterministic_algorithms`, and on a GPU the cuBLAS workspace it needs (trainer_setup.py): reruns
    on the same machine and thread count give bitwise-identical weights; docs/performance.md gives its measured
    cost."""
    checkpoint_steps: int | None = 200
    """Optimizer steps between checkpoints (weights, optimizer, scheduler, RNG states, data position), which a rerun
    after a crash resumes from: a kill loses at most this many steps, and each save writes about 0.9 GB for GPT-2
    small, so not much more often. null: a checkpoint only on SIGINT/SIGTERM. Not in the checkpoint key: it does
    not change what training computes."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept per configuration; two, so one found corrupt on resume has one to fall back to."""

    @property
    def global_batch_size(self) -> int:
        """Blocks per optimizer step, over every process and micro-batch."""
        return self.batch_size * self.grad_accum_steps * self.processes


@dataclass(frozen=True)
class EvaluateParams:
    context: int = 1024
    """Tokens fed per eval window, cut from each split's whole token stream (not the training blocks). GPT-2's full
    1,024 positions, as published perplexities use (docs/evaluation.md); at most the model's `n_positions`, and
    no more than it was trained on: a longer window than the model learned scores worse, not better."""
    stride: int = 512
    """New tokens scored per window (every token but the first is scored once); each has at least `context - stride`
    tokens of context. 512 is HF's "Perplexity of fixed-length models" setting and costs about twice as much as
    `stride = context` (disjoint windows); docs/evaluation.md says which published number each matches."""
    batch_size: int = 8
    """Windows per forward pass; memory stays flat in the eval set size whatever this is."""
    bf16: bool = False
    """Evaluate in fp32 by default so base and fine-tuned numbers are exact and comparable across machines."""


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
class Params:
    mlflow: TrackingParams
    data: DataParams
    model: ModelParams
    tokenize: TokenizeParams
    finetune: FinetuneParams
    freeze: FreezeParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    samples: SamplesParams

    @classmethod
    def defaults(cls) -> Params:
        """Every section at its documented defaults (params.yaml's values), for code that builds params itself."""
        return cls(**{name: section() for name, section in typing.get_type_hints(cls).items()})

    def flat(self) -> dict[str, Any]:
        """`{"train.learning_rate": 5e-05, ...}`: the form MLflow params and `dvc exp show` columns take."""
        return {
            f"{section}.{key}": value
            for section, values in dataclasses.asdict(self).items()
            for key, value in values.items()
        }

    def digest(self) -> str:
        """A short, stable hash of every param value: names one configuration in MLflow tags."""
        canonical = json.dumps(self.flat(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_params(path: str | Path, load_model_config: Callable[[str], Any] | None = None) -> Params:
    """Read and validate params.yaml; with `load_model_config`, also check the params against the model's config.

    Raises ParamsError naming every problem at once.
    """
    raw = _read_yaml(Path(path))
    issues: list[str] = []
    sections: dict[str, Any] = {}
    section_types = typing.get_type_hints(Params)
    for name in raw.keys() - section_types.keys():
        issues.append(f"{name}: unknown section (known: {', '.join(section_types)})")
    for name, section_type in section_types.items():
        if name not in raw:
            issues.append(f"{name}: missing section")
        elif not isinstance(raw[name], dict):
            issues.append(f"{name}: must be a mapping of keys, got {type(raw[name]).__name__}")
        else:
            section_issues = _section_issues(name, raw[name], section_type)
            issues.extend(section_issues)
            if not section_issues:
                sections[name] = section_type(**raw[name])
    if not issues:
        params = Params(**sections)
        issues.extend(_non_finite_issues(params) + _range_issues(params))
        issues.extend(_untracked_input_issues(params))
        if load_model_config is not None:
            issues.extend(_model_config_issues(params, load_model_config))
    if issues:
        raise ParamsError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return params


def read_overrides(path: str | Path) -> dict[str, Any]:
    """A params profile (profiles/*.yaml): sections of params.yaml holding only the keys that differ, returned as
    dotted keys (`{"train.batch_size": 16}`), the form `dvc exp run -S` takes. Unknown keys and wrong types are
    refused, all at once, as in `load_params`."""
    raw = _read_yaml(Path(path))
    section_types = typing.get_type_hints(Params)
    overrides, issues = {}, []
    for section, values in raw.items():
        if section not in section_types or not isinstance(values, dict):
            issues.append(f"{section}: not a section of params.yaml with keys under it")
            continue
        fields = typing.get_type_hints(section_types[section])
        for key, value in values.items():
            if key not in fields:
                issues.append(f"{section}.{key}: unknown key (known: {', '.join(fields)})")
            elif not _matches(value, fields[key]):
                issues.append(f"{section}.{key}: expected {_describe(fields[key])}, got {value!r}")
            overrides[f"{section}.{key}"] = value
    if issues:
        raise ParamsError(f"{path} has {len(issues)} problem(s):\n" + "\n".join(f"  - {i}" for i in issues))
    return overrides


def hydra_overrides(overrides: dict[str, Any]) -> list[str]:
    """`key=value` strings in the override grammar of `dvc exp run -S` (YAML's null and lower-case booleans)."""

    def text(value: Any) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{key}={text(value)}" for key, value in overrides.items()]


def _model_config_issues(params: Params, load_model_config: Callable[[str], Any]) -> list[str]:
    try:
        config = load_model_config(params.model.name_or_path)
    except UserError as error:
        return [str(error)]
    return model_issues(params, config)


def model_issues(params: Params, config: Any) -> list[str]:
    """Problems that only the model's config can reveal (its context length and depth)."""
    issues = []
    if params.tokenize.block_size > config.n_positions:
        issues.append(
            f"tokenize.block_size: {params.tokenize.block_size} exceeds the model's n_positions "
            f"({config.n_positions}); positions past it have no embedding"
        )
    if params.evaluate.context > config.n_positions:
        issues.append(
            f"evaluate.context: {params.evaluate.context} exceeds the model's n_positions ({config.n_positions}); "
            "positions past it have no embedding"
        )
    adapted = params.lora.adapted_blocks
    if params.finetune.method == "lora" and adapted is not None and adapted > config.n_layer:
        issues.append(f"lora.adapted_blocks: {adapted} exceeds the model's n_layer ({config.n_layer})")
    if params.finetune.method == "freeze" and params.freeze.trainable_blocks > config.n_layer:
        issues.append(
            f"freeze.trainable_blocks: {params.freeze.trainable_blocks} exceeds the model's n_layer ({config.n_layer})"
        )
    return issues


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repo root, where params.yaml lives") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (mlflow, data, model, ...), got {type(raw).__name__}")
    return raw


def _section_issues(section: str, values: dict[str, Any], section_type: type) -> list[str]:
    fields = typing.get_type_hints(section_type)
    issues = [f"{section}.{key}: unknown key (known: {', '.join(fields)})" for key in values.keys() - fields.keys()]
    for key, annotation in fields.items():
        if key not in values:
            issues.append(f"{section}.{key}: missing (default would be {_default(section_type, key)!r})")
        elif not _matches(values[key], annotation):
            issues.append(f"{section}.{key}: expected {_describe(annotation)}, got {values[key]!r}")
    return issues


def _default(section_type: type, key: str) -> Any:
    field = next(f for f in dataclasses.fields(section_type) if f.name == key)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is float:  # YAML writes 1 for 1.0; `bool` is an int subclass but never a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return "null" if annotation is type(None) else annotation.__name__


def _non_finite_issues(params: Params) -> list[str]:
    """Every float param, wherever it sits, must be a number: YAML reads `.inf` and `.nan` as floats, which pass
    every range check (`nan <= 0` is false) and then train to NaN weights, or fail deep inside the optimizer."""
    issues = []
    for key, value in params.flat().items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            issues.append(f"{key}: must be a finite number, got {value}")
    return issues


def _untracked_input_issues(params: Params) -> list[str]:
    """Local inputs must lie where dvc.yaml tracks them (pipeline/input_paths.py); Hub ids are not paths."""
    candidates = []
    if is_local_path(params.model.name_or_path):
        candidates.append(("model.name_or_path", params.model.name_or_path, "models"))
    if params.data.source == "local":
        files = {f"data.{split}_file": params.data.split_file(split) for split in SPLITS}
        candidates += [(key, path, "corpus") for key, path in files.items() if path is not None]
        if params.data.single_file is not None:
            candidates.append(("data.single_file", params.data.single_file, "corpus"))
    elif is_local_path(params.data.hub_dataset):
        candidates.append(("data.hub_dataset", params.data.hub_dataset, "corpus"))
    issues = [untracked_path_issue(key, path, kind) for key, path, kind in candidates]
    return [issue for issue in issues if issue is not None]


def _range_issues(params: Params) -> list[str]:
    issues = []
    positive = {
        "tokenize.block_size": params.tokenize.block_size,
        "train.batch_size": params.train.batch_size,
        "train.grad_accum_steps": params.train.grad_accum_steps,
        "train.processes": params.train.processes,
        "train.learning_rate": params.train.learning_rate,
        "train.epochs": params.train.epochs,
        "train.logging_steps": params.train.logging_steps,
        "train.max_grad_norm": params.train.max_grad_norm,
        "train.keep_checkpoints": params.train.keep_checkpoints,
        "evaluate.batch_size": params.evaluate.batch_size,
        "samples.max_new_tokens": params.samples.max_new_tokens,
        "evaluate.context": params.evaluate.context,
        "evaluate.stride": params.evaluate.stride,
    }
    optional_positive = {
        "train.max_steps": params.train.max_steps,
        "train.checkpoint_steps": params.train.checkpoint_steps,
        "train.eval_steps": params.train.eval_steps,
        "train.eval_blocks": params.train.eval_blocks,
        "train.early_stopping_patience": params.train.early_stopping_patience,
    }
    optional_positive |= {f"data.max_{split}_lines": params.data.max_lines(split) for split in SPLITS}
    issues += [f"{key}: must be > 0, got {value}" for key, value in positive.items() if value <= 0]
    issues += [
        f"{key}: must be > 0 or null, got {v}" for key, v in optional_positive.items() if v is not None and v <= 0
    ]
    non_negative = {
        "freeze.trainable_blocks": params.freeze.trainable_blocks,
        "train.warmup_steps": params.train.warmup_steps,
        "train.weight_decay": params.train.weight_decay,
    }
    issues += [f"{key}: must be >= 0, got {value}" for key, value in non_negative.items() if value < 0]
    # A window or block of one token holds no next token to predict: training on it is 0 loss for nothing.
    one_token = {"tokenize.block_size": params.tokenize.block_size, "evaluate.context": params.evaluate.context}
    for key, value in one_token.items():
        if value == 1:
            issues.append(f"{key}: must be >= 2 (a block of 1 token has no next token to predict), got 1")
    if not all(prompt.strip() for prompt in params.samples.prompts):
        issues.append("samples.prompts: every prompt must hold some text (an empty one has nothing to continue)")
    if params.mlflow.registered_model is not None and not params.mlflow.log_model:
        issues.append("mlflow.registered_model needs mlflow.log_model: true (a version is made from the logged model)")
    if params.evaluate.stride > params.evaluate.context:
        issues.append(
            f"evaluate.stride: {params.evaluate.stride} exceeds evaluate.context ({params.evaluate.context}); "
            "a window cannot score more tokens than it holds"
        )
    if params.train.early_stopping_patience is not None and params.train.eval_steps is None:
        issues.append("train.early_stopping_patience: needs train.eval_steps (validation points to stop on)")
    freeze = params.freeze  # what it trains matters under method freeze only; with lora it is not read
    trains_nothing = freeze.trainable_blocks == 0 and freeze.head == "frozen" and not freeze.train_ln_f
    if params.finetune.method == "freeze" and trains_nothing:
        issues.append(
            "freeze: trainable_blocks 0, head frozen and train_ln_f false train nothing; let at least one of them "
            "train (trainable_blocks >= 1, head tied or untied, or train_ln_f true)"
        )
    return issues + _lora_issues(params.lora) + _data_source_issues(params.data)


def _lora_issues(lora: LoraParams) -> list[str]:
    """Checked whatever the method, as the freeze section is: a section params.yaml holds is valid or refused."""
    issues = [f"lora.{key}: must be > 0, got {value}" for key, value in (("rank", lora.rank), ("alpha", lora.alpha))
              if value <= 0]  # fmt: skip
    if not 0 <= lora.dropout < 1:
        issues.append(f"lora.dropout: must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules or len(set(lora.target_modules)) != len(lora.target_modules):
        issues.append(f"lora.target_modules: one or more of {', '.join(LORA_TARGETS)}, each once; got "
                      f"{lora.target_modules}")  # fmt: skip
    if lora.adapted_blocks is not None and lora.adapted_blocks <= 0:
        issues.append(f"lora.adapted_blocks: must be > 0 or null (every block), got {lora.adapted_blocks}")
    return issues


def _data_source_issues(data: DataParams) -> list[str]:
    if data.source == "hub":
        return []
    per_split = {split: data.split_file(split) for split in SPLITS}
    if data.single_file is None and None in per_split.values():
        missing = [f"data.{split}_file" for split, path in per_split.items() if path is None]
        return [f"data.source is local: set data.single_file, or every split's file ({', '.join(missing)} unset)"]
    if data.single_file is not None and any(per_split.values()):
        return ["data.single_file and data.<split>_file are both set: choose one way to give local text"]
    if data.single_file is not None:
        fractions = data.split_fractions
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            return [f"data.split_fractions: three positive train/validation/test shares summing to 1, got {fractions}"]
    return []
