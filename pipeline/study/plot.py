"""The study's plot: each configuration's mean validation perplexity, with its spread over seeds as error bars,
against trainable parameters, against train time and against retention (what fine-tuning kept on the lm-eval
retention tasks); the Pareto front of the means joined."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

QUALITY = "validation_perplexity"
PANELS = (
    ("trainable_params", "pareto_params", "trainable parameters", "log"),
    ("train_s", "pareto_time", "train time (s), mean over seeds", "linear"),
    ("retention_mean", "pareto_retention", "retention: fine-tuned - base accuracy, mean over tasks (higher: kept more)",
     "linear"),
)  # fmt: skip
"""(x, front column, x label, x scale) per panel; the front of the retention panel has retention higher-is-better."""


def plot(summary: Sequence[dict[str, Any]], path: Path) -> None:
    """The figure of `figure(summary)`, as a PNG."""
    from matplotlib import pyplot

    drawn = figure(summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn.savefig(path, dpi=120, metadata={"Software": None})  # no version stamp: same table, same bytes
    pyplot.close(drawn)


def figure(summary: Sequence[dict[str, Any]]):
    """Three panels (trainable parameters on a log scale, train time, retention), one marker colour per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot

    drawn, axes = pyplot.subplots(1, len(PANELS), figsize=(18, 4.8), constrained_layout=True)
    for axis, (cost, front, label, scale) in zip(axes, PANELS, strict=True):
        if not _panel(axis, summary, cost, front):
            axis.text(0.5, 0.5, "no configuration has this score", transform=axis.transAxes, ha="center")
        axis.set_xscale(scale)
        axis.set_xlabel(label)
        axis.set_ylabel("fine-tuned validation perplexity (mean ± sd)")
        base = [row["base_validation_perplexity"] for row in summary if row["base_validation_perplexity"]]
        if base:
            axis.axhline(min(base), color="grey", linestyle=":", label="base model")
        axis.legend(fontsize="small")
    return drawn


def value(row: dict[str, Any], key: str) -> float | None:
    # The parameter count is one number; the time, the perplexity and the retention are means over seeds.
    number = row.get(key) if key == "trainable_params" else row.get(f"{key}_mean")
    return number if isinstance(number, int | float) and math.isfinite(number) else None


def _panel(axis, summary: Sequence[dict[str, Any]], cost: str, front: str) -> bool:
    """Draw one panel; False when no configuration has both of its numbers."""
    known = [row for row in summary if value(row, cost) is not None and value(row, QUALITY) is not None]
    for method in sorted({row["method"] for row in known}):
        members = [row for row in known if row["method"] == method]
        axis.errorbar([value(row, cost) for row in members], [value(row, QUALITY) for row in members],
                      yerr=[row.get(f"{QUALITY}_std") or 0.0 for row in members],
                      xerr=[row.get(f"{cost}_std") or 0.0 for row in members] if cost != "trainable_params" else None,
                      fmt="o", capsize=3, label=method)  # fmt: skip
    on_front = sorted((row for row in known if row.get(front)), key=lambda row: value(row, cost))
    axis.plot([value(row, cost) for row in on_front], [value(row, QUALITY) for row in on_front], color="black",
              linewidth=1, label="Pareto front of the means")  # fmt: skip
    for row in known:
        axis.annotate(row["configuration"], (value(row, cost), value(row, QUALITY)), fontsize=7,
                      xytext=(4, 4), textcoords="offset points")  # fmt: skip
    return bool(known)
