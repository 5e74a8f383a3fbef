"""torch.distributed glue: everything the training loop needs, as no-ops when world size is 1.

    torchrun --nproc_per_node=2 cli.py train --dataset D --cache C --run-dir R

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); we use NCCL on
GPUs and gloo on CPU. The loader gives every rank a slice of the same global batches, so all ranks
run the same number of steps and DDP needs no Join.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from common.errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


COLLECTIVE_TIMEOUT = timedelta(hours=2)


def init(use_cuda: bool = False) -> DistContext:
    """Join the torchrun job if there is one: NCCL when training on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and torch.cuda.is_available():
        local_world, visible = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if local_world > visible:  # rank `visible` would ask for a GPU that is not there
            raise UserError(
                f"{local_world} processes per node but {visible} visible GPU(s): each rank needs its own "
                f"GPU; run torchrun --nproc_per_node={visible} (or fewer), or train on CPU with --device cpu"
            )
    if not tdist.is_initialized():
        use_nccl = use_cuda and torch.cuda.is_available() and tdist.is_nccl_available()
        kw = {}
        if use_nccl:
            torch.cuda.set_device(local_rank)
            kw["device_id"] = torch.device("cuda", local_rank)  # binds barriers to this rank's GPU
        # Other ranks wait in a collective while rank 0 alone builds data and caches, evaluates
        # and writes checkpoints; NCCL's 10-minute default would abort them on large data.
        tdist.init_process_group(backend="nccl" if use_nccl else "gloo", timeout=COLLECTIVE_TIMEOUT, **kw)
    return DistContext(rank=rank, world=world, local_rank=local_rank)


def wrap(model: torch.nn.Module, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # No buffer broadcast: the only buffer is the constant feature matrix, which every rank loads
    # itself; broadcasting it before each forward would send (items x features) floats per step.
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def main_first(ctx: DistContext, fn) -> None:
    """Run `fn` on rank 0 while the other ranks wait; a UserError there is re-raised on every rank
    with the same message, so they exit with that one line instead of a collective's traceback."""
    from common.errors import UserError

    error = None
    if ctx.is_main:
        try:
            fn()
        except UserError as e:
            error = e
    if ctx.enabled:
        box = [None if error is None else str(error)]
        tdist.broadcast_object_list(box, src=0)  # also the barrier the old code had here
        if box[0] is not None and error is None:
            raise UserError(box[0])
    if error is not None:
        raise error


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return t


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's decision (e.g. early stop), agreed by every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long)
    if tdist.get_backend() == "nccl":
        t = t.cuda()
    tdist.broadcast(t, src=0)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
