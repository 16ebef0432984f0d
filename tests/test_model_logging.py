"""The fine-tuned model in MLflow (pipeline/tracking/models.py) and the stage runs' dataset inputs, source tags and
description (pipeline/tracking/runs.py): logged once per distinct model, loadable with pyfunc, registered on ask."""

import mlflow
import pytest

from pipeline.tracking.hashing import dvc_md5
from pipeline.tracking.models import log_finetuned_model, method_summary, record_evaluation
from pipeline.tracking.runs import stage_run

pytestmark = pytest.mark.usefixtures("tracking_env")


def _report(finetuned_perplexity: float, base_perplexity: float) -> dict:
    scores = {"loss": 1.0, "accuracy": 0.5, "tokens": 10}
    return {
        model: {split: {**scores, "perplexity": perplexity} for split in ("validation", "test")}
        for model, perplexity in (("finetuned", finetuned_perplexity), ("base", base_perplexity))
    }


def test_logged_model_continues_a_prompt_and_is_stored_once(client, make_params, tiny_model_dir, store):
    params = make_params()
    with stage_run("train", params, ("train",), inputs=[tiny_model_dir]) as train:
        model_id = log_finetuned_model(train, tiny_model_dir, params)
    with stage_run("train", params, ("train",)) as rerun:  # the same weights again: linked, not copied
        assert log_finetuned_model(rerun, tiny_model_dir, params) == model_id

    model = client.get_logged_model(model_id)
    assert model.source_run_id == train.run_id
    assert model.tags["dvc.md5"] == dvc_md5(tiny_model_dir)
    experiment = client.get_run(train.run_id).info.experiment_id
    assert len(client.search_logged_models([experiment])) == 1
    for run_id in (train.run_id, rerun.run_id, train.group_run_id):
        assert model_id in [output.model_id for output in client.get_run(run_id).outputs.model_outputs]

    mlflow.set_tracking_uri(store["uri"])
    [text] = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(["The river"])
    assert text.startswith("The river") and len(text) > len("The river") + 10


def test_log_model_off_logs_nothing(client, make_params, tiny_model_dir):
    params = make_params({"mlflow.log_model": False})
    with stage_run("train", params, ("train",)) as run:
        assert log_finetuned_model(run, tiny_model_dir, params) is None
    assert not client.get_run(run.run_id).outputs.model_outputs


def test_evaluation_describes_the_runs_scores_the_model_and_registers_a_version(client, make_params, tiny_model_dir):
    params = make_params({"mlflow.registered_model": "tiny-test"})
    with stage_run("train", params, ("train",)) as train:
        model_id = log_finetuned_model(train, tiny_model_dir, params)
    with stage_run("evaluate", params, ("evaluate",)) as evaluate:
        record_evaluation(evaluate, tiny_model_dir, params, _report(20.0, 40.0), {"trainable": 25, "total": 100})

    note = "tied head, 25.0% trainable (25 of 100 parameters); validation perplexity 20.00 fine-tuned vs 40.00 base"
    for run_id in (evaluate.run_id, evaluate.group_run_id):
        assert client.get_run(run_id).data.tags["mlflow.note.content"] == note
    metrics = {metric.key: metric.value for metric in client.get_logged_model(model_id).metrics}
    assert metrics["validation_perplexity"] == 20.0
    [found] = client.search_model_versions("name = 'tiny-test'")
    version = client.get_model_version("tiny-test", found.version)
    assert version.source == client.get_logged_model(model_id).model_uri and version.run_id == train.run_id
    assert version.tags["validation_perplexity"] == "20"
    assert version.tags["params.hash"] == params.digest()
    assert version.tags["pipeline.group_run_id"] == evaluate.group_run_id


def test_stage_run_logs_inputs_as_datasets_with_source_tags(client, make_params, store):
    data = store["repo"] / "data" / "blocks.txt"
    data.parent.mkdir(exist_ok=True)
    data.write_text("one block\n")
    with stage_run("tokenize", make_params(), ("tokenize",), inputs=[data]) as run:
        pass

    logged = client.get_run(run.run_id)
    [dataset_input] = logged.inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("data/blocks.txt", dvc_md5(data))
    assert {tag.key: tag.value for tag in dataset_input.tags} == {"mlflow.data.context": "tokenize"}
    assert logged.data.tags["mlflow.source.type"] == "LOCAL"
    assert logged.data.tags["mlflow.source.name"]
    assert logged.data.tags["mlflow.source.git.branch"]


@pytest.mark.parametrize(
    ("overrides", "summary"),
    [
        ({"freeze.head": "untied"}, "untied head"),
        ({"finetune.method": "lora", "lora.rank": 4}, "LoRA rank 4, head frozen"),
        ({"finetune.method": "full"}, "full fine-tuning"),
    ],
)
def test_run_descriptions_name_the_method_and_the_head_only_where_it_is_read(make_params, overrides, summary):
    assert method_summary(make_params(overrides)) == summary
