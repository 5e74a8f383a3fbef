"""Negative exclusion modes: `train` (the default) never draws a training item of the user;
`all-known` (the reference code's rule) never draws any item the dataset knows the user
interacted with. Checked over whole generations; the manifest records the mode and a cache built
in one mode refuses a build asking for the other."""

from __future__ import annotations

import numpy as np
import pytest

from cache.build import build_generation
from cache.manifest import NegativeConfig, read_manifest
from cache.store import CacheStore
from common.errors import CacheError
from pipeline.dataset import load_dataset
from tests.support import assert_generation_valid, read_generation, run_cli

NUM_NEG = 32


def known_items(dataset_dir) -> dict[int, set]:
    ds = load_dataset(dataset_dir)
    known: dict[int, set] = {}
    for part in (ds.train, ds.val, ds.test):
        for u, i in np.asarray(part):
            known.setdefault(int(u), set()).add(int(i))
    return known


def held_out_hits(dataset_dir, users, neg) -> int:
    """How many negatives are validation/test items (not training items) of their row's user."""
    ds = load_dataset(dataset_dir)
    held = {(int(u), int(i)) for part in (ds.val, ds.test) for u, i in np.asarray(part)}
    held -= {(int(u), int(i)) for u, i in np.asarray(ds.train)}
    return sum((int(u), int(i)) in held for u, row in zip(users, neg) for i in row)


def test_all_known_negatives_avoid_every_known_item_and_train_mode_only_training_items(dataset, tmp_path):
    known = known_items(dataset)
    for mode in ("train", "all-known"):
        cache = tmp_path / mode
        build_generation(dataset, cache, 0, NegativeConfig(num_neg=NUM_NEG, chunk_rows=400, exclusion=mode),
                         progress=False)
        users, pos, neg = read_generation(CacheStore(cache), 0)
        assert_generation_valid(dataset, users, pos, neg, NUM_NEG)  # warm, distinct, no training item
        hits = held_out_hits(dataset, users, neg)
        if mode == "all-known":
            assert hits == 0
            for u, row in zip(users, neg.astype(np.int64)):
                assert not known[int(u)] & set(row.tolist()), f"user {u} got a known item as a negative"
        else:
            assert hits > 0, "train mode must leave validation/test items drawable (the honest default)"
        assert read_manifest(cache)["config"]["exclusion"] == mode


def test_a_cache_built_in_one_mode_refuses_the_other(dataset, tmp_path):
    cache = tmp_path / "neg"
    build_generation(dataset, cache, 0, NegativeConfig(num_neg=NUM_NEG), progress=False)
    with pytest.raises(CacheError, match=r"exclusion='train' \(asked 'all-known'\)"):
        build_generation(dataset, cache, 1, NegativeConfig(num_neg=NUM_NEG, exclusion="all-known"), progress=False)
    proc = run_cli("build-negatives", dataset, cache, "--exclude", "all-known", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "exclusion='train' (asked 'all-known')" in proc.stderr
    assert CacheStore(cache).published() == [0]  # nothing written


def test_an_unknown_exclusion_mode_is_refused_naming_the_allowed_ones():
    with pytest.raises(CacheError, match=r"exclusion must be one of \('train', 'all-known'\)"):
        NegativeConfig(exclusion="val")
