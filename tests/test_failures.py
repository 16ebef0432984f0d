"""Hostile and broken inputs, through the real stages' `main` with dvc.yaml's arguments: each must exit 2 with a
short message naming the file or param, show no traceback, and leave the outputs of an earlier good run exactly as
they were."""

import importlib
import json
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline import train
from pipeline.tracking.hashing import dvc_md5
from pipeline.training import checkpoints

pytestmark = pytest.mark.slow

GOOD_RUN = {"data.max_train_lines": 400, "train.max_steps": 5, "train.checkpoint_steps": 5}
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots")
# A UserError's paragraph: the message and its hint. More lines than this would be a traceback or a log dump.
MAX_ERROR_LINES = 8
REMOTE_CODE = "import pathlib\npathlib.Path(__file__).with_name('REMOTE_CODE_RAN').touch()\n"


def outputs(repo) -> dict[str, str]:
    return {folder: dvc_md5(repo.root / folder) for folder in OUTPUT_FOLDERS}


def broken_model(repo, name: str, source: Path) -> str:
    """A copy of the tiny model under local/models/, to break; returns its model.name_or_path."""
    folder = repo.root / "local" / "models" / name
    shutil.copytree(source, folder)
    return f"local/models/{name}"


@pytest.fixture(scope="module")
def repo(pipeline_repo_factory, tiny_model_dir):
    repo = pipeline_repo_factory("failures")
    repo.set_params(GOOD_RUN)
    corpus = repo.root / "local" / "corpus"
    (corpus / "empty.txt").write_text("\n\n   \n")
    (corpus / "three-articles.txt").write_text("".join(f" = {title} = \n text of {title} .\n" for title in "ABC"))
    (corpus / "latin1.txt").write_bytes("= Café =\nUne ligne encodée en Latin-1.\n".encode("latin-1"))

    models = {name: broken_model(repo, name, tiny_model_dir) for name in ("no-weights", "truncated", "pickled")}
    (repo.root / models["no-weights"] / "model.safetensors").unlink()
    weights = repo.root / models["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = repo.root / models["pickled"]
    torch.save(GPT2LMHeadModel.from_pretrained(pickled).state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    no_config = broken_model(repo, "no-config", tiny_model_dir)
    (repo.root / no_config / "config.json").unlink()
    remote = broken_model(repo, "remote-code", tiny_model_dir)
    (repo.root / remote / "configuration_evil.py").write_text(REMOTE_CODE)
    config = json.loads((repo.root / remote / "config.json").read_text())
    config |= {"model_type": "evil-gpt2", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    (repo.root / remote / "config.json").write_text(json.dumps(config))
    small_vocab = repo.root / "local" / "models" / "small-vocab"
    config = GPT2Config(n_layer=4, n_head=4, n_embd=64, n_positions=256, vocab_size=500, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(small_vocab)
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / tokenizer_file, small_vocab / tokenizer_file)

    repo.commit("inputs good and bad")
    for stage in ("prepare", "tokenize", "train", "evaluate_base"):
        repo.run(*repo.stage_argv(stage))
    return repo


@pytest.fixture
def run_stage(repo, monkeypatch, capsys):
    """`run_stage(stage, params, raw_params, **options)`: the stage's `main` with dvc.yaml's arguments, in this
    process, from the repo's root, with params.yaml changed for this run only; its exit code and stderr. In-process
    because a refused input costs a stage nothing but its interpreter's start-up, which the end-to-end tests pay."""
    monkeypatch.chdir(repo.root)
    for name in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)  # the repo's own store and git, as under `dvc repro` there

    def run(stage: str, params: dict | None = None, raw_params: str | None = None, **options):
        argv = repo.stage_argv(stage, **options)
        original = (repo.root / "params.yaml").read_text()
        capsys.readouterr()
        try:
            if params:
                repo.set_params(params)
            if raw_params is not None:
                (repo.root / "params.yaml").write_text(raw_params)
            importlib.import_module(argv[2]).main(argv[3:])
            code = 0
        except SystemExit as exited:
            code = exited.code
        finally:
            (repo.root / "params.yaml").write_text(original)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return run


CASES = {
    "params: unknown key, wrong type, missing section": (
        "prepare",
        {"params": {"train.learnin_rate": 0.1, "train.batch_size": "8"}, "drop_section": "evaluate"},
        ["params.yaml has 3 problem(s)", "train.learnin_rate: unknown key", "train.batch_size: expected int, got '8'",
         "evaluate: missing section"],
    ),
    "params: out-of-range values": (
        "train",
        {"params": {"train.checkpoint_steps": 0, "train.keep_checkpoints": -1, "tokenize.block_size": 4096}},
        ["train.keep_checkpoints: must be > 0, got -1", "train.checkpoint_steps: must be > 0 or null, got 0",
         "tokenize.block_size: 4096 exceeds the model's n_positions (256)"],
    ),
    "params: YAML syntax error": (
        "prepare", {"raw_params": "train:\n  seed: [42\n"}, ["params.yaml: not valid YAML"],
    ),
    "data: empty corpus": (
        "prepare", {"params": {"data.train_file": "local/corpus/empty.txt"}}, ["local/corpus/empty.txt: no text in it"],
    ),
    "data: non-UTF-8 bytes": (
        "prepare",
        {"params": {"data.train_file": "local/corpus/latin1.txt"}},
        ["local/corpus/latin1.txt: not UTF-8 text (bad byte at offset 5); re-encode it as UTF-8"],
    ),
    "data: missing file": (
        "prepare",
        {"params": {"data.test_file": "local/corpus/gone.txt"}},
        ["local/corpus/gone.txt: no such file (check data.*_file in params.yaml)"],
    ),
    "params: a freeze policy that trains nothing": (
        "train",
        {"params": {"freeze.trainable_blocks": 0, "freeze.head": "frozen", "freeze.train_ln_f": False}},
        ["freeze: trainable_blocks 0, head frozen and train_ln_f false train nothing"],
    ),
    "data: a single file too small for three splits": (
        "prepare",
        {"params": {"data.single_file": "local/corpus/three-articles.txt", "data.train_file": None,
                    "data.validation_file": None, "data.test_file": None}},
        ["data.single_file holds 3 document(s); data.split_fractions [0.9, 0.05, 0.05] would leave the validation, "
         "test split(s) empty (train 3, validation 0, test 0 documents)"],
    ),
    "data: missing upstream output": (
        "train",
        {"options": {"tokenized": "data/nowhere"}},
        ["missing data/nowhere/train.parquet, data/nowhere/validation.parquet: run the upstream"],
    ),
    "evaluate: missing upstream output": (
        "evaluate", {"options": {"streams": "data/nowhere"}},
        ["missing data/nowhere/validation.parquet, data/nowhere/test.parquet: run the upstream"],
    ),
    "evaluate: missing base metrics": (
        "evaluate", {"options": {"base_metrics": "metrics/nowhere.json"}},
        ["missing metrics/nowhere.json: run the upstream"],
    ),
    "evaluate: fine-tuned model folder without model.safetensors": (
        "evaluate",
        {"options": {"model": "local/models/no-weights"}},
        ["model.name_or_path='local/models/no-weights': could not load its weights", "no file named model.safetensors"],
    ),
    "evaluate_base: weights truncated": (
        "evaluate_base",
        {"params": {"model.name_or_path": "local/models/truncated"}},
        ["model.name_or_path='local/models/truncated': could not load its weights", "Error while deserializing header"],
    ),
    "evaluate_base: pickled weights only": (
        "evaluate_base",
        {"params": {"model.name_or_path": "local/models/pickled"}},
        ["no file named model.safetensors", "pickled .bin weights are refused"],
    ),
    "model: weights file missing": (
        "train",
        {"params": {"model.name_or_path": "local/models/no-weights"}},
        ["model.name_or_path='local/models/no-weights': could not load its weights from the local folder",
         "no file named model.safetensors"],
    ),
    "model: weights truncated": (
        "train",
        {"params": {"model.name_or_path": "local/models/truncated"}},
        ["model.name_or_path='local/models/truncated': could not load its weights", "Error while deserializing header"],
    ),
    "model: pickled weights only": (
        "train",
        {"params": {"model.name_or_path": "local/models/pickled"}},
        ["no file named model.safetensors", "pickled .bin weights are refused"],
    ),
    "model: config.json missing": (
        "train",
        {"params": {"model.name_or_path": "local/models/no-config"}},
        ["model.name_or_path='local/models/no-config': could not load its config",
         "there is no config.json in local/models/no-config"],
    ),
    "model: config asks to run its own code": (
        "train",
        {"params": {"model.name_or_path": "local/models/remote-code"}},
        ["model.name_or_path='local/models/remote-code'", "contains custom code"],
    ),
    "model: vocabulary smaller than the tokenizer's": (
        "train",
        {"params": {"model.name_or_path": "local/models/small-vocab"}},
        ["the tokenizer (1024 tokens, data up to id", "does not fit the model's vocabulary (500)"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_gets_a_short_message_exit_2_and_earlier_outputs_stay(repo, run_stage, case):
    stage, change, expected = CASES[case]
    before = outputs(repo)
    raw_params = change.get("raw_params")
    if section := change.get("drop_section"):
        raw = repo.params
        del raw[section]
        raw_params = yaml.safe_dump(raw, sort_keys=False)
    params = change.get("params")
    if params and raw_params is not None:
        raw = yaml.safe_load(raw_params)
        for dotted, value in params.items():
            group, key = dotted.split(".")
            raw[group][key] = value
        raw_params, params = yaml.safe_dump(raw, sort_keys=False), None
    result = run_stage(stage, params, raw_params, **change.get("options", {}))

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index(" ERROR ") :]
    assert len(error.strip().splitlines()) <= MAX_ERROR_LINES, error
    for fragment in expected:
        assert fragment in error, f"{fragment!r} not in:\n{error}"
    assert outputs(repo) == before
    assert not list((repo.root / "local" / "models").glob("*/REMOTE_CODE_RAN"))
    print(f"{case}: {error.split(' ERROR ', 1)[1].strip()}")


def test_a_split_shorter_than_one_block_stops_tokenize(repo, run_stage):
    before = outputs(repo)
    short = {"data.max_validation_lines": 1}
    assert run_stage("prepare", short, out="scratch/prepared", metrics="scratch/prepare.json").returncode == 0
    result = run_stage("tokenize", short, prepared="scratch/prepared")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "split 'validation' has" in result.stderr
    assert "fewer than one block of tokenize.block_size=64" in result.stderr
    assert outputs(repo) == before


def test_a_disk_too_small_for_a_checkpoint_stops_train_before_training(repo, monkeypatch, capsys):
    before = outputs(repo)
    monkeypatch.chdir(repo.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    disk = namedtuple("DiskUsage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: disk(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SystemExit) as exited:
        train.main(repo.stage_argv("train")[3:])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "checkpoints: 0 MiB free, but a checkpoint needs about" in error and "train.checkpoint_steps: null" in error
    assert outputs(repo) == before


def test_no_failed_stage_left_its_run_running(repo):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo.root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(repo.params["mlflow"]["experiment"])
    stage_runs = [
        run for run in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in run.data.tags
    ]
    assert {run.info.status for run in stage_runs} == {"FINISHED", "FAILED"}
    failed = [run for run in stage_runs if run.info.status == "FAILED"]
    assert all(run.data.tags["error"].startswith("UserError: ") for run in failed)
