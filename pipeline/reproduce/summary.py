"""What `reproduce compare` writes: a Markdown summary (metrics and differing params, base vs head, for
$GITHUB_STEP_SUMMARY) and the train and validation curves of both runs in one plot."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pipeline.reproduce.compare import RevisionRun
from pipeline.reproduce.reference import fmt

CURVES = {
    "train loss": ("plots/train_curve.csv", "loss"),
    "validation loss": ("plots/validation_curve.csv", "validation_loss"),
}
PLOT_NAME = "curves.png"


def change(base: object, head: object) -> str:
    """head - base, and relative to base where that means something; `-` for text or a side without the metric."""
    numbers = [value for value in (base, head) if isinstance(value, int | float) and not isinstance(value, bool)]
    if len(numbers) < 2:
        return "-" if base != head else "="
    delta = head - base
    if delta == 0:
        return "="
    relative = f" ({delta / abs(base):+.2%})" if base else ""
    return f"{delta:+.4g}{relative}"


def metrics_table(base: dict[str, object], head: dict[str, object]) -> str:
    rows = ["| metric | base | head | change |", "|---|---:|---:|---:|"]
    for key in sorted(base.keys() | head.keys()):
        rows.append(
            f"| `{key}` | {fmt(base.get(key))} | {fmt(head.get(key))} | {change(base.get(key), head.get(key))} |"
        )
    return "\n".join(rows)


def params_table(base: dict[str, object], head: dict[str, object]) -> str:
    """Only the params that differ (what `dvc params diff` shows); a sentence when none does."""
    keys = [key for key in sorted(base.keys() | head.keys()) if base.get(key, ...) != head.get(key, ...)]
    if not keys:
        return "No param differs."
    rows = ["| param | base | head |", "|---|---|---|"]
    rows += [f"| `{key}` | {base.get(key, '(absent)')} | {head.get(key, '(absent)')} |" for key in keys]
    return "\n".join(rows)


def markdown_summary(base: RevisionRun, head: RevisionRun, profile: str, artifact: str | None) -> str:
    lines = [
        f"## Profile `{profile}`: `{head.rev}` ({head.commit}) vs base `{base.rev}` ({base.commit})",
        "",
        f"Each ran `dvc repro` from clean in a fresh clone, on `profiles/{profile}.yaml`.",
        "",
    ]
    lines += [f"- **{run.label}**: {run.problem}" for run in (base, head) if run.problem]
    if base.problem or head.problem:
        lines.append("")
    if head.metrics or base.metrics:
        lines += ["### Metrics", "", metrics_table(base.metrics, head.metrics), ""]
    if head.params and base.params:
        lines += ["### Params that differ", "", params_table(base.params, head.params), ""]
    if artifact:
        lines.append(f"Train and validation curves of both: `{PLOT_NAME}` in the `{artifact}` artifact of this run.")
    return "\n".join(lines) + "\n"


def read_curve(path: Path, column: str) -> tuple[list[float], list[float]]:
    with path.open(encoding="utf-8", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(column)]
    return [float(row["step"]) for row in rows], [float(row[column]) for row in rows]


def plot_curves(runs: list[RevisionRun], out_dir: Path) -> Path:
    """The curves of every run that has them, one panel per curve, and their CSV files beside, for the artifact."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI runner
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4))
    for axis, (title, (relative, column)) in zip(axes, CURVES.items(), strict=True):
        for run in runs:
            path = run.workdir / relative
            if path.is_file():
                axis.plot(*read_curve(path, column), label=f"{run.label} ({run.commit})")
                shutil.copy(path, out_dir / f"{run.label}_{Path(relative).name}")
        axis.set(title=title, xlabel="step", ylabel="loss (nats)")
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    figure.savefig(out_dir / PLOT_NAME, dpi=100)
    plt.close(figure)
    return out_dir / PLOT_NAME
