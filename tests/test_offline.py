import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from dvc.utils.hydra import apply_overrides
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from pipeline.data.loading import load_config
from pipeline.offline import __main__ as offline_command
from pipeline.offline.corpus import write_corpus
from pipeline.offline.profile import PROFILE, load_profile
from pipeline.offline.tiny_model import VOCAB_SIZE, write_tiny_model
from pipeline.params import hydra_overrides, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")
SECTION_HEADING = re.compile(r"^ = = [^=].* = = $")


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def validation_loss(model: GPT2LMHeadModel, token_ids: list[int], block_size: int = 64) -> float:
    blocks = torch.tensor(token_ids[: len(token_ids) // block_size * block_size]).view(-1, block_size)
    model.eval()
    with torch.no_grad():
        return model(input_ids=blocks, labels=blocks).loss.item()


@pytest.mark.parametrize(
    ("split", "min_words", "max_words"),
    [("train", 60_000, 80_000), ("validation", 6_000, 8_000), ("test", 6_000, 8_000)],
)
def test_corpus_has_wikitext_raw_shape(offline_corpus, split, min_words, max_words):
    lines = lines_of(offline_corpus[split])
    text_lines = [line for line in lines if line]
    assert min_words <= sum(len(line.split()) for line in lines) <= max_words
    # Raw Wikitext-2 train is about 35% empty lines; every other line starts with a space.
    assert 0.25 <= (len(lines) - len(text_lines)) / len(lines) <= 0.45
    assert all(line.startswith(" ") for line in text_lines)
    assert sum(bool(ARTICLE_HEADING.match(line)) for line in lines) >= 10
    assert sum(bool(SECTION_HEADING.match(line)) for line in lines) >= 10
    for index, line in enumerate(lines):
        if ARTICLE_HEADING.match(line) or SECTION_HEADING.match(line):
            assert lines[index - 1] == "" and lines[index + 1] == "", f"heading without empty lines around: {line!r}"


def test_splits_hold_different_articles_of_one_kind(offline_corpus):
    titles = {
        split: {line for line in lines_of(path) if ARTICLE_HEADING.match(line)}
        for split, path in offline_corpus.items()
    }
    assert not titles["train"] & titles["validation"]
    assert not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    sections = {
        split: {line for line in lines_of(path) if SECTION_HEADING.match(line)}
        for split, path in offline_corpus.items()
    }
    assert sections["validation"] <= sections["train"] and sections["test"] <= sections["train"]


def test_same_seed_writes_identical_files_and_leaves_torch_state_alone(tmp_path, offline_corpus, tiny_model_dir):
    corpus = write_corpus(tmp_path / "corpus")
    assert digests(corpus["train"].parent) == digests(offline_corpus["train"].parent)
    assert digests(write_corpus(tmp_path / "other", seed=1)["train"].parent) != digests(tmp_path / "corpus")

    rng_state, deterministic = torch.random.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    model_dir = write_tiny_model(tmp_path / "model", [corpus["train"]])
    assert digests(model_dir) == digests(tiny_model_dir)
    assert "model.safetensors" in digests(model_dir) and "tokenizer.json" in digests(model_dir)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_model_and_tokenizer_load_offline_and_agree(monkeypatch, tiny_model_dir, offline_corpus):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so set it here too
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.vocab_size == len(tokenizer) == VOCAB_SIZE
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == "<|endoftext|>"
    assert model.config.eos_token_id == model.config.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token is None
    line = next(line for line in lines_of(offline_corpus["validation"]) if "@,@" in line)
    for text in (line + "\n", " Ünïcode ✓ never seen in training"):  # byte-level: any text round-trips
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer(line)["input_ids"]) < len(line.encode()) / 2  # the merges compress the corpus's text


def test_pretrained_base_model_beats_a_fresh_one(tiny_model_dir, offline_corpus):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    torch.manual_seed(0)
    fresh = GPT2LMHeadModel(base.config)
    token_ids = tokenizer(offline_corpus["validation"].read_text(encoding="utf-8"), verbose=False)["input_ids"]
    base_loss, fresh_loss = validation_loss(base, token_ids), validation_loss(fresh, token_ids)
    assert fresh_loss == pytest.approx(torch.log(torch.tensor(VOCAB_SIZE)).item(), abs=0.2)
    assert base_loss < fresh_loss - 3, (base_loss, fresh_loss)


@pytest.mark.parametrize("profile_name", ["offline", "ci"])
def test_overrides_applied_by_dvc_pass_the_params_loader(
    tmp_path, monkeypatch, offline_corpus, tiny_model_dir, profile_name
):
    # A repo root laid out as `python -m pipeline.offline` leaves it, with params.yaml set as `dvc exp run -S` does.
    profile = load_profile(REPO_ROOT, profile_name)
    shutil.copytree(offline_corpus["train"].parent, tmp_path / profile.corpus_dir)
    shutil.copytree(tiny_model_dir, tmp_path / profile.model_dir)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    overrides = profile.overrides
    apply_overrides(tmp_path / "params.yaml", hydra_overrides(overrides))
    monkeypatch.chdir(tmp_path)  # stages run from the repo root, where the override paths are relative to

    params = load_params("params.yaml", load_model_config=load_config)

    assert {key: params.flat()[key] for key in overrides} == overrides
    for split in ("train", "validation", "test"):
        assert Path(params.data.split_file(split)).is_file()
    assert AutoConfig.from_pretrained(params.model.name_or_path).n_positions >= params.tokenize.block_size


def test_main_writes_under_root_versions_with_dvc_and_runs_the_printed_command(tmp_path, monkeypatch, capsys):
    (tmp_path / PROFILE).parent.mkdir()
    shutil.copy(REPO_ROOT / PROFILE, tmp_path / PROFILE)
    profile = load_profile(tmp_path)
    built, commands = {}, []
    monkeypatch.setattr(
        offline_command,
        "write_tiny_model",
        lambda out_dir, corpus_files, seed, family: built.update(out_dir=out_dir, files=corpus_files, family=family),
    )
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda command, cwd, check: commands.append((command, cwd)) or subprocess.CompletedProcess(command, 3),
    )

    with pytest.raises(SystemExit) as exit_info:
        offline_command.main(["--root", str(tmp_path), "--run"])

    assert exit_info.value.code == 3  # the pipeline's own exit status
    assert built["out_dir"] == tmp_path / profile.model_dir and built["family"] == "gpt2"
    assert built["files"] == [tmp_path / profile.corpus_dir / "train.txt"]
    assert all((tmp_path / profile.corpus_dir / f"{split}.txt").is_file() for split in ("train", "test"))
    assert (tmp_path / profile.task_dir / "offline_wikitext.yaml").is_file()
    (add, add_cwd), (run, run_cwd) = commands
    folders = [str(profile.corpus_dir), str(profile.model_dir), str(profile.task_dir)]
    assert add[1:4] == ["-m", "dvc", "add"] and add[-3:] == folders
    assert run[:3] == ["dvc", "exp", "run"] and add_cwd == run_cwd == tmp_path
    out = capsys.readouterr().out
    assert f"git add {profile.corpus_dir}.dvc {profile.model_dir}.dvc {profile.task_dir}.dvc" in out
    assert "-S data.train_file=local/corpus/offline/train.txt" in out
