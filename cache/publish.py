"""The writer's critical section: the lock, leftover cleanup and the atomic publish step.

    python cli.py refresh caches/ml --wait     # every writer goes through `writing(...)`

Reads and writes CACHE/manifest.json, CACHE/writer.lock, CACHE/gen-NNNNNN/ and the leftovers
of killed writers (`.tmp-*` in CACHE/, partial shards in CACHE/staging/). Publishing is: write
generation.json into the finished `.tmp-gen-*` directory, rename it to gen-NNNNNN, then
replace the manifest atomically; only then do readers see the generation. A kill between any
two steps leaves the published generations intact; `clean_leftovers` removes the rest.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from cache.lock import WriterLock, lease_path
from cache.manifest import (
    ARRAYS,
    MANIFEST,
    STAGING,
    NegativeConfig,
    check_config,
    check_fingerprint,
    gen_name,
    new_manifest,
    now_iso,
    published_ids,
    read_manifest,
    write_manifest,
)
from cache.write import GenerationSource, dir_bytes
from common.errors import CacheError
from common.fsutil import TMP_PREFIX, atomic_write_json, fsync_dir, fsync_tree, write_marker
from common.lock import FileLock
from pipeline.dataset import read_fingerprint


def check_generation(g: int) -> int:
    if int(g) < 0:
        raise CacheError(f"generation ids start at 0, got {g}")
    return int(g)


def check_existing(cache_dir: Path, dataset_dir: Path, config: NegativeConfig) -> dict | None:
    """The manifest if the cache exists (after checking data and config match), else None."""
    if not (cache_dir / MANIFEST).exists():
        check_new_cache_dir(cache_dir)
        return None
    manifest = read_manifest(cache_dir)
    check_fingerprint(manifest, read_fingerprint(dataset_dir), cache_dir, f"dataset {dataset_dir}")
    check_config(manifest, config, cache_dir)
    return manifest


# What a cache directory may hold before its first manifest: leftovers of a killed first build.
_CACHE_NAMES = {"writer.lock", "leases", STAGING}


def check_new_cache_dir(cache_dir: Path) -> None:
    """Refuse to create a cache in a path that cannot hold one, or in a non-empty directory that
    is not a cache (e.g. a dataset directory: its files would be mixed with generations)."""
    from common.fsutil import check_output_dir

    check_output_dir(cache_dir, "cache directory")
    if not cache_dir.is_dir():
        return
    foreign = sorted(p.name for p in cache_dir.iterdir()
                     if p.name not in _CACHE_NAMES and not p.name.startswith((TMP_PREFIX, "gen-")))
    if foreign:
        what = "a dataset directory" if "meta.json" in foreign else "a non-empty directory that is not a negative cache"
        raise CacheError(
            f"cache directory {cache_dir} is {what} (it holds {', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); pass a new or empty directory for the cache"
        )


@contextmanager
def writing(cache_dir: Path, dataset_dir: Path | None, config: NegativeConfig | None, what: str,
            wait: bool, source: GenerationSource | None = None):
    """Hold the writer lock; yield (manifest, source): the manifest created if new, leftovers of
    killed writers removed, and the dataset loaded (source is None when dataset_dir is None)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(cache_dir, what)
    lock.acquire(wait=wait)
    try:
        if dataset_dir is not None:
            source = source or GenerationSource(dataset_dir, config)
            if (cache_dir / MANIFEST).exists():
                manifest = read_manifest(cache_dir)
                check_fingerprint(manifest, source.fingerprint, cache_dir, f"dataset {dataset_dir}")
                check_config(manifest, config, cache_dir)
            else:
                manifest = new_manifest(dataset_dir, source.meta, source.num_rows, source.warm.size,
                                        config, source.item_dtype)
                write_manifest(cache_dir, manifest)
                # after the manifest: a kill between the two leaves a cache like one written before
                # markers existed (common/provenance.py), never a marker on a directory without one
                write_marker(cache_dir, "cache")
        manifest = read_manifest(cache_dir)
        clean_leftovers(cache_dir, manifest)
        yield manifest, source
    finally:
        lock.release()


def remove_aside(path: Path) -> None:
    """Rename aside first (a crash mid-delete leaves only a .tmp- leftover), then delete."""
    if path.exists():
        aside = path.with_name(f"{TMP_PREFIX}del-{path.name}.{os.getpid()}")
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)


def clean_leftovers(cache_dir: Path, manifest: dict) -> list[str]:
    """Remove what killed writers left behind (caller holds the writer lock)."""
    removed = []
    for p in cache_dir.glob(TMP_PREFIX + "*"):  # only writers create these, and we are the writer
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    published = set(published_ids(manifest))
    for p in cache_dir.glob("gen-*"):  # renamed into place but killed before the manifest update
        if p.is_dir() and p.name[4:].isdigit() and int(p.name[4:]) not in published:
            lease = FileLock(lease_path(cache_dir, int(p.name[4:])), error=CacheError)
            if lease.acquire(wait=False):
                remove_aside(p)
                lease.release()
                removed.append(p.name)
    for stage in (cache_dir / STAGING).glob("gen-*"):
        if stage.name[4:].isdigit() and int(stage.name[4:]) in published:
            shutil.rmtree(stage, ignore_errors=True)  # staging of a generation already published
            removed.append(f"{STAGING}/{stage.name}")
            continue
        for tmp in stage.glob(TMP_PREFIX + "shard-*"):  # a killed shard job's partial output
            name = tmp.name[len(TMP_PREFIX):].split(".")[0]
            shard_lock = FileLock(stage / f"{name}.lock", error=CacheError)
            if shard_lock.acquire(wait=False):
                shutil.rmtree(tmp, ignore_errors=True)
                shard_lock.release()
                removed.append(f"{STAGING}/{stage.name}/{tmp.name}")
    return removed


def generation_entry(source: GenerationSource, num_rows: int, checksums: dict, path: Path,
                     seconds: float, sample_seconds: float, shards: int) -> dict:
    """The manifest entry of a generation built at `path` (checksums: {array: {chunk: crc}})."""
    isz = source.item_dtype.itemsize
    return {
        "created": now_iso(),
        "fingerprint": source.fingerprint,
        "num_rows": num_rows,
        "num_chunks": len(checksums["users"]),
        "raw_bytes": num_rows * (4 + isz + isz * source.config.num_neg),
        "bytes": dir_bytes(path),
        "build_seconds": round(seconds, 3),
        "sample_seconds": round(sample_seconds, 3),
        "shards": shards,
        "checksums": {name: [checksums[name][i] for i in sorted(checksums[name])] for name in ARRAYS},
    }


def publish_as_generation(cache_dir: Path, tmp: Path, g: int, entry: dict) -> None:
    """Rename a complete generation into place, then list it in the manifest (atomically).
    Its files are fsynced first, so a power loss cannot leave a listed generation half-written."""
    atomic_write_json(tmp / "generation.json", {"generation": g, **entry})
    fsync_tree(tmp)
    target = cache_dir / gen_name(g)
    remove_aside(target)  # an unlisted orphan (cleanup already removed it unless a reader held it)
    os.rename(tmp, target)
    fsync_dir(cache_dir)
    manifest = read_manifest(cache_dir)
    manifest["generations"][str(g)] = entry
    write_manifest(cache_dir, manifest)
