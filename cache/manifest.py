"""The cache's config dataclass, on-disk layout and manifest.

    python cli.py cache-info caches/ml        # prints what this module reads

Layout of CACHE/ (one dataset and one sampling config per cache directory):

    manifest.json            the source of truth: dataset path + fingerprint, NegativeConfig,
                             item dtype, and per published generation its row/chunk counts,
                             bytes, creation time and crc32c of every chunk's users/pos/neg
    .clcrec-output.json      the provenance marker of kind "cache" (common/provenance.py), written
                             with the first manifest; caches built before markers lack it
    writer.lock              flock'ed exclusively by the one writer (build, refresh, publish,
                             prune); holds the writer's pid and command for error messages
    leases/gen-NNNNNN.lock   flock'ed shared by every reader of generation N, exclusively by
                             the pruner; the kernel drops the lock when a reader dies
    gen-NNNNNN/              a published generation: zarr v3 group with arrays
                               users int32 (rows,)         chunks (chunk_rows,)
                               pos   uint16|int32 (rows,)  chunks (chunk_rows,)
                               neg   uint16|int32 (rows, num_neg)  chunks (chunk_rows, num_neg)
                             plus generation.json (the manifest entry, for humans)
    .tmp-gen-NNNNNN.*        a generation being built; a killed build's leftover is removed by
                             the next writer
    staging/gen-NNNNNN/      sharded builds: shard-III-of-JJJ/ (complete shard: zarr group with
                             only its chunks + shard.json), .tmp-shard-* (in progress),
                             shard-III-of-JJJ.lock (held by the shard's builder)

A generation is visible only once it is listed in manifest.json, which is replaced atomically
after the generation directory has been renamed into place.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from common.errors import CacheError
from common.fsutil import atomic_write_json
from common.integrity import json_digest

FORMAT = "clcrec-negative-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WRITER_LOCK = "writer.lock"
LEASES = "leases"
STAGING = "staging"
ARRAYS = ("users", "pos", "neg")
CNAMES = ("lz4", "zstd", "blosclz", "lz4hc", "zlib")
# Which of a user's items negatives never include. "train" is the honest default; "all-known" also
# excludes the user's validation and test items, as the reference code does: it reproduces the
# published numbers, but training then knows which items are held out (a leak of the answers).
EXCLUSIONS = ("train", "all-known")


MAX_CHUNK_BYTES = 2**30  # one chunk's negatives as int32: built, compressed and read whole


@dataclass(frozen=True)
class NegativeConfig:
    """How a cache's generations are sampled and stored; recorded in and checked against the manifest."""

    num_neg: int = 128  # negatives per training pair (the CLCRec paper's setting)
    seed: int = 0  # master seed; generation g shuffles and samples from (seed, g)
    chunk_rows: int = 16384  # pairs per chunk: 4 MiB of uint16 negatives at num_neg=128
    exclusion: str = "train"  # one of EXCLUSIONS: "train" (default) or "all-known" (leaks held-out items)
    on_short: str = "error"  # users with < num_neg allowed items: "error" or "repeat" (cycle them)
    cname: str = "lz4"  # blosc compressor; bit-shuffled lz4 measured best (see cache/bench.py)
    clevel: int = 5
    # None: every training pair, every generation. r: the dataset's recent pairs (extras/train_recent.npy,
    # written by `update`) and r times as many of the others, sampled afresh per generation (replay
    # against forgetting: a fine-tune's epoch costs the delta, not the whole history)
    replay: float | None = None

    def __post_init__(self):
        if not isinstance(self.num_neg, int) or not 1 <= self.num_neg <= 65535:  # TrainConfig's bound too
            raise CacheError(f"num_neg must be an integer from 1 to 65535, got {self.num_neg!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise CacheError(f"seed must be an integer in 0..2^63-1, got {self.seed!r}")
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise CacheError(f"chunk_rows must be a positive integer, got {self.chunk_rows!r}")
        if self.chunk_rows * self.num_neg * 4 > MAX_CHUNK_BYTES:  # a chunk is held in memory whole
            most = MAX_CHUNK_BYTES // (4 * self.num_neg)
            raise CacheError(f"--chunk-rows {self.chunk_rows} at --num-neg {self.num_neg} makes chunks of "
                             f"{self.chunk_rows * self.num_neg * 4 / 2**30:,.1f} GiB, past the {MAX_CHUNK_BYTES >> 30} "
                             f"GiB a chunk may take in memory; use --chunk-rows {most} or less (default 16384)")
        if self.exclusion not in EXCLUSIONS:
            raise CacheError(
                f"exclusion must be one of {EXCLUSIONS}, got {self.exclusion!r} ('all-known' leaks "
                "validation and test items into training; use it only to reproduce the reference)"
            )
        if self.on_short not in ("error", "repeat"):
            raise CacheError(f"on_short must be 'error' or 'repeat', got {self.on_short!r}")
        if self.cname not in CNAMES:
            raise CacheError(f"cname must be one of {CNAMES}, got {self.cname!r}")
        if not 0 <= self.clevel <= 9:
            raise CacheError(f"clevel must be in 0..9, got {self.clevel!r}")
        if self.replay is not None and (isinstance(self.replay, bool) or not isinstance(self.replay, (int, float))
                                        or not np.isfinite(self.replay) or self.replay < 0):
            raise CacheError(f"replay must be a finite number >= 0 (or None: every pair), got {self.replay!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "NegativeConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def gen_name(g: int) -> str:
    return f"gen-{int(g):06d}"


def shard_name(i: int, n: int) -> str:
    return f"shard-{int(i):03d}-of-{int(n):03d}"


def shard_chunks(i: int, n: int, num_chunks: int) -> range:
    """The contiguous, disjoint chunk range of shard i of n."""
    return range(i * num_chunks // n, (i + 1) * num_chunks // n)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_manifest(dataset_path: Path, meta: dict, num_pairs: int, num_warm: int,
                 config: NegativeConfig, item_dtype: np.dtype) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": {
            "path": str(Path(dataset_path).resolve()),
            "fingerprint": meta["fingerprint"],
            "num_users": int(meta["num_users"]),
            "num_items": int(meta["num_items"]),
            "num_pairs": int(num_pairs),
            "num_warm": int(num_warm),
        },
        "config": {**asdict(config), "item_dtype": np.dtype(item_dtype).name},
        "created": now_iso(),
        "generations": {},
    }


def read_manifest(cache_dir: Path) -> dict:
    """The parsed manifest; CacheError saying how to create a cache if there is none."""
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise CacheError(
            f"{cache_dir} is not a negative cache (no {MANIFEST}); create one with "
            f"`python cli.py build-negatives DATASET {cache_dir}`"
        )
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path} is unreadable ({e}); rebuild the cache into a new directory") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest; rebuild the cache")
    if "digest" in m and m["digest"] != json_digest(m):  # absent: written before digests existed
        raise CacheError(f"{path} was changed or corrupted (its content does not match its digest); "
                         "rebuild the cache into a new directory")
    m.pop("digest", None)
    return m


def write_manifest(cache_dir: Path, manifest: dict) -> None:
    manifest["updated"] = now_iso()
    manifest.pop("digest", None)
    atomic_write_json(Path(cache_dir) / MANIFEST, {**manifest, "digest": json_digest(manifest)})


def published_ids(manifest: dict) -> list[int]:
    return sorted(int(g) for g in manifest["generations"])


def check_config(manifest: dict, config: NegativeConfig, cache_dir: Path) -> None:
    """CacheError if `config` differs from the one the cache was built with."""
    have = NegativeConfig.from_dict(manifest["config"])
    if have != config:
        diff = [f"{f.name}={getattr(have, f.name)!r} (asked {getattr(config, f.name)!r})"
                for f in fields(NegativeConfig) if getattr(have, f.name) != getattr(config, f.name)]
        raise CacheError(
            f"cache {cache_dir} was built with a different sampling config: {', '.join(diff)}; "
            "use the recorded settings or build into a new cache directory"
        )


def check_fingerprint(manifest: dict, fingerprint: str, cache_dir: Path, what: str = "the dataset") -> None:
    """DatasetChangedError if the cache was built from other data."""
    from common.errors import DatasetChangedError

    have = manifest["dataset"]["fingerprint"]
    if have != fingerprint:
        raise DatasetChangedError(
            f"cache {cache_dir} was built from a dataset with fingerprint {have[:12]}... "
            f"({manifest['dataset']['path']}), but {what} has fingerprint {fingerprint[:12]}...; "
            f"its negatives do not match this data. Rebuild: remove {cache_dir} (or pick a new "
            f"directory) and run `python cli.py build-negatives DATASET {cache_dir}`"
        )
