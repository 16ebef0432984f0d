"""What each of the train stage's speed-ups buys: step time as they are added one at a time.

    python -m bench.ablation [--head tied|untied|frozen] [--steps 4] [--rounds 3]

Real GPT-2-small shapes (`GPT2Config()`, random weights), the last block trainable, 8 x 128 packed blocks, bf16
autocast where supported and the Trainer's default optimizer (fused AdamW, clipping at 1.0): the train stage's
step without the Trainer around it. The first variant is the model's own loss with dropout everywhere, sdpa
attention and GPT-2's `gelu_new`; each later one adds one change of
pipeline/training/trainee.py, pipeline/training/linear_cross_entropy.py, pipeline/training/trainer_setup.py or
pipeline/training/weight_casts.py.
The variants alternate in rounds inside one process, so machine noise hits them alike; each keeps its fastest round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench import measure
from pipeline.params import FreezeParams
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.linear_cross_entropy import VOCAB_MULTIPLE
from pipeline.training.trainee import WholeModelTrainee
from pipeline.training.trainer_setup import bf16_supported, reuse_freed_memory

BATCH_SIZE, BLOCK_SIZE = 8, 128


@dataclass(frozen=True)
class Variant:
    name: str
    fused_loss: bool
    frozen_dropout: bool
    attention: str
    fused_gelu: bool
    padded_head: bool
    heap_reuse: bool
    frozen_casts: bool


VARIANTS = (
    Variant("model's own loss, dropout everywhere, sdpa, gelu_new", False, True, "sdpa", False, False, False, False),
    Variant("+ fused head and cross-entropy", True, True, "sdpa", False, False, False, False),
    Variant("+ no dropout in frozen blocks", True, False, "sdpa", False, False, False, False),
    Variant("+ eager attention", True, False, "eager", False, False, False, False),
    Variant("+ one-kernel GELU", True, False, "eager", True, False, False, False),
    Variant("+ trainable head padded to 64 rows", True, False, "eager", True, True, False, False),
    Variant("+ malloc reuses freed memory", True, False, "eager", True, True, True, False),
    Variant("+ frozen weights cast to bf16 once (the train stage)", True, False, "eager", True, True, True, True),
)


class Step:
    """One model and optimizer, switched between variants in place (the weights barely move at this rate)."""

    def __init__(self, head: str, config: GPT2Config) -> None:
        torch.manual_seed(0)
        self.model = GPT2LMHeadModel(config)
        apply_freeze_policy(self.model, FreezeParams(trainable_blocks=1, train_ln_f=False, head=head))
        blocks = self.model.transformer.h
        self.gelu_new = [block.mlp.act for block in blocks]  # before the trainee swaps them
        self.trainee = WholeModelTrainee(self.model)
        self.fused_gelu = [block.mlp.act for block in blocks]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-6, fused=True)
        self.input_ids = torch.randint(0, self.model.config.vocab_size, (BATCH_SIZE, BLOCK_SIZE))
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16_supported() else nullcontext()

    def use(self, variant: Variant) -> None:
        self.model.set_attn_implementation(variant.attention)
        activations = self.fused_gelu if variant.fused_gelu else self.gelu_new
        for block, activation in zip(self.model.transformer.h, activations, strict=True):
            block.mlp.act = activation
        self.trainee.vocab_multiple = VOCAB_MULTIPLE if variant.padded_head else 1
        self.trainee.body_forward.enabled = variant.frozen_casts
        reuse_freed_memory(variant.heap_reuse)
        self.trainee.train()
        if variant.frozen_dropout:
            for module in self.trainee.frozen_prefix:
                module.train()

    def seconds(self, variant: Variant) -> float:
        started = time.perf_counter()
        with self.autocast:
            if variant.fused_loss:
                loss = self.trainee(input_ids=self.input_ids, labels=self.input_ids).loss
            else:
                loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def run_ablation(head: str, steps: int, rounds: int, config: GPT2Config | None = None) -> dict[str, float]:
    """Fastest-round median step time of every variant, in seconds (GPT-2 small shapes unless `config`)."""
    step = Step(head, config or GPT2Config())
    best: dict[str, float] = {}
    for _ in range(rounds):
        for variant in VARIANTS:
            step.use(variant)
            step.seconds(variant)  # warm-up: this variant's kernels and allocations
            median = statistics.median(step.seconds(variant) for _ in range(steps))
            best[variant.name] = min(median, best.get(variant.name, float("inf")))
    reuse_freed_memory(False)
    return best


def format_ablation(head: str, seconds: dict[str, float]) -> str:
    first = next(iter(seconds.values()))
    tokens = BATCH_SIZE * BLOCK_SIZE
    rows = [[name, f"{step:.3f}", f"{tokens / step:,.0f}", f"{first / step:.2f}×"] for name, step in seconds.items()]
    caption = f"**Ablation**, `{head}` head, {BATCH_SIZE} × {BLOCK_SIZE}: {measure.machine_description()}."
    return caption + "\n\n" + measure.markdown_table(["variant", "s/step", "tokens/s", "vs first"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", choices=("tied", "untied", "frozen"), default="tied")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants; each keeps its fastest")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    print(format_ablation(args.head, run_ablation(args.head, args.steps, args.rounds)))


if __name__ == "__main__":
    main()
