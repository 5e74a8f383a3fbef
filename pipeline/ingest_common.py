"""What every ingest path shares: id checks, de-duplication, re-indexing, the split, the write.

    python cli.py ingest table ratings.csv data/mine --feature v=feat.npy:ids.txt

Reads an interactions frame (original user / item ids) and an item table with feature rows
aligned to it; writes the canonical dataset directory through `pipeline.dataset.write_dataset`.
Steps: check ids (present, integer, non-negative) -> drop duplicate (user, item) pairs (counted)
-> refuse interactions with items the item table lacks -> drop items without interactions
(counted) -> re-index users and items by ascending original id -> cold-item split (or, for interactions with
a `timestamp` column, the temporal split of pipeline/split_temporal.py) -> write. Timestamps, when
the source has them, are kept as extras/{train,val,test}_time.npy (int64 unix seconds, rows aligned
to the split's pairs; the earliest time of a repeated pair).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from common.errors import InputError
from common.fsutil import check_new_target
from pipeline.content.featurizer import ContentSpec
from pipeline.dataset import write_dataset
from pipeline.split import SplitConfig, map_cold_items, split_cold_items
from pipeline.split_temporal import TemporalSplitConfig, split_temporal, times_of

console = Console(stderr=True)


@dataclass(frozen=True)
class FeatureSpec:
    """One modality of `ingest table`: NAME=PATH[.npy][:IDS] or a Parquet file."""

    name: str
    path: Path
    ids: Path | None = None  # item-id order file for .npy (one id per line)
    id_col: str = "item"  # Parquet: the item-id column; the other numeric/list columns are the vector


MAX_HASH_DIM = 65536  # hashed bag-of-words widths (titles, tags, citations): an items x dim float32 array


@dataclass(frozen=True)
class IngestConfig:
    split: SplitConfig | TemporalSplitConfig = SplitConfig()  # the paper's random cold items, or temporal
    title_dim: int = 64  # MovieLens: hashed title-word dimensions
    tag_dim: int = 64  # MovieLens with tags.csv: hashed tag dimensions
    user_col: str = "user"  # table: interaction columns
    item_col: str = "item"
    features: tuple[FeatureSpec, ...] = ()  # table: one per modality
    items: Path | None = None  # table: the item table whose columns --text/--categories/--numeric name
    content: ContentSpec = ContentSpec()  # table: raw content roles, fitted into a featurizer
    allow_pickle: bool = False  # reference .npy layout: those files are pickles (they run code)

    def __post_init__(self):
        for name, v, lo in (("--title-dim", self.title_dim, 1), ("--tag-dim", self.tag_dim, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_HASH_DIM:
                raise InputError(f"{name} must be an integer from {lo} to {MAX_HASH_DIM}, got {v!r}")


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise InputError(f"{what} {path} is a directory; pass the file itself")
        raise InputError(f"{what} {path} " + ("is not a regular file (a pipe or device); pass a file"
                                              if os.path.lexists(path) else "does not exist"))
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty")
    return path


def integer_ids(s: pl.Series, label: str) -> pl.Series:
    """`s` as Int64, or InputError naming the first missing, non-integer or negative value."""
    if s.null_count():
        row = int(s.is_null().arg_max())
        raise InputError(f"{label} has {s.null_count()} missing id(s) (first at row {row})")
    if s.dtype.is_integer():
        out = s.cast(pl.Int64)
    elif s.dtype.is_float():
        ok = s.is_finite() & (s == s.floor())
        if not ok.all():
            raise InputError(f"{label} must hold integer ids; found {s.filter(~ok)[0]!r}")
        out = s.cast(pl.Int64)
    elif s.dtype == pl.String:
        out = s.str.strip_chars().cast(pl.Int64, strict=False)
        if out.null_count():
            raise InputError(f"{label} must hold integer ids; found {s.filter(out.is_null())[0]!r}")
    else:
        raise InputError(f"{label} must hold integer ids; its dtype is {s.dtype}")
    if len(out) and out.min() < 0:
        raise InputError(f"{label} has negative ids, e.g. {out.filter(out < 0)[0]}; ids must be >= 0")
    return out


def assemble(
    target: Path,
    *,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    features: dict[str, np.ndarray],
    config: IngestConfig,
    source: dict,
    label: str,
    extra: dict | None = None,
    force: bool = False,
    items_label: str | None = None,
    featurizer=None,
) -> Path:
    """Write a dataset from original-id `interactions` (columns user, item: Int64) and `items`.

    `items` has an Int64 `original_id` column (unique) and optional `title`; `features[name]`
    rows are aligned to `items` rows. `label` names the interactions' source in messages,
    `items_label` the item table's (default: `label`).
    """
    t0 = time.perf_counter()
    target = Path(target)
    check_new_target(target, force)
    if interactions.height == 0:
        raise InputError(f"{label} has no interactions")
    n_raw = interactions.height
    timed = "timestamp" in interactions.columns
    if isinstance(config.split, TemporalSplitConfig) and not timed:
        raise InputError(f"{label} has no timestamps, so it cannot be split in time; use the default "
                         "random split (drop --split temporal)")
    if timed:  # a repeated pair keeps its first time
        pairs = interactions.group_by("user", "item").agg(pl.col("timestamp").min())
    else:
        pairs = interactions.select("user", "item").unique()
    duplicates = n_raw - pairs.height

    known = items["original_id"]
    if known.is_duplicated().any():
        dup = known.filter(known.is_duplicated())[0]
        raise InputError(f"{items_label or label}: item id {dup} is listed more than once in the item table; "
                         "each item needs exactly one row")
    missing = pairs.select("item").unique().join(items.select(item="original_id"), on="item", how="anti")
    if missing.height:
        ex = missing["item"].sort()[0]
        raise InputError(
            f"{label}: {missing.height} item(s) in the interactions have no item/feature row, e.g. item {ex}; "
            "every interacted item needs content features"
        )

    # Re-index by ascending original id (dense rank), keeping only items with interactions.
    pairs = pairs.with_columns(
        u=pl.col("user").rank("dense").cast(pl.Int64) - 1, i=pl.col("item").rank("dense").cast(pl.Int64) - 1
    )
    user_ids = pairs.select("user").unique().sort("user").rename({"user": "original_id"})
    kept = pairs.select("item").unique().sort("item").rename({"item": "original_id"})
    rows = items.with_row_index("_row").join(kept, on="original_id", how="semi").sort("original_id")
    item_rows = rows["_row"].to_numpy()
    item_ids = rows.drop("_row")
    dropped_items = items.height - item_ids.height
    feats = {name: np.asarray(arr)[item_rows] for name, arr in features.items()}
    arr = np.stack([pairs["u"].to_numpy(), pairs["i"].to_numpy()], axis=1)

    cold = None
    cold_skipped = 0
    split_notes: dict = {}
    times = pairs["timestamp"].to_numpy() if timed else None
    if isinstance(config.split, TemporalSplitConfig):
        split, split_notes = split_temporal(arr, times, item_ids.height, config.split)
    else:
        if config.split.cold_items_file is not None:
            kept_ids = item_ids["original_id"].cast(pl.String).to_list()
            cold, cold_skipped = map_cold_items(
                config.split.cold_items_file,
                known.cast(pl.String).to_list(),
                {s: k for k, s in enumerate(kept_ids)},
            )
        split = split_cold_items(arr, item_ids.height, config.split, cold_items=cold)
    time_arrays = None
    if timed:  # aligned to each split's rows (all sorted by user, item, as write_dataset keeps them)
        time_arrays = {f"{name}_time": times_of(getattr(split, name), arr, times, item_ids.height)
                       for name in ("train", "val", "test")}

    ingest_meta = {
        "rows_read": n_raw,
        "interactions": int(pairs.height),
        "duplicates_dropped": int(duplicates),
        "users": int(user_ids.height),
        "items_in_source": int(items.height),
        "items": int(item_ids.height),
        "items_without_interactions_dropped": int(dropped_items),
        "cold_list_items_without_interactions": int(cold_skipped),
        "timestamps": timed,
        **split_notes,
        **(extra or {}),
    }
    console.print(
        f"{label}: {n_raw:,} rows, {duplicates:,} duplicate(s) dropped, {user_ids.height:,} users, "
        f"{item_ids.height:,} items ({dropped_items:,} without interactions dropped)",
        highlight=False,
    )
    write_dataset(
        target,
        train=split.train,
        val=split.val,
        test=split.test,
        item_status=split.item_status,
        features=feats,
        user_ids=user_ids,
        item_ids=item_ids,
        source=source,
        split=config.split.to_meta(),
        extra={"ingest": {**ingest_meta, "seconds": round(time.perf_counter() - t0, 3)}},
        extra_arrays=time_arrays,
        force=force,
        featurizer=featurizer,
    )
    return target
