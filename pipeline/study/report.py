"""The study's report: every point (study.csv, with its DVC experiment name and what became of it), each
configuration at its picked learning rate as mean and spread over seeds (summary.csv, study.md), and the plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.data.files import write_text_atomic
from pipeline.study.plot import plot
from pipeline.study.results import Outcome
from pipeline.study.summary import RETENTION_MEAN, Configuration, mark_front, retention_columns, scores

SCORE_COLUMNS = tuple(f"{prefix}{split}_{name}" for prefix in ("base_", "") for split in ("validation", "test")
                      for name in ("loss", "perplexity", "accuracy"))  # fmt: skip
POINT_COLUMNS = (
    "experiment", "configuration", "method", "learning_rate", "seed", "status", "reason", "picked",
    "trainable_params", "trainable_percent", "train_s", "tokens_per_s", "peak_memory_gib", *SCORE_COLUMNS,
)  # fmt: skip
AVERAGED = ("validation_loss", "validation_perplexity", "validation_accuracy", "test_loss", "test_perplexity",
            "test_accuracy", "train_s", "tokens_per_s", "peak_memory_gib")  # fmt: skip
SUMMARY_COLUMNS = (
    "configuration", "method", "learning_rate", "learning_rates", "seeds_finished", "seeds",
    "trainable_params", "trainable_percent", "base_validation_perplexity",
    *(f"{score}_{stat}" for score in AVERAGED for stat in ("mean", "std")), "pareto_params", "pareto_time",
)  # fmt: skip
"""Without the retention columns, whose per-task names depend on the study's harness tasks (`point_columns`)."""


def point_columns(retention: Sequence[str]) -> tuple[str, ...]:
    """study.csv's columns: POINT_COLUMNS, then `retention` (summary.retention_columns)."""
    return (*POINT_COLUMNS, *retention)


def summary_columns(retention: Sequence[str]) -> tuple[str, ...]:
    """summary.csv's columns: mean and sd of each retention column before the fronts, and the retention front."""
    averaged = [f"{score}_{stat}" for score in retention for stat in ("mean", "std")]
    return (*SUMMARY_COLUMNS[:-2], *averaged, *SUMMARY_COLUMNS[-2:], "pareto_retention")


def point_rows(results: Sequence[Outcome], configs: Sequence[Configuration]) -> list[dict[str, Any]]:
    """One row per point of the grid, finished or not, in grid order."""
    by_point = {id(outcome): config for config in configs for setting in config.settings
                for outcome in setting.outcomes}  # fmt: skip
    rows = []
    for outcome in results:
        config, params = by_point[id(outcome)], outcome.point.params
        picked = config.picked
        row = {"experiment": outcome.point.name, "configuration": config.label, "method": config.method,
               "learning_rate": params.train.learning_rate, "seed": params.train.seed, "status": outcome.status,
               "reason": outcome.reason,
               "picked": picked is not None and picked.learning_rate == params.train.learning_rate}  # fmt: skip
        rows.append({column: None for column in POINT_COLUMNS} | row | scores(outcome))
    return rows


def summary_rows(configs: Sequence[Configuration]) -> list[dict[str, Any]]:
    """One row per configuration at its picked learning rate, sorted by trainable parameters; fronts on the means:
    validation perplexity against trainable parameters, mean train time, and mean retention (higher is better)."""
    retention = retention_columns([outcome for config in configs for setting in config.settings
                                   for outcome in setting.outcomes])  # fmt: skip
    table = []
    for config in configs:
        picked = config.picked
        row: dict[str, Any] = {column: None for column in summary_columns(retention)}
        row |= {"configuration": config.label, "method": config.method,
                "learning_rates": " ".join(f"{setting.learning_rate:g}" for setting in config.settings)}  # fmt: skip
        if picked is not None:
            first = picked.finished[0]
            row |= {"learning_rate": picked.learning_rate, "seeds_finished": len(picked.finished),
                    "seeds": len(picked.outcomes)} | {key: scores(first)[key] for key in
                    ("trainable_params", "trainable_percent", "base_validation_perplexity")}  # fmt: skip
            for score in (*AVERAGED, *retention):
                row |= {f"{score}_mean": picked.mean(score), f"{score}_std": picked.spread(score)}
        row["at_edge"] = config.at_edge
        table.append(row)
    mark_front(table, "trainable_params", "pareto_params", quality="validation_perplexity_mean")
    mark_front(table, "train_s_mean", "pareto_time", quality="validation_perplexity_mean")
    mark_front(table, f"{RETENTION_MEAN}_mean", "pareto_retention", quality="validation_perplexity_mean",
               higher_is_better=(f"{RETENTION_MEAN}_mean",))  # fmt: skip
    return sorted(table, key=lambda row: (row["trainable_params"] is None, row["trainable_params"] or 0,
                                          row["validation_perplexity_mean"] or 0))  # fmt: skip


def to_csv(table: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_markdown(title: str, points: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
                configs: Sequence[Configuration]) -> str:  # fmt: skip
    """The header ("N of M points finished"), the configurations, every learning rate, and the unfinished points."""
    finished = sum(row["status"] == "finished" for row in points)
    lines = [f"# {title}: {finished} of {len(points)} points finished", ""]
    lines += _summary_table(summary) + _rates_table(configs) + _unfinished_table(points)
    return "\n".join(lines) + "\n"


def _summary_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    seeds = max((row["seeds"] or 0 for row in summary), default=0)
    retention = _retention_scores(summary)
    names = [score.replace(".", " ").replace("_mean", " mean") for score in retention]
    lines = [
        f"Each configuration at the learning rate with the lowest mean validation loss over its seeds ({seeds} per "
        "learning rate; test scores never choose), in bold among its candidates; mean ± sample standard deviation "
        "over seeds. ★: on the Pareto front of mean validation perplexity against trainable parameters, or against "
        "mean train time" + (", or against mean retention (fine-tuned minus base accuracy on each lm-eval retention "
        "task, negative where the model forgot; higher is better)." if retention else "."), "",
        "| configuration | trainable | share % | learning rate | seeds | val loss | val ppl | val acc | test ppl | "
        f"test acc | train s | {''.join(f'{name} | ' for name in names)}front (params) | front (time) |"
        + (" front (retention) |" if retention else ""),
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(retention) + ":---:|:---:|"
        + (":---:|" if retention else ""),
    ]  # fmt: skip
    for row in summary:
        picked = f"{row['learning_rate']:g}" if row["learning_rate"] is not None else None
        rates = " · ".join(f"**{rate}**" if rate == picked else rate for rate in row["learning_rates"].split())
        cells = [row["configuration"], _cell(row["trainable_params"]), _cell(row["trainable_percent"]),
                 rates if picked else f"{rates} (none finished)", f"{row['seeds_finished'] or 0}/{row['seeds'] or 0}",
                 *(_mean_spread(row, score) for score in ("validation_loss", "validation_perplexity",
                   "validation_accuracy", "test_perplexity", "test_accuracy", "train_s", *retention)),
                 _cell(row["pareto_params"]), _cell(row["pareto_time"])]  # fmt: skip
        if retention:
            cells.append(_cell(row["pareto_retention"]))
        lines.append("| " + " | ".join(cells) + " |")
    if edges := [f"{row['configuration']} ({row['at_edge']})" for row in summary if row["at_edge"]]:
        lines += ["", f"Picked at an end of its candidates, so a better rate may lie beyond it: {', '.join(edges)}."]
    return lines


def _retention_scores(summary: Sequence[dict[str, Any]]) -> list[str]:
    """Each retention task's score and their mean, as summary rows name them; none when no configuration has them
    (a study whose points ran without the harness stages)."""
    if not any(row.get(f"{RETENTION_MEAN}_mean") is not None for row in summary):
        return []
    return [key.removesuffix("_mean") for key in summary[0] if key.startswith("retention") and key.endswith("_mean")]


def _rates_table(configs: Sequence[Configuration]) -> list[str]:
    lines = ["", "## Every learning rate", "", "| configuration | learning rate | finished | val loss | val ppl |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for config in configs:
        for setting in config.settings:
            mark = " (picked)" if setting is config.picked else ""
            row = {f"{score}_{stat}": getattr(setting, method)(score) for score in ("validation_loss",
                   "validation_perplexity") for stat, method in (("mean", "mean"), ("std", "spread"))}  # fmt: skip
            lines.append(f"| {config.label} | {setting.learning_rate:g}{mark} | {len(setting.finished)}/"
                         f"{len(setting.outcomes)} | {_mean_spread(row, 'validation_loss')} | "
                         f"{_mean_spread(row, 'validation_perplexity')} |")  # fmt: skip
    return lines


def _unfinished_table(points: Sequence[dict[str, Any]]) -> list[str]:
    unfinished = [row for row in points if row["status"] != "finished"]
    if not unfinished:
        return []
    lines = ["", "## Points not finished", "", "| experiment | configuration | learning rate | seed | status | why |",
             "|---|---|---:|---:|---|---|"]  # fmt: skip
    return lines + [f"| {row['experiment']} | {row['configuration']} | {row['learning_rate']:g} | {row['seed']} | "
                    f"{row['status']} | {(row['reason'] or '').replace('|', '/')} |" for row in unfinished]  # fmt: skip


DECIMALS = {"loss": 3, "perplexity": 2, "accuracy": 3, "train_s": 1}
"""Mean and spread of a score share its decimals, so `2.250 ± 0.004` reads as a difference in the third. Retention
is a difference of accuracies, so it has theirs."""


def _mean_spread(row: dict[str, Any], score: str) -> str:
    mean, spread = row.get(f"{score}_mean"), row.get(f"{score}_std")
    if mean is None:
        return "—"
    if score.startswith("retention"):
        decimals = DECIMALS["accuracy"]
    else:
        decimals = next(places for suffix, places in DECIMALS.items() if score.endswith(suffix))
    return f"{mean:.{decimals}f}" if spread is None else f"{mean:.{decimals}f} ± {spread:.{decimals}f}"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def write_report(title: str, results: Sequence[Outcome], configs: Sequence[Configuration],
                 out_dir: Path) -> dict[str, Path]:  # fmt: skip
    """study.csv (points), summary.csv (configurations), study.md and study.png in `out_dir`; returns them by kind."""
    points, summary = point_rows(results, configs), summary_rows(configs)
    retention = retention_columns(results)
    paths = {"points": out_dir / "study.csv", "summary": out_dir / "summary.csv", "markdown": out_dir / "study.md",
             "plot": out_dir / "study.png"}  # fmt: skip
    write_text_atomic(paths["points"], to_csv(points, point_columns(retention)))
    write_text_atomic(paths["summary"], to_csv(summary, summary_columns(retention)))
    write_text_atomic(paths["markdown"], to_markdown(title, points, summary, configs))
    plot(summary, paths["plot"])
    return paths
