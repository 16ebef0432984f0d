"""The sections of params.yaml that say how the model is fine-tuned: the method, what freezing trains, LoRA's
adapters, and the optimizer and loop. Every field says what it does and why its default is what it is."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FinetuneParams:
    method: Literal["freeze", "lora", "full"] = "freeze"
    """`freeze` (the original script's method) trains the parts of the model the `freeze` section names; `lora` keeps
    the whole pretrained model frozen, head and input embedding included, and trains low-rank adapters (the `lora`
    section), merged into the weights they adapt for the saved model; `full` trains every parameter, the position
    embedding too where the family has one (the reference point a freezing study measures against). With `lora` or
    `full` the `freeze` section is not read."""


@dataclass(frozen=True)
class FreezeParams:
    trainable_blocks: int = 1
    """How many of the last transformer blocks train; the original script trained only the last one."""
    train_ln_f: bool = False
    """Whether the final norm trains (GPT-2's `ln_f`, the Llama family's RMSNorm `norm`, GPT-NeoX's
    `final_layer_norm`); off, as in the original script (45,685,248 trainable on GPT-2 small)."""
    head: Literal["tied", "untied", "frozen"] = "tied"
    """What trains of the head and the input embedding. GPT-2 ties them (one tensor; so do SmolLM2, Qwen2.5-0.5B and
    Llama-3.2-1B), Pythia and larger Llama-family models do not. `tied` (the original script) trains head and input
    embedding, the one shared tensor or both tensors of an untied model, so gradients flow back through every frozen
    block; `untied` trains the head alone (on a tied model, a copy of the embedding that becomes the head, and the
    saved model is untied) and keeps the input embedding frozen; `frozen` trains neither."""


LoraTarget = Literal["attn_qkv", "attn_out", "mlp_in", "mlp_out"]
"""A role of a block's weight matrices, the same on every family (pipeline/training/lora.py maps each to the family's
matrices): `attn_qkv` the attention's query, key and value projections (GPT-2's fused `attn.c_attn`, GPT-NeoX's
`attention.query_key_value`, the Llama family's `q_proj`, `k_proj`, `v_proj`), `attn_out` its output projection,
`mlp_in` the MLP's input matrices (the Llama family's `gate_proj` and `up_proj`), `mlp_out` its output matrix."""
LORA_TARGETS: tuple[str, ...] = typing.get_args(LoraTarget)


@dataclass(frozen=True)
class LoraParams:
    """Method `lora` only (pipeline/training/lora.py; README "LoRA")."""

    rank: int = 8
    """Rank r of each adapter (W + B A, with A: r x fan-in and B: fan-out x r); 8 is PEFT's default and in the range
    where the LoRA paper (Hu et al., 2021, sec. 7.2) found adapted GPT-3 no worse than larger r. To match a freezing
    point's trainable count, pick r with `lora_params_per_rank` (GPT-2 small, all four roles of all 12 blocks:
    r = 48 trains 7,077,888, against 7,087,872 for one unfrozen block)."""
    alpha: float = 16.0
    """The adapter's output is scaled by alpha / rank: 2 x rank, PEFT's usual example. As the LoRA paper (sec. 4.1)
    does, keep it fixed when rank changes: with Adam, tuning alpha is about the same as tuning the learning rate."""
    dropout: float = 0.1
    """Dropout on the adapters' input, in [0, 1): 0.1, GPT-2's own dropout rate (`resid_pdrop`), so the adapters are
    regularized as the weights beside them were in pretraining; QLoRA (Dettmers et al., 2023, App. A) found LoRA
    dropout helps smaller models."""
    target_modules: list[LoraTarget] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))
    """The roles whose matrices get an adapter (see `LoraTarget`): all four by default, since adapting every matrix,
    MLP included, beat attention-only adapters in QLoRA (Dettmers et al., 2023, sec. 4). Roles, not matrix names, so
    one params.yaml fits every family; GPT-2 and GPT-NeoX fuse q, k and v in one matrix, so q and v alone (the LoRA
    paper's choice) is not a role."""
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
    either way, pipeline/training/trainee.py). Same loss as uncached; costs tokens x hidden size x 4 bytes on disk
    (7.4 GB for Wikitext-2 train on GPT-2 small), so it is opt-in. Ignored with the `tied` head."""
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
