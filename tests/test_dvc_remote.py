"""Sharing results through a DVC remote (docs/team.md): what one clone computed and pushed, a fresh clone pulls and
does not recompute. The remote is a local folder, which DVC treats like any other remote."""

import json
import re
import shutil
import subprocess

import pytest

from pipeline.offline.profile import load_profile

pytestmark = pytest.mark.slow

CACHED_OUTPUTS = ("data/prepared", "data/tokenized", "data/streams", "models/finetuned")
# What is shared does not depend on how well the model trains: a short run keeps the test quick.
QUICK = {
    "train.max_steps": 20, "train.eval_steps": None, "evaluate.stride": 64,
    "mlflow.log_model": False, "mlflow.registered_model": None,  # MLflow's copy of the model is not DVC's to share
}  # fmt: skip


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def bring_local_inputs(source, clone) -> None:
    """Copy the offline corpus and tiny model into `clone` unless git or DVC already put them there.

    local/ is git-ignored, so a teammate gets these out of band; once they are DVC-tracked, `dvc pull` brings them
    and nothing is copied."""
    profile = load_profile(source.root)
    for folder in (profile.corpus_dir, profile.model_dir):
        if not (clone.root / folder).exists():
            shutil.copytree(source.root / folder, clone.root / folder)


def test_a_fresh_clone_pulls_the_pushed_outputs_and_reruns_no_stage(pipeline_repo_factory, tmp_path):
    origin = pipeline_repo_factory("remote-origin")
    origin.set_params(QUICK)
    origin.dvc("repro")
    remote = tmp_path / "dvc-remote"
    origin.dvc("remote", "add", "--default", "shared", str(remote))
    origin.commit("results of the offline profile, and the team's DVC remote")  # dvc.lock, metrics/, .dvc/config
    origin.dvc("push")
    assert any(path.is_file() for path in remote.rglob("*"))

    clone = type(origin)(tmp_path / "clone")
    subprocess.run(["git", "clone", "--quiet", str(origin.root), str(clone.root)], check=True)
    bring_local_inputs(origin, clone)
    assert json.loads(clone.dvc("status", "--json"))  # no outputs yet: without the pull, repro would recompute

    clone.dvc("pull")
    for path in CACHED_OUTPUTS:
        assert (clone.root / path).is_dir(), path
    weights = "models/finetuned/model.safetensors"
    assert (clone.root / weights).read_bytes() == (origin.root / weights).read_bytes()
    assert json.loads(clone.dvc("status", "--json")) == {}
    assert ran_stages(clone.dvc("repro")) == set()
    assert clone.run("git", "status", "--porcelain").stdout == ""  # and dvc.lock is still the committed one
