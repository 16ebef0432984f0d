"""The fine-tuned model folder (pipeline/training/saving.py): the same bytes whether the Trainer was built in this
process or a rerun found training finished in the last checkpoint; a full disk leaves the earlier folder."""

import copy
import errno
import json

import pytest
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

from pipeline.data.files import DiskFullError
from pipeline.training.saving import model_bytes, save_finetuned


class Tokenizer:
    """What the save path needs of a tokenizer: it writes its files into the folder."""

    def save_pretrained(self, folder):
        (folder / "tokenizer.json").write_text("{}")


def folder_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_model_trained_here_and_one_loaded_from_the_last_checkpoint_save_the_same_bytes(tiny_config, tmp_path):
    trained = GPT2LMHeadModel(copy.deepcopy(tiny_config))  # each loaded model has its own config
    resumed = GPT2LMHeadModel(copy.deepcopy(tiny_config))
    pretrained_use_cache = trained.config.use_cache
    Trainer(model=trained, args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[]))
    assert trained.config.use_cache is False and pretrained_use_cache is True  # what the Trainer does to it
    resumed.load_state_dict(trained.state_dict())  # a rerun builds no Trainer: it loads the final weights

    save_finetuned(trained, Tokenizer(), tmp_path / "trained", pretrained_use_cache)
    save_finetuned(resumed, Tokenizer(), tmp_path / "resumed", pretrained_use_cache)

    assert folder_bytes(tmp_path / "trained") == folder_bytes(tmp_path / "resumed")
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["use_cache"] is True


def test_the_model_size_counts_a_tied_tensor_once(tiny_config):
    # 32 x (100 + 64) embeddings + 2 blocks of 12,704 + ln_f 64, fp32; the tied head adds nothing; plus buffers.
    model = GPT2LMHeadModel(tiny_config)
    parameters = 32 * (100 + 64) + 2 * 12_704 + 64
    assert sum(p.numel() for p in model.parameters()) == parameters
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_bytes(model) == 4 * parameters + buffers


def test_a_full_disk_while_saving_is_one_paragraph_and_the_earlier_model_stays(tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "models" / "finetuned"
    model = GPT2LMHeadModel(tiny_config)
    save_finetuned(model, Tokenizer(), out, True)
    before = folder_bytes(out)

    def disk_full(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", disk_full)
    with pytest.raises(DiskFullError) as caught:
        save_finetuned(model, Tokenizer(), out, True)
    assert f"{out}: no space left on the disk while writing it" in str(caught.value)
    assert "KiB" in str(caught.value.args[0].split("it needs about ")[1])
    assert folder_bytes(out) == before
