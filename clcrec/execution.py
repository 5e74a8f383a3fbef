"""How a run executes: device, scoring form, batch assembly, CUDA graph, reader threads.

Reads nothing from disk. One function decides everything from the config and the data's sizes, so
the trainer and `bench train` run the same plan, and `train` logs it.

    auto on CPU : gather scoring (fused numba kernels), unique encoding, host assembly, eager steps
    auto on CUDA: dense scoring when the catalogue is small next to a batch row's slots
                  (num_items <= DENSE_ITEMS_PER_SLOT x (1 + num_neg)), else gather scoring with
                  the whole catalogue encoded once when it has fewer items than a batch's slots,
                  else every slot encoded; device assembly;
                  the step captured in one CUDA graph when nothing prevents it (clcrec.step)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from clcrec.config import TrainConfig
from clcrec.step import StepConfig, slot_rate, wants_graph
from pipeline.errors import UserError

# Dense scoring does B x (3 x items) x D multiply-adds per step on tensor cores; gather scoring
# does B x (1+K) x D in memory-bound gathers, scatters and a sort-based embedding backward, which
# cost tens of times more per element on a GPU. Dense wins while the catalogue is within this
# factor of a row's slots (paper scale: 5,986 items vs 129 slots = 46x).
DENSE_ITEMS_PER_SLOT = 64


@dataclass(frozen=True)
class ExecPlan:
    device: torch.device
    dense: bool  # score against the whole item table
    dedupe: bool  # the producer deduplicates item ids (unique encoding)
    assemble: str  # host | device (clcrec.loader)
    graph: bool  # the step is one CUDA graph
    readers: int  # threads reading and preparing chunks (clcrec.loader)
    compiled: bool = False  # the losses run through torch.compile (clcrec.step)
    encode_all: bool = False  # gather scoring with the whole catalogue encoded once per step

    @property
    def scoring(self) -> str:
        return "dense" if self.dense else ("gather, unique items" if self.dedupe else
                                           "gather, whole catalogue encoded" if self.encode_all else "gather, every slot")

    def describe(self) -> str:
        return (f"device {self.device}, scoring {self.scoring}, {self.assemble} batch assembly, "
                f"{'CUDA graph' if self.graph else 'eager steps'}{', compiled losses' if self.compiled else ''}, "
                f"{self.readers} chunk reader(s)")


def wants_cuda(cfg: TrainConfig) -> bool:
    """Whether this run trains on CUDA (decides NCCL vs gloo before the device is set up)."""
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())


def resolve_device(cfg: TrainConfig, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The run's device, bound as the current CUDA device when it is one (bind_device)."""
    return bind_device(_choose_device(cfg, local_rank, distributed))


def bind_device(dev: torch.device) -> torch.device:
    """Make a CUDA device the current one. Streams, graphs and the capture stream are created on
    the current device: with `--device cuda:1` and no set_device, a CUDA graph would capture on
    GPU 0's stream while the kernels ran on GPU 1 outside it, an empty graph whose every replay
    does nothing."""
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def _choose_device(cfg: TrainConfig, local_rank: int, distributed: bool) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and distributed:
        # Under torchrun each rank owns GPU LOCAL_RANK (NCCL is bound to it); one index for all
        # ranks would put them on one GPU.
        if dev.index is not None and dev.index != local_rank:
            raise UserError(f"--device {cfg.device} under torchrun: each rank uses cuda:LOCAL_RANK; "
                            f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local_rank)
    return dev


def plan_execution(cfg: TrainConfig, device: torch.device, num_items: int, world: int = 1) -> ExecPlan:
    cuda = device.type == "cuda"
    if cfg.scoring == "auto":
        dense = cuda and num_items <= DENSE_ITEMS_PER_SLOT * (1 + cfg.num_neg)
    else:
        dense = cfg.scoring == "dense"
    if dense and cfg.encode == "unique":
        raise UserError("--scoring dense encodes every item once per step; it takes no --encode unique "
                        "(pass --encode auto, or --scoring gather)")
    # unique encoding dedupes on CPU, where encoder FLOPs dominate. CUDA takes fixed shapes (no
    # host sync): the whole catalogue once when it has fewer rows than a batch's slots (the
    # encoder's work is then min(items, slots) rows), else every slot.
    slots = (cfg.batch_size // max(world, 1)) * (1 + cfg.num_neg)
    encode_all = not dense and (cfg.encode == "all" or (cfg.encode == "auto" and cuda and num_items <= slots))
    dedupe = not dense and (cfg.encode == "unique" or (cfg.encode == "auto" and not cuda))
    if cfg.assemble == "auto":
        assemble = "device" if cuda and not dedupe else "host"
    else:
        assemble = cfg.assemble
    if assemble == "device" and dedupe:
        raise UserError("--assemble device cannot deduplicate item ids; pass --encode slots or --scoring dense")
    graph = wants_graph(step_config(cfg, dense), device, world, dedupe)
    readers = cfg.readers or (min(4, max(1, (os.cpu_count() or 2) // 4)) if cuda else 1)
    compiled = cfg.compile == "on"
    if compiled:
        check_compile(device, dense, dedupe, world)
    return ExecPlan(device, dense, dedupe, assemble, graph, readers, compiled, encode_all)


def check_compile(device: torch.device, dense: bool, dedupe: bool, world: int) -> None:
    """Refuse --compile on where it cannot work, before anything is written: each shape is
    compiled once, so no per-batch shapes (dedupe); the CPU gather losses are numba kernels that
    inductor cannot trace; DDP's hooks are not traced here; and inductor needs its code generator
    (triton for CUDA, a C++ compiler for CPU)."""
    import shutil

    blockers = [why for bad, why in [
        (dedupe, "deduplicated batches change shape every step (pass --encode slots or --scoring dense)"),
        (device.type == "cpu" and not dense, "on CPU the gather losses are compiled numba kernels (pass --scoring dense)"),
        (world > 1, "distributed runs step through DDP (run one process)"),
    ] if bad]
    if not blockers and device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            blockers.append("torch.compile on CUDA needs triton, which is not installed (pip install triton)")
    if not blockers and device.type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            blockers.append("torch.compile on CPU needs a C++ compiler (install g++, or set CXX)")
    if blockers:
        raise UserError(f"--compile on cannot be used: {blockers[0]}; or pass --compile off")


def hybrid_rate(cfg: TrainConfig) -> float:
    """Per-slot probability of a hybrid (content) slot under the run's --hybrid-draw."""
    return slot_rate(cfg.num_sample, cfg.hybrid_draw, cfg.batch_size * (1 + cfg.num_neg))


def step_config(cfg: TrainConfig, dense: bool, encode_all: bool = False) -> StepConfig:
    return StepConfig(reg_weight=cfg.reg_weight, num_sample=hybrid_rate(cfg), amp=cfg.amp, dense=dense,
                      encode_all=encode_all, graph=cfg.cuda_graph, compile=cfg.compile == "on")
