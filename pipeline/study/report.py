"""The study's report: one row per point (CSV and Markdown) and a plot of fine-tuned perplexity against trainable
parameters and against train time, with the Pareto front of each marked."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.files import write_text_atomic
from pipeline.study.results import StudyPoint

COLUMNS = (
    "experiment", "method", "trainable_params", "trainable_percent", "train_s", "tokens_per_s", "peak_memory_gib",
    "base_validation_loss", "base_validation_perplexity", "base_validation_accuracy",
    "validation_loss", "validation_perplexity", "validation_accuracy",
    "base_test_loss", "base_test_perplexity", "base_test_accuracy",
    "test_loss", "test_perplexity", "test_accuracy",
    "pareto_params", "pareto_time",
)  # fmt: skip
MARKDOWN_COLUMNS = {
    "experiment": "experiment", "method": "method", "trainable_params": "trainable", "trainable_percent": "share %",
    "train_s": "train s",
    "tokens_per_s": "tokens/s", "peak_memory_gib": "peak GiB", "base_validation_perplexity": "base val ppl",
    "validation_loss": "val loss", "validation_perplexity": "val ppl", "validation_accuracy": "val acc",
    "test_perplexity": "test ppl", "test_accuracy": "test acc", "pareto_params": "front (params)",
    "pareto_time": "front (time)",
}  # fmt: skip


def describe_method(params: dict[str, Any]) -> str:
    """A short name for a point's configuration: `freeze: last 2 blocks, head untied, ln_f`, `lora: rank 8, 4
    matrices, every block` or `full`. The part before the colon is the method, which the plot colours by."""
    method = params.get("finetune", {}).get("method", "freeze")
    if method == "full":
        return "full: every parameter"
    if method == "lora":
        lora = params["lora"]
        blocks = "every block" if lora["adapted_blocks"] is None else f"last {lora['adapted_blocks']} blocks"
        return f"lora: rank {lora['rank']}, {len(lora['target_modules'])} matrices, {blocks}"
    freeze = params["freeze"]
    blocks = freeze["trainable_blocks"]
    parts = [f"last {blocks} block{'s' if blocks != 1 else ''}", f"head {freeze['head']}"]
    if freeze["train_ln_f"]:
        parts.append("ln_f")
    return "freeze: " + ", ".join(parts)


def rows(points: Sequence[StudyPoint]) -> list[dict[str, Any]]:
    """The report's rows, sorted by trainable parameters, then validation perplexity."""
    table = []
    for point in points:
        counts = point.train["parameters"]
        row = {"experiment": point.experiment, "method": describe_method(point.params),
               "trainable_params": counts["trainable"],
               "trainable_percent": round(100.0 * counts["trainable"] / counts["total"], 3)}  # fmt: skip
        row |= {key: point.timing.get(key) for key in ("train_s", "tokens_per_s", "peak_memory_gib")}
        for model, prefix in (("base", "base_"), ("finetuned", "")):
            for split in ("validation", "test"):
                scores = point.evaluation[model][split]
                row |= {f"{prefix}{split}_{name}": scores[name] for name in ("loss", "perplexity", "accuracy")}
        table.append(row)
    mark_front(table, "trainable_params", "pareto_params")
    mark_front(table, "train_s", "pareto_time")
    return sorted(table, key=lambda row: (row["trainable_params"], row["validation_perplexity"]))


def mark_front(table: list[dict[str, Any]], cost: str, column: str) -> None:
    """Mark each row that no other row beats: none has a lower-or-equal cost and perplexity with one of them lower.
    Rows without the cost (no timing recorded) are on no front."""

    def beats(other: dict[str, Any], row: dict[str, Any]) -> bool:
        pairs = ((other[cost], row[cost]), (other["validation_perplexity"], row["validation_perplexity"]))
        return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)

    for row in table:
        known = row[cost] is not None
        row[column] = known and not any(other[cost] is not None and beats(other, row) for other in table)


def to_csv(table: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_markdown(table: Sequence[dict[str, Any]], title: str) -> str:
    header = list(MARKDOWN_COLUMNS.values())
    align = "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", align]
    for row in table:
        lines.append("| " + " | ".join(_cell(row[key]) for key in MARKDOWN_COLUMNS) + " |")
    lines += ["", "val/test: fine-tuned scores; ppl = perplexity per token; a front row is beaten by no other row "
              "on both perplexity and its cost (trainable parameters, or train time)."]  # fmt: skip
    return "\n".join(lines) + "\n"


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


def plot(table: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation perplexity against trainable parameters (log scale) and against train time, fronts joined."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    panels = (("trainable_params", "pareto_params", "trainable parameters", "log"),
              ("train_s", "pareto_time", "train time (s)", "linear"))  # fmt: skip
    for axis, (cost, front, label, scale) in zip(axes, panels, strict=True):
        _scatter(axis, table, cost, front, family_of=lambda row: row["method"].split(":")[0])
        axis.set_xscale(scale)
        axis.set_xlabel(label)
        axis.set_ylabel("fine-tuned validation perplexity")
        base = [row["base_validation_perplexity"] for row in table]
        if base:
            axis.axhline(min(base), color="grey", linestyle=":", label="base model")
        axis.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, metadata={"Software": None})  # no version stamp: same table, same bytes
    pyplot.close(figure)


def _scatter(axis, table, cost: str, front: str, family_of: Callable[[dict], str]) -> None:
    known = [row for row in table if row[cost] is not None and not math.isnan(row[cost])]
    for family in sorted({family_of(row) for row in known}):
        members = [row for row in known if family_of(row) == family]
        axis.scatter([r[cost] for r in members], [r["validation_perplexity"] for r in members], label=family)
    on_front = sorted((row for row in known if row[front]), key=lambda row: row[cost])
    axis.plot([r[cost] for r in on_front], [r["validation_perplexity"] for r in on_front], color="black",
              linewidth=1, label="Pareto front")  # fmt: skip
    for row in known:
        axis.annotate(row["experiment"], (row[cost], row["validation_perplexity"]), fontsize=6,
                      xytext=(3, 3), textcoords="offset points")  # fmt: skip


def write_report(table: Sequence[dict[str, Any]], out_dir: Path, title: str) -> dict[str, Path]:
    """study.csv, study.md and study.png in `out_dir`; returns them by kind."""
    paths = {"csv": out_dir / "study.csv", "markdown": out_dir / "study.md", "plot": out_dir / "study.png"}
    write_text_atomic(paths["csv"], to_csv(table))
    write_text_atomic(paths["markdown"], to_markdown(table, title))
    plot(table, paths["plot"])
    return paths
