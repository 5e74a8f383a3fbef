"""The canonical dataset directory: written by every ingest path, read by every later stage.

    python cli.py ingest movielens ../shared/datasets/ml-100k data/ml-100k

Layout of DATASET/ (all arrays are plain .npy, so later stages can memory-map them):

    meta.json            counts, modalities and dims, split settings, source, fingerprint,
                         and a SHA-256 + size per file ("files"), checked on every open
    train.npy            int32 (N_train, 2)  rows (user, item), sorted by user then item
    val.npy              int32 (N_val, 2)    validation interactions (warm and cold items)
    test.npy             int32 (N_test, 2)   test interactions (warm and cold items)
    item_status.npy      int8 (num_items,)   0 warm, 1 cold in validation, 2 cold in test
    features/<name>.npy  float32 (num_items, dim), one per modality, rows aligned to item index
    users.parquet        columns user (0..n-1), original_id
    items.parquet        columns item (0..n-1), original_id [, title]
    featurizer/          only from `ingest table --items`: the fitted featurizer (featurizer.json and
                         .npy arrays, pipeline/content/); hashed, and its digest is in the fingerprint
    extras/<name>.npy    optional arrays, not in the fingerprint: planted synthetic factors for
                         the oracle, {train,val,test}_time.npy (int64 unix seconds per split row
                         when the source has timestamps), train_recent.npy (bool per training
                         pair: the ones an `update` added, read by a replay cache, cache/write.py)

Users and items are re-indexed to 0..n-1; the parquet tables map back to the original ids.
The fingerprint is a SHA-256 of the interaction arrays, the item status and the features; caches
and checkpoints record it and refuse to run against a dataset that changed under them.
`load_dataset` re-hashes every file and checks shapes, dtypes, id ranges and finiteness before any
stage sees the arrays (common/integrity.py; CLCREC_SKIP_HASH=1 skips only the hashing).
Writing is atomic (built in a temporary directory beside the target, fsynced, then renamed); a
`--force` rewrite killed between its two renames is undone by the next write (fsutil.recover_aside).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from common import integrity
from common.errors import InputError
from common.fsutil import (
    aside_path,
    atomic_write_json,
    building_dir,
    check_new_target,
    recover_aside,
)

FORMAT = "clcrec-dataset"
FORMAT_VERSION = 1
WARM, COLD_VAL, COLD_TEST = 0, 1, 2
STATUS_NAMES = {WARM: "warm", COLD_VAL: "cold-val", COLD_TEST: "cold-test"}
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """A loaded dataset directory. Arrays are memory-mapped read-only."""

    root: Path
    meta: dict
    train: np.ndarray  # (N, 2) int32
    val: np.ndarray  # (N, 2) int32
    test: np.ndarray  # (N, 2) int32
    item_status: np.ndarray  # (num_items,) int8
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (num_items, dim)

    @property
    def num_users(self) -> int:
        return int(self.meta["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def warm_items(self) -> np.ndarray:
        return np.flatnonzero(self.item_status == WARM).astype(np.int32)

    @property
    def cold_items(self) -> np.ndarray:
        return np.flatnonzero(self.item_status != WARM).astype(np.int32)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        return getattr(self, name)

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr int64 (num_users+1,), indices int32) of each user's sorted training items."""
        return interactions_to_csr(self.train, self.num_users)

    def known_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of every item the dataset knows each user interacted with: train,
        validation and test, deduplicated (the reference code's negative exclusion set)."""
        known = np.unique(np.concatenate([self.train, self.val, self.test]).astype(np.int64), axis=0)
        return interactions_to_csr(known, self.num_users)

    def extra_array(self, name: str) -> np.ndarray | None:
        """An optional array from extras/ (e.g. planted factors), or None if absent."""
        path = self.root / "extras" / f"{name}.npy"
        return np.load(path) if path.exists() else None

    def times(self, name: str) -> np.ndarray | None:
        """int64 unix seconds of each row of split `name`, or None when the source had no times."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        return self.extra_array(f"{name}_time")

    def featurizer(self):
        """The featurizer fitted at ingest (pipeline/content/), or None when the features were given."""
        rec = self.meta.get("featurizer")
        if rec is None:
            return None
        from pipeline.content.featurizer import load_featurizer

        return load_featurizer(self.root / "featurizer", rec["sha256"])

    def user_ids(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "users.parquet")

    def item_ids(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "items.parquet")


def interactions_to_csr(pairs: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of `pairs` (user, item) grouped by user, items sorted ascending."""
    pairs = np.asarray(pairs)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    users = pairs[order, 0]
    indices = np.ascontiguousarray(pairs[order, 1], dtype=np.int32)
    counts = np.bincount(users, minlength=num_users)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, indices


def compute_fingerprint(
    splits: dict[str, np.ndarray], item_status: np.ndarray, features: dict[str, np.ndarray],
    featurizer: str | None = None,
) -> str:
    """SHA-256 over the content that training depends on (not the id mapping tables), and the
    digest of the fitted featurizer when the features came from raw content (so a run's checkpoint,
    which records the fingerprint, names the featurizer its new items must go through)."""
    h = hashlib.sha256(f"featurizer|{featurizer}|".encode() if featurizer else b"")

    def add(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        if arr.size:  # memoryview.cast refuses empty arrays (e.g. a split with no validation)
            h.update(memoryview(arr).cast("B"))

    for name in SPLITS:
        add(name, splits[name])
    add("item_status", item_status)
    for name in sorted(features):
        add("feature:" + name, features[name])
    return h.hexdigest()


def check_pairs(name: str, pairs, num_users: int, num_items: int, error: type[Exception] = InputError) -> np.ndarray:
    """(N, 2) integer (user, item) rows inside 0..num_users-1 / 0..num_items-1 -> int64, or
    `error` naming the first offending row. Used when writing a dataset and by the evaluator."""
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise error(f"{name} must have shape (N, 2) rows of (user, item), got {pairs.shape}")
    if pairs.size and not np.issubdtype(pairs.dtype, np.integer):
        raise error(f"{name} must hold integer ids, got dtype {pairs.dtype}")
    pairs = pairs.astype(np.int64, copy=False)
    if pairs.size:
        bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= num_users) | (pairs[:, 1] < 0) | (pairs[:, 1] >= num_items)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise error(
                f"{name} row {row} = {pairs[row].tolist()} is outside users 0..{num_users - 1} / items "
                f"0..{num_items - 1}; the ids and the pairs must come from the same dataset"
            )
    return pairs


def check_float32_range(arr: np.ndarray, label: str) -> None:
    """Refuse finite values that would become inf as float32 (named as overflow, not as NaN/inf)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        big = np.isfinite(arr) & (np.abs(arr) > np.finfo(np.float32).max)
        if big.any():
            row = int(np.argwhere(big)[0, 0]) if arr.ndim else 0
            raise InputError(
                f"{label} has {int(big.sum())} value(s) beyond float32's range (|x| > 3.4e38, first at "
                f"row {row}): stored as float32 they would overflow to inf; rescale them"
            )


def validate_features(features: dict[str, np.ndarray], num_items: int, where: str = "") -> dict:
    """Return features as C-contiguous float32, refusing NaN/inf and misaligned rows."""
    if not features:
        raise InputError(f"no item content features given{where}: CLCRec needs at least one modality")
    out = {}
    for name, arr in features.items():
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"modality name {name!r} must be letters, digits, '_' or '-'")
        arr = np.asarray(arr)
        if arr.ndim != 2:
            raise InputError(f"feature {name!r}{where} must be 2-D (num_items, dim), got shape {arr.shape}")
        if arr.shape[0] != num_items:
            raise InputError(
                f"feature {name!r}{where} has {arr.shape[0]} rows but the dataset has {num_items} items; "
                "rows must be aligned to the item index"
            )
        if arr.dtype.kind not in "biuf":  # complex would drop its imaginary part; strings would not convert
            raise InputError(f"feature {name!r}{where} holds {arr.dtype} values; features must be real numbers "
                             "(integer or float): convert the file")
        check_float32_range(arr, f"feature {name!r}{where}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise InputError(
                f"feature {name!r}{where} has {int(bad.sum())} NaN/inf values (first at item row {row}); "
                "clean or impute them before ingest"
            )
        out[name] = arr
    return out


def write_dataset(
    target: Path,
    *,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    item_status: np.ndarray,
    features: dict[str, np.ndarray],
    user_ids: pl.DataFrame,
    item_ids: pl.DataFrame,
    source: dict,
    split: dict,
    extra: dict | None = None,
    extra_arrays: dict[str, np.ndarray] | None = None,
    force: bool = False,
    featurizer=None,
) -> Path:
    """Validate and atomically write a canonical dataset directory; returns its path.
    `featurizer` (pipeline.content.featurizer.Featurizer), when the features came from raw item
    content, is saved as featurizer/ (hashed with the rest) and its digest joins the fingerprint.

    `user_ids` / `item_ids` have one row per index in order, with at least an `original_id`
    column (items may add `title`). Raises InputError on any inconsistency, before writing.
    """
    target = Path(target)
    recover_aside(target)  # a killed --force rewrite left the previous dataset aside: put it back
    check_new_target(target, force)
    num_users, num_items = user_ids.height, item_ids.height
    if "original_id" not in user_ids.columns or "original_id" not in item_ids.columns:
        raise ValueError("user_ids and item_ids need an 'original_id' column")
    splits = {
        "train": check_pairs("train interactions", train, num_users, num_items).astype(np.int32),
        "val": check_pairs("validation interactions", val, num_users, num_items).astype(np.int32),
        "test": check_pairs("test interactions", test, num_users, num_items).astype(np.int32),
    }
    if len(splits["train"]) == 0:
        raise InputError(
            "the split leaves no training interactions; lower the cold fraction or provide more data"
        )
    item_status = np.asarray(item_status, dtype=np.int8)
    if item_status.shape != (num_items,) or not np.isin(item_status, list(STATUS_NAMES)).all():
        raise InputError(f"item_status must be (num_items,) with values 0/1/2, got shape {item_status.shape}")
    if (item_status[splits["train"][:, 1]] != WARM).any():
        raise InputError("a cold item appears in the training interactions")
    features = validate_features(features, num_items)
    # Sorted train makes CSR building trivial downstream and the fingerprint order-independent
    # of how the ingest path happened to produce the rows.
    tr = splits["train"]
    splits["train"] = tr[np.lexsort((tr[:, 1], tr[:, 0]))]
    fz_digest = featurizer.digest() if featurizer is not None else None
    fingerprint = compute_fingerprint(splits, item_status, features, fz_digest)

    counts = {name: int(len(arr)) for name, arr in splits.items()}
    counts.update(
        warm_items=int((item_status == WARM).sum()),
        cold_val_items=int((item_status == COLD_VAL).sum()),
        cold_test_items=int((item_status == COLD_TEST).sum()),
    )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_users": num_users,
        "num_items": num_items,
        "counts": counts,
        "modalities": [{"name": k, "dim": int(v.shape[1])} for k, v in features.items()],
        "split": split,
        "source": source,
        "fingerprint": fingerprint,
        **({"featurizer": {"sha256": fz_digest, "modalities": featurizer.modalities}} if fz_digest else {}),
        "files": {},  # filled below, once the files exist: {path: {"sha256", "bytes"}}
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }

    with building_dir(target, "dataset", force=force) as tmp:
        for name, arr in splits.items():
            np.save(tmp / f"{name}.npy", arr)
        np.save(tmp / "item_status.npy", item_status)
        (tmp / "features").mkdir()
        for name, arr in features.items():
            np.save(tmp / "features" / f"{name}.npy", arr)
        if extra_arrays:
            (tmp / "extras").mkdir()
            for name, arr in extra_arrays.items():
                np.save(tmp / "extras" / f"{name}.npy", np.asarray(arr))
        if featurizer is not None:
            featurizer.save(tmp / "featurizer")
        user_ids.with_row_index("user").write_parquet(tmp / "users.parquet")
        item_ids.with_row_index("item").write_parquet(tmp / "items.parquet")
        meta["files"] = integrity.record_files(tmp)  # checked on every open (common/integrity.py)
        meta["digest"] = integrity.json_digest(meta)  # meta.json's own content, checked on open
        atomic_write_json(tmp / "meta.json", meta)  # last: its presence marks completeness
    return target


def load_dataset(root: Path, *, mmap: bool = True, modalities: list[str] | None = None) -> Dataset:
    """Open and verify a dataset directory (common/integrity.py). `modalities` selects feature
    files (default: all). InputError names the file that is missing, changed or malformed."""
    root = Path(root)
    meta = _read_meta_checked(root)
    dims = {m["name"]: m["dim"] for m in meta["modalities"]}
    names = list(dims)
    if modalities is not None:
        unknown = sorted(set(modalities) - set(names))
        if unknown:
            raise InputError(f"dataset {root} has no modality {unknown}; it has {names}")
        names = [n for n in names if n in modalities]
    files = meta.get("files")
    rels = list(files) if files else [*(f"{s}.npy" for s in SPLITS), "item_status.npy",
                                     *(f"features/{n}.npy" for n in dims)]
    known_good = integrity.already_verified(root, rels)
    if files and not known_good:
        if integrity.hashing_skipped():
            integrity.tell_skip(root)
        integrity.check_files(root, files)
    arrays = {s: integrity.load_npy(root / f"{s}.npy", mmap) for s in SPLITS}
    status = integrity.load_npy(root / "item_status.npy", False)
    wanted = names if known_good else list(dims)  # a first open checks every feature file
    feats = {n: integrity.load_npy(root / "features" / f"{n}.npy", mmap) for n in wanted}
    if not known_good:
        nu, ni = meta["num_users"], meta["num_items"]
        for s in SPLITS:
            integrity.check_pairs_file(root / f"{s}.npy", arrays[s], nu, ni)
        integrity.check_status(root / "item_status.npy", status, ni, arrays["train"])
        for n, arr in feats.items():
            integrity.check_features(root / "features" / f"{n}.npy", arr, ni, dims[n])
        if not files:  # written before per-file hashes: the fingerprint is all there is to compare
            if integrity.hashing_skipped():
                integrity.tell_skip(root)
            elif compute_fingerprint(arrays, status, feats) != meta["fingerprint"]:
                raise InputError(
                    f"dataset {root} changed since ingest: its arrays no longer match the fingerprint in "
                    "meta.json (it predates per-file hashes, so the changed file cannot be named); "
                    "restore it or re-run the ingest"
                )
        integrity.remember_verified(root, rels)
    feats = {n: feats[n] for n in names}
    return Dataset(root=root, meta=meta, item_status=status, features=feats, **arrays)


def _read_meta_checked(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.exists() and not root.exists() and aside_path(root).is_dir():
        raise InputError(
            f"{root} is missing but {aside_path(root)} holds its previous copy (a --force ingest was "
            f"killed while replacing it); the next ingest into {root} restores it, or rename it back"
        )
    if not meta_path.is_file():
        raise InputError(
            f"{root} is not a dataset directory (no meta.json); create one with `cli.py ingest ...` "
            "or `cli.py synth`"
        )
    meta = integrity.read_meta(root)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} dataset; re-run the ingest")
    return meta


def read_fingerprint(root: Path) -> str:
    """The recorded fingerprint of a dataset directory, without loading arrays."""
    return _read_meta_checked(Path(root))["fingerprint"]
