"""Checkpoints and the run directory.

    RUN_DIR/
      config.json            the full TrainConfig plus dataset fingerprint and cache config
      metrics.jsonl          one JSON record per finished epoch
      checkpoints/last.pt    model, optimizer, scaler, RNG states, epoch, generation, early-stop state
      checkpoints/best.pt    the same, at the best validation epoch (the reported model)
      results.json           final validation/test metrics of the best checkpoint (+ baselines)
      *.png                  loss, validation metrics, warm vs cold plots
      embeddings/            exported user/item tables (cli.py export)

Every file is written atomically, so a kill at any moment leaves the previous version readable.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_bytes, atomic_write_json


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; the run has not finished an epoch yet, start it again")
    # weights_only=False: our own files hold optimizer state and RNG tensors alongside weights.
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict:
    # Only the CPU generator: the one random draw of training (the hybrid mask) comes from a
    # generator reseeded per epoch, and nothing draws from the default CUDA generators. Saving
    # those (one per visible GPU) would make a resume on fewer visible GPUs fail for nothing.
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])  # a "cuda" entry from older checkpoints is ignored


class RunDir:
    """Paths and record-keeping of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ckpt_dir = self.root / "checkpoints"
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.results_path = self.root / "results.json"
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"

    def create(self, record: dict, *, exist_ok: bool = False) -> None:
        if self.config_path.exists() and not exist_ok:
            raise UserError(
                f"{self.root} already holds a run; pass --resume {self.root} to continue it "
                "or choose another --run-dir"
            )
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, record)

    def read_config(self) -> dict:
        if not self.config_path.exists():
            raise UserError(f"{self.root} is not a run directory (no config.json)")
        return json.loads(self.config_path.read_text())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a kill mid-append
                break
        return out

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    def append_metrics(self, records: list[dict], record: dict) -> list[dict]:
        """Rewrite metrics.jsonl atomically with `record` appended (a few KB per epoch)."""
        records = [*records, record]
        self.write_metrics(records)
        return records
