"""Lineage (pipeline/tracking/lineage.py): the group key that keeps one execution's stages together, the DVC hash
of each input as a tag, and redaction of what a tag may show."""

import logging
from pathlib import Path

import pytest

from pipeline.tracking.hashing import dvc_md5
from pipeline.tracking.runs import stage_run

pytestmark = pytest.mark.usefixtures("tracking_env")


def test_dvc_lock_written_between_stages_keeps_the_group(client, make_params, tmp_path, monkeypatch, git_repo):
    repo = git_repo(tmp_path / "fresh")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    params = make_params()
    with stage_run("prepare", params, ("data",)) as prepare:
        pass
    (repo / "dvc.lock").write_text("schema: '2.0'\n")  # what `dvc repro` does after each stage
    with stage_run("tokenize", params, ("tokenize",)) as tokenize:
        pass

    assert tokenize.group_run_id == prepare.group_run_id
    assert client.get_run(prepare.run_id).data.tags["git.dirty"] == "false"
    assert client.get_run(tokenize.run_id).data.tags["git.dirty"] == "true"  # the tag still tells the truth


LITERAL_PATHS = (
    "stages:\n  prepare:\n    cmd: prepare\n    outs: [data/prepared]\n"
    "    metrics:\n      - metrics/prepare.json:\n          cache: false\n"
)
# The project's own form: paths said once in top-level vars, named by DVC's ${...} templating.
TEMPLATED_PATHS = (
    "vars:\n  - prepared: data/prepared\n    prepare_metrics: metrics/prepare.json\n"
    "stages:\n  prepare:\n    cmd: prepare\n    outs:\n      - ${prepared}\n"
    "    metrics:\n      - ${prepare_metrics}:\n          cache: false\n"
)


@pytest.mark.parametrize("dvc_yaml", [LITERAL_PATHS, TEMPLATED_PATHS], ids=["literal", "templated"])
def test_stage_outputs_keep_the_group_but_other_changes_start_a_new_one(
    client, make_params, tmp_path, monkeypatch, git_repo, git, dvc_yaml
):
    repo = git_repo(tmp_path / "fresh")
    (repo / "dvc.yaml").write_text(dvc_yaml)
    git(repo, "add", "dvc.yaml")
    git(repo, "commit", "-qm", "pipeline")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    params = make_params()
    with stage_run("prepare", params, ("data",)) as prepare:
        pass
    (repo / "metrics").mkdir()
    (repo / "metrics" / "prepare.json").write_text("{}\n")  # not git-ignored: metrics are committed
    with stage_run("tokenize", params, ("tokenize",)) as tokenize:
        pass
    (repo / "notes.txt").write_text("an uncommitted change\n")
    with stage_run("train", params, ("train",)) as train:
        pass

    assert tokenize.group_run_id == prepare.group_run_id != train.group_run_id


def test_inputs_are_tagged_with_their_dvc_hash_by_repo_relative_path(client, store, make_params, caplog):
    repo = store["repo"]
    (repo / "data" / "tokenized" / "train").mkdir(parents=True, exist_ok=True)
    (repo / "data" / "tokenized" / "train" / "blocks.bin").write_bytes(b"\x00\x01" * 64)
    (repo / "data" / "prepared.txt").write_text("a line\n")
    inputs = [repo / "data" / "prepared.txt", Path("data/tokenized"), Path("data/missing")]
    with (
        caplog.at_level(logging.WARNING, logger="pipeline.tracking.runs"),
        stage_run("train", make_params(), ("train",), inputs) as run,
    ):
        pass

    tags = client.get_run(run.run_id).data.tags
    assert {key: value for key, value in tags.items() if key.startswith("input.")} == {
        "input.data/prepared.txt": dvc_md5(repo / "data" / "prepared.txt"),
        "input.data/tokenized": dvc_md5(repo / "data" / "tokenized"),
    }
    assert "data/missing" in caplog.text


def test_inputs_in_a_temporary_experiment_copy_are_relative_to_it(client, make_params, tmp_path, monkeypatch, git_repo):
    # `dvc exp run --temp`: the stage runs in a git copy inside the original repo, DVC_ROOT names the original.
    original = git_repo(tmp_path / "original")
    copy = git_repo(original / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1234")
    (copy / "data").mkdir()
    (copy / "data" / "corpus.txt").write_text("text\n")
    monkeypatch.setenv("DVC_ROOT", str(original))
    monkeypatch.chdir(copy)
    with stage_run("prepare", make_params(), ("data",), [Path("data/corpus.txt"), tmp_path / "params.yaml"]) as run:
        pass
    tags = client.get_run(run.run_id).data.tags
    assert {key for key in tags if key.startswith("input.")} == {"input.data/corpus.txt", "input.params.yaml"}


def test_error_tags_show_neither_secrets_nor_the_home_folder(client, make_params, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NotARealTokenButLongEnough")
    message = f"401 Unauthorized with token hf_NotARealTokenButLongEnough for {Path.home()}/.cache/huggingface"
    with pytest.raises(OSError), stage_run("train", make_params(), ("train",)) as run:
        raise OSError(message)
    tags = client.get_run(run.run_id).data.tags
    assert tags["error"] == "OSError: 401 Unauthorized with token *** for ~/.cache/huggingface"
    assert not [value for value in tags.values() if "hf_NotARealToken" in value]
