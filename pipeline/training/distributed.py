"""Train on `train.processes` processes: the launch, and the few collectives the stage adds to the Trainer's own DDP.

With `train.processes: 1` nothing here acts: the stage is the plain single process it always was, so its outputs do
not change. Above 1, the stage (started by `dvc repro` as `python -m pipeline.train ...`) becomes the launcher: it
runs torchrun's own agent (`torch.distributed.run`, the code behind the `torchrun` script) in its own process, which
starts the N worker processes of `python -m pipeline.train` with the same arguments. Each worker is a rank; the HF
Trainer sees torchrun's LOCAL_RANK/WORLD_SIZE, wraps the model in DistributedDataParallel (gloo on a CPU, nccl on
a GPU) and shards the batches. Run in-process rather than exec'd, so a SIGINT/SIGTERM the agent forwards to the
ranks still ends the stage with exit code 128 + signal.

Rank 0 alone writes outputs, checkpoints, curves, metrics and MLflow runs. What the other ranks must agree on with it
goes through the helpers below, each a no-op on one process: the checkpoint to resume from, whether a stop signal
came (so every rank stops after the same step), the step's loss (each rank only sees its shard), the validation loss
and the moment a checkpoint is complete. docs/distributed.md has the whole picture.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import UserError

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 120
"""How long torchrun's agent waits for the ranks to stop after forwarding SIGINT/SIGTERM before it kills them: time to
finish the step and write one checkpoint (about 1 GB with GPT-2 small). torchrun's default is 30 s."""


def world_size() -> int:
    """Processes in the training group: torchrun's WORLD_SIZE, 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, the one process that writes (every process, when there is only one)."""
    return os.environ.get("RANK", "0") == "0"


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_world(processes: int) -> None:
    """Under an outside torchrun (multi-node), its world must be `train.processes`: the params name the global batch,
    and the checkpoint key holds them."""
    if launched_by_torchrun() and world_size() != processes:
        raise UserError(
            f"train.processes is {processes} but torchrun started {world_size()} processes (WORLD_SIZE): set "
            "train.processes to --nnodes x --nproc-per-node, the global batch depends on it"
        )


def threads_per_process(processes: int) -> int:
    """CPU threads each rank gets: the cores shared out, so N ranks do not oversubscribe them (torchrun's own default
    is 1 thread, which leaves most cores of a big machine idle)."""
    return max(1, (os.cpu_count() or 1) // processes)


def launch(processes: int, argv: list[str]) -> None:
    """Run `python -m pipeline.train argv` as `processes` ranks on this machine under torchrun's agent; exit with
    their outcome: 0, 128 + signal when stopped by SIGINT/SIGTERM, 1 when a rank failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from pipeline.tracking.signals import Interrupted

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(processes)))  # an explicit setting wins
    command = ["--standalone", "--nproc-per-node", str(processes), "--max-restarts", "0"]
    command += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S), "-m", "pipeline.train", *argv]
    log.info("train.processes is %d: torchrun %s (OMP_NUM_THREADS=%s)", processes, " ".join(command),
             os.environ["OMP_NUM_THREADS"])  # fmt: skip
    try:
        torchrun(command)
    except SignalException as stop:  # the ranks got the signal from the agent and stopped with a checkpoint
        raise Interrupted(signal.Signals(stop.sigval)) from None
    except ChildFailedError as failure:
        log.error("a rank failed; the others were stopped:\n%s", failure.format_msg())
        sys.exit(1)
    sys.exit(0)


def init_process_group() -> None:
    """Join the group torchrun set up (gloo on a CPU, nccl on a GPU), before anything needs a collective; the Trainer
    then uses this group instead of starting its own."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend())


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on some rank: every rank gets the same answer at the same step."""
    if not _active():
        return flag
    device = torch.device("cuda") if backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the ranks (a copy; `value` itself is left alone)."""
    if not _active():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def barrier() -> None:
    if _active():
        dist.barrier()
