"""Invariants of the paper's cold-item split (pipeline/split.py)."""

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM
from pipeline.split import SplitConfig, map_cold_items, split_cold_items


def random_pairs(seed=0, users=200, items=150, n=4000):
    rng = np.random.default_rng(seed)
    pairs = np.stack([rng.integers(0, users, n), rng.integers(0, items, n)], axis=1)
    return np.unique(pairs, axis=0)


def as_set(a):
    return set(map(tuple, np.asarray(a).tolist()))


def test_split_invariants():
    pairs = random_pairs()
    items = 150
    s = split_cold_items(pairs, items, SplitConfig(seed=3))
    active = np.unique(pairs[:, 1])
    # 20% of the active items are cold, half validation, half test
    n_cold = round(0.2 * len(active))
    assert (s.item_status != WARM).sum() == n_cold
    assert abs((s.item_status == COLD_VAL).sum() - (s.item_status == COLD_TEST).sum()) <= 1
    # every interaction lands in exactly one split, none lost or duplicated
    tr, va, te = as_set(s.train), as_set(s.val), as_set(s.test)
    assert len(tr) + len(va) + len(te) == len(pairs)
    assert tr | va | te == as_set(pairs)
    # no cold item in train; each cold item's interactions all in val (cold-val) or all in test
    assert (s.item_status[s.train[:, 1]] == WARM).all()
    for item in np.flatnonzero(s.item_status == COLD_VAL):
        assert not (s.test[:, 1] == item).any()
        assert (s.val[:, 1] == item).sum() == (pairs[:, 1] == item).sum()
    for item in np.flatnonzero(s.item_status == COLD_TEST):
        assert not (s.val[:, 1] == item).any()
        assert (s.test[:, 1] == item).sum() == (pairs[:, 1] == item).sum()
    # warm interactions: 80/10/10 within rounding
    n_warm = int((s.item_status[pairs[:, 1]] == WARM).sum())
    warm_val = int((s.item_status[s.val[:, 1]] == WARM).sum())
    warm_test = int((s.item_status[s.test[:, 1]] == WARM).sum())
    assert warm_val == round(0.1 * n_warm) and warm_test == round(0.1 * n_warm)
    assert len(s.train) == n_warm - warm_val - warm_test
    # outputs sorted by (user, item)
    for a in (s.train, s.val, s.test):
        key = a[:, 0] * items + a[:, 1]
        assert (np.diff(key) > 0).all()


def test_split_is_deterministic_and_independent_of_row_order():
    pairs = random_pairs()
    a = split_cold_items(pairs, 150, SplitConfig(seed=7))
    shuffled = pairs[np.random.default_rng(1).permutation(len(pairs))]
    b = split_cold_items(shuffled, 150, SplitConfig(seed=7))
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test), (a.item_status, b.item_status)):
        np.testing.assert_array_equal(x, y)
    c = split_cold_items(pairs, 150, SplitConfig(seed=8))
    assert not np.array_equal(a.item_status, c.item_status)
    assert not np.array_equal(a.train, c.train)


def test_split_fraction_options():
    pairs = random_pairs()
    cfg = SplitConfig(seed=0, cold_fraction=0.4, cold_val_share=0.25, val_fraction=0.2, test_fraction=0.05)
    s = split_cold_items(pairs, 150, cfg)
    n_cold = round(0.4 * len(np.unique(pairs[:, 1])))
    assert (s.item_status != WARM).sum() == n_cold
    assert (s.item_status == COLD_VAL).sum() == round(0.25 * n_cold)
    n_warm = int((s.item_status[pairs[:, 1]] == WARM).sum())
    assert int((s.item_status[s.val[:, 1]] == WARM).sum()) == round(0.2 * n_warm)
    assert int((s.item_status[s.test[:, 1]] == WARM).sum()) == round(0.05 * n_warm)
    assert cfg.to_meta()["protocol"] == "cold-items" and cfg.to_meta()["cold_fraction"] == 0.4


def test_user_cold_list_is_used_exactly():
    pairs = random_pairs()
    cold = np.array([3, 5, 7, 11])
    s = split_cold_items(pairs, 150, SplitConfig(seed=0), cold_items=cold)
    assert set(np.flatnonzero(s.item_status != WARM)) == {3, 5, 7, 11}
    assert (s.item_status == COLD_VAL).sum() == 2


def test_map_cold_items(tmp_path: Path):
    f = tmp_path / "cold.txt"
    f.write_text("# cold items\n042\n7\n\n9\n")
    idx, skipped = map_cold_items(f, ["7", "9", "42", "100"], {"7": 0, "42": 2})
    assert idx.tolist() == [0, 2] and skipped == 1  # 9 is known but has no interactions
    f.write_text("7\n12345\n")
    with pytest.raises(InputError, match=r"cold.txt names 1 unknown item id\(s\), e.g. '12345'"):
        map_cold_items(f, ["7"], {"7": 0})
    f.write_text("\n# nothing\n")
    with pytest.raises(InputError, match="is empty"):
        map_cold_items(f, ["7"], {"7": 0})


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(cold_fraction=1.0), "--cold-fraction must be in"),
        (dict(val_fraction=0.5, test_fraction=0.5), "sum to less than 1"),
        (dict(cold_val_share=1.5), "--cold-val-share must be in"),
        (dict(val_fraction=float("nan")), "--val-fraction must be a finite number"),
        (dict(seed=-1), "--seed must be an integer"),
    ],
)
def test_bad_split_settings(kw, msg):
    with pytest.raises(InputError, match=msg):  # refused where the config is made, before any data
        SplitConfig(**kw)


def test_split_without_training_data_is_refused():
    pairs = np.array([[0, 0], [1, 1], [2, 1]])
    with pytest.raises(InputError, match="no warm interactions"):
        split_cold_items(pairs, 2, SplitConfig(), cold_items=np.array([0, 1]))
    with pytest.raises(InputError, match="leaves no training data"):
        split_cold_items(pairs, 2, SplitConfig(cold_fraction=0.0, val_fraction=0.5, test_fraction=0.45))
