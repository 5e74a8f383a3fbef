"""Benchmarks as data: what a `bench ... --json PATH` file holds, and the machine it ran on.

    python cli.py bench train --json out/bench-train.json
    python -c "import json; print(json.load(open('out/bench-train.json'))['results'])"

Writes one JSON document: {"bench": name, "created": UTC time, "machine": describe_machine(),
"config": the bench's options, "results": every figure its tables show}. Runs on two machines
compare by a script, not by scraping a table.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path

from common.errors import UserError
from common.fsutil import atomic_write_json

FORMAT = 1  # bumped when the layout of the document changes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    """CPU model and cores, the Python, torch, CUDA and numba versions, and the GPU, if any."""
    import numba
    import torch

    cuda = torch.cuda.is_available()
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with; None for a CPU build
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "numba": numba.__version__,
    }


def check_json_path(path: Path | None) -> None:
    """Before a bench runs: refuse a --json path that cannot be written, naming it."""
    if path is None:
        return
    from common.fsutil import check_output_dir

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--json {path} is a directory; pass a file path (e.g. {path / 'bench.json'})")
    check_output_dir(path.parent, "--json's folder")


def plain(obj):
    """A JSON-ready copy: dict keys as strings, tuples as lists, dataclasses and paths spelled out,
    numpy scalars as numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    return str(obj)


def write_bench_json(path: Path, bench: str, config, results: dict) -> None:
    atomic_write_json(Path(path), {
        "format": FORMAT, "bench": bench, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe_machine(), "config": plain(config), "results": plain(results),
    })
