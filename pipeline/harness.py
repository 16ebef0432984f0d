"""Stage 5, harness: lm-evaluation-harness scores of the base and the fine-tuned model, and what fine-tuning kept.

dvc.yaml runs this module twice, as it runs evaluate. `--model base` scores the pretrained model (stage
`harness_base`: it depends only on the model and the tasks, so DVC caches it across train-param changes).
`--model <folder>` scores the fine-tuned model and writes it beside the base scores with their difference per task
and metric, and `retention`: per retention task, fine-tuned minus base accuracy (negative: forgotten). The target
tasks give the Wikitext numbers papers quote (word perplexity, bits per byte), which the evaluate stage's token
perplexity is not (docs/evaluation.md). The evaluate stage puts these metrics on the pipeline's group run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pipeline.data.files import flatten_metrics, read_json, write_json
from pipeline.data.loading import load_config, load_model, load_tokenizer
from pipeline.errors import UserError
from pipeline.evaluation.harness import RETENTION_METRIC, HarnessScores, load_tasks, resolve_task_dir, run_harness
from pipeline.params import HarnessParams, load_params
from pipeline.tracking.cli import exit_on_user_error
from pipeline.tracking.runs import stage_run

log = logging.getLogger(__name__)

BASE_MODEL = "base"
PARAMS = {"harness_base": ("model.name_or_path", "harness"), "harness": ("harness",)}
"""The params.yaml keys each DVC stage this module runs reads (dvc.yaml lists the same; a test holds them equal)."""


def settings(harness: HarnessParams) -> dict[str, object]:
    """What makes two harness scores comparable: the tasks and the examples per task."""
    return {"target_tasks": harness.target_tasks, "retention_tasks": harness.retention_tasks, "limit": harness.limit}


def base_report(scores: HarnessScores, harness: HarnessParams) -> dict[str, object]:
    return {
        "scores": scores.scores,
        "examples": scores.examples,
        "lm_eval": {"version": scores.lm_eval_version, "task_versions": scores.task_versions},
        "settings": settings(harness),
    }


def finetuned_report(scores: HarnessScores, base: dict, harness: HarnessParams) -> dict[str, object]:
    """Fine-tuned beside base, their difference (fine-tuned - base) per task and metric, and retention: the
    difference in accuracy per retention task, flat, and its mean (what a study plots against target perplexity)."""
    if base.get("settings") != settings(harness):
        raise UserError(
            f"the base harness scores were measured with {base.get('settings')}, not harness.* {settings(harness)}: "
            "rerun the harness_base stage (`dvc repro`)"
        )
    versions = {"version": scores.lm_eval_version, "task_versions": scores.task_versions}
    if base["lm_eval"] != versions:
        raise UserError(f"the base harness scores come from lm-eval {base['lm_eval']}, not {versions}: `dvc repro`")
    difference = {
        task: {metric: value - base["scores"][task][metric] for metric, value in metrics.items()}
        for task, metrics in scores.scores.items()
    }
    missing = [task for task in harness.retention_tasks if RETENTION_METRIC not in scores.scores[task]]
    if missing:
        raise UserError(
            f"harness.retention_tasks: {', '.join(missing)} report no `{RETENTION_METRIC}`; retention compares "
            "accuracies, so move them to harness.target_tasks"
        )
    retention = {task: difference[task][RETENTION_METRIC] for task in harness.retention_tasks}
    return {
        "retention": retention,
        "retention_mean": sum(retention.values()) / len(retention) if retention else None,
        "finetuned": scores.scores,
        "base": base["scores"],
        "difference": difference,
        "examples": scores.examples,
        "lm_eval": versions,
    }


def numeric(report: dict[str, object], keys: tuple[str, ...]) -> dict[str, float]:
    """The report's numbers under `keys`, flattened for MLflow (versions and settings are not metrics)."""
    flat = flatten_metrics({key: report[key] for key in keys if key in report})
    return {key: value for key, value in flat.items() if isinstance(value, int | float) and not isinstance(value, bool)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", required=True, help=f"'{BASE_MODEL}' (model.name_or_path) or a model folder")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file for the scores")
    parser.add_argument("--base-metrics", type=Path, help="the base model's harness scores (fine-tuned only)")
    args = parser.parse_args(argv)
    is_base = args.model == BASE_MODEL
    if not is_base and not args.base_metrics:
        parser.error("a fine-tuned model needs --base-metrics")
    with exit_on_user_error():
        params = load_params(args.params, load_model_config=load_config if is_base else None)
        harness = params.harness
        model_path = params.model.name_or_path if is_base else args.model
        stage = "harness_base" if is_base else "harness"
        task_dir = [Path(harness.task_dir)] if harness.task_dir else []
        inputs = task_dir if is_base else [Path(args.model), args.base_metrics, *task_dir]
        with stage_run(stage, params, PARAMS[stage], inputs=inputs) as run:
            tasks = load_tasks(harness.target_tasks + harness.retention_tasks, resolve_task_dir(harness.task_dir))
            model = load_model(model_path).to("cuda" if torch.cuda.is_available() else "cpu")
            scores = run_harness(model, load_tokenizer(model_path), tasks, harness.limit, harness.batch_size)
            if is_base:
                report = base_report(scores, harness)
                run.log_metrics(numeric(report, ("scores",)))
            else:
                report = finetuned_report(scores, read_json(args.base_metrics), harness)
                run.log_metrics(numeric(report, ("retention", "retention_mean", "finetuned", "difference")))
            run.set_tags({"lm_eval.version": scores.lm_eval_version})
            write_json(args.metrics, report)
        print(summary_table(report["scores"]) if is_base else summary_table(report["finetuned"], report["base"]))


def summary_table(scores: dict[str, dict[str, float]], base: dict[str, dict[str, float]] | None = None) -> str:
    """One row per task and metric: the score, or base, fine-tuned and their difference."""
    columns = f"{'base':>10} {'fine-tuned':>11} {'difference':>11}" if base else "score"
    rows = [f"{'task':<20} {'metric':<16} {columns}"]
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            if base is None:
                rows.append(f"{task:<20} {metric:<16} {value:.4f}")
            else:
                was = base[task][metric]
                rows.append(f"{task:<20} {metric:<16} {was:>10.4f} {value:>11.4f} {value - was:>+11.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
