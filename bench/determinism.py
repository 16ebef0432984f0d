"""What `train.deterministic` costs: train-step time with and without deterministic algorithms.

    python -m bench.determinism [--steps 6] [--rounds 3]

Real GPT-2-small shapes (`GPT2Config()`, random weights), the default freeze policy (last block + tied head),
batch (8 x 128) and attention, bf16 autocast where supported, through the train stage's trainee (fused head loss).
The two settings alternate in rounds inside one process, so machine noise hits both alike; the ratio is the figure
to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.params import FreezeParams, TrainParams
from pipeline.training.freeze import apply_freeze_policy
from pipeline.training.trainee import WholeModelTrainee
from pipeline.training.trainer_setup import bf16_supported, use_deterministic_algorithms

BATCH_SIZE, BLOCK_SIZE = 8, 128


def step_seconds(trainee, optimizer, input_ids: torch.Tensor, steps: int, deterministic: bool) -> float:
    """Median wall time of one optimizer step (forward, backward, AdamW) under the given setting."""
    use_deterministic_algorithms(deterministic)  # as the train stage sets it
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16_supported() else nullcontext()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast:
            loss = trainee(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both settings")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="tied"))
    model.set_attn_implementation(TrainParams().attention)
    trainee = WholeModelTrainee(model).train()
    # The Trainer's default optimizer (adamw_torch_fused).
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, fused=True)
    input_ids = torch.randint(0, model.config.vocab_size, (BATCH_SIZE, BLOCK_SIZE))
    step_seconds(trainee, optimizer, input_ids, 2, deterministic=False)  # warm-up: allocator, kernels
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for deterministic in (False, True):
            timings[deterministic].append(step_seconds(trainee, optimizer, input_ids, args.steps, deterministic))
    free, fixed = statistics.median(timings[False]), statistics.median(timings[True])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast: {bf16_supported()}")
    print(f"step time, nondeterministic: {free:.3f} s; deterministic: {fixed:.3f} s; ratio {fixed / free:.3f}")


if __name__ == "__main__":
    main()
