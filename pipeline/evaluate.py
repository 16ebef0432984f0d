"""Stage 4, evaluate: loss, perplexity and next-token accuracy on the validation and test token streams.

dvc.yaml runs this module twice. `--model base` scores the pretrained model before fine-tuning (stage
`evaluate_base`: it depends only on the model and the data, so DVC caches it across train-param changes).
`--model <folder>` scores the fine-tuned model and reports it beside the base numbers, with the gain, and writes
fixed-prompt continuations of both models side by side (`--samples`). It is the last stage, so it also puts the
final metrics, parameter counts and the harness stage's lm-eval scores (`--harness-metrics`) on the pipeline's
MLflow group run, and its scores on the logged model.
Both score windows of `evaluate.context` tokens sliding by `evaluate.stride` over each split's whole stream
(pipeline/evaluation/lm_metrics.py) and record that protocol beside the scores: numbers are comparable only
under the same one (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.activations import fuse_gelu_new
from pipeline.data.corpus import read_splits
from pipeline.data.files import flatten_metrics, read_json, write_json, write_text_atomic
from pipeline.data.loading import load_config, load_model, load_tokenizer
from pipeline.errors import UserError
from pipeline.evaluation.lm_metrics import score_stream
from pipeline.evaluation.samples import side_by_side
from pipeline.params import EVAL_SPLITS, Params, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.models import record_evaluation
from pipeline.tracking.runs import stage_run

log = logging.getLogger(__name__)

BASE_MODEL = "base"
PARAMS = {
    "evaluate_base": ("model.name_or_path", "evaluate"),
    "evaluate": ("model.name_or_path", "evaluate", "samples"),
}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""


def evaluate(model, streams_dir: Path, params: Params) -> dict[str, dict[str, float]]:
    """Scores of `model` on each eval split's whole token stream, under the evaluate.* protocol."""
    config = params.evaluate
    if config.bf16:
        # bf16 scores are within 1e-4 nats of fp32 ones, not equal to them; the one-kernel GELU differs by one fp32
        # rounding, far inside that, and saves a quarter of a bf16 window's time (docs/performance.md). In fp32 the
        # model runs as its config builds it, so scores stay equal to those recorded before.
        fuse_gelu_new(model)
    results = {}
    for split, dataset in read_splits(streams_dir, EVAL_SPLITS).items():
        tokens = dataset.with_format("torch")["input_ids"]
        scores = score_stream(model, tokens, config.context, config.stride, config.batch_size, config.bf16)
        results[split] = scores.as_dict()
    return results


def protocol(params: Params) -> dict[str, int]:
    """What makes two perplexities comparable: the window fed and the new tokens scored per window."""
    return {"context": params.evaluate.context, "stride": params.evaluate.stride}


def base_scores(path: Path, params: Params) -> dict[str, dict[str, float]]:
    """The base model's scores from `path`, refused if they were measured under another protocol."""
    base = read_json(path)
    if base.get("protocol") != protocol(params):
        raise UserError(
            f"{path} was scored with {base.get('protocol')}, not evaluate.* {protocol(params)}: "
            "rerun the evaluate_base stage (`dvc repro`)"
        )
    return {split: base[split] for split in EVAL_SPLITS}


def gain(base: dict[str, dict[str, float]], finetuned: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """How much fine-tuning helped: perplexity ratio (base / fine-tuned), accuracy points and loss drop."""
    return {
        split: {
            "perplexity_ratio": base[split]["perplexity"] / finetuned[split]["perplexity"],
            "accuracy_gain": finetuned[split]["accuracy"] - base[split]["accuracy"],
            "loss_drop": base[split]["loss"] - finetuned[split]["loss"],
        }
        for split in finetuned
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", required=True, help=f"'{BASE_MODEL}' (model.name_or_path) or a model folder")
    parser.add_argument("--streams", type=Path, required=True, help="folder of the eval splits' token streams")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file for the scores")
    parser.add_argument("--base-metrics", type=Path, help="the base model's scores (fine-tuned evaluation only)")
    parser.add_argument("--train-metrics", type=Path, help="train's metrics, for the group run (fine-tuned only)")
    parser.add_argument("--samples", type=Path, help="Markdown of base vs fine-tuned continuations (fine-tuned only)")
    parser.add_argument("--harness-metrics", type=Path, help="the harness stage's scores, for the runs (fine-tuned)")
    args = parser.parse_args(argv)
    is_base = args.model == BASE_MODEL
    if not is_base and not (args.base_metrics and args.train_metrics and args.samples):
        parser.error("a fine-tuned model needs --base-metrics, --train-metrics and --samples")
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config if is_base else None)
        model_path = params.model.name_or_path if is_base else args.model
        inputs = [args.streams] if is_base else [args.streams, Path(args.model), args.base_metrics, args.train_metrics]
        stage = "evaluate_base" if is_base else "evaluate"
        with stage_run(stage, params, PARAMS[stage], inputs=inputs, closes_group=not is_base) as run:
            model = load_model(model_path)
            scores = evaluate(model, args.streams, params)
            if is_base:
                report = {**scores, "protocol": protocol(params)}
            else:
                base = base_scores(args.base_metrics, params)
                report = {"finetuned": scores, "base": base, "gain": gain(base, scores), "protocol": protocol(params)}
                trained = read_json(args.train_metrics)
                counts = {key: value for key, value in trained["parameters"].items() if key != "modules"}
                harness = harness_metrics(args.harness_metrics) if args.harness_metrics else {}
                run.log_group_metrics(
                    flatten_metrics({**scored(report), "params": counts, "train_loss": trained["train_loss"]}) | harness
                )
                run.log_metrics(harness)
                samples = side_by_side(
                    load_model(params.model.name_or_path),
                    model,
                    load_tokenizer(args.model),
                    params.samples.prompts,
                    params.samples.max_new_tokens,
                )
                write_text_atomic(args.samples, samples)
                run.log_artifact(args.samples)
            write_json(args.metrics, report)
            run.log_metrics(flatten_metrics(scored(report)))
            if not is_base:
                record_evaluation(run, Path(args.model), params, scored(report), trained["parameters"])
        print(summary_table(report if not is_base else {"base": report, "protocol": report["protocol"]}))


def harness_metrics(path: Path) -> dict[str, float]:
    """metrics/harness.json's numbers as `harness.*` MLflow metrics: this stage closes the group run, so the
    lm-eval scores reach it here (the harness stage runs before, and reads no file this one writes)."""
    report = read_json(path)
    flat = flatten_metrics({key: report[key] for key in ("retention", "retention_mean", "finetuned", "difference")})
    return {f"harness.{key}": value for key, value in flat.items() if isinstance(value, int | float)}


def scored(report: dict[str, dict]) -> dict[str, dict]:
    """The report without its protocol, which MLflow already has as the evaluate.* params of the run."""
    return {key: value for key, value in report.items() if key != "protocol"}


def summary_table(report: dict[str, dict]) -> str:
    context, stride = report["protocol"]["context"], report["protocol"]["stride"]
    rows = [f"windows of {context} tokens, {stride} scored per window (evaluate.context, evaluate.stride)"]
    rows.append(f"{'model':<10} {'split':<11} {'loss':>8} {'perplexity':>11} {'accuracy':>9} {'tokens':>10}")
    for model in ("base", "finetuned"):
        for split in EVAL_SPLITS if model in report else ():
            scores = report[model][split]
            rows.append(
                f"{model:<10} {split:<11} {scores['loss']:>8.4f} {scores['perplexity']:>11.2f} "
                f"{scores['accuracy']:>9.4f} {scores['tokens']:>10,}"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
