"""Ingest the `.npy` layout of the public CLCRec code (`Data/<name>/`), keeping its split.

    python cli.py ingest refnpy path/to/Data/movielens data/ref-movielens --allow-pickle

Reads (item ids everywhere are offset by num_user, as in the reference code):
    train.npy                     int (N, 2) rows (user, item)
    val_full.npy, test_full.npy   object arrays of lists [user, item, item, ...]
                                  (or, when absent, the union of val_warm + val_cold / test_...)
    cold_set.npy                  cold item ids (or, when absent, the items of val_cold + test_cold)
    warm_set.npy                  optional; checked to be disjoint from the cold set
    feat_v.npy, feat_a.npy, feat_t.npy   float (num_item, d), any non-empty subset -> modalities v/a/t
user_item_*_dict.npy are derived data and are not read (fewer pickles to trust).
Writes DATASET/ (pipeline/dataset.py) with the reference's item order: item index = id - num_user.

Inference of the sizes: num_item = the feature rows (all modalities must agree). Item ids lie in
[num_user, num_user + num_item), so num_user = max item id + 1 - num_item, which must equal the
smallest item id when both the first and the last item occur (warm_set + cold_set cover every
item in the reference data). If they differ the layout is ambiguous and `num_users` must be given.
Every user id must be < num_user and every item id in range, else InputError naming the file.

The split is kept: cold-set items seen in val -> COLD_VAL, in test -> COLD_TEST; cold items seen in
neither stay in the catalogue as COLD_TEST (test-cold candidates without positives, as the reference
ranks all cold items); a cold item in both is an error. Items are not dropped, so ids stay aligned.

Pickle: the object arrays are pickles, and unpickling runs code from the file. Plain numeric files
load without it; any pickled file is refused unless `allow_pickle` (`--allow-pickle`) is set.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from common.fsutil import check_new_target
from pipeline.dataset import (
    COLD_TEST,
    COLD_VAL,
    check_float32_range,
    validate_features,
    write_dataset,
)
from pipeline.ingest_common import IngestConfig, console, require_file

MODALITIES = ("v", "a", "t")


def _load(path: Path, allow_pickle: bool) -> np.ndarray:
    require_file(path, "reference file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" not in str(e).lower():
            raise InputError(f"{path} is not a readable .npy file: {e}") from None
    if not allow_pickle:
        raise InputError(
            f"{path} is a pickled object array, and loading a pickle runs code stored in the file; "
            "pass --allow-pickle only if you trust where this data came from"
        )
    try:
        return np.load(path, allow_pickle=True)
    except Exception as e:  # a broken pickle can raise almost anything
        raise InputError(f"{path} could not be unpickled: {e}") from None


def _int_array(a, path: Path) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object and a.ndim == 0:  # a pickled Python set / list saved with np.save
        inner = a.item()
        a = np.asarray(sorted(inner) if isinstance(inner, (set, frozenset)) else inner)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        try:
            a = np.asarray(a.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path} must hold integer ids") from None
    if not np.issubdtype(a.dtype, np.integer):
        if not np.isfinite(a).all() or (a != np.floor(a)).any():
            raise InputError(f"{path} must hold integer ids; found a non-integer value")
    a = a.astype(np.int64)
    if (a < 0).any():
        raise InputError(f"{path} has negative ids, e.g. {int(a[a < 0][0])}")
    return a


def _rows_to_pairs(rows: np.ndarray, path: Path) -> np.ndarray:
    """[user, item, item, ...] rows -> (N, 2) int64 pairs."""
    if rows.dtype != object and rows.ndim == 2 and rows.shape[1] == 2:
        return _int_array(rows, path).reshape(-1, 2)  # already pairs
    users, items = [], []
    for r in rows:
        r = _int_array(np.asarray(r).ravel(), path)
        if r.size == 0:
            continue
        users.append(np.full(r.size - 1, r[0], dtype=np.int64))
        items.append(r[1:])
    if not users:
        return np.zeros((0, 2), dtype=np.int64)
    return np.stack([np.concatenate(users), np.concatenate(items)], axis=1)


def _pairs(src: Path, names: tuple[str, ...], allow_pickle: bool) -> tuple[np.ndarray, str]:
    """Pairs of the first file of `names` present; with several names, their union if the first is absent."""
    first = src / names[0]
    if first.exists():
        return _rows_to_pairs(_load(first, allow_pickle), first), names[0]
    present = [src / n for n in names[1:] if (src / n).exists()]
    if not present:
        raise InputError(f"{src} lacks {names[0]} (and {' / '.join(names[1:])}); it is not a reference layout")
    return np.concatenate([_rows_to_pairs(_load(p, allow_pickle), p) for p in present]), "+".join(p.name for p in present)


def _dedupe(pairs: np.ndarray) -> tuple[np.ndarray, int]:
    uniq = np.unique(pairs, axis=0) if len(pairs) else pairs
    return uniq, len(pairs) - len(uniq)


def infer_num_users(item_ids: np.ndarray, max_user: int, num_item: int, given: int | None) -> int:
    """num_user from the offset item ids (see the module docstring); InputError if inconsistent."""
    lo, hi = int(item_ids.min()), int(item_ids.max())
    if given is not None:
        num_user = given
    else:
        from_top = hi + 1 - num_item
        if from_top != lo:
            raise InputError(
                f"cannot infer num_user: item ids span {lo}..{hi} but the features have {num_item} rows, "
                f"so num_user is between {max(from_top, max_user + 1)} and {lo}; pass --num-users"
            )
        num_user = lo
    if num_user <= max_user:
        raise InputError(f"user id {max_user} is not below num_user={num_user}: user and item ids overlap")
    if lo < num_user or hi >= num_user + num_item:
        raise InputError(
            f"item ids {lo}..{hi} fall outside num_user..num_user+num_item-1 = {num_user}..{num_user + num_item - 1}"
        )
    return num_user


def ingest_refnpy(
    source: Path, target: Path, config: IngestConfig = IngestConfig(), force: bool = False,
    num_users: int | None = None,
) -> Path:
    """Read a reference `Data/<name>/` directory and write the dataset directory `target`."""
    t0 = time.perf_counter()
    src, target = Path(source), Path(target)
    if not src.is_dir():
        raise InputError(f"reference data directory {src} " + ("is a file; pass its directory" if src.exists()
                                                               else "does not exist"))
    check_new_target(target, force)
    ap = config.allow_pickle
    features = {m: _load(src / f"feat_{m}.npy", ap) for m in MODALITIES if (src / f"feat_{m}.npy").exists()}
    if not features:
        raise InputError(f"{src} has no feat_v.npy / feat_a.npy / feat_t.npy; at least one modality is needed")
    rows = {m: f.shape[0] if f.ndim == 2 else -1 for m, f in features.items()}
    if len(set(rows.values())) != 1 or -1 in rows.values():
        raise InputError(f"feature files in {src} must be 2-D with the same number of rows; got {rows}")
    num_item = next(iter(rows.values()))
    for m in list(features):
        try:
            check_float32_range(features[m], str(src / f"feat_{m}.npy"))
            features[m] = np.asarray(features[m], dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{src / f'feat_{m}.npy'} must hold numbers") from None
        features[m] = validate_features({m: features[m]}, num_item, where=f" ({src / f'feat_{m}.npy'})")[m]

    train, _ = _pairs(src, ("train.npy",), ap)
    val, val_from = _pairs(src, ("val_full.npy", "val_warm.npy", "val_cold.npy"), ap)
    test, test_from = _pairs(src, ("test_full.npy", "test_warm.npy", "test_cold.npy"), ap)
    if len(train) == 0:
        raise InputError(f"{src / 'train.npy'} has no interactions, so there is no training data")
    if (src / "cold_set.npy").exists():
        cold = _int_array(_load(src / "cold_set.npy", ap), src / "cold_set.npy").ravel()
    else:
        parts = [_pairs(src, (n,), ap)[0][:, 1] for n in ("val_cold.npy", "test_cold.npy") if (src / n).exists()]
        if not parts:
            raise InputError(f"{src} has neither cold_set.npy nor val_cold.npy / test_cold.npy")
        cold = np.concatenate(parts)
    cold = np.unique(cold)
    warm = _int_array(_load(src / "warm_set.npy", ap), src / "warm_set.npy").ravel() if (src / "warm_set.npy").exists() else None

    all_items = np.concatenate([train[:, 1], val[:, 1], test[:, 1], cold] + ([warm] if warm is not None else []))
    max_user = int(max(train[:, 0].max(), val[:, 0].max(initial=0), test[:, 0].max(initial=0)))
    num_user = infer_num_users(all_items, max_user, num_item, num_users)

    status = np.zeros(num_item, dtype=np.int8)
    cold_idx = cold - num_user
    in_val = np.isin(cold, val[:, 1])
    in_test = np.isin(cold, test[:, 1])
    if (in_val & in_test).any():
        ex = int(cold[in_val & in_test][0])
        raise InputError(f"cold item {ex} has interactions in both validation and test; the reference split keeps them apart")
    status[cold_idx] = COLD_TEST
    status[cold_idx[in_val]] = COLD_VAL
    if warm is not None and np.isin(warm, cold).any():
        raise InputError(f"{src / 'warm_set.npy'} and the cold set share items, e.g. {int(warm[np.isin(warm, cold)][0])}")
    if np.isin(train[:, 1], cold).any():
        n = int(np.isin(train[:, 1], cold).sum())
        raise InputError(f"{src / 'train.npy'} has {n} interactions with cold-set items; cold items must not be trained on")

    out, dups = {}, {}
    for name, p in (("train", train), ("val", val), ("test", test)):
        out[name], dups[name] = _dedupe(p - np.array([0, num_user]))
    touched = np.zeros(num_item, dtype=bool)
    for p in out.values():
        touched[p[:, 1]] = True
    ingest_meta = {
        "interactions": int(sum(len(p) for p in out.values())),
        "duplicates_dropped": int(sum(dups.values())),
        "duplicates_dropped_by_split": {k: int(v) for k, v in dups.items()},
        "num_user_inferred": num_users is None,
        "items_without_interactions_kept": int((~touched).sum()),
        "cold_items_without_interactions": int(((status != 0) & ~touched).sum()),
        "val_from": val_from,
        "test_from": test_from,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    console.print(
        f"{src}: num_user={num_user}, num_item={num_item}, {ingest_meta['interactions']:,} interactions, "
        f"{ingest_meta['duplicates_dropped']:,} duplicate(s) dropped",
        highlight=False,
    )
    return write_dataset(
        target,
        **out,
        item_status=status,
        features=features,
        user_ids=pl.DataFrame({"original_id": np.arange(num_user, dtype=np.int64)}),
        item_ids=pl.DataFrame({"original_id": np.arange(num_user, num_user + num_item, dtype=np.int64)}),
        source={"kind": "reference-npy", "path": str(src.resolve())},
        split={
            "protocol": "reference",
            "note": "split kept from the reference files; cold items without interactions -> cold-test",
        },
        extra={"ingest": ingest_meta},
        force=force,
    )
