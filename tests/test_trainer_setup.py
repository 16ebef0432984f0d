import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.params import Params
from pipeline.training.trainer_setup import CUBLAS_WORKSPACE, training_arguments, use_deterministic_algorithms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torch_determinism_restored(monkeypatch):
    """The test changes process-wide torch flags; put them back for the tests after it."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = torch.utils.deterministic.fill_uninitialized_memory
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.mark.usefixtures("torch_determinism_restored")
def test_deterministic_mode_without_the_trainers_debugging_aids():
    use_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert "CUDA_LAUNCH_BLOCKING" not in os.environ  # full_determinism would have set it
    assert not torch.utils.deterministic.fill_uninitialized_memory
    use_deterministic_algorithms(False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.usefixtures("torch_determinism_restored")
def test_an_explicit_cublas_workspace_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    use_deterministic_algorithms(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_the_trainer_is_not_asked_for_full_determinism(tmp_path):
    # The stage sets determinism itself; the Trainer's own would add CUDA_LAUNCH_BLOCKING=1.
    assert Params.defaults().train.deterministic
    assert not training_arguments(Params.defaults(), tmp_path, use_bf16=False).full_determinism


FREE_A_LARGE_TENSOR = """
import sys
import psutil, torch
from pipeline.training.trainer_setup import reuse_freed_memory
applied = reuse_freed_memory(sys.argv[1] == "reuse")
large = torch.ones(64 * 2**20)  # 256 MB: glibc would mmap it and munmap it when freed
del large
print(applied, psutil.Process().memory_info().rss)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_stays_with_the_process_for_the_next_allocation():
    resident = {}
    for mode in ("reuse", "default"):
        result = subprocess.run(
            [sys.executable, "-c", FREE_A_LARGE_TENSOR, mode], capture_output=True, text=True, check=True, cwd=ROOT
        )
        applied, rss = result.stdout.split()
        assert applied == "True"
        resident[mode] = int(rss)
    assert resident["reuse"] - resident["default"] > 200 * 2**20  # kept for reuse, not handed back to the kernel
