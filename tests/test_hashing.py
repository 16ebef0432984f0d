import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.tracking.hashing import dvc_md5

STAGE = """\
stages:
  consume:
    cmd: python -c "print('consumed')"
    deps:
      - corpus.txt
      - corpus
"""


def _run(cwd: Path, *command: str) -> None:
    # A bare environment, so a DVC_ROOT or git config of an enclosing run cannot leak into the temp repo.
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=120)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_file_hash_is_the_md5_of_its_bytes(tmp_path):
    data = b"line one\r\nline two\n" + bytes(range(256))  # CRLF and binary: DVC 3 hashes raw bytes
    _write(tmp_path / "blob.bin", data)
    assert dvc_md5(tmp_path / "blob.bin") == hashlib.md5(data).hexdigest()


def test_directory_hash_depends_on_names_and_contents(tmp_path):
    _write(tmp_path / "a" / "x.txt", b"1")
    _write(tmp_path / "b" / "y.txt", b"1")
    _write(tmp_path / "c" / "x.txt", b"2")
    hashes = {dvc_md5(tmp_path / name) for name in "abc"}
    assert len(hashes) == 3
    assert all(value.endswith(".dir") for value in hashes)


@pytest.mark.slow
def test_hashes_equal_what_dvc_repro_writes_to_dvc_lock(tmp_path):
    _write(tmp_path / "corpus.txt", "tête-à-tête\r\n".encode())
    tree = {
        "top.txt": b"top\n",
        "nested/deeper/leaf.bin": bytes(range(256)),
        "nested/empty.txt": b"",
        "nested/ünïcode name.txt": b"json escapes non-ASCII names\n",
        ".hidden": b"dot files count\n",
        "sub dir/a-b_c.txt": b"z\n",
        ".hg/ignored": b"DVC never puts .hg, .git or .dvc in a tree\n",
    }
    for relpath, data in tree.items():
        _write(tmp_path / "corpus" / relpath, data)
    (tmp_path / "dvc.yaml").write_text(STAGE)
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    _run(tmp_path, sys.executable, "-m", "dvc", "repro", "-q")

    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    recorded = {dep["path"]: dep["md5"] for dep in lock["stages"]["consume"]["deps"]}
    assert recorded["corpus"].endswith(".dir")
    assert dvc_md5(tmp_path / "corpus.txt") == recorded["corpus.txt"]
    assert dvc_md5(tmp_path / "corpus") == recorded["corpus"]
