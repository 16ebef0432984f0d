"""The multi-process setup that needs no second process: who writes, the threads per rank, the world check, the
Trainer's DDP arguments, and the collectives' one-process behaviour (each returns its input). The two-process runs
are in tests/test_distributed.py."""

import dataclasses

import pytest
import torch

from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.training import distributed
from pipeline.training.trainer_setup import distributed_arguments

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def outside_torchrun(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def as_rank(monkeypatch, rank: int, world: int) -> None:
    for name, value in zip(TORCHRUN_ENV, (rank, rank, world), strict=True):
        monkeypatch.setenv(name, str(value))


def test_one_plain_process_is_the_main_process_of_a_world_of_one(outside_torchrun):
    assert distributed.world_size() == 1 and distributed.is_main_process()
    assert not distributed.launched_by_torchrun()
    distributed.check_world(1)


def test_under_torchrun_only_rank_0_writes(monkeypatch):
    as_rank(monkeypatch, 1, 2)
    assert distributed.launched_by_torchrun() and not distributed.is_main_process()
    as_rank(monkeypatch, 0, 2)
    assert distributed.is_main_process() and distributed.world_size() == 2


def test_a_torchrun_world_other_than_train_processes_is_refused(monkeypatch):
    as_rank(monkeypatch, 0, 4)
    with pytest.raises(UserError, match=r"train.processes is 2 but torchrun started 4 processes"):
        distributed.check_world(2)


@pytest.mark.parametrize(("cores", "processes", "threads"), [(2, 1, 2), (2, 2, 1), (16, 2, 8), (16, 3, 5), (2, 4, 1)])
def test_each_rank_gets_its_share_of_the_cores(monkeypatch, cores, processes, threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert distributed.threads_per_process(processes) == threads


def test_one_process_keeps_the_trainers_arguments_as_they_were_and_two_name_the_backend():
    assert distributed_arguments(1) == {}
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    assert distributed_arguments(2) == {"ddp_backend": expected, "ddp_find_unused_parameters": False}


def test_without_a_process_group_the_collectives_return_their_input(outside_torchrun):
    loss = torch.tensor(2.5)
    assert distributed.mean_over_ranks(loss) is loss
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_from_main({"step": 3}) == {"step": 3}
    distributed.barrier()


def test_the_global_batch_counts_every_process_and_micro_batch():
    defaults = Params.defaults().train
    assert defaults.processes == 1 and defaults.global_batch_size == defaults.batch_size * defaults.grad_accum_steps
    two = dataclasses.replace(defaults, processes=2, batch_size=8, grad_accum_steps=3)
    assert two.global_batch_size == 48
