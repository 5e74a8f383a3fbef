"""A `--force` rewrite of a dataset killed at its worst moment, between publish_dir's two renames
(old target renamed to `.tmp-<name>.old`, new one not yet renamed in), loses nothing: the next
write puts the old copy back before it cleans leftovers. Real files and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from common.errors import InputError
from common.fsutil import aside_path, clean_tmp_leftovers
from pipeline.dataset import load_dataset, write_dataset

REPO = Path(__file__).resolve().parents[2]


def write_small(target: Path, seed: int, force: bool = False) -> str:
    """A valid 5-user, 8-item dataset whose content depends on `seed`; returns its fingerprint."""
    rng = np.random.default_rng(seed)
    train = np.stack([np.arange(5).repeat(2), rng.integers(0, 8, 10)], 1)
    write_dataset(
        target, train=train, val=np.zeros((0, 2), np.int32), test=np.zeros((0, 2), np.int32),
        item_status=np.zeros(8, np.int8), features={"v": rng.standard_normal((8, 3))},
        user_ids=pl.DataFrame({"original_id": np.arange(5)}), item_ids=pl.DataFrame({"original_id": np.arange(8)}),
        source={"kind": "test"}, split={"seed": seed}, force=force,
    )
    return load_dataset(target).fingerprint


def crash_between_renames(target: Path) -> Path:
    """The on-disk state a kill between publish_dir's renames leaves: target gone, old copy aside,
    plus the new copy's build directory (a kill during the build leaves one too)."""
    old = aside_path(target)
    os.rename(target, old)
    (target.parent / f".tmp-{target.name}.x1y2").mkdir()
    (target.parent / f".tmp-{target.name}.x1y2" / "train.npy").write_bytes(b"partial")
    return old


def test_next_write_restores_the_copy_a_killed_force_rewrite_left_aside(tmp_path):
    target = tmp_path / "data"
    first = write_small(target, seed=1)
    crash_between_renames(target)
    with pytest.raises(InputError, match="is missing but .*tmp-data.old holds its previous copy"):
        load_dataset(target)
    # a plain (non --force) write must see the restored dataset and refuse, not silently replace it
    with pytest.raises(InputError, match="already exists; pass --force"):
        write_small(target, seed=2)
    assert load_dataset(target).fingerprint == first
    assert not aside_path(target).exists()
    second = write_small(target, seed=2, force=True)
    assert second != first and load_dataset(target).fingerprint == second
    assert not list(tmp_path.glob(".tmp-*"))


def test_two_writers_of_one_output_one_wins_the_other_exits_1(tmp_path):
    """Issue 28: a second build's cleanup left a live builder's directory alone (it used to delete
    it, and the builder crashed with FileNotFoundError); the writer that publishes second fails
    with EEXIST, one `error:` line, and the winner's output is intact."""
    import errno

    from cli import describe_failure
    from common.fsutil import building_dir

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        (tmp_path / f".tmp-data.{live.pid}.abc").mkdir()  # another process's build in progress
        (tmp_path / f".tmp-data.{dead.pid}.abc").mkdir()  # a killed one's
        clean_tmp_leftovers(tmp_path, "data")
        assert [p.name for p in tmp_path.iterdir()] == [f".tmp-data.{live.pid}.abc"]
    finally:
        live.kill()
        live.wait()
    first = write_small(tmp_path / "data", seed=1)
    with pytest.raises(FileExistsError) as e:
        with building_dir(tmp_path / "data", "dataset") as tmp:  # its check passed before the other published
            (tmp / "x").write_text("late")
    assert e.value.errno == errno.EEXIST and "one writer wins" in describe_failure(e.value)
    assert load_dataset(tmp_path / "data").fingerprint == first and not list(tmp_path.glob(".tmp-data.*.*"))


def test_cleaning_leftovers_never_deletes_the_only_copy(tmp_path):
    target = tmp_path / "data"
    first = write_small(target, seed=1)
    crash_between_renames(target)
    clean_tmp_leftovers(tmp_path, "data")
    assert load_dataset(target).fingerprint == first
    assert not list(tmp_path.glob(".tmp-*"))
    # with the target in place a `.old` copy is a stale leftover and goes
    aside_path(target).mkdir()
    clean_tmp_leftovers(tmp_path, "data")
    assert not aside_path(target).exists() and load_dataset(target).fingerprint == first


# `python cli.py ARGS` with os.rename wrapped to stop the process (SIGSTOP) right after it renames
# a directory to `.tmp-*.old`: the test then SIGKILLs it exactly between publish_dir's two renames.
# The code under test runs unchanged; the wrapper only makes the microsecond window observable.
STOP_AFTER_ASIDE = """
import os, signal, sys
rename = os.rename
def stopping_rename(src, dst, *a, **k):
    rename(src, dst, *a, **k)
    if str(dst).endswith('.old'):
        os.kill(os.getpid(), signal.SIGSTOP)
os.rename = stopping_rename
sys.argv = ['cli.py', *sys.argv[1:]]
import cli
cli.main()
"""


def is_stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process state from /proc")
def test_sigkill_between_the_renames_of_a_force_ingest(cli, tmp_path):
    (tmp_path / "a.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(u % 3, 9, 2)))
    (tmp_path / "b.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(u % 2, 9, 3)))
    np.save(tmp_path / "f.npy", np.arange(27, dtype=np.float32).reshape(9, 3))
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in range(9)))
    feature = f"v={tmp_path / 'f.npy'}:{tmp_path / 'ids.txt'}"
    out = tmp_path / "out"
    ok = cli("ingest", "table", tmp_path / "a.csv", out, "--feature", feature)
    assert ok.returncode == 0, ok.stderr
    first = load_dataset(out).fingerprint

    env = {**os.environ, "COLUMNS": "400"}
    job = subprocess.Popen(
        [sys.executable, "-c", STOP_AFTER_ASIDE, "ingest", "table", str(tmp_path / "b.csv"), str(out),
         "--feature", feature, "--force"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not is_stopped(job.pid):
        assert job.poll() is None, f"the ingest ended before it renamed the old dataset aside: {job.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL
    assert not out.exists() and load_dataset(aside_path(out)).fingerprint == first  # complete, aside
    assert [p for p in tmp_path.glob(".tmp-out.*") if p != aside_path(out)], "and the new copy's build dir"

    # the next ingest (without --force) restores the old dataset and refuses to replace it
    again = cli("ingest", "table", tmp_path / "b.csv", out, "--feature", feature)
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr, again.stderr
    assert load_dataset(out).fingerprint == first
    done = cli("ingest", "table", tmp_path / "b.csv", out, "--feature", feature, "--force")
    assert done.returncode == 0, done.stderr
    assert load_dataset(out).fingerprint != first
    assert not list(tmp_path.glob(".tmp-*"))
