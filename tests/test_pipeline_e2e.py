"""End to end: `dvc repro` of the project's own dvc.yaml, offline, on the generated tiny model and corpus."""

import json
import re
import sys

import pytest
import yaml
from mlflow import MlflowClient
from transformers import GPT2LMHeadModel

from pipeline.tracking.hashing import dvc_md5
from pipeline.training.freeze import count_parameters

STAGES = {"prepare", "tokenize", "train", "evaluate_base", "harness_base", "harness", "evaluate"}

pytestmark = pytest.mark.slow


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def first_run(pipeline_repo_factory):
    repo = pipeline_repo_factory("e2e")
    return repo, repo.dvc("repro")


def test_first_repro_runs_every_stage_and_writes_every_output(first_run):
    repo, output = first_run
    assert ran_stages(output) == STAGES
    for path in (
        "data/prepared/train.parquet",
        "data/tokenized/test.parquet",
        "models/finetuned/model.safetensors",
        "models/finetuned/tokenizer.json",
        "plots/train_curve.csv",
        "plots/train_throughput.csv",
    ):
        assert (repo.root / path).is_file(), path
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES
    curve = (repo.root / "plots/train_curve.csv").read_text().splitlines()
    assert curve[0] == "step,loss,learning_rate" and len(curve) > 2
    # The offline profile scores the validation split every 50 of its 291 steps.
    validation = (repo.root / "plots/validation_curve.csv").read_text().splitlines()
    assert validation[0] == "step,validation_loss"
    assert [row.split(",")[0] for row in validation[1:]] == ["50", "100", "150", "200", "250"]
    assert repo.metrics("train")["validation_loss"] == float(validation[-1].split(",")[1])


def test_metrics_show_counts_and_a_gain_over_the_base_model(first_run):
    repo, _ = first_run
    prepared = repo.metrics("prepare")
    assert prepared["train"]["empty_lines"] > 0 and prepared["test"]["characters"] > 0
    tokenized = repo.metrics("tokenize")
    assert tokenized["train"]["blocks"] == tokenized["train"]["tokens"] // repo.params["tokenize"]["block_size"]
    trained = repo.metrics("train")
    assert trained["parameters"]["trainable"] + trained["parameters"]["frozen"] == trained["parameters"]["total"]
    report = repo.metrics("eval")
    for split in ("validation", "test"):
        finetuned, base = report["finetuned"][split], report["base"][split]
        assert finetuned["loss"] < base["loss"]
        assert finetuned["perplexity"] == pytest.approx(2.718281828 ** finetuned["loss"], rel=1e-6)
        assert 0 <= base["accuracy"] < finetuned["accuracy"] <= 1
    base = repo.metrics("base")
    assert report["base"] == {split: base[split] for split in ("validation", "test")}
    protocol = {key: repo.params["evaluate"][key] for key in ("context", "stride")}
    assert report["protocol"] == base["protocol"] == protocol
    for split in ("validation", "test"):  # every token of the split's stream but its first, whatever block_size
        assert report["finetuned"][split]["tokens"] == report["base"][split]["tokens"] == tokenized[split]["tokens"] - 1


def test_harness_scores_base_and_fine_tuned_on_the_local_tasks(first_run):
    repo, _ = first_run
    harness, base = repo.metrics("harness"), repo.metrics("harness_base")
    settings = repo.params["harness"]
    assert set(harness["retention"]) == set(settings["retention_tasks"])
    assert harness["base"] == base["scores"] and harness["lm_eval"] == base["lm_eval"]
    for task in settings["target_tasks"] + settings["retention_tasks"]:
        for metric, value in harness["finetuned"][task].items():
            assert harness["difference"][task][metric] == pytest.approx(value - harness["base"][task][metric])
    for task in settings["retention_tasks"]:
        assert harness["retention"][task] == harness["difference"][task]["acc"]
        assert harness["examples"][task] == settings["limit"]
    # fine-tuned on the offline corpus, the model scores its test pages better in lm-eval's units too
    assert harness["difference"]["offline_wikitext"]["bits_per_byte"] < 0


def test_mlflow_groups_the_stage_runs_under_one_finished_run(first_run):
    repo, _ = first_run
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    groups = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(groups) == 1
    group = groups[0]
    assert group.info.status == "FINISHED"
    assert group.data.params["freeze.head"] == "tied"
    assert group.data.params["train.learning_rate"] == str(repo.params["train"]["learning_rate"])
    report, trained = repo.metrics("eval"), repo.metrics("train")
    assert group.data.metrics["finetuned.validation.loss"] == pytest.approx(report["finetuned"]["validation"]["loss"])
    assert group.data.metrics["base.test.perplexity"] == pytest.approx(report["base"]["test"]["perplexity"])
    assert group.data.metrics["params.trainable"] == trained["parameters"]["trainable"]
    harness = repo.metrics("harness")
    assert group.data.metrics["harness.retention_mean"] == pytest.approx(harness["retention_mean"])
    assert group.data.metrics["harness.finetuned.offline_wikitext.word_perplexity"] == pytest.approx(
        harness["finetuned"]["offline_wikitext"]["word_perplexity"]
    )
    children = {run.data.tags["mlflow.runName"]: run for run in runs if run is not group}
    assert set(children) == STAGES
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert all(run.data.tags["mlflow.parentRunId"] == group.info.run_id for run in children.values())
    train_run = children["train"]
    assert train_run.data.params["freeze.head"] == "tied"
    assert "data.source" not in train_run.data.params  # a stage logs only the params it reads
    assert len(client.get_metric_history(train_run.info.run_id, "loss")) >= 2
    # the offline profile registers a version per run, through the project's store and no other
    (version,) = client.search_model_versions(f"name = '{repo.params['mlflow']['registered_model']}'")
    assert version.run_id == train_run.info.run_id
    assert not (repo.root / "mlflow.db").exists()


def test_lineage_tags_match_dvc_lock(first_run):
    repo, _ = first_run
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(repo.params["mlflow"]["experiment"]).experiment_id])
    train_run = next(run for run in runs if run.data.tags.get("mlflow.runName") == "train")
    tokenized_dep = next(dep for dep in lock["stages"]["train"]["deps"] if dep["path"] == "data/tokenized")
    assert train_run.data.tags["input.data/tokenized"] == tokenized_dep["md5"] == dvc_md5(repo.root / "data/tokenized")
    assert train_run.data.tags["dvc.stage"] == "train"
    assert re.fullmatch(r"[0-9a-f]{40}", train_run.data.tags["git.commit"])


def test_dvc_exp_show_leads_with_the_fine_tuned_scores_and_trainable_parameters(first_run):
    repo, _ = first_run
    header = repo.run(sys.executable, "-m", "dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    metrics = header[header.index("parent") + 1 :]
    assert metrics[:4] == [f"finetuned.validation.{name}" for name in ("perplexity", "accuracy", "loss", "tokens")]
    assert metrics.index("parameters.trainable") < metrics.index("train.lines")  # train.json before prepare.json
    assert metrics.index("retention_mean") < metrics.index("parameters.trainable")  # harness.json after eval.json


def test_changing_a_train_param_reruns_only_train_and_what_scores_it_then_nothing(first_run):
    repo, _ = first_run
    repo.set_params({"train.seed": repo.params["train"]["seed"] + 1})
    assert ran_stages(repo.dvc("repro")) == {"train", "harness", "evaluate"}
    again = repo.dvc("repro")
    assert ran_stages(again) == set()
    assert json.loads(repo.dvc("status", "--json")) == {}


def test_changing_the_eval_protocol_reruns_only_evaluation_and_disjoint_windows_score_worse(first_run):
    repo, _ = first_run
    sliding = repo.metrics("eval")
    context = repo.params["evaluate"]["context"]
    repo.set_params({"evaluate.stride": context})
    assert ran_stages(repo.dvc("repro")) == {"evaluate_base", "evaluate"}
    disjoint = repo.metrics("eval")
    assert disjoint["protocol"] == {"context": context, "stride": context}
    for model in ("base", "finetuned"):
        assert sliding[model]["validation"]["loss"] < disjoint[model]["validation"]["loss"]
        assert sliding[model]["validation"]["tokens"] == disjoint[model]["validation"]["tokens"]


def test_method_lora_reruns_train_and_evaluate_and_saves_a_plain_gpt2_that_gains(first_run):
    repo, _ = first_run
    repo.set_params({"finetune.method": "lora", "lora.rank": 4})
    assert ran_stages(repo.dvc("repro")) == {"train", "harness", "evaluate"}
    counts = repo.metrics("train")["parameters"]
    # The tiny GPT-2 (n_embd 64, 4 blocks): rank 4 on all four matrices adds 4 x 16 x 64 per block.
    assert counts["trainable"] == 4 * 4 * 16 * 64
    base = GPT2LMHeadModel.from_pretrained(repo.root / repo.params["model"]["name_or_path"], use_safetensors=True)
    finetuned = GPT2LMHeadModel.from_pretrained(repo.root / "models/finetuned", use_safetensors=True)
    assert counts["frozen"] == count_parameters(base).total == count_parameters(finetuned).total
    assert finetuned.state_dict().keys() == base.state_dict().keys()  # merged: no adapter left
    report = repo.metrics("eval")
    assert report["finetuned"]["validation"]["loss"] < report["base"]["validation"]["loss"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name(repo.params["mlflow"]["experiment"]).experiment_id],
        filter_string="attributes.run_name = 'train'", order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    assert runs[0].data.tags["finetune.method"] == "lora" and "freeze.head_mode" not in runs[0].data.tags
    assert runs[0].data.params["lora.rank"] == "4"
    assert runs[0].data.metrics["params.trainable"] == counts["trainable"]
