"""Stage outputs (pipeline/data/files.py): a full disk or a value JSON cannot hold is one paragraph, and the output
an earlier run wrote stays as it was."""

import errno
import json
import math
from pathlib import Path

import pytest

from pipeline.data.files import DiskFullError, atomic_dir, write_json, write_text_atomic
from pipeline.errors import UserError
from pipeline.tracking.cli import exit_on_user_error


def test_metrics_with_nan_or_infinity_are_refused_naming_the_key_and_the_old_file_stays(tmp_path):
    path = tmp_path / "metrics" / "train.json"
    write_json(path, {"train_loss": 2.5, "parameters": {"total": 10}})
    before = path.read_bytes()
    with pytest.raises(UserError) as caught:
        write_json(path, {"train_loss": math.nan, "validation": {"perplexity": math.inf}, "steps": 3})
    message = str(caught.value)
    assert f"{path}: not written" in message and "train_loss = nan" in message
    assert "validation.perplexity = inf" in message and "train.learning_rate" in message
    assert path.read_bytes() == before and json.loads(before)["train_loss"] == 2.5
    assert not path.with_name("train.json.partial").exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_writing_a_file_says_where_and_how_much_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "plots" / "curve.csv"
    write_text_atomic(path, "step,loss\n")
    monkeypatch.setattr(Path, "write_text", enospc)
    with pytest.raises(DiskFullError) as caught:
        write_text_atomic(path, "step,loss\n1,2.0\n" * 100)
    message = str(caught.value)
    assert f"{path}: no space left on the disk while writing it" in message
    assert "free there; it needs about 1.6 KiB" in message and "rerun the stage" in message
    monkeypatch.undo()
    assert path.read_text() == "step,loss\n"


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        # What safetensors' Rust writer raises from save_pretrained (transformers 5.23, safetensors 0.x).
        "safetensors",
    ],
)
def test_a_full_disk_while_staging_a_folder_is_one_paragraph_and_the_old_folder_stays(tmp_path, error):
    if error == "safetensors":
        from safetensors import SafetensorError

        error = SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    final = tmp_path / "models" / "finetuned"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"earlier run")
    with pytest.raises(DiskFullError) as caught, atomic_dir(final, expected_bytes=3 * 2**20) as staging:
        (staging / "model.safetensors").write_bytes(b"x" * 1000)
        raise error
    assert f"{final}: no space left on the disk" in str(caught.value) and "needs about 3.0 MiB" in str(caught.value)
    assert (final / "model.safetensors").read_bytes() == b"earlier run"
    assert not final.with_name("finetuned.partial").exists()


def test_other_errors_while_staging_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(OSError, match="Permission denied"), atomic_dir(tmp_path / "out"):
        raise OSError(errno.EACCES, "Permission denied")


def test_a_full_disk_exits_2_like_every_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_text", enospc)
    with pytest.raises(SystemExit) as caught, exit_on_user_error():
        write_text_atomic(tmp_path / "metrics.json", "{}")
    assert caught.value.code == 2
