"""Where and in what precision a run computes: the one place that resolves `--device` and `--amp`.

Reads nothing from disk. `auto` means the first CUDA device when torch sees one, else the CPU; AMP
`auto` means bf16 on CUDA and fp32 elsewhere. Used by training, serving and the benchmarks alike.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from common.errors import UserError


def wants_cuda(name: str) -> bool:
    """Whether `--device name` trains on CUDA (decides NCCL vs gloo before the device is set up)."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The torch device `--device name` means (`auto`, `cpu`, `cuda`, `cuda:N`); a name torch does
    not know, or CUDA without a CUDA device, is a UserError naming the fix. Under torchrun each rank
    owns GPU LOCAL_RANK."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda devices are supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cpu" and dev.index not in (None, 0):  # torch has one CPU device; cpu:3 breaks loading later
        raise UserError(f"--device {name}: there is one CPU device; use --device cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "cuda" and distributed:
        # One index for all ranks would put them on one GPU; NCCL is bound to LOCAL_RANK.
        if dev.index is not None and dev.index != local_rank:
            raise UserError(f"--device {name} under torchrun: each rank uses cuda:LOCAL_RANK; "
                            f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local_rank)
    return dev


def bind_device(device: torch.device, set_device=None) -> None:
    """Make a CUDA `device` this thread's current device. A CUDA graph captures on the current
    device's streams: with cuda:1 resolved but device 0 current, the capture stream would belong
    to GPU 0 while the step's kernels run on GPU 1, outside the capture, and every replay would do
    nothing. (`set_device` is torch.cuda.set_device; the tests pass a recorder.)"""
    if device.type == "cuda":
        (set_device or torch.cuda.set_device)(device)


def amp_mode(amp: str, device: torch.device) -> str:
    """The precision `--amp` means on `device`: bf16, fp16 or fp32."""
    return amp if amp != "auto" else ("bf16" if device.type == "cuda" else "fp32")


def amp_settings(amp: str, device: torch.device):
    """(autocast context factory, GradScaler, mode): one code path for bf16 / fp16 / fp32."""
    mode = amp_mode(amp, device)
    if mode == "fp32":
        autocast = nullcontext
    else:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        # No weight-cast cache: a CUDA graph must not capture casts cached outside it (torch's
        # CUDA-graph notes), and each weight is cast once per step here anyway.
        autocast = lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=False)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))
    return autocast, scaler, mode
