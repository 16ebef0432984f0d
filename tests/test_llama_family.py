"""The Llama family through the real stages, in process and cheaply: prepare, tokenize and a few steps of train
(freeze policy, validation, checkpoints, MLflow model logging) on the offline tiny Llama, then generation from the
saved folder and from MLflow, and MLflow's pyfunc. The whole-pipeline runs (`dvc repro`, `pipeline.reproduce
twice`) stay on the tiny GPT-2 in CI; docs/models.md has the Llama profile's."""

import importlib
import json
import math
import shlex
import shutil

import pytest
import yaml
from safetensors.torch import load_file

from pipeline.generate.__main__ import main as generate
from tests.conftest import DVC_ENV, REPO, stage_command

pytestmark = pytest.mark.usefixtures("tracking_env")

# profiles/offline-llama.yaml on 200 lines of the corpus: 4 optimizer steps of 16 blocks, a validation point and a
# checkpoint every 2. The untied head on an untied model: the head and the last block train, nothing is copied.
SMALL_RUN = {
    "data.max_train_lines": 200, "train.max_steps": 4, "train.eval_steps": 2, "train.eval_blocks": 4,
    "train.checkpoint_steps": 2, "freeze.head": "untied", "mlflow.registered_model": None,
    "mlflow.experiment": "llama-family",
}  # fmt: skip
# By hand for TINY_LLAMA (hidden 64, 4 blocks, 4 query and 2 key/value heads, MLP 176, vocab 1,024, untied): a block
# holds q and o 64·64, k and v 64·32, gate, up and down 64·176, two RMSNorms of 64 = 46,208; the input embedding and
# the head 1,024·64 = 65,536 each; the final norm 64.
BLOCK, EMBEDDING = 46_208, 65_536
TRAINED = ("model.layers.3.", "lm_head.")


def run_stage(stage: str) -> None:
    """The stage's command from dvc.yaml, through its module's `main` in this process."""
    argv = shlex.split(stage_command(REPO / "dvc.yaml", stage))
    importlib.import_module(argv[2]).main(argv[3:])


@pytest.fixture(scope="module")
def llama_run(store, offline_corpus, tiny_llama_dir):
    """prepare, tokenize and train on the tiny Llama in the module's repo (its MLflow store); the repo root."""
    from pipeline.offline.profile import load_profile

    root = store["repo"]
    profile = load_profile(REPO, "offline-llama")
    shutil.copytree(offline_corpus["train"].parent, root / profile.corpus_dir)
    shutil.copytree(tiny_llama_dir, root / profile.model_dir)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in {**profile.overrides, **SMALL_RUN}.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as patch:
        for name in DVC_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", store["uri"])
        patch.setenv("DVC_ROOT", str(root))
        patch.chdir(root)
        for stage in ("prepare", "tokenize", "train"):
            run_stage(stage)
    return root


def test_train_counts_a_llama_by_hand_and_changes_only_what_trains(llama_run, tiny_llama_dir):
    metrics = json.loads((llama_run / "metrics/train.json").read_text())
    parameters = metrics["parameters"]
    assert (parameters["trainable"], parameters["total"]) == (BLOCK + EMBEDDING, 4 * BLOCK + 2 * EMBEDDING + 64)
    assert list(parameters["modules"]) == ["embed_tokens", "layers.0", "layers.1", "layers.2", "layers.3", "norm",
                                           "lm_head"]  # fmt: skip
    curve = (llama_run / "plots/validation_curve.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in curve]
    assert metrics["steps"] == 4 and len(losses) == 2
    assert math.log(1024) > losses[0] > losses[1]  # from about uniform over the vocabulary, down at each point
    assert not (llama_run / "checkpoints").exists() or not any((llama_run / "checkpoints").rglob("checkpoint-*"))
    base = load_file(tiny_llama_dir / "model.safetensors")
    tuned = load_file(llama_run / "models/finetuned/model.safetensors")
    assert tuned.keys() == base.keys()
    changed = {key for key in base if not base[key].equal(tuned[key])}
    assert changed and all(key.startswith(TRAINED) for key in changed)
    assert {key for key in base if key.startswith(TRAINED) and "norm" not in key} <= changed
    config = json.loads((llama_run / "models/finetuned/config.json").read_text())
    assert (config["model_type"], config["tie_word_embeddings"]) == ("llama", False)


def test_a_llama_continues_a_prompt_alike_from_its_folder_from_mlflow_and_through_pyfunc(llama_run, client, capsys):
    import mlflow

    folder = str(llama_run / "models/finetuned")
    greedy = ["The river", "--max-new-tokens", "8", "--temperature", "0"]
    generate(["--model", folder, *greedy])
    from_folder = capsys.readouterr().out
    experiment = client.get_experiment_by_name("llama-family")
    (logged,) = client.search_logged_models([experiment.experiment_id])
    generate(["--model", f"models:/{logged.model_id}", *greedy])
    assert capsys.readouterr().out == from_folder and len(from_folder.split()) > 3
    (predicted,) = mlflow.pyfunc.load_model(f"models:/{logged.model_id}").predict(["The river"])
    assert predicted.startswith(from_folder.rstrip("\n"))  # its 50 greedy tokens begin with the CLI's 8
