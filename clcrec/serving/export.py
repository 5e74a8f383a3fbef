"""Export a finished run's ranking tables for other systems.

    python cli.py export runs/RUN [--out DIR]

Reads the run (clcrec/rundir.py); writes DIR (default RUN/embeddings/): users.npy, items.npy
(float32 ranking vectors: ID embeddings for warm items, content representations for cold ones),
user_ids.parquet and item_ids.parquet (original ids, item status), and export.json (the marker
that lets `export --force` replace it, and nothing else), built beside DIR and renamed in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from clcrec.rundir import open_run
from common.fsutil import atomic_write_json, building_dir, check_output
from pipeline.dataset import STATUS_NAMES


def export_embeddings(run_dir: Path, out_dir: Path | None = None, force: bool = False) -> Path:
    """Write users.npy / items.npy (the ranking tables) and their id tables under out_dir, built
    beside it and renamed into place; an existing out_dir is replaced only with `force`."""
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "embeddings"
    check_output(out_dir, "--out", "export", force)  # only an earlier export is ever replaced
    lr = open_run(run_dir)
    users, items = lr.tables()
    with building_dir(out_dir, "export", force=out_dir.exists()) as tmp:
        np.save(tmp / "users.npy", users.numpy().astype(np.float32))
        np.save(tmp / "items.npy", items.numpy().astype(np.float32))
        lr.dataset.user_ids().write_parquet(tmp / "user_ids.parquet")
        lr.dataset.item_ids().with_columns(
            pl.Series("status", [STATUS_NAMES[int(s)] for s in lr.dataset.item_status])
        ).write_parquet(tmp / "item_ids.parquet")
        atomic_write_json(tmp / "export.json", {"format": "clcrec-export", "format_version": 1,
                                                "run": str(run_dir), "users": int(users.shape[0]),
                                                "items": int(items.shape[0]), "dim": int(users.shape[1])})
    return out_dir
