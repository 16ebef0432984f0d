"""The fine-tuned model in MLflow: a LoggedModel (transformers flavour, text generation) made by the train stage,
linked to the group run and given its metrics by the evaluate stage, and optionally registered as a new version.

The LoggedModel holds a second copy of the weights (MLflow's artifact store is not DVC's cache), so it is made once
per distinct `models/finetuned`: it carries that folder's DVC md5 as a tag, and a run whose model already has a
LoggedModel with that md5 links to it instead of logging the weights again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus

from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.tracking.hashing import dvc_md5
from pipeline.tracking.runs import StageRun
from pipeline.tracking.store_lock import locked_store_as_user_error, wait_for_store

logger = logging.getLogger(__name__)

MODEL_NAME = "finetuned"
MD5_TAG = "dvc.md5"
# The flavour's own requirement inference imports torchvision (not a dependency here) and fails; these are what
# loading the model needs, at the installed versions (requirements.txt pins them; `+cpu`-style build tags dropped).
PIP_REQUIREMENTS = [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "transformers")]


def find_logged_model(run: StageRun, model_dir: Path) -> str | None:
    """The id of the LoggedModel of the folder's exact contents (by DVC md5) in the run's experiment, if any."""
    experiment_id = run.client.get_run(run.run_id).info.experiment_id
    found = run.client.search_logged_models(
        [experiment_id], filter_string=f"tags.`{MD5_TAG}` = '{dvc_md5(model_dir)}'", max_results=50
    )
    # An attempt that failed half-way leaves a LoggedModel without weights: only a READY one counts.
    return next((model.model_id for model in found if model.status == LoggedModelStatus.READY), None)


class ModelLoggingError(UserError):
    """The model folder is written but could not be logged to MLflow; the train stage fails so that it reruns."""


def log_finetuned_model(run: StageRun, model_dir: Path, params: Params) -> str | None:
    """Log `model_dir` (a save_pretrained folder) as a LoggedModel of the train run, or reuse the one with its md5;
    either way the train and group runs list it among their outputs. None when `mlflow.log_model` is off.

    A failure is the stage's, not a log line: a stage that exits 0 without its model in MLflow (nor registered)
    would never be rerun by DVC. The caller keeps its checkpoints until this returns, so the rerun only logs.
    """
    if not params.mlflow.log_model:
        return None
    with _fatal(run, f"{model_dir} is written, but logging it to MLflow failed",
                "its checkpoints are kept, so the rerun saves and logs the model without training again"):  # fmt: skip
        return _log_or_link(run, model_dir, params)


@contextmanager
def _fatal(run: StageRun, failed: str, rerun: str) -> Iterator[None]:
    """Wait for a busy store, then run the block; any failure in it is a `ModelLoggingError` paragraph."""
    uri = run.client.tracking_uri
    try:
        with locked_store_as_user_error(uri):
            wait_for_store(uri)
            yield
    except Exception as error:
        logger.debug("%s", failed, exc_info=True)  # the traceback, for who asks for DEBUG
        cause = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        raise ModelLoggingError(
            f"{failed}: {cause}. The stage fails so that `dvc repro` reruns it; {rerun} (or set mlflow.log_model: "
            "false to keep the model in DVC only)"
        ) from None


def _log_or_link(run: StageRun, model_dir: Path, params: Params) -> str:
    model_id = find_logged_model(run, model_dir)
    if model_id is None:
        model_id = _log(run, model_dir, params)
    else:
        logger.info("Model %s already logged as %s: linking it, not storing its weights again", model_dir, model_id)
    for run_id in (run.run_id, run.group_run_id):
        _link(run, run_id, model_id)
    run.set_tags({"mlflow.model_id": model_id})
    return model_id


def _log(run: StageRun, model_dir: Path, params: Params) -> str:
    from transformers import pipeline  # heavy: only when a model is logged

    experiment_id = run.client.get_run(run.run_id).info.experiment_id
    tags = {MD5_TAG: dvc_md5(model_dir), "finetune": method_summary(params), "params.hash": params.digest()}
    created = run.client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run.run_id, tags=tags)
    mlflow.set_tracking_uri(run.client.tracking_uri)  # the fluent log_model writes through the global URI
    try:
        # Absolute: MLflow fetches the model card and license of `name_or_path` from the Hub when it reads as a repo
        # id, and the relative `models/finetuned` does (five retries, ~30 s, offline); an absolute path cannot.
        local = str(model_dir.resolve())
        generator = pipeline("text-generation", model=local, tokenizer=local, device="cpu")
        mlflow.transformers.log_model(
            generator,
            task="text-generation",
            model_id=created.model_id,
            pip_requirements=PIP_REQUIREMENTS,
            model_config={"max_new_tokens": 50, "do_sample": False},  # what pyfunc's predict generates by default
        )
    except BaseException:
        run.client.finalize_logged_model(created.model_id, LoggedModelStatus.FAILED)
        raise
    logger.info("Logged %s as MLflow model %s", model_dir, created.model_id)
    return created.model_id


def _link(run: StageRun, run_id: str, model_id: str) -> None:
    """The model among the run's outputs, once: the store refuses a second identical link."""
    outputs = run.client.get_run(run_id).outputs
    if model_id not in [output.model_id for output in (outputs.model_outputs if outputs else [])]:
        run.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])


def attach_evaluation(run: StageRun, model_id: str, metrics: Mapping[str, float]) -> None:
    """The evaluation's metrics on the model (its page lists them), and the model among the group run's outputs."""
    _link(run, run.group_run_id, model_id)
    for key, value in metrics.items():
        run.client.log_metric(run.run_id, key, float(value), model_id=model_id)


def register(run: StageRun, model_id: str, name: str, tags: Mapping[str, str]) -> str:
    """A new version of registered model `name` from the LoggedModel, tagged with `tags`; returns its number."""
    from mlflow.exceptions import MlflowException

    try:
        run.client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model = run.client.get_logged_model(model_id)
    # MLflow 3.17's registry looks the LoggedModel up through a default client, i.e. the global tracking URI, which
    # is `./mlflow.db` unless set: without this the version fails ("Logged model ... not found") and leaves that file.
    mlflow.set_tracking_uri(run.client.tracking_uri)
    version = run.client.create_model_version(
        name, source=model.model_uri, run_id=model.source_run_id, tags=dict(tags), model_id=model_id
    )
    logger.info("Registered %s version %s (models:/%s/%s)", name, version.version, name, version.version)
    return version.version


def method_summary(params: Params) -> str:
    """How the run fine-tunes, in a few words: the head mode under method freeze, else the method."""
    if params.finetune.method == "lora":
        return f"LoRA rank {params.lora.rank}, head frozen"
    if params.finetune.method == "full":
        return "full fine-tuning"
    return f"{params.freeze.head} head"


def describe(method: str, trainable: int, total: int, perplexity: tuple[float, float] | None = None) -> str:
    """The one-line run description: the method (`method_summary`), trainable share and, once evaluated,
    validation perplexity fine-tuned vs base."""
    text = f"{method}, {trainable / total:.1%} trainable ({trainable:,} of {total:,} parameters)"
    if perplexity is not None:
        text += f"; validation perplexity {perplexity[0]:.2f} fine-tuned vs {perplexity[1]:.2f} base"
    return text


def record_evaluation(run: StageRun, model_dir: Path, params: Params, report: dict, parameters: dict) -> None:
    """The evaluate stage's bookkeeping: the one-line description on its run and the group run, the scores on the
    logged model (found by md5), and, when `mlflow.registered_model` names one, a new registered version."""
    validation = (report["finetuned"]["validation"]["perplexity"], report["base"]["validation"]["perplexity"])
    summary = method_summary(params)
    run.describe(describe(summary, parameters["trainable"], parameters["total"], validation), group=True)
    if not params.mlflow.log_model:
        return
    with _fatal(run, f"the evaluation of {model_dir} is written, but recording it on its MLflow model failed",
                "the rerun evaluates again and records it"):  # fmt: skip
        model_id = find_logged_model(run, model_dir)
        if model_id is None:
            logger.warning("No logged MLflow model has the md5 of %s (logged with log_model off?)", model_dir)
            return
        scores = {
            f"{split}_{key}": value for split, values in report["finetuned"].items() for key, value in values.items()
        }
        attach_evaluation(run, model_id, scores)
        if params.mlflow.registered_model:
            lineage = {
                key: run.client.get_run(run.run_id).data.tags.get(key, "") for key in ("git.commit", "params.hash")
            }
            tags = {
                **{key: f"{value:.6g}" for key, value in scores.items()},
                **lineage,
                MD5_TAG: dvc_md5(model_dir),
                "pipeline.group_run_id": run.group_run_id,
            }
            register(run, model_id, params.mlflow.registered_model, tags)
