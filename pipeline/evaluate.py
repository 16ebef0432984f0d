"""Stage 4, evaluate: loss, perplexity and next-token accuracy on the validation and test blocks.

dvc.yaml runs this module twice. `--model base` scores the pretrained model before fine-tuning (stage
`evaluate_base`: it depends only on the model and the data, so DVC caches it across train-param changes).
`--model <folder>` scores the fine-tuned model and reports it beside the base numbers, with the gain, and writes
fixed-prompt continuations of both models side by side (`--samples`). It is the last stage, so it also puts the
final metrics and parameter counts on the pipeline's MLflow group run, and its scores on the logged model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.data.corpus import read_splits
from pipeline.data.files import flatten_metrics, read_json, write_json, write_text_atomic
from pipeline.data.loading import load_config, load_model, load_tokenizer
from pipeline.evaluation.lm_metrics import score_blocks
from pipeline.evaluation.samples import side_by_side
from pipeline.params import Params, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.models import record_evaluation
from pipeline.tracking.runs import stage_run

log = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")
BASE_MODEL = "base"
PARAMS = {
    "evaluate_base": ("model.name_or_path", "evaluate"),
    "evaluate": ("model.name_or_path", "evaluate", "samples"),
}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""


def evaluate(model, tokenized_dir: Path, params: Params) -> dict[str, dict[str, float]]:
    """Scores of `model` on each eval split's packed blocks."""
    splits = read_splits(tokenized_dir, EVAL_SPLITS)
    results = {}
    for split, dataset in splits.items():
        blocks = dataset.with_format("torch")[:]["input_ids"]
        results[split] = score_blocks(model, blocks, params.evaluate.batch_size, params.evaluate.bf16).as_dict()
    return results


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
    parser.add_argument("--tokenized", type=Path, required=True, help="folder of packed <split>.parquet")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file for the scores")
    parser.add_argument("--base-metrics", type=Path, help="the base model's scores (fine-tuned evaluation only)")
    parser.add_argument("--train-metrics", type=Path, help="train's metrics, for the group run (fine-tuned only)")
    parser.add_argument("--samples", type=Path, help="Markdown of base vs fine-tuned continuations (fine-tuned only)")
    args = parser.parse_args(argv)
    is_base = args.model == BASE_MODEL
    if not is_base and not (args.base_metrics and args.train_metrics and args.samples):
        parser.error("a fine-tuned model needs --base-metrics, --train-metrics and --samples")
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config if is_base else None)
        model_path = params.model.name_or_path if is_base else args.model
        inputs = (
            [args.tokenized] if is_base else [args.tokenized, Path(args.model), args.base_metrics, args.train_metrics]
        )
        stage = "evaluate_base" if is_base else "evaluate"
        with stage_run(stage, params, PARAMS[stage], inputs=inputs, closes_group=not is_base) as run:
            model = load_model(model_path)
            scores = evaluate(model, args.tokenized, params)
            if is_base:
                report = scores
            else:
                base = read_json(args.base_metrics)
                report = {"finetuned": scores, "base": base, "gain": gain(base, scores)}
                trained = read_json(args.train_metrics)
                counts = {key: value for key, value in trained["parameters"].items() if key != "modules"}
                run.log_group_metrics(
                    flatten_metrics({**report, "params": counts, "train_loss": trained["train_loss"]})
                )
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
            run.log_metrics(flatten_metrics(report))
            if not is_base:
                record_evaluation(run, Path(args.model), params, report, trained["parameters"])
        print(summary_table(report if not is_base else {"base": report}))


def summary_table(report: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = [f"{'model':<10} {'split':<11} {'loss':>8} {'perplexity':>11} {'accuracy':>9} {'tokens':>10}"]
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
