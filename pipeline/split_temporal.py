"""The temporal split: train on the past, hold out what happened after a cutoff.

    python cli.py ingest movielens ../shared/datasets/ml-100k data/ml100k-t --split temporal --cutoff 0.8

Reads re-indexed (user, item) pairs with one timestamp each (unix seconds); returns train / val /
test pairs, the item status (pipeline.dataset.WARM / COLD_VAL / COLD_TEST) and the resolved times.
Writes nothing itself.

Protocol: the cutoff T is a date (`1998-03-01`, UTC midnight, or any ISO date-time) or a fraction
f in (0, 1) of the interactions in time order (T = the time of the f*N-th one). Every interaction
at or after T is test. Of those before T, the latest `val_fraction` (by time, the same rule) are
validation, the rest train. An item first seen at or after T is cold in test (a new item, as
production meets it); one first seen in the validation period is cold in validation; users first
seen after T are new users (they are in the user table with no training interactions).
Deterministic: only the times and a (time, user, item) order decide, no random draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from common.errors import InputError
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM
from pipeline.split import SplitResult, sort_pairs


@dataclass(frozen=True)
class TemporalSplitConfig:
    cutoff: str  # ISO date / date-time (UTC) or a fraction in (0, 1) of the interactions by time
    val_fraction: float = 0.1  # of the interactions before the cutoff: the latest ones validate

    def __post_init__(self):
        self.fraction()  # at the boundary: a bad cutoff fails before any file is read
        v = self.val_fraction
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < 1:
            raise InputError(f"--val-fraction must be in [0, 1) for the temporal split, got {v!r}")

    def fraction(self) -> float | None:
        """The cutoff as a fraction, or None when it is a date (checked to parse)."""
        text = str(self.cutoff).strip()
        try:
            f = float(text)
        except ValueError:
            self.timestamp()  # raises naming the format
            return None
        if not 0 < f < 1:
            raise InputError(f"--cutoff {text}: a fraction must be strictly between 0 and 1 (or give a date)")
        return f

    def timestamp(self) -> int:
        """The cutoff date as unix seconds (a naive date-time is UTC)."""
        try:
            when = datetime.fromisoformat(str(self.cutoff).strip())
        except ValueError:
            raise InputError(f"--cutoff {self.cutoff!r} is neither a fraction in (0, 1) nor a date like "
                             "1998-03-01 or 1998-03-01T12:00") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return int(when.timestamp())

    def to_meta(self) -> dict:
        return {"protocol": "temporal", "cutoff": str(self.cutoff), "val_fraction": self.val_fraction}


def time_at_fraction(times: np.ndarray, fraction: float) -> int:
    """The time of the round(f*N)-th interaction in time order: everything from it on is after."""
    ordered = np.sort(times, kind="stable")
    k = min(max(int(round(fraction * len(ordered))), 1), len(ordered) - 1)
    return int(ordered[k])


def split_temporal(pairs: np.ndarray, times: np.ndarray, num_items: int,
                   config: TemporalSplitConfig) -> tuple[SplitResult, dict]:
    """(split, notes): pairs sorted by (user, item) in every split; notes hold the resolved
    cutoff and validation start (unix seconds) and the counts of new items and users."""
    pairs, times = np.asarray(pairs), np.asarray(times, dtype=np.int64)
    if len(times) != len(pairs):
        raise InputError(f"the temporal split needs one timestamp per interaction ({len(times)} for {len(pairs)})")
    if len(pairs) < 2:
        raise InputError("the temporal split needs at least two interactions")
    key = pairs[:, 0].astype(np.int64) * num_items + pairs[:, 1]
    order = np.argsort(key, kind="stable")
    pairs, times = sort_pairs(pairs[order], num_items), times[order]
    frac = config.fraction()
    cutoff = config.timestamp() if frac is None else time_at_fraction(times, frac)
    before = times < cutoff
    if not before.any() or before.all():
        lo, hi = (datetime.fromtimestamp(int(t), timezone.utc).date() for t in (times.min(), times.max()))
        raise InputError(f"--cutoff {config.cutoff} leaves no interactions on one side; the data runs from "
                         f"{lo} to {hi}")
    val_start = cutoff
    if config.val_fraction > 0:
        val_start = time_at_fraction(times[before], 1 - config.val_fraction)
    label = np.where(times >= cutoff, COLD_TEST, np.where(times >= val_start, COLD_VAL, WARM)).astype(np.int8)
    if not (label == WARM).any():
        raise InputError(f"the temporal split at {config.cutoff} leaves no training data; move the cutoff later "
                         "or lower --val-fraction")
    first = np.full(num_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, pairs[:, 1], times)
    status = np.where(first >= cutoff, COLD_TEST, np.where(first >= val_start, COLD_VAL, WARM)).astype(np.int8)
    first_user = np.full(int(pairs[:, 0].max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_user, pairs[:, 0], times)
    split = SplitResult(train=pairs[label == WARM], val=pairs[label == COLD_VAL], test=pairs[label == COLD_TEST],
                        item_status=status)
    notes = {"cutoff_time": int(cutoff), "val_start_time": int(val_start),
             "new_items_after_cutoff": int((status == COLD_TEST).sum()),
             "new_users_after_cutoff": int((first_user >= cutoff).sum())}
    return split, notes


def times_of(pairs: np.ndarray, all_pairs: np.ndarray, all_times: np.ndarray, num_items: int) -> np.ndarray:
    """(len(pairs),) int64 time of each of `pairs`, looked up among unique `all_pairs`."""
    key = all_pairs[:, 0].astype(np.int64) * num_items + all_pairs[:, 1]
    order = np.argsort(key)
    want = np.asarray(pairs)[:, 0].astype(np.int64) * num_items + np.asarray(pairs)[:, 1]
    return np.asarray(all_times, dtype=np.int64)[order[np.searchsorted(key, want, sorter=order)]]
