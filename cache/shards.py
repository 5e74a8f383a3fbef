"""Sharded builds of one generation (issue #5): n independent jobs, then one publish.

    python cli.py build-negatives data/ml caches/ml --generation 4 --shard 0/2   # job 0 of 2
    python cli.py build-negatives data/ml caches/ml --generation 4 --shard 1/2   # job 1 of 2
    python cli.py build-negatives data/ml caches/ml --generation 4 --publish

Each job (no writer lock: they run at once, on one box or as a cluster array job) writes the
contiguous chunk range of its shard into CACHE/staging/gen-NNNNNN/shard-III-of-JJJ/ (a zarr
group holding only those chunks, plus shard.json with their checksums), built in a `.tmp-`
directory under its own lock file and renamed when complete; re-running a finished shard is a
no-op. The publish step, under the writer lock, checks that every shard is there, hard-links
their chunk files into one `.tmp-gen-*` store, reads and checksums every chunk, and publishes
it like any build. Chunks are pure functions of (dataset, config, generation, chunk id), so
the bytes equal a single-process build.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cache.manifest import (
    ARRAYS,
    STAGING,
    NegativeConfig,
    gen_name,
    now_iso,
    read_manifest,
    shard_chunks,
    shard_name,
)
from cache.publish import (
    check_existing,
    check_generation,
    publish_as_generation,
    writing,
)
from cache.store import Generation
from cache.write import (
    GenerationSource,
    chunk_key,
    create_arrays,
    dir_bytes,
    write_chunks,
)
from common.errors import CacheError
from common.fsutil import (
    atomic_write_json,
    clean_tmp_leftovers,
    fsync_dir,
    make_tmp_dir,
)
from common.lock import FileLock, is_locked


def build_shard(dataset_dir: Path, cache_dir: Path, generation: int, config: NegativeConfig,
                shard: int, num_shards: int, *, progress: bool = True) -> dict:
    """Write shard `shard` of `num_shards` (a contiguous chunk range) of one generation into the
    staging area. Needs no writer lock: n shards run at once. Idempotent: a complete shard is kept."""
    g = check_generation(generation)
    if not (num_shards >= 1 and 0 <= shard < num_shards):
        raise CacheError(f"--shard i/n needs 0 <= i < n, got {shard}/{num_shards}")
    cache_dir, dataset_dir = Path(cache_dir), Path(dataset_dir)
    manifest = check_existing(cache_dir, dataset_dir, config)
    if manifest is not None and str(g) in manifest["generations"]:
        return {"status": "published", "generation": g}
    source = GenerationSource(dataset_dir, config)
    if num_shards > source.num_chunks:  # before anything is written: a shard past the last chunk is empty
        raise CacheError(f"--shard {shard}/{num_shards}: generation {g} has only {source.num_chunks} chunk(s) of "
                         f"{config.chunk_rows} pairs, so n can be at most {source.num_chunks}")
    if manifest is None:  # the first shard job creates the cache (under the writer lock)
        with writing(cache_dir, dataset_dir, config, "create cache", True, source) as (manifest, _):
            pass
    stage = cache_dir / STAGING / gen_name(g)
    stage.mkdir(parents=True, exist_ok=True)
    name = shard_name(shard, num_shards)
    lock = FileLock(stage / f"{name}.lock", error=CacheError)
    if not lock.acquire(wait=False):
        raise CacheError(f"shard {shard}/{num_shards} of generation {g} is already being built by another process")
    try:
        clean_tmp_leftovers(stage, name)  # our own killed attempt, if any
        done = stage / name
        expect = {"fingerprint": source.fingerprint, "config": manifest["config"], "num_rows": source.num_rows}
        if (done / "shard.json").exists():
            info = json.loads((done / "shard.json").read_text())
            if all(info.get(k) == v for k, v in expect.items()):
                return {"status": "already built", **info}
        shutil.rmtree(done, ignore_errors=True)
        chunks = shard_chunks(shard, num_shards, source.num_chunks)
        tmp = make_tmp_dir(done)
        arrays = create_arrays(tmp, source.num_rows, config, source.item_dtype)
        res = write_chunks(source, g, arrays, chunks, progress=progress,
                           label=f"generation {g} shard {shard}/{num_shards}")
        info = {**expect, "generation": g, "shard": shard, "num_shards": num_shards,
                "chunks": [chunks.start, chunks.stop], "num_chunks": source.num_chunks,
                "checksums": {k: {str(i): v for i, v in d.items()} for k, d in res["checksums"].items()},
                "seconds": round(res["seconds"], 3), "sample_seconds": round(res["sample_seconds"], 3),
                "created": now_iso()}
        atomic_write_json(tmp / "shard.json", info)
        os.rename(tmp, done)
        fsync_dir(stage)
        return {"status": "built", **info}
    finally:
        lock.release()


def _staged_shards(stage: Path, g: int) -> tuple[int, dict[int, dict]]:
    infos: dict[int, dict] = {}
    counts = set()
    for d in sorted(stage.glob("shard-*-of-*")):
        if d.is_dir() and (d / "shard.json").exists():
            info = json.loads((d / "shard.json").read_text())
            counts.add(info["num_shards"])
            infos[info["shard"]] = {**info, "dir": d}
    if not infos:
        raise CacheError(
            f"no complete shards of generation {g} are staged in {stage}; build them with "
            f"`python cli.py build-negatives DATASET CACHE --generation {g} --shard i/n` for i in 0..n-1"
        )
    if len(counts) > 1:
        raise CacheError(f"{stage} mixes shards of {sorted(counts)}-way splits; delete it and rebuild the shards")
    return counts.pop(), infos


def publish_generation(cache_dir: Path, generation: int, *, wait: bool = True) -> int:
    """Check that every staged chunk of `generation` is present and valid, then publish it."""
    g = check_generation(generation)
    cache_dir = Path(cache_dir)
    read_manifest(cache_dir)
    with writing(cache_dir, None, None, f"publish generation {g}", wait) as (manifest, _):
        if str(g) in manifest["generations"]:
            return g
        stage = cache_dir / STAGING / gen_name(g)
        n, infos = _staged_shards(stage, g)
        num_chunks = next(iter(infos.values()))["num_chunks"]
        if n > num_chunks:  # staged before --shard was bounded: n-way splits past the chunk count
            raise CacheError(f"{stage} holds shards of a {n}-way split of {num_chunks} chunk(s); delete it and "
                             f"rebuild with --shard i/n, n at most {num_chunks}")
        missing = [i for i in range(n) if i not in infos]
        if missing:
            parts = []
            for i in missing:
                r = shard_chunks(i, n, num_chunks)
                busy = is_locked(stage / f"{shard_name(i, n)}.lock")
                parts.append(f"shard {i}/{n} (chunks {r.start}..{r.stop - 1}"
                             f"{', still being built' if busy else ''})")
            raise CacheError(
                f"cannot publish generation {g}: missing {', '.join(parts)}; run `python cli.py "
                f"build-negatives DATASET {cache_dir} --generation {g} --shard I/{n}` for each"
            )
        for i, info in infos.items():
            if info["fingerprint"] != manifest["dataset"]["fingerprint"] or info["config"] != manifest["config"]:
                raise CacheError(f"shard {i}/{n} of generation {g} was built from other data or settings; "
                                 f"delete {info['dir']} and rebuild it")
        config = NegativeConfig.from_dict(manifest["config"])
        dtype = np.dtype(manifest["config"]["item_dtype"])
        num_rows = next(iter(infos.values()))["num_rows"]
        tmp = make_tmp_dir(cache_dir / gen_name(g))
        try:
            t0 = time.perf_counter()
            arrays = create_arrays(tmp, num_rows, config, dtype)
            sums: dict[str, dict[int, str]] = {a: {} for a in ARRAYS}
            for i, info in sorted(infos.items()):
                for c in range(*info["chunks"]):
                    for a in ARRAYS:
                        key = chunk_key(arrays[a], c)
                        src, dst = info["dir"] / a / key, tmp / a / key
                        if not src.exists():
                            raise CacheError(f"shard {i}/{n} of generation {g} lacks chunk {c} of {a} "
                                             f"({src}); delete {info['dir']} and rebuild that shard")
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(src, dst)  # no copy: same filesystem
                        except OSError:
                            shutil.copyfile(src, dst)
                        sums[a][c] = info["checksums"][a][str(c)]
            if any(len(sums[a]) != num_chunks for a in ARRAYS):
                raise CacheError(f"the staged shards of generation {g} do not cover its {num_chunks} chunks")
            entry = {"num_rows": num_rows, "num_chunks": num_chunks,
                     "checksums": {a: [sums[a][c] for c in range(num_chunks)] for a in ARRAYS}}
            gen = Generation(cache_dir, g, entry, config, dtype, path=tmp)
            bad = gen.verify()
            if bad:
                raise CacheError(f"cannot publish generation {g}: {len(bad)} staged chunk(s) fail "
                                 f"their checksum; first: {bad[0]}; rebuild the shard holding it")
            isz = dtype.itemsize
            entry.update(created=now_iso(), fingerprint=manifest["dataset"]["fingerprint"],
                         raw_bytes=num_rows * (4 + isz + isz * config.num_neg), bytes=dir_bytes(tmp),
                         build_seconds=round(sum(x["seconds"] for x in infos.values()), 3),
                         sample_seconds=round(sum(x["sample_seconds"] for x in infos.values()), 3),
                         publish_seconds=round(time.perf_counter() - t0, 3), shards=n)
            publish_as_generation(cache_dir, tmp, g, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(stage, ignore_errors=True)
    return g
