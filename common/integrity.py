"""Trust nothing on disk: what a dataset directory must look like before any stage uses it.

    python cli.py train --dataset data/ml-100k                 # verified on open
    CLCREC_SKIP_HASH=1 python cli.py train --dataset data/huge  # or: cli.py --skip-hash train ...

Reads DATASET/meta.json and the files it lists; writes nothing. At ingest the writer records a
SHA-256 and byte size per file (`meta["files"]`: train/val/test, item_status, each feature, the id
tables, extras); opening a dataset re-hashes every file and names the one that changed. Datasets
written before per-file hashes existed are verified by recomputing their fingerprint instead
(which says *that* the data changed, not which file). Independently of hashing, the loaded arrays
are checked structurally: shapes, dtypes, id ranges, item status values, finite features; these
checks stay on when hashing is skipped, so a wrong file still fails with its name rather than as a
traceback or a "non-finite loss". Results are remembered per process while no file's size or
mtime changes, so a trainer that opens the dataset three times hashes it once.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from common.errors import InputError

SKIP_HASH_ENV = "CLCREC_SKIP_HASH"
_BLOCK = 1 << 20
_verified: dict[str, tuple] = {}  # resolved root -> stat signature of every file, once checked
_skip_told: set[str] = set()


def hashing_skipped() -> bool:
    return os.environ.get(SKIP_HASH_ENV, "").strip().lower() not in ("", "0", "false", "no")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def record_files(root: Path) -> dict:
    """{relative path: {"sha256", "bytes"}} of every file under `root` (the meta.json entry)."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != "meta.json":
            out[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return out


def json_digest(obj: dict) -> str:
    """SHA-256 of a JSON object's canonical form without its own "digest" key: recorded in
    meta.json (and the cache manifest) so an edited value is caught while whitespace is not."""
    import json

    body = {k: v for k, v in obj.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _signature(root: Path, rels) -> tuple:
    sig = []
    for rel in sorted(rels):
        try:
            st = (root / rel).stat()
            sig.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append((rel, None))
    return tuple(sig)


def already_verified(root: Path, rels) -> bool:
    key = str(Path(root).resolve())
    return _verified.get(key) == _signature(Path(root), rels)


def remember_verified(root: Path, rels) -> None:
    _verified[str(Path(root).resolve())] = _signature(Path(root), rels)


def tell_skip(root: Path) -> None:
    key = str(Path(root).resolve())
    if key not in _skip_told:
        _skip_told.add(key)
        print(f"note: {SKIP_HASH_ENV} is set: the files of {root} are not hashed, so an edit that keeps "
              "their sizes, shapes, dtypes, id ranges and finite features goes unnoticed", file=sys.stderr)


def check_files(root: Path, files: dict, what: str = "dataset file", remake: str = "re-run the ingest",
                since: str = "ingest") -> None:
    """Every recorded file present with its size, and (unless skipped) its SHA-256. `what` names
    the files in messages, `since` what wrote them, and `remake` how to write them again."""
    root = Path(root)
    skip = hashing_skipped()
    for rel, rec in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise InputError(f"{what} {path} is missing (meta.json lists it); restore it or {remake}")
        size = path.stat().st_size
        if size != rec.get("bytes"):
            raise InputError(
                f"{what} {path} changed since {since}: {size} bytes, meta.json recorded {rec.get('bytes')}; "
                f"restore it or {remake}"
            )
        if not skip and file_sha256(path) != rec.get("sha256"):
            raise InputError(
                f"{what} {path} changed since {since} (its SHA-256 differs from the one in meta.json); "
                f"restore it or {remake} (or set {SKIP_HASH_ENV}=1 to skip hashing, at your risk)"
            )


def load_npy(path: Path, mmap: bool) -> np.ndarray:
    """A plain (non-pickled) .npy array, or InputError naming the file."""
    if not Path(path).is_file():
        raise InputError(f"dataset file {path} is missing; re-run the ingest")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"dataset file {path} is not a plain .npy array ({first}); re-run the ingest") from None


def check_pairs_file(path: Path, arr: np.ndarray, num_users: int, num_items: int) -> None:
    """(N, 2) integer rows inside the id ranges; cheap min/max passes, the row only on failure."""
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"dataset file {path} must hold (N, 2) (user, item) rows, got shape {arr.shape}; re-run the ingest")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"dataset file {path} must hold integer ids, got dtype {arr.dtype}; re-run the ingest")
    if arr.size == 0:
        return
    for col, n, what in ((0, num_users, "user"), (1, num_items, "item")):
        lo, hi = int(arr[:, col].min()), int(arr[:, col].max())
        if lo < 0 or hi >= n:
            c = np.asarray(arr[:, col])
            row = int(np.flatnonzero((c < 0) | (c >= n))[0])
            raise InputError(
                f"dataset file {path} row {row} has {what} id {int(c[row])}, outside 0..{n - 1} "
                "(meta.json's count); the file does not belong to this dataset: re-run the ingest"
            )


def check_features(path: Path, arr: np.ndarray, num_items: int, dim) -> None:
    if arr.ndim != 2:
        raise InputError(f"dataset file {path} must be 2-D (num_items, dim), got a {arr.ndim}-D array of shape {arr.shape}")
    if arr.shape[0] != num_items or (dim is not None and arr.shape[1] != dim):
        raise InputError(
            f"dataset file {path} has shape {arr.shape}, meta.json says ({num_items}, {dim}); re-run the ingest")
    if arr.dtype != np.float32:
        raise InputError(f"dataset file {path} must be float32, got {arr.dtype}; re-run the ingest")
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise InputError(
            f"dataset file {path} has {int((~finite).sum())} NaN/inf values (first at item row {row}); "
            "features must be finite: re-run the ingest"
        )


def check_status(path: Path, status: np.ndarray, num_items: int, train: np.ndarray) -> None:
    if status.shape != (num_items,) or not np.issubdtype(status.dtype, np.integer):
        raise InputError(
            f"dataset file {path} must be an integer array of shape ({num_items},), got {status.dtype} {status.shape}")
    if status.size and (status.min() < 0 or status.max() > 2):
        raise InputError(f"dataset file {path} holds values other than 0 (warm), 1, 2 (cold); re-run the ingest")
    if train.size and (status[np.asarray(train[:, 1])] != 0).any():
        raise InputError(f"dataset file {path} marks an item of train.npy as cold; re-run the ingest")


def read_meta(root: Path) -> dict:
    """meta.json parsed and with the keys every stage reads, or InputError naming what is wrong."""
    import json

    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is unreadable or truncated ({e}); re-run the ingest") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} is not a JSON object; re-run the ingest")
    if "digest" in meta and meta["digest"] != json_digest(meta):  # absent: written before digests
        raise InputError(f"{path} changed since ingest (its content does not match its digest); re-run the ingest")
    for key, kind in (("format", str), ("format_version", int), ("num_users", int), ("num_items", int),
                      ("modalities", list), ("fingerprint", str)):
        if key not in meta:
            raise InputError(f"{path} lacks the key {key!r}; re-run the ingest")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise InputError(f"{path}: {key!r} must be a {kind.__name__}, got {meta[key]!r}; re-run the ingest")
    if meta["num_users"] < 1 or meta["num_items"] < 1:
        raise InputError(f"{path}: num_users and num_items must be >= 1; re-run the ingest")
    for m in meta["modalities"]:
        if not (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("dim"), int)):
            raise InputError(f"{path}: every modality needs a name and an integer dim, got {m!r}; re-run the ingest")
        if not m["name"] or "/" in m["name"] or m["name"].startswith("."):
            raise InputError(f"{path}: modality name {m['name']!r} is not a plain file name; re-run the ingest")
    if "files" in meta and not isinstance(meta["files"], dict):
        raise InputError(f"{path}: 'files' must be an object; re-run the ingest")
    return meta
