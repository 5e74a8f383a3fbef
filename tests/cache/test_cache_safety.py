"""Crash safety, one writer at a time, reader leases and corruption, with real processes and files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache.build import build_generation, build_next, prune, refresh
from cache.manifest import NegativeConfig
from cache.store import CacheStore
from common.errors import CacheError
from tests.support import (
    REPO,
    assert_generation_valid,
    cli_env,
    make_dataset,
    read_generation,
    run_cli,
    start_cli,
)

# Tiny chunks make a build take a couple of seconds (hundreds of chunk writes), long enough to be
# killed or overlapped mid-build without any test hook in the code.
SLOW = NegativeConfig(num_neg=8, seed=0, chunk_rows=3)
FAST = NegativeConfig(num_neg=8, seed=0, chunk_rows=256)


@pytest.fixture(scope="module")
def slow_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slow")
    data = make_dataset(root / "data", pairs=1000)
    build_generation(data, root / "cache", 0, SLOW, progress=False)
    return root


@pytest.fixture
def slow_cache(slow_template, tmp_path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(slow_template / "cache", cache)
    return cache


def test_sigkill_mid_build_keeps_previous_generation_and_next_build_cleans_up(slow_cache):
    before = read_generation(CacheStore(slow_cache), 0)
    job = start_cli("refresh", slow_cache, "-q")
    deadline = time.monotonic() + 90
    while True:  # wait until the build is under way: chunk files in its temporary generation
        tmps = list(slow_cache.glob(".tmp-gen-000001.*"))
        if tmps and len(list((tmps[0] / "neg" / "c").glob("*"))) >= 3:
            break
        assert job.poll() is None, f"refresh ended before it could be killed: {job.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(job.pid, signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL
    assert list(slow_cache.glob(".tmp-gen-000001.*")), "the kill left no partial build behind"

    store = CacheStore(slow_cache)  # the manifest parses and still lists only generation 0
    json.loads((slow_cache / "manifest.json").read_text())
    assert store.published() == [0]
    assert store.open_generation(0).verify() == []
    for a, b in zip(before, read_generation(store, 0)):
        assert np.array_equal(a, b)

    res = refresh(slow_cache, progress=False)  # the next writer removes the leftovers
    assert res["generation"] == 1 and store.published() == [0, 1]
    assert not list(slow_cache.glob(".tmp-*"))
    assert store.open_generation(1).verify() == []
    assert_generation_valid(Path(store.dataset_path), *read_generation(store, 1), SLOW.num_neg)


def test_concurrent_refresh_jobs_one_writer_at_a_time(slow_cache):
    """Three refresh jobs start together: those without --wait that lose the lock say a writer is
    running and exit 1; the --wait job queues and succeeds."""
    jobs = {name: start_cli("refresh", slow_cache, "-q", "--keep", "10", *extra)
            for name, extra in (("a", ()), ("b", ()), ("waiter", ("--wait",)))}
    out = {name: (job.communicate(timeout=180), job.returncode) for name, job in jobs.items()}
    (_, waiter_err), waiter_rc = out["waiter"]
    assert waiter_rc == 0, waiter_err
    refused = [name for name in ("a", "b") if out[name][1] != 0]
    assert refused, "no job was refused: the lock never overlapped"
    for name in refused:
        (_, err), rc = out[name]
        assert rc == 1 and "another writer is running" in err and "--wait" in err and "Traceback" not in err
    succeeded = 3 - len(refused)
    store = CacheStore(slow_cache)
    assert store.published() == list(range(1 + succeeded))
    for g in store.published():
        assert store.open_generation(g).verify() == []


def test_next_writer_removes_leftovers_of_any_kill_point(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_generation(dataset, cache, 0, FAST, progress=False)
    # killed after renaming generation 1 into place but before the manifest listed it,
    # mid-way through a manifest write, and mid-way through a shard job
    shutil.copytree(cache / "gen-000000", cache / "gen-000001")
    (cache / ".tmp-manifest.json.x1").write_text("{")
    (cache / "staging" / "gen-000003" / ".tmp-shard-000-of-002.x2").mkdir(parents=True)
    assert CacheStore(cache).published() == [0]  # readers never see the orphan
    build_generation(dataset, cache, 2, FAST, progress=False)
    assert not (cache / "gen-000001").exists()
    assert not list(cache.rglob(".tmp-*"))
    assert CacheStore(cache).published() == [0, 2]


def test_pruning_skips_generations_a_live_reader_holds(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_next(dataset, cache, 3, FAST, progress=False)
    code = ("import sys, time\nfrom cache.store import CacheStore\ns = CacheStore(sys.argv[1])\n"
            "with s.reader_lease(0):\n    s.open_generation(0).read_chunk(0)\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    reader = subprocess.Popen([sys.executable, "-c", code, str(cache)], cwd=REPO, env=cli_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "held"
        store = CacheStore(cache)
        assert store.in_use(0) and not store.in_use(1)
        assert prune(cache, 1) == ([1], [0])  # 0 is held, 1 goes, 2 is the newest
        assert store.published() == [0, 2]
        assert store.open_generation(0).verify() == []
    finally:
        reader.kill()  # SIGKILL: the dead reader's lease must not block pruning forever
        reader.wait()
    with store.reader_lease(2):  # a lease in this very process (another file description) counts too
        build_generation(dataset, cache, 3, FAST, progress=False)
        assert prune(cache, 1) == ([0], [2])
    assert store.published() == [2, 3]
    assert prune(cache, 1) == ([2], [])
    with pytest.raises(CacheError, match="generation 0 is not published"):
        with store.reader_lease(0):
            pass
    assert not (cache / "gen-000000").exists() and not (cache / "gen-000002").exists()


def test_corrupt_chunks_are_reported_by_generation_and_chunk(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_generation(dataset, cache, 0, FAST, progress=False)
    store = CacheStore(cache)
    gen = store.open_generation(0)
    assert gen.num_chunks >= 3
    # a chunk overwritten by another valid chunk decodes fine: only the checksum catches it
    neg_dir = cache / "gen-000000" / "neg" / "c"
    shutil.copyfile(neg_dir / "2" / "0", neg_dir / "1" / "0")
    with pytest.raises(CacheError, match=r"generation 0, chunk 1 \(rows 256..511\).*corrupt: checksum of neg"):
        gen.read_chunk(1)
    gen.read_chunk(0)
    gen.read_chunk(1, verify=False)  # the check is the checksum, not the decoder
    # flipped bytes in the middle of a chunk file
    users_file = cache / "gen-000000" / "users" / "c" / "0"
    raw = bytearray(users_file.read_bytes())
    for k in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[k] ^= 0xFF
    users_file.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"generation 0, chunk 0 \(rows 0..255\)"):
        gen.read_chunk(0)

    proc = run_cli("cache-verify", cache, check=False)
    assert proc.returncode == 1 and "generation 0: 2 bad chunk(s)" in proc.stderr
    assert "error: 1 generation(s) of" in " ".join(proc.stderr.split())  # the one error line, last
    assert "chunk 1 (rows 256..511)" in proc.stderr and "Traceback" not in proc.stderr
    run_cli("cache-verify", cache, "--drop-bad", check=False)
    assert CacheStore(cache).published() == []


def test_drop_bad_drops_generations_whose_store_will_not_open(dataset, tmp_path):
    cache = tmp_path / "cache"
    build_next(dataset, cache, 3, FAST, progress=False)
    good = read_generation(CacheStore(cache), 0)
    (cache / "gen-000001" / "neg" / "zarr.json").write_text("{ garbled")
    shutil.rmtree(cache / "gen-000002")  # deleted by hand, still listed in the manifest
    with pytest.raises(CacheError, match=r"generation 1 of .* cannot be opened.*--drop-bad"):
        CacheStore(cache).open_generation(1)

    proc = run_cli("cache-verify", cache, check=False)
    out = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "generation 0: ok" in out
    assert "generation 1: store cannot be opened" in out and "gen-000001 cannot be opened" in out
    assert "generation 2: store cannot be opened" in out and "gen-000002 cannot be opened" in out
    assert CacheStore(cache).published() == [0, 1, 2]  # reported, nothing dropped without --drop-bad

    proc = run_cli("cache-verify", cache, "--drop-bad", check=False)
    assert proc.returncode == 1 and "dropped generations [1, 2]" in proc.stderr, proc.stderr
    assert CacheStore(cache).published() == [0]
    assert not (cache / "gen-000001").exists() and not (cache / "gen-000002").exists()
    for a, b in zip(good, read_generation(CacheStore(cache), 0)):
        np.testing.assert_array_equal(a, b)
    assert run_cli("cache-verify", cache, check=False).returncode == 0  # the loop is broken
