"""Building and reading generations: row invariants, determinism, sharded builds, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numba
import numpy as np
import polars as pl
import pytest

from cache.build import (
    build_generation,
    build_next,
    build_shard,
    publish_generation,
    refresh,
)
from cache.manifest import NegativeConfig
from cache.store import CacheStore
from common.errors import CacheError, DatasetChangedError
from common.fsutil import output_kind
from pipeline.dataset import WARM, load_dataset, write_dataset
from tests.support import (
    assert_generation_valid,
    make_dataset,
    read_generation,
    run_cli,
    start_cli,
)

CFG = NegativeConfig(num_neg=16, seed=3, chunk_rows=256)


def chunk_files(cache: Path, g: int) -> dict[str, bytes]:
    root = cache / f"gen-{g:06d}"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "generation.json"}


def test_generation_rows_keep_every_invariant(dataset, tmp_path):
    cache = tmp_path / "cache"
    assert build_generation(dataset, cache, 0, CFG, progress=False) == 0
    store = CacheStore(cache)
    gen = store.open_generation(0, expect_fingerprint=load_dataset(dataset).fingerprint)
    assert gen.item_dtype == np.uint16 and gen.num_chunks == -(-gen.num_rows // 256) > 2
    assert gen.chunk_range(gen.num_chunks - 1)[1] == gen.num_rows  # a partial last chunk
    users, pos, neg = read_generation(store, 0)
    assert_generation_valid(dataset, users, pos, neg, 16)
    m = store.manifest
    assert m["config"]["exclusion"] == "train" and m["config"]["item_dtype"] == "uint16"
    # the cache proves its provenance: its marker verifies, and a second writer keeps it as it is
    marker = (cache / ".clcrec-output.json").read_bytes()
    assert output_kind(cache) == ("cache", "a negative cache (build-negatives)", True)
    build_next(dataset, cache, 1, CFG, progress=False)
    assert (cache / ".clcrec-output.json").read_bytes() == marker
    assert len(m["generations"]["0"]["checksums"]["neg"]) == gen.num_chunks


def test_generations_are_pure_functions_of_data_config_and_id(dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_next(dataset, a, 2, CFG, progress=False)
    numba.set_num_threads(1)
    try:
        build_generation(dataset, b, 1, CFG, progress=False)  # only gen 1, on one thread
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    ma, mb = CacheStore(a).manifest, CacheStore(b).manifest
    assert ma["generations"]["1"]["checksums"] == mb["generations"]["1"]["checksums"]
    assert chunk_files(a, 1) == chunk_files(b, 1)
    ua, _, na = read_generation(CacheStore(a), 0)
    ub, _, nb = read_generation(CacheStore(a), 1)
    assert not np.array_equal(ua, ub) and not np.array_equal(na, nb)  # new shuffle, new negatives


def test_kernel_thread_count_does_not_change_a_generation(tmp_path):
    data = make_dataset(tmp_path / "d", num_users=200, num_items=600, pairs=5000)
    cfg = NegativeConfig(num_neg=64, seed=1, chunk_rows=2048)  # 2048 x 64: the parallel path
    sums = []
    for threads, name in ((1, "one"), (min(2, numba.config.NUMBA_NUM_THREADS), "two")):
        numba.set_num_threads(threads)
        try:
            build_generation(data, tmp_path / name, 0, cfg, progress=False)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        sums.append(CacheStore(tmp_path / name).manifest["generations"]["0"]["checksums"])
    assert sums[0] == sums[1]


def test_only_training_items_are_excluded(tmp_path):
    """User 0 trains on 2 of 12 warm items and has warm item 5 in validation: with num_neg = 10
    every row of user 0 holds exactly the 10 other warm items, validation item 5 included."""
    status = np.array([WARM] * 12 + [1, 2], np.int8)
    train = np.array([(0, 0), (0, 1), (1, 2)])
    ds = write_dataset(tmp_path / "d", train=train, val=np.array([(0, 5), (0, 12)]), test=np.array([(1, 13)]),
                       item_status=status, features={"v": np.eye(14, 2, dtype=np.float32)},
                       user_ids=pl.DataFrame({"original_id": [0, 1]}),
                       item_ids=pl.DataFrame({"original_id": list(range(14))}), source={}, split={})
    build_generation(ds, tmp_path / "c", 0, NegativeConfig(num_neg=10, chunk_rows=2), progress=False)
    users, _, neg = read_generation(CacheStore(tmp_path / "c"), 0)
    for row in neg[users == 0]:
        assert sorted(row.tolist()) == list(range(2, 12))
    with pytest.raises(Exception, match=r"1 users have fewer than num_neg=11 .*worst: user 0 with 10"):
        build_generation(ds, tmp_path / "c2", 0, NegativeConfig(num_neg=11), progress=False)
    assert not (tmp_path / "c2" / "manifest.json").exists()  # refused before anything was written


def test_wide_catalogues_store_int32_ids(tmp_path):
    data = make_dataset(tmp_path / "d", num_users=20, num_items=70_000, pairs=300)
    build_generation(data, tmp_path / "c", 0, NegativeConfig(num_neg=8, chunk_rows=128), progress=False)
    store = CacheStore(tmp_path / "c")
    users, pos, neg = read_generation(store, 0)
    assert store.item_dtype == np.int32 and neg.dtype == np.int32
    assert_generation_valid(data, users, pos, neg, 8)


def test_existing_cache_refuses_other_data_or_config(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_generation(dataset, cache, 0, CFG, progress=False)
    assert build_generation(dataset, cache, 0, CFG, progress=False) == 0  # no-op
    other = make_dataset(tmp_path / "other", seed=9)
    with pytest.raises(DatasetChangedError, match="Rebuild"):
        build_generation(other, cache, 1, CFG, progress=False)
    with pytest.raises(DatasetChangedError, match="fingerprint"):
        CacheStore(cache).open_generation(0, expect_fingerprint=load_dataset(other).fingerprint)
    with pytest.raises(CacheError, match=r"num_neg=16 \(asked 32\)"):
        build_generation(dataset, cache, 1, NegativeConfig(num_neg=32, seed=3, chunk_rows=256), progress=False)
    with pytest.raises(CacheError, match="generation 7 is not published"):
        CacheStore(cache).open_generation(7)
    with pytest.raises(CacheError, match="not a negative cache .*build-negatives"):
        CacheStore(tmp_path / "nothing")
    # the dataset changed in place under the cache: refresh refuses too
    make_dataset(dataset, seed=5)
    with pytest.raises(DatasetChangedError):
        refresh(cache, progress=False)
    assert CacheStore(cache).published() == [0]


def test_sharded_build_equals_single_process_build(dataset, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    build_generation(dataset, single, 2, CFG, progress=False)
    for i in (2, 0, 1):
        info = build_shard(dataset, sharded, 2, CFG, i, 3, progress=False)
        assert info["status"] == "built"
    assert build_shard(dataset, sharded, 2, CFG, 1, 3, progress=False)["status"] == "already built"
    assert CacheStore(sharded).published() == []  # nothing visible before publish
    assert publish_generation(sharded, 2) == 2
    s1, s2 = CacheStore(single), CacheStore(sharded)
    assert s1.manifest["generations"]["2"]["checksums"] == s2.manifest["generations"]["2"]["checksums"]
    for a, b in zip(read_generation(s1, 2), read_generation(s2, 2)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert chunk_files(single, 2) == chunk_files(sharded, 2)
    assert not (sharded / "staging" / "gen-000002").exists()


def test_publish_with_a_missing_shard_names_it(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_shard(dataset, cache, 0, CFG, 0, 3, progress=False)
    build_shard(dataset, cache, 0, CFG, 2, 3, progress=False)
    with pytest.raises(CacheError, match=r"missing shard 1/3 \(chunks 2..3\)"):
        publish_generation(cache, 0)
    assert CacheStore(cache).published() == []
    build_shard(dataset, cache, 0, CFG, 1, 3, progress=False)
    assert publish_generation(cache, 0) == 0


def test_cli_shard_jobs_in_parallel_then_publish(dataset, tmp_path):
    """Two real shard processes at once, then the publish command, match a CLI single build."""
    cache, single = tmp_path / "cache", tmp_path / "single"
    jobs = [start_cli("build-negatives", dataset, cache, "--num-neg", "16", "--chunk-rows", "256",
                      "--generation", "0", "--shard", f"{i}/2", "-q") for i in range(2)]
    for j in jobs:
        out, err = j.communicate(timeout=120)
        assert j.returncode == 0, err
        assert "shard" in err
    proc = run_cli("build-negatives", dataset, cache, "--generation", "0", "--publish")
    assert "generation 0:" in proc.stderr and "negatives/s" in proc.stderr and "compression" in proc.stderr
    run_cli("build-negatives", dataset, single, "--num-neg", "16", "--chunk-rows", "256", "-q")
    a = json.loads((cache / "manifest.json").read_text())["generations"]["0"]["checksums"]
    b = json.loads((single / "manifest.json").read_text())["generations"]["0"]["checksums"]
    assert a == b
    bad = run_cli("build-negatives", dataset, cache, "--generation", "1", "--publish", check=False)
    assert bad.returncode == 1 and "no complete shards of generation 1" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_background_thread_builds_while_the_main_thread_reads(dataset, tmp_path):
    """The trainer's pattern: build generation g+1 in a thread while reading g under a lease."""
    import threading

    cache = tmp_path / "cache"
    build_generation(dataset, cache, 0, CFG, progress=False)
    store = CacheStore(cache)
    errors: list[BaseException] = []

    def build_next_gen():
        try:
            build_generation(dataset, cache, 1, CFG, progress=False)
        except BaseException as e:  # re-raised below, in the test thread
            errors.append(e)

    worker = threading.Thread(target=build_next_gen)
    with store.reader_lease(0):
        gen = store.open_generation(0)
        worker.start()
        for _ in range(5):
            for i in range(gen.num_chunks):
                gen.read_chunk(i)
        worker.join(timeout=120)
    assert not errors and store.published() == [0, 1]
    assert_generation_valid(dataset, *read_generation(store, 1), CFG.num_neg)
