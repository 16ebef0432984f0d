"""Local inputs must lie where dvc.yaml tracks them, or an edit to them would never rerun a stage
(pipeline/input_paths.py, checked by the params loader before any work)."""

import pytest

from pipeline.params import ParamsError, load_params
from tests.test_params import write_params


@pytest.fixture
def repo_root(tmp_path, monkeypatch):
    """A working directory with the tracked folders and a model folder outside them; params.yaml written in it."""
    for folder in ("local/corpus", "local/models/tiny", "elsewhere/model", "gpt2-copy"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(root, overrides: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        load_params(write_params(root, overrides))
    return str(caught.value)


LOCAL = {"data.source": "local"}
SPLIT_FILES = {f"data.{split}_file": f"local/corpus/{split}.txt" for split in ("train", "validation", "test")}


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.name_or_path": "gpt2"},
        {"model.name_or_path": "openai-community/gpt2"},  # a Hub id with its owner: one `/`, no folder of that name
        {"model.name_or_path": "local/models/tiny"},
        {"model.name_or_path": "local/models/not-yet-generated"},
        LOCAL | SPLIT_FILES,
        LOCAL | {"data.single_file": "local/corpus/offline/all.txt"},
        {"data.train_file": "/anywhere/not/read.txt"},  # source hub: the file params are not read
    ],
)
def test_hub_ids_and_paths_under_the_tracked_folders_are_accepted(repo_root, overrides):
    load_params(write_params(repo_root, overrides))


def test_an_absolute_path_inside_the_tracked_folder_is_accepted(repo_root):
    load_params(write_params(repo_root, {"model.name_or_path": str(repo_root / "local/models/tiny")}))


@pytest.mark.parametrize(
    ("overrides", "key", "folder"),
    [
        ({"model.name_or_path": "elsewhere/model"}, "model.name_or_path", "local/models"),  # exists: a folder
        ({"model.name_or_path": "gpt2-copy"}, "model.name_or_path", "local/models"),  # a folder shadows the Hub id
        ({"model.name_or_path": "/opt/models/gpt2"}, "model.name_or_path", "local/models"),
        ({"model.name_or_path": "local/models/../../x"}, "model.name_or_path", "local/models"),
        ({"model.name_or_path": "local/corpus/model"}, "model.name_or_path", "local/models"),
        (LOCAL | SPLIT_FILES | {"data.train_file": "/tmp/train.txt"}, "data.train_file", "local/corpus"),
        (LOCAL | SPLIT_FILES | {"data.test_file": "data/test.txt"}, "data.test_file", "local/corpus"),
        (LOCAL | {"data.single_file": "local/models/all.txt"}, "data.single_file", "local/corpus"),
        ({"data.hub_dataset": "./datasets/wikitext"}, "data.hub_dataset", "local/corpus"),
    ],
)
def test_a_local_input_outside_the_tracked_folders_is_refused_saying_where_to_put_it(repo_root, overrides, key,
                                                                                     folder):  # fmt: skip
    message = problems(repo_root, overrides)
    assert f"{key}: " in message and f"is outside {folder}/" in message
    assert f"move it to {folder}/<name>" in message and f"dvc add {folder}/<name>" in message


def test_every_untracked_input_is_reported_at_once(repo_root):
    overrides = LOCAL | SPLIT_FILES | {"data.train_file": "a.txt", "data.test_file": "b.txt",
                                       "model.name_or_path": "/m"}  # fmt: skip
    message = problems(repo_root, overrides)
    assert "3 problem(s)" in message
