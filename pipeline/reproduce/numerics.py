"""Why two runs differ: the numerics each run's train stage recorded (pipeline/training/numerics.py), read back from
the run's own MLflow store, set side by side.

Equal fingerprints mean the two processes ran the same kernels on the same threads, so differing outputs are the
pipeline's own doing (an unseeded random source, an order that is not fixed). Differing canaries mean the machine
computed differently, and the other fields say what changed where a setting did.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.tracking.runs import tracking_uri

PREFIX = "numerics."


def train_numerics(workdir: Path) -> dict[str, str] | None:
    """The `numerics.*` tags of the newest train run in `workdir`'s store; None without a store or such a run."""
    if not (workdir / "mlruns" / "mlflow.db").is_file():
        return None
    from mlflow import MlflowClient  # only when there is a store to read: importing MLflow takes seconds

    client = MlflowClient(tracking_uri=tracking_uri(workdir))
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(
        experiments, "tags.`dvc.stage` = 'train'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        return None
    tags = runs[0].data.tags
    return {name.removeprefix(PREFIX): value for name, value in tags.items() if name.startswith(PREFIX)} or None


def numerics_verdict(first: dict[str, str] | None, second: dict[str, str] | None) -> str:
    """One line: whether the two runs trained with the same kernels and threads, and what differed if not."""
    if first is None or second is None:
        return "numerics: not recorded by both runs' train stage (their MLflow stores hold no numerics tags)"
    differing = sorted(name for name in first.keys() | second.keys() if first.get(name) != second.get(name))
    if not differing:
        return f"numerics: the same in both runs (canary {first.get('canary')}): the same kernels and threads"
    changes = "; ".join(f"{name} {first.get(name)} vs {second.get(name)}" for name in differing)
    return f"numerics DIFFER ({changes}): the two processes computed differently, not only the pipeline"
