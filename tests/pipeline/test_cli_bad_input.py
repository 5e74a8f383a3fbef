"""The real CLI on bad input: exit code 1, one clear message, no traceback, nothing written."""

import json

import numpy as np
import polars as pl
import pytest


def assert_clean_failure(result, target, *fragments):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    flat = " ".join(result.stderr.split())  # rich wraps long lines
    for f in fragments:
        assert f in flat, (f, result.stderr)
    assert not target.exists()
    assert not list(target.parent.glob(".tmp-*"))


def test_missing_movielens_dir(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("ingest", "movielens", tmp_path / "nope", out)
    assert_clean_failure(r, out, "error:", "nope does not exist")


def test_reference_layout_needs_allow_pickle(cli, ref_layout, tmp_path):
    src, _ = ref_layout
    out = tmp_path / "out"
    r = cli("ingest", "refnpy", src, out)
    assert_clean_failure(r, out, "val_full.npy is a pickled object array", "--allow-pickle")
    ok = cli("ingest", "refnpy", src, out, "--allow-pickle")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "meta.json").read_text())["num_items"] == 6


def test_table_feature_missing_items_and_nan(cli, tmp_path):
    (tmp_path / "i.csv").write_text("user,item\n1,10\n2,11\n3,12\n")
    np.save(tmp_path / "f.npy", np.ones((2, 3)))
    (tmp_path / "ids.txt").write_text("10\n11\n")
    out = tmp_path / "out"
    r = cli("ingest", "table", tmp_path / "i.csv", out, "--feature", f"f={tmp_path / 'f.npy'}:{tmp_path / 'ids.txt'}")
    assert_clean_failure(r, out, "f.npy lacks 1 item(s) that have interactions, e.g. item 12")
    np.save(tmp_path / "f.npy", np.array([[1, 2, 3], [4, np.nan, 6], [7, 8, 9.0]]))
    (tmp_path / "ids.txt").write_text("10\n11\n12\n")
    r = cli("ingest", "table", tmp_path / "i.csv", out, "--feature", f"f={tmp_path / 'f.npy'}:{tmp_path / 'ids.txt'}")
    assert_clean_failure(r, out, "f.npy) has 1 NaN/inf values (first at item row 1)")


def test_unknown_cold_items_and_existing_target(cli, ml100k_small, tmp_path):
    (tmp_path / "cold.txt").write_text("1\n77\n")
    out = tmp_path / "out"
    r = cli("ingest", "movielens", ml100k_small, out, "--cold-items", tmp_path / "cold.txt")
    assert_clean_failure(r, out, "cold.txt names 1 unknown item id(s), e.g. '77'")
    ok = cli("ingest", "movielens", ml100k_small, out)
    assert ok.returncode == 0, ok.stderr
    assert "1 duplicate(s) dropped" in " ".join(ok.stderr.split())
    before = (out / "meta.json").read_text()
    again = cli("ingest", "movielens", ml100k_small, out)
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    assert (out / "meta.json").read_text() == before  # nothing lost


@pytest.mark.parametrize("args, msg", [(["--scale", "huge"], "unknown synthetic scale 'huge'")])
def test_synth_cli(cli, tmp_path, args, msg):
    out = tmp_path / "syn"
    assert_clean_failure(cli("synth", out, *args), out, msg)
    ok = cli("synth", out, "--scale", "tiny", "--seed", "3")
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_users"] == 300 and meta["split"]["seed"] == 3 and meta["source"]["seed"] == 3


@pytest.mark.parametrize("corrupt", ["truncated", "garbage"])
def test_table_corrupt_feature_parquet(cli, tmp_path, corrupt):
    (tmp_path / "i.csv").write_text("user,item\n1,10\n2,11\n3,12\n")
    feat = tmp_path / "feat.parquet"
    pl.DataFrame({"item": [10, 11, 12], "vec": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}).write_parquet(feat)
    raw = feat.read_bytes()
    feat.write_bytes(raw[: len(raw) // 2] if corrupt == "truncated" else b"not a parquet file")
    out = tmp_path / "out"
    r = cli("ingest", "table", tmp_path / "i.csv", out, "--feature", f"f={feat}")
    assert_clean_failure(r, out, f"feature file {feat} for 'f' could not be read as parquet", "truncated or corrupt")



@pytest.mark.parametrize("exc, says", [
    (PermissionError(13, "Permission denied", "/data/locked/out"), "/data/locked/out: Permission denied; fix its permissions"),
    (OSError(36, "File name too long", "/data/" + "a" * 300), "/data/" + "a" * 300 + ": File name too long; use shorter"),
    (OSError(28, "No space left on device", "/data/out/.tmp-x"), "/data/out/.tmp-x: No space left on device; free some disk space"),
    (MemoryError("Unable to allocate 3.6 TiB for an array"), "not enough memory (Unable to allocate 3.6 TiB"),
    (OverflowError("int too large to convert to float"), "a number given is too large"),
])
def test_os_and_size_failures_are_one_line_naming_the_path(exc, says):
    """Issue 28: the operating system's refusals (run as root, the tests cannot chmod 000), sizes
    and overflows that escape every check become main()'s one `error:` line, not a traceback."""
    from cli import describe_failure

    assert describe_failure(exc).startswith(says)
    assert describe_failure(RuntimeError("a bug")) is None  # a bug still shows its traceback
