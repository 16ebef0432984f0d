"""lm-evaluation-harness through its Python API, on a model the stage has already loaded.

lm-eval's `HFLM` wraps the model and tokenizer as they are (no second load, no download); its `TaskManager` finds
the tasks, lm-eval's own and any YAMLs in `harness.task_dir`; `simple_evaluate` scores them. Only what is needed
to compare runs is kept: each task's metrics, its version, the examples scored and lm-eval's version. Timestamps,
environment dumps and stderrs (bootstrapped in a process pool, and "N/A" for perplexities) are dropped, so the
same model and tasks write the same bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

log = logging.getLogger(__name__)

RETENTION_METRIC = "acc"
"""What retention compares: accuracy, which every retention task reports, at chance from 1/choices up to 1."""


@dataclass(frozen=True)
class HarnessScores:
    scores: dict[str, dict[str, float]]
    """Task -> metric -> value, as lm-eval aggregates it (`word_perplexity`, `bits_per_byte`, `acc`, ...)."""
    examples: dict[str, int]
    """Task -> examples scored (after `harness.limit`)."""
    task_versions: dict[str, float | str]
    lm_eval_version: str


def task_manager(tasks: list[str], task_dir: str | None):
    """The TaskManager that knows `tasks`: `task_dir`'s YAMLs alone when they hold them all, since indexing
    lm-eval's own 14,000 task YAMLs takes about 13 s on a CPU core; lm-eval's tasks too otherwise."""
    from lm_eval.tasks import TaskManager

    if task_dir is not None:
        local = TaskManager(include_path=task_dir, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=task_dir)


@dataclass(frozen=True)
class LoadedTasks:
    manager: object
    """The TaskManager that found them: simple_evaluate gets it, else it builds one indexing every lm-eval task."""
    tasks: list
    """lm-eval Task objects, their data loaded."""


def load_tasks(tasks: list[str], task_dir: str | None) -> LoadedTasks:
    """lm-eval's tasks with their data loaded; unknown names and data the hub cannot give are UserErrors."""
    manager = task_manager(tasks, task_dir)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f"lm-eval's tasks or {task_dir}/" if task_dir else "lm-eval's tasks (harness.task_dir is null)"
        raise UserError(f"harness: no task named {', '.join(unknown)} in {where}; `lm-eval ls tasks` lists lm-eval's")
    try:
        return LoadedTasks(manager, list(manager.load(tasks)["tasks"].values()))
    except OSError as error:  # datasets raises ConnectionError (an OSError) offline, after its own retries
        raise UserError(
            f"harness: the data of lm-eval task(s) {', '.join(tasks)} could not be loaded: {_first_line(error)}. "
            "lm-eval's tasks read their datasets from the Hugging Face Hub. Offline, either run with network once "
            "so the datasets cache holds them and then set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 to read that "
            "cache, or use the offline profile (`python -m pipeline.offline`: harness.task_dir holds tasks over "
            "generated local files), or point harness.task_dir at task YAMLs over your own files under local/tasks/ "
            "and name those tasks in harness.target_tasks and harness.retention_tasks (docs/evaluation.md)."
        ) from None


def run_harness(model, tokenizer, tasks: LoadedTasks, limit: int | None, batch_size: int) -> HarnessScores:
    """Score `model` on the loaded `tasks` (from `load_tasks`), the first `limit` examples of each."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks.tasks, task_manager=tasks.manager, limit=limit, bootstrap_iters=0, log_samples=False
    )
    names = sorted(results["results"])
    return HarnessScores(
        scores={task: metrics(results["results"][task]) for task in names},
        examples={task: int(results["n-samples"][task]["effective"]) for task in names},
        task_versions={task: results["versions"][task] for task in names},
        lm_eval_version=lm_eval.__version__,
    )


def metrics(task_results: dict[str, object]) -> dict[str, float]:
    """`{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}` -> `{"acc": 0.5}`: lm-eval's `metric,filter`
    keys, the default filter `none` dropped and another one kept as a suffix; stderrs and labels left out."""
    found = {}
    for key, value in task_results.items():
        metric, _, filter_name = key.partition(",")
        if filter_name and not metric.endswith("_stderr") and isinstance(value, int | float):
            found[metric if filter_name == "none" else f"{metric}_{filter_name}"] = float(value)
    return found


def resolve_task_dir(task_dir: str | None) -> str | None:
    """`harness.task_dir` as lm-eval's include_path wants it: an existing folder, or a UserError saying what to run."""
    if task_dir is not None and not Path(task_dir).is_dir():
        raise UserError(
            f"harness.task_dir: {task_dir!r} is not a folder; `python -m pipeline.offline` writes the offline tasks "
            "there, or point it at a folder of lm-eval task YAMLs under local/tasks/"
        )
    return task_dir


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
