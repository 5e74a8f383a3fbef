"""TensorBoard curves of a run: one point per epoch and scalar, written by rank 0.

    tensorboard --logdir runs/          # every run's curves, named by run directory

Reads each epoch's metrics record (the one clcrec/train/trainer.py appends to metrics.jsonl);
writes `events.out.tfevents.*` files into the run directory through torch's SummaryWriter,
flushed every epoch, so a killed run keeps what it logged. A resumed run opens its writer with
`purge_step` = the first epoch it trains: TensorBoard drops the points a killed run logged after
its last checkpoint (they are replayed), so the curves continue without duplicates.

Tags: loss/<term> (loss, r_e, u_i, reg...), val/<mode>/<metric>@K (all, warm, cold), select/score
and select/smoothed, speed/samples_per_s, speed/data_wait_frac, speed/generation_wait_s, lr.
"""

from __future__ import annotations

from pathlib import Path

from clcrec.train.step import SUM_NAMES

SPEED = ("samples_per_s", "data_wait_frac", "generation_wait_s")


def epoch_scalars(record: dict, lr: float) -> dict[str, float]:
    """The TensorBoard scalars of one epoch's metrics record, by tag."""
    out = {f"loss/{name}": record[name] for name in SUM_NAMES if name in record}
    out.update({f"speed/{name}": record[name] for name in SPEED if name in record})
    for mode, metrics in record.get("val", {}).items():
        out.update({f"val/{mode}/{k}": v for k, v in metrics.items() if "@" in k})  # not the user count
    out.update({f"select/{k}": record[f"select_{k}"] for k in ("score", "smoothed") if f"select_{k}" in record})
    out["lr"] = lr
    return {tag: float(v) for tag, v in out.items()}


def open_board(run_root: Path, first_epoch: int, console) -> "Board | None":
    """The run's Board, or None (said once) where the tensorboard package is missing: curves are a
    convenience, never a reason to lose a training run."""
    try:
        return Board(run_root, first_epoch)
    except ImportError as e:
        console.print(f"[yellow]note:[/yellow] no TensorBoard curves ({e}); `pip install tensorboard` for them")
        return None


class Board:
    """A SummaryWriter on the run directory, one step per epoch."""

    def __init__(self, run_root: Path, first_epoch: int):
        from torch.utils.tensorboard import (
            SummaryWriter,  # lazy: tensorboard loads in ~1 s
        )

        # purge_step: points at or past the first epoch trained now are dropped from earlier files
        self.writer = SummaryWriter(str(run_root), purge_step=first_epoch)

    def write(self, record: dict, lr: float) -> None:
        for tag, value in epoch_scalars(record, lr).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()  # on disk now: a kill loses at most the epoch in progress

    def close(self) -> None:
        self.writer.close()
