"""Train benchmark: the original script's way of training against this project's train stage, GPT-2 small shapes.

    python -m bench.train_bench [--steps N] [--rounds R] [--threads T]

Every setting trains a random-weights `GPT2Config()` (no download) for one untimed warm-up step and N timed
optimizer steps, each in its own process, and the table reports tokens/s, useful (non-pad) tokens/s, peak memory
and the achieved FLOP rate against GEMMs of the model's shapes measured in the same run. A configuration that
params.yaml can express is one more entry in SETTINGS; `train_setting` builds the Trainer as the train stage does
(pipeline/training/trainee.py, and the cached frozen prefix of pipeline/training/prefix_cache.py) and passes
`cached_prefix_blocks` to the FLOP count. On a CUDA GPU it also runs GPU_SETTINGS (GPT-2's full 1,024-token
context, batch 16, sdpa) and reports MFU against the GPU's datasheet peak.

On a machine that others are using, `--rounds 2` runs the settings in turn twice and keeps each one's faster round,
and `--threads 1` stops torch's two threads from waiting on each other at every op whenever another process holds
a core, which slows small steps badly (docs/performance.md says by how much, and how long a run takes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from bench import measure, workload
from pipeline.params import FreezeParams, Params
from pipeline.tracking.cli import configure_logging
from pipeline.training.assembly import build_trainer, caches_prefix, prepare_model
from pipeline.training.freeze import apply_freeze_policy, count_parameters
from pipeline.training.trainer_setup import bf16_supported

log = logging.getLogger(__name__)

DEFAULT_STEPS = 10
"""Timed optimizer steps per setting: enough for a steady median step, few enough to run by hand on a CPU."""
CORPUS_WORDS = 70_000
"""Generated training text, the offline profile's train split: about 100k tokens, 3,300 rows."""
ORIGINAL_BATCH_SIZE, ORIGINAL_GRAD_ACCUM = 1, 4
"""The original script's micro-batch and gradient accumulation."""


@dataclass(frozen=True)
class TrainSetting:
    name: str
    style: Literal["original", "project"]
    """`original`: the original script's Trainer set-up on padded rows; `project`: the train stage's, on blocks."""
    freeze: dict[str, object] = field(default_factory=dict)
    """Changes to params.yaml's `freeze:` defaults (project style)."""
    train: dict[str, object] = field(default_factory=dict)
    """Changes to params.yaml's `train:` defaults (project style)."""
    tokenize: dict[str, object] = field(default_factory=dict)
    """Changes to params.yaml's `tokenize:` defaults (project style)."""


SETTINGS = (
    TrainSetting("original-style: rows padded to 64, batch 1 × accum 4, fp32, tied head", "original"),
    TrainSetting("project defaults: tied head, bf16, 8 × 128 packed", "project"),
    TrainSetting("project, freeze.head: untied", "project", freeze={"head": "untied"}),
    TrainSetting("project, freeze.head: frozen", "project", freeze={"head": "frozen"}),
    TrainSetting(
        "project, untied head + cached frozen prefix", "project", {"head": "untied"}, {"cache_frozen_prefix": True}
    ),
    TrainSetting(
        "project, frozen head + cached frozen prefix", "project", {"head": "frozen"}, {"cache_frozen_prefix": True}
    ),
)
GPU_SIZED = {"batch_size": 16, "attention": "sdpa"}, {"block_size": 1024}
"""What a GPU user would change in params.yaml: GPT-2's full context, a batch that fills the GPU, and the fused
attention kernel (eager keeps T x T maps; see `train.attention`)."""
GPU_SETTINGS = (
    TrainSetting("project on a GPU: tied head, sdpa, 16 × 1024", "project", {}, *GPU_SIZED),
    TrainSetting(
        "project on a GPU: untied head + cached frozen prefix, sdpa, 16 × 1024",
        "project",
        freeze={"head": "untied"},
        train={**GPU_SIZED[0], "cache_frozen_prefix": True},
        tokenize=GPU_SIZED[1],
    ),
)


def settings_for_this_machine() -> tuple[TrainSetting, ...]:
    """Every setting; on a CUDA GPU also the GPU-sized ones, which would take an hour on a laptop CPU."""
    return SETTINGS + GPU_SETTINGS if torch.cuda.is_available() else SETTINGS


def project_params(setting: TrainSetting, total_steps: int) -> Params:
    """params.yaml's defaults (pipeline.params documents them), with the setting's changes and a step budget."""
    defaults = Params.defaults()
    return dataclasses.replace(
        defaults,
        freeze=dataclasses.replace(defaults.freeze, **setting.freeze),
        tokenize=dataclasses.replace(defaults.tokenize, **setting.tokenize),
        # No checkpoints: their I/O is not what this measures.
        train=dataclasses.replace(
            defaults.train, **{**setting.train, "max_steps": total_steps, "checkpoint_steps": None}
        ),
    )


def original_arguments(scratch: str, total_steps: int) -> TrainingArguments:
    """The original script's Trainer: batch 1, accumulation 4, fp32, everything else the Trainer's defaults."""
    return TrainingArguments(
        output_dir=scratch,
        per_device_train_batch_size=ORIGINAL_BATCH_SIZE,
        gradient_accumulation_steps=ORIGINAL_GRAD_ACCUM,
        max_steps=total_steps,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
    )


def train_setting(setting: TrainSetting, config: GPT2Config, inputs: dict[str, np.ndarray], steps: int) -> dict:
    """Worker, run in its own process: train one setting for 1 + `steps` optimizer steps; return its figures.

    `inputs` holds `input_ids` (and, for the original style, the padded rows' `attention_mask`), exactly as many
    rows as the steps consume, so every row is used once.
    """
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(measure.device())
    prefix_blocks = 0
    clock = measure.StepClock()
    with tempfile.TemporaryDirectory() as scratch:
        if setting.style == "original":
            apply_freeze_policy(model, FreezeParams(trainable_blocks=1, train_ln_f=False, head="tied"))
            use_bf16 = False
            # The original trained on the pads too: labels are the padded inputs, unmasked.
            rows = Dataset.from_dict({**inputs, "labels": inputs["input_ids"]}).with_format("torch")
            trainer = Trainer(
                model=model, args=original_arguments(scratch, steps + 1), train_dataset=rows, callbacks=[clock]
            )
        else:  # the train stage's own assembly; a cached prefix is built before the timed steps, as epoch 1's
            params = project_params(setting, steps + 1)
            layout = prepare_model(model, params).layout
            use_bf16 = params.train.bf16 and bf16_supported()
            if caches_prefix(params, layout):
                prefix_blocks = layout.first_trainable_block
            trainer = build_trainer(
                params,
                model,
                Dataset.from_dict({"input_ids": inputs["input_ids"]}),
                output_dir=Path(scratch),
                prefix_cache_dir=Path(scratch) / "prefix",
                use_bf16=use_bf16,
                callbacks=[clock],
            )
        trainer.train()
    micro_batch, seq_len = trainer.args.per_device_train_batch_size, inputs["input_ids"].shape[1]
    tokens_per_step = micro_batch * trainer.args.gradient_accumulation_steps * seq_len
    return {
        "setting": setting.name,
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "shape": f"{micro_batch} × {seq_len} × {trainer.args.gradient_accumulation_steps}",
        "tokens_per_step": tokens_per_step,
        "seconds_per_step": clock.seconds_per_step(),
        "flops_per_token": measure.training_flops_per_token(
            model, seq_len, cached_prefix_blocks=prefix_blocks, head_skips_last_position=setting.style == "project"
        ),
        "trainable": count_parameters(model).trainable,
        "peak_rss": measure.peak_rss_bytes(),
        "peak_gpu": measure.peak_gpu_bytes(),
    }


def setting_inputs(setting: TrainSetting, rows: list[str], tokenizer, steps: int) -> dict[str, np.ndarray]:
    """Exactly the rows (original style) or blocks (project) that 1 + `steps` optimizer steps consume."""
    if setting.style == "original":
        count = (steps + 1) * ORIGINAL_BATCH_SIZE * ORIGINAL_GRAD_ACCUM
        return workload.padded_rows(workload.sample_rows(rows, count, seed=0), tokenizer)
    params = project_params(setting, steps + 1)
    count = (steps + 1) * params.train.batch_size * params.train.grad_accum_steps
    blocks = workload.packed_blocks(rows, tokenizer, params.tokenize.block_size)
    return {"input_ids": np.resize(blocks, (count, blocks.shape[1]))}  # wraps round if the text runs out


def useful_fraction(setting: TrainSetting, rows: list[str], tokenizer) -> float:
    """Share of a step's tokens that are text. The original style draws its rows at random, so a step holds on
    average the share of all generated rows (steadier than the few rows a short run draws); blocks are all text."""
    if setting.style == "original":
        return float(workload.padded_rows(rows, tokenizer)["attention_mask"].mean())
    return 1.0


def micro_batch_tokens(settings) -> list[int]:
    """Tokens per micro-batch of the project settings: the GEMMs' row count (the original style's 64 is no
    shape a fast setting runs)."""
    project = [project_params(setting, 1) for setting in settings if setting.style == "project"]
    return sorted({params.train.batch_size * params.tokenize.block_size for params in project})


def run_benchmark(
    config: GPT2Config, steps: int, settings=SETTINGS, corpus_words: int = CORPUS_WORDS, rounds: int = 1
) -> dict:
    """Every setting in its own process, then the GEMM rates, `rounds` times in turn; each setting keeps its
    fastest round and each GEMM its best rate, so drift in the machine's load hits all of them alike. A setting
    that fails is reported with its error instead of ending the run. Returns the figures `format_report` prints."""
    rows = workload.synthetic_rows(corpus_words, seed=0)
    tokenizer = workload.synthetic_tokenizer(rows)
    inputs = {setting.name: setting_inputs(setting, rows, tokenizer, steps) for setting in settings}
    shapes = list(dict.fromkeys(  # the large square GEMM comes with every token count on a GPU
        shape for tokens in micro_batch_tokens(settings) for shape in measure.reference_gemms(config, tokens)
    ))  # fmt: skip
    fastest: dict[str, dict] = {}
    failures: dict[str, str] = {}
    gemms: dict = {}
    for round_number in range(1, rounds + 1):
        for setting in settings:
            log.info("round %d of %d: training %s for 1 + %d steps", round_number, rounds, setting.name, steps)
            try:
                result = measure.run_isolated(train_setting, setting, config, inputs[setting.name], steps)
            except Exception as error:  # one setting's failure on this machine is a finding too
                log.exception("%s failed", setting.name)
                failures[setting.name] = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
                continue
            if setting.name not in fastest or result["seconds_per_step"] < fastest[setting.name]["seconds_per_step"]:
                fastest[setting.name] = result
        gemms = measure.best_gemm_rates(shapes, gemms)
    measured = [setting for setting in settings if setting.name in fastest]
    results = [{**fastest[s.name], "useful_fraction": useful_fraction(s, rows, tokenizer)} for s in measured]
    failed = {name: error for name, error in failures.items() if name not in fastest}
    return {"steps": steps, "rounds": rounds, "results": results, "gemms": gemms, "failed": failed}


def format_report(report: dict) -> str:
    """The markdown docs/performance.md takes: settings, GEMM rates, and how FLOPs were counted."""
    results, gemms = report["results"], report["gemms"]
    best_of = f", best of {report['rounds']} rounds" if report["rounds"] > 1 else ""
    bf16_reference = max(rates[torch.bfloat16] for rates in gemms.values())
    peak = measure.datasheet_bf16_peak()  # known only for some GPUs: the MFU column's denominator
    baseline = next((r for r in results if r["setting"].startswith("original")), results[0])
    baseline_useful = baseline["tokens_per_step"] * baseline["useful_fraction"] / baseline["seconds_per_step"]
    rows, ratios = [], []
    for result in results:
        tokens_per_s = result["tokens_per_step"] / result["seconds_per_step"]
        useful_per_s = tokens_per_s * result["useful_fraction"]
        flops_per_s = result["flops_per_token"].total * tokens_per_s
        peak_gpu = f" (GPU {result['peak_gpu'] / measure.GIB:.2f})" if result["peak_gpu"] is not None else ""
        ratios.append(useful_per_s / baseline_useful)
        rows.append(
            [
                result["setting"],
                result["precision"],
                result["shape"],
                f"{result['trainable']:,}",
                f"{tokens_per_s:,.0f}",
                f"{useful_per_s:,.0f}",
                f"{useful_per_s / baseline_useful:.1f}×",
                f"{result['peak_rss'] / measure.GIB:.2f}{peak_gpu}",
                f"{result['flops_per_token'].forward / 1e6:.0f} + {result['flops_per_token'].backward / 1e6:.0f}",
                f"{flops_per_s / 1e9:,.0f}",
                f"{100 * flops_per_s / bf16_reference:.0f}%",
                *([f"{100 * flops_per_s / peak:.1f}%"] if peak else []),
            ]
        )
    headers = [
        "setting",
        "precision",
        "batch × seq × accum",
        "trainable params",
        "tokens/s",
        "useful tokens/s",
        "useful vs original",
        "peak RSS GiB",
        "MFLOP/token fwd + bwd",
        "GFLOP/s",
        "of bf16 GEMM",
        *(["MFU"] if peak else []),
    ]
    gemm_rows = [
        [" × ".join(str(n) for n in shape), f"{rates[torch.float32] / 1e9:,.0f}", f"{rates[torch.bfloat16] / 1e9:,.0f}"]
        for shape, rates in gemms.items()
    ]
    at_wikitext = baseline["useful_fraction"] / workload.WIKITEXT_TEXT_FRACTION
    others = [ratio for ratio, result in zip(ratios, results, strict=True) if result is not baseline]
    wikitext_ratios = ", ".join(f"{ratio * at_wikitext:.1f}×" for ratio in others)
    return "\n\n".join(
        [
            f"**Training**, GPT-2 small shapes (random weights), {report['steps']} timed optimizer steps (median step "
            f"time) after 1 warm-up step per setting, each setting in its own process{best_of}. "
            f"Machine: {measure.machine_description()}.",
            measure.markdown_table(headers, rows),
            f"Useful tokens are non-pad tokens: the original-style rows are {100 * baseline['useful_fraction']:.0f}% "
            "text (generated Wikitext-shaped rows, a third of them empty, padded or cut to 64); packed blocks are all "
            f"text. Wikitext-2's rows hold more ({100 * workload.WIKITEXT_TEXT_FRACTION:.0f}%, longer paragraphs): "
            f"against an original-style run on them, the other rows' ratios would be {wikitext_ratios}. "
            '"of bf16 GEMM" is the achieved FLOP rate over the best bf16 GEMM rate below, measured in the same run.'
            + (
                f" MFU is the achieved rate over this GPU's datasheet peak, {peak / 1e12:,.0f} TFLOP/s dense bf16."
                if peak
                else ""
            ),
            *(
                ["Failed here: " + "; ".join(f"{name}: `{error}`" for name, error in report["failed"].items())]
                if report.get("failed")
                else []
            ),
            measure.markdown_table(["GEMM (tokens × in × out)", "fp32 GFLOP/s", "bf16 GFLOP/s"], gemm_rows),
            measure.FLOP_COUNTING,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed optimizer steps per setting")
    parser.add_argument("--rounds", type=int, default=1, help="run every setting this many times, keep the fastest")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    configure_logging()
    measure.use_threads(args.threads)
    report = run_benchmark(GPT2Config(), args.steps, settings_for_this_machine(), rounds=args.rounds)
    print(format_report(report))


if __name__ == "__main__":
    main()
