"""Top-k recommendations for every user as one Parquet file (`cli.py recommend-all`).

    python cli.py recommend-all runs/RUN --k 50 --out recs.parquet [--candidates cold] [--new-items DIR]

Reads user and item vectors already on the device and the training pairs; `clcrec.evaluation.ranking.
iter_topk` scores users in blocks (training items masked), and each block is appended to the
output as a Parquet row group, so memory stays one block deep at any scale. Writes OUT with
columns user, rank (1..k), item (original ids), score (float32), status (warm, cold-val, cold-test,
new) and, when the items have titles, title (both dictionary-encoded), one row per recommendation;
a user with fewer than k unmasked candidates gets fewer rows. OUT is written under a temporary
name beside it and renamed when complete: a failed or killed run leaves no partial file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common.fsutil import RECOMMEND_ALL_KEY, TMP_PREFIX, check_output
from common.provenance import marker_bytes


def default_block(num_items: int, device: torch.device) -> int:
    """Users per block: a (block, items) float32 score matrix of ~128 MiB on CPU, ~1 GiB on a GPU."""
    budget = 2**28 if device.type == "cuda" else 2**25
    return int(max(16, min(16384, budget // max(num_items, 1))))


def block_columns(start: int, vals: torch.Tensor, idx: torch.Tensor, user_ids: np.ndarray, item_ids: np.ndarray,
                  labels: dict[str, tuple[np.ndarray, list]] | None = None):
    """One block's rows as numpy columns (user, rank, item, score), padding (item -1) dropped.
    `labels`: name -> (per-item codes, their values), added as dictionary-encoded columns."""
    vals, idx = vals.cpu().numpy(), idx.cpu().numpy()  # the block's one device->host copy
    b, k = idx.shape
    keep = (idx >= 0).ravel()
    rows = idx.ravel()[keep]
    cols = {
        "user": np.repeat(user_ids[start : start + b], k)[keep],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b)[keep],
        "item": item_ids[rows],
        "score": vals.ravel()[keep].astype(np.float32),
    }
    for name, (codes, values) in (labels or {}).items():
        cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes[rows], pa.int32()), pa.array(values, pa.string()))
    return cols


def write_topk_parquet(out: Path, blocks, user_ids: np.ndarray, item_ids: np.ndarray, *, force: bool = False,
                       progress: bool = False, labels: dict[str, tuple[np.ndarray, list]] | None = None) -> int:
    """Stream `blocks` ((start, scores, items) from iter_topk over all of `user_ids`) into OUT
    atomically, with `labels` columns (block_columns); returns the number of rows written."""
    out = Path(out)
    check_output(out, "--out", "recommend-all", force)  # only an earlier recommend-all file is replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_tmp(out)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}.{os.getpid()}")
    # The key marks the file as recommend-all's, so that --force may replace it (common/fsutil.py).
    schema = pa.schema([("user", pa.from_numpy_dtype(user_ids.dtype)), ("rank", pa.int32()),
                        ("item", pa.from_numpy_dtype(item_ids.dtype)), ("score", pa.float32()),
                        *[(name, pa.dictionary(pa.int32(), pa.string())) for name in (labels or {})]],
                       metadata={RECOMMEND_ALL_KEY: marker_bytes("recommend-all")})
    rows = 0
    bar = _Bar(len(user_ids), progress)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start, vals, idx in blocks:
                cols = block_columns(start, vals, idx, user_ids, item_ids, labels)
                writer.write_table(pa.table(cols, schema=schema))
                rows += len(cols["item"])
                bar.advance(idx.shape[0])
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, out)
        else:  # link fails with EEXIST if a concurrent writer put its file there first: it wins, we exit 1
            try:
                os.link(tmp, out)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise
                os.replace(tmp, out)  # a filesystem without hard links: the last writer wins
            tmp.unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return rows


def clean_dead_tmp(out: Path) -> None:
    """Remove `.tmp-<out>.<pid>` files of killed runs (a live writer's, named by its pid, stays)."""
    for p in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
        pid = p.name.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except PermissionError:  # a live process of another user
            pass


class _Bar:
    """A rich progress bar over users on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self._p = None
        if enabled and total > 0:
            from rich.console import Console
            from rich.progress import Progress

            self._p = Progress(console=Console(stderr=True), transient=True)
            self._p.start()
            self._task = self._p.add_task("recommending", total=total)

    def advance(self, n: int) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
