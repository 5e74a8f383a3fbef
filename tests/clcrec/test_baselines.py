"""Baselines on datasets with a known answer: content features that identify each user's taste."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from clcrec.evaluation.baselines import (
    baseline_results,
    content_baseline,
    item_content_vectors,
    oracle_baseline,
    random_baseline,
)
from clcrec.evaluation.ranking import EvalConfig, evaluate_ranking
from pipeline.dataset import load_dataset, write_dataset

CATS, USERS = 3, 12  # user u likes category u % 3; one more user (12) has no interactions


def taste_dataset(root, extra_arrays=None):
    """Per category: 4 warm items, 1 cold-val item, 2 cold-test items. Both modalities name the
    item's category, except that a cold-val item's text names a spare category (so it scores 0.5
    with its category's fans, ranking below the test items). Each user trains on 3 of their
    category's warm items; test = the 4th warm item and both cold-test items; val = the cold-val item."""
    cat, status = [], []
    for c in range(CATS):
        cat += [c] * 7
        status += [0] * 4 + [1] + [2] * 2
    cat, status = np.array(cat), np.array(status, np.int8)
    genre = np.eye(CATS, dtype=np.float32)[cat]
    text_cat = np.where(status == 1, CATS, cat)
    text = 7.0 * np.eye(CATS + 1, dtype=np.float32)[text_cat]  # another scale: normalised away
    train, val, test = [], [], []
    for u in range(USERS):
        items = np.flatnonzero(cat == u % CATS)
        warm, cold_val, cold_test = items[:4], items[4], items[5:]
        held = warm[(u // CATS) % 4]
        train += [(u, i) for i in warm if i != held]
        test += [(u, held)] + [(u, i) for i in cold_test]
        val.append((u, cold_val))
    return load_dataset(
        write_dataset(
            root,
            train=np.array(train), val=np.array(val), test=np.array(test), item_status=status,
            features={"genre": genre, "text": text},
            user_ids=pl.DataFrame({"original_id": [str(u) for u in range(USERS + 1)]}),
            item_ids=pl.DataFrame({"original_id": [str(i) for i in range(len(cat))]}),
            source={"kind": "test"}, split={}, extra_arrays=extra_arrays,
        )  # fmt: skip
    )


def test_item_content_vectors_normalise_each_modality_then_the_row():
    feats = {"a": np.array([[3.0, 4.0], [0.0, 0.0]]), "b": np.array([[0.0, 10.0, 0.0], [2.0, 0.0, 0.0]])}
    vecs = item_content_vectors(feats)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(vecs[0].numpy(), [0.6 * s, 0.8 * s, 0, s, 0], atol=1e-7)
    np.testing.assert_allclose(vecs[1].numpy(), [0, 0, 1, 0, 0], atol=1e-7)  # zero part: no NaN
    with pytest.raises(ValueError, match="no item features"):
        item_content_vectors({})


def test_content_baseline_finds_each_users_taste_exactly(tmp_path):
    ds = taste_dataset(tmp_path / "ds")
    users, items = content_baseline(ds)
    assert users.shape == (USERS + 1, 2 * CATS + 1) and items.shape == (ds.num_items, 2 * CATS + 1)
    assert torch.count_nonzero(users[USERS]) == 0  # no training items -> zeros
    res = evaluate_ranking(users, items, ds.train, ds.test, ds.item_status, EvalConfig(ks=(1, 2, 10)))
    # cold: 9 cold candidates; the 2 test positives score 1, the user's cold-val item 0.5, the rest 0
    cold = res["cold"]
    assert cold["users"] == USERS
    assert (cold["recall@1"], cold["precision@1"], cold["ndcg@1"]) == pytest.approx((0.5, 1.0, 1.0))
    assert (cold["recall@2"], cold["ndcg@2"]) == pytest.approx((1.0, 1.0))
    assert (cold["recall@10"], cold["precision@10"], cold["ndcg@10"], cold["hit@10"]) == pytest.approx(
        (1.0, 0.2, 1.0, 1.0)
    )
    # warm: the held-out warm item is the only candidate of the user's category
    warm, all_ = res["warm"], res["all"]
    assert (warm["recall@1"], warm["ndcg@1"], warm["users"]) == pytest.approx((1.0, 1.0, USERS))
    # all: three positives, all scoring 1
    assert (all_["recall@2"], all_["recall@10"], all_["ndcg@10"]) == pytest.approx((2 / 3, 1.0, 1.0))
    # val: the cold-val item ranks third among cold candidates, behind the two test items
    val = baseline_results(ds, split="val", config=EvalConfig(ks=(2, 3)))["content"]["cold"]
    assert (val["recall@2"], val["recall@3"], val["ndcg@3"]) == pytest.approx((0.0, 1.0, 0.5))


def test_random_baseline_cold_recall_matches_its_expectation():
    rng = np.random.default_rng(0)
    num_users, num_warm, num_cold, k = 300, 50, 100, 10
    status = np.array([0] * num_warm + [2] * num_cold, np.int8)
    train = np.array([(u, i) for u in range(num_users) for i in rng.choice(num_warm, 3, replace=False)])
    test = np.array(
        [(u, num_warm + i) for u in range(num_users) for i in rng.choice(num_cold, 3, replace=False)]
    )
    cfg = EvalConfig(ks=(k,), modes=("cold",))
    recalls = []
    for seed in range(5):
        users, items = random_baseline(num_users, num_warm + num_cold, seed=seed)
        recalls.append(evaluate_ranking(users, items, train, test, status, cfg)["cold"][f"recall@{k}"])
    assert np.mean(recalls) == pytest.approx(k / num_cold, abs=0.02)
    a, b = random_baseline(5, 7, seed=3), random_baseline(5, 7, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], random_baseline(5, 7, seed=4)[1])


def test_oracle_baseline_reads_planted_factors(tmp_path):
    rng = np.random.default_rng(1)
    planted = {"oracle_user": rng.normal(size=(USERS + 1, 4)), "oracle_item": rng.normal(size=(21, 4))}
    ds = taste_dataset(tmp_path / "with", extra_arrays=planted)
    users, items = oracle_baseline(ds)
    assert users.dtype == torch.float32
    np.testing.assert_allclose(users.numpy(), planted["oracle_user"], rtol=1e-6)
    np.testing.assert_allclose(items.numpy(), planted["oracle_item"], rtol=1e-6)
    results = baseline_results(ds, config=EvalConfig(ks=(5,)))
    assert set(results) == {"content", "random", "oracle"}
    direct = evaluate_ranking(users, items, ds.train, ds.test, ds.item_status, EvalConfig(ks=(5,)))
    assert results["oracle"] == direct

    plain = taste_dataset(tmp_path / "without")
    assert oracle_baseline(plain) is None
    assert set(baseline_results(plain)) == {"content", "random"}
    with pytest.raises(ValueError, match="split must be"):
        baseline_results(plain, split="train")

    bad = taste_dataset(tmp_path / "bad", extra_arrays={**planted, "oracle_item": planted["oracle_item"][:5]})
    with pytest.raises(ValueError, match="regenerate"):
        oracle_baseline(bad)
