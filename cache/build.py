"""Building, refreshing and pruning generations of a negative cache (the write side).

    python cli.py build-negatives data/ml caches/ml --generations 2
    python cli.py refresh caches/ml --keep 3          # the scheduled job

Reads the dataset directory recorded in (or given for) the cache; writes CACHE/gen-NNNNNN/ and
CACHE/manifest.json (layout in cache/manifest.py). Every step that changes what readers see
runs under the writer lock and publishes atomically (cache/publish.py): build into
`.tmp-gen-*`, rename into place, then replace the manifest. A process killed at any point
leaves the published generations readable; the next writer removes its leftovers. Sharded
builds live in cache/shards.py and are re-exported here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cache.lock import lease_path
from cache.manifest import (
    NegativeConfig,
    gen_name,
    published_ids,
    read_manifest,
    write_manifest,
)
from cache.publish import (
    check_existing,
    check_generation,
    generation_entry,
    publish_as_generation,
    remove_aside,
    writing,
)
from cache.shards import build_shard, publish_generation  # noqa: F401  (part of this API)
from cache.write import GenerationSource, create_arrays, write_chunks
from common.errors import CacheError, InputError
from common.fsutil import make_tmp_dir
from common.lock import FileLock

__all__ = ["build_generation", "build_next", "build_shard", "drop_generations", "format_summary",
           "prune", "publish_generation", "refresh"]


def _build_locked(cache_dir: Path, source: GenerationSource, g: int, progress: bool) -> dict:
    tmp = make_tmp_dir(cache_dir / gen_name(g))
    try:
        arrays = create_arrays(tmp, source.num_rows, source.config, source.item_dtype)
        res = write_chunks(source, g, arrays, range(source.num_chunks), progress=progress,
                           label=f"generation {g}")
        entry = generation_entry(source, source.num_rows, res["checksums"], tmp, res["seconds"],
                                 res["sample_seconds"], shards=1)
        publish_as_generation(cache_dir, tmp, g, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def build_generation(dataset_dir: Path, cache_dir: Path, generation: int, config: NegativeConfig, *,
                     wait: bool = True, progress: bool = True) -> int:
    """Build and publish generation `generation` (a no-op if it is published); returns its id.

    Creates the cache if new; an existing cache must have the same dataset fingerprint
    (else DatasetChangedError) and config (else CacheError). With `wait=False` a running writer
    makes this raise CacheError instead of queueing behind it.
    """
    g = check_generation(generation)
    cache_dir, dataset_dir = Path(cache_dir), Path(dataset_dir)
    manifest = check_existing(cache_dir, dataset_dir, config)
    if manifest is not None and str(g) in manifest["generations"]:
        return g
    source = GenerationSource(dataset_dir, config) if manifest is None else None  # refuse before mkdir
    with writing(cache_dir, dataset_dir, config, f"build generation {g}", wait, source) as (manifest, source):
        if str(g) not in manifest["generations"]:  # another writer may have built it meanwhile
            _build_locked(cache_dir, source, g, progress)
    return g


def build_next(dataset_dir: Path, cache_dir: Path, count: int, config: NegativeConfig, *,
               wait: bool = True, progress: bool = True) -> list[int]:
    """Build the next `count` generations (0..count-1 in a new cache); returns their ids."""
    if count < 1:
        raise CacheError(f"--generations must be at least 1, got {count}")
    cache_dir, dataset_dir = Path(cache_dir), Path(dataset_dir)
    manifest = check_existing(cache_dir, dataset_dir, config)
    source = GenerationSource(dataset_dir, config) if manifest is None else None  # refuse before mkdir
    with writing(cache_dir, dataset_dir, config, f"build {count} generations", wait, source) as (manifest, source):
        have = published_ids(manifest)
        first = have[-1] + 1 if have else 0
        for g in range(first, first + count):
            _build_locked(cache_dir, source, g, progress)
    return list(range(first, first + count))


def _prune_locked(cache_dir: Path, keep: int) -> tuple[list[int], list[int]]:
    manifest = read_manifest(cache_dir)
    ids = published_ids(manifest)
    pruned, in_use = [], []
    for g in ids[: max(0, len(ids) - keep)]:
        lease = FileLock(lease_path(cache_dir, g), error=CacheError)
        if not lease.acquire(wait=False):  # a reader holds a shared lease: keep it for now
            in_use.append(g)
            continue
        try:
            del manifest["generations"][str(g)]
            write_manifest(cache_dir, manifest)  # unpublish first, then delete the files
            remove_aside(cache_dir / gen_name(g))
            lease.path.unlink(missing_ok=True)
        finally:
            lease.release()
        pruned.append(g)
    return pruned, in_use


def prune(cache_dir: Path, keep: int, *, wait: bool = False) -> tuple[list[int], list[int]]:
    """Keep the newest `keep` generations; returns (pruned, kept because a reader holds them)."""
    if keep < 1:
        raise CacheError(f"--keep must be at least 1, got {keep}")
    read_manifest(Path(cache_dir))
    with writing(Path(cache_dir), None, None, "prune", wait):
        return _prune_locked(Path(cache_dir), keep)


def drop_generations(cache_dir: Path, generations: list[int], *, wait: bool = False) -> list[int]:
    """Unpublish and delete the given generations (e.g. corrupt ones); skips leased ones."""
    cache_dir = Path(cache_dir)
    dropped = []
    with writing(cache_dir, None, None, "drop generations", wait) as (manifest, _):
        for g in generations:
            lease = FileLock(lease_path(cache_dir, g), error=CacheError)
            if str(g) in manifest["generations"] and lease.acquire(wait=False):
                try:
                    del manifest["generations"][str(g)]
                    write_manifest(cache_dir, manifest)
                    remove_aside(cache_dir / gen_name(g))
                finally:
                    lease.release()
                dropped.append(g)
    return dropped


def refresh(cache_dir: Path, keep: int = 3, *, wait: bool = False, progress: bool = True) -> dict:
    """The scheduled job: build the next generation from the recorded dataset, publish, prune."""
    if keep < 1:
        raise CacheError(f"--keep must be at least 1, got {keep}")
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    dataset_dir = Path(manifest["dataset"]["path"])
    if not (dataset_dir / "meta.json").exists():
        raise InputError(
            f"the dataset this cache was built from, {dataset_dir}, is gone; restore it, or build a "
            f"new cache with `python cli.py build-negatives DATASET NEW_CACHE`"
        )
    config = NegativeConfig.from_dict(manifest["config"])
    check_existing(cache_dir, dataset_dir, config)
    with writing(cache_dir, dataset_dir, config, "refresh", wait) as (manifest, source):
        have = published_ids(manifest)
        g = have[-1] + 1 if have else 0
        entry = _build_locked(cache_dir, source, g, progress)
        pruned, in_use = _prune_locked(cache_dir, keep)
    return {"generation": g, "entry": entry, "pruned": pruned, "in_use": in_use}


def format_summary(entry: dict, num_neg: int, g: int) -> str:
    """One line: rows, negatives/s, bytes on disk, compression ratio."""
    negs = entry["num_rows"] * num_neg
    secs = max(entry.get("build_seconds", 0.0), 1e-9)
    return (f"generation {g}: {entry['num_rows']:,} pairs x {num_neg} negatives in {secs:.2f} s "
            f"({negs / secs / 1e6:.1f} M negatives/s), {entry['bytes'] / 2**20:.1f} MiB on disk, "
            f"compression {entry['raw_bytes'] / max(entry['bytes'], 1):.2f}x")
