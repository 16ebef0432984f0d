"""The numerics fingerprint: what decides training's last bits, and the canary that shows when kernels differ."""

import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import GPT2LMHeadModel

from pipeline import MKL_REPRODUCIBLE
from pipeline.reproduce.numerics import numerics_verdict
from pipeline.training.numerics import canary, machine_numerics, numerics_fingerprint

CANARY_IN_A_FRESH_PROCESS = """
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
from pipeline.training.numerics import canary
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=256, vocab_size=4096, n_positions=128))
print(canary(model, torch.randint(0, 4096, (2, 128), generator=torch.Generator().manual_seed(1)), use_bf16=True))
"""


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_config)


def test_the_canary_is_the_same_for_the_same_model_and_input_and_leaves_the_model_as_it_was(model):
    input_ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    rng_before = torch.get_rng_state()
    first = canary(model, input_ids, use_bf16=False)
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)
    assert canary(model, input_ids, use_bf16=False) == first
    assert len(first) == 16 and int(first, 16) >= 0


def test_the_canary_changes_with_the_weights_the_precision_and_the_input(model):
    input_ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = canary(model, input_ids, use_bf16=False)
    assert canary(model, input_ids, use_bf16=True) != reference
    assert canary(model, input_ids.flip(1), use_bf16=False) != reference
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert canary(model, input_ids, use_bf16=False) != reference


def test_bf16_canaries_agree_across_fresh_processes_and_tell_thread_counts_apart():
    """The property the train stage relies on: fresh processes with the same threads compute the same bits under
    bf16 autocast, and another thread count (another summation order) shows in the canary."""

    def run(threads: int) -> str:
        command = [sys.executable, "-c", CANARY_IN_A_FRESH_PROCESS, str(threads)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    two_threads = {run(2) for _ in range(2)}
    assert len(two_threads) == 1
    assert run(1) not in two_threads


def test_the_fingerprint_names_what_picks_the_kernels(model):
    fingerprint = numerics_fingerprint(model, block_size=8, use_bf16=False)
    assert fingerprint.keys() >= {"torch", "cpu_capability", "threads", "kernels", "canary"}
    assert fingerprint["threads"] == str(torch.get_num_threads())
    assert fingerprint.items() >= machine_numerics().items()


def test_the_reproduce_verdict_tells_a_changed_machine_from_a_changed_pipeline():
    first = {"threads": "2", "cpu_capability": "AVX512", "canary": "aaaa"}
    assert numerics_verdict(first, dict(first)).startswith("numerics: the same in both runs (canary aaaa)")
    changed = numerics_verdict(first, first | {"threads": "1", "canary": "bbbb"})
    assert changed.startswith("numerics DIFFER (canary aaaa vs bbbb; threads 2 vs 1)")
    assert "not recorded" in numerics_verdict(first, None)


def test_importing_the_package_puts_mkl_in_its_reproducible_mode_and_an_explicit_setting_wins():
    """MKL reads MKL_DYNAMIC once, when torch loads it: a stage's `import pipeline...` must come first and set it."""
    gemm = "import pipeline.train, torch; torch.ones(64, 64) @ torch.ones(64, 64)"
    clean = {name: value for name, value in os.environ.items() if name not in MKL_REPRODUCIBLE}

    def mkl_mode(**settings: str) -> str:
        env = clean | {"MKL_VERBOSE": "1"} | settings
        out = subprocess.run([sys.executable, "-c", gemm], env=env, check=True, capture_output=True, text=True).stdout
        if "MKL_VERBOSE" not in out:
            pytest.skip("this torch build computes fp32 GEMMs without MKL")
        return re.search(r"CNR:\S+ Dyn:\d", out).group(0)

    assert mkl_mode() == "CNR:AUTO,STRICT Dyn:0"
    assert mkl_mode(MKL_CBWR="COMPATIBLE") == "CNR:COMPATIBLE Dyn:0"
