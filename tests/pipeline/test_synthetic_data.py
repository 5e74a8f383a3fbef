"""The synthetic generator: sizes, determinism, planted oracle, content signal (pipeline/synthetic.py)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import WARM, load_dataset
from pipeline.synthetic import (
    SynthConfig,
    plant_factors,
    sample_interactions,
    write_synthetic,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "tiny", SynthConfig(scale="tiny", seed=0))


def test_tiny_shape_and_split(tiny):
    ds = load_dataset(tiny)
    assert ds.num_users == 300 and ds.num_items <= 200
    assert ds.meta["ingest"]["items_without_interactions_dropped"] == 200 - ds.num_items
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert 5000 <= total <= 7000  # target 6,000
    assert ds.meta["ingest"]["interactions"] == total
    assert {m["name"]: m["dim"] for m in ds.meta["modalities"]} == {"v": 24, "t": 12}
    assert (ds.item_status != WARM).sum() == round(0.2 * ds.num_items)
    assert (ds.item_status[ds.train[:, 1]] == WARM).all()
    assert ds.meta["split"]["seed"] == 0 and ds.meta["source"]["kind"] == "synthetic"
    assert ds.item_ids()["original_id"].is_sorted()


def test_same_seed_same_data_other_seed_differs(tiny, tmp_path):
    again = write_synthetic(tmp_path / "again", SynthConfig(scale="tiny", seed=0))
    a, b = load_dataset(tiny), load_dataset(again)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.extra_array("oracle_user"), b.extra_array("oracle_user"))
    other = load_dataset(write_synthetic(tmp_path / "other", SynthConfig(scale="tiny", seed=1)))
    assert other.fingerprint != a.fingerprint


def test_oracle_is_the_generating_affinity(tiny):
    """oracle_user @ oracle_item.T = s <U, V> + popularity bias, and the users' items score high."""
    ds = load_dataset(tiny)
    ou, oi = ds.extra_array("oracle_user"), ds.extra_array("oracle_item")
    assert ou.dtype == np.float32 and ou.shape == (300, 9) and oi.shape == (ds.num_items, 9)
    np.testing.assert_array_equal(ou[:, -1], 1.0)  # the bias column enters every user's score
    cfg = SynthConfig(scale="tiny").resolved()
    planted = plant_factors(cfg)
    kept = ds.item_ids()["original_id"].to_numpy()
    np.testing.assert_allclose(
        ou @ oi.T, planted.user_factors @ planted.item_factors[kept].T + planted.item_bias[kept], rtol=1e-5, atol=1e-5
    )
    # The planted oracle ranks each user's held-out test items far above chance (AUC-like check).
    scores = ou @ oi.T
    pos = np.zeros_like(scores, dtype=bool)
    for a in (ds.train, ds.val, ds.test):
        pos[a[:, 0], a[:, 1]] = True
    mean_pos = scores[pos].mean()
    mean_neg = scores[~pos].mean()
    assert mean_pos - mean_neg > 1.0


def test_sir_sampler_follows_affinity_and_popularity():
    """Above exact_max_items the candidate-pool sampler must still prefer high-logit items."""
    cfg = SynthConfig(scale="tiny", seed=4, num_items=3000, exact_max_items=0).resolved()
    planted = plant_factors(cfg)
    pairs = sample_interactions(cfg, planted)
    assert len(np.unique(pairs, axis=0)) == len(pairs)  # without replacement per user
    assert (np.diff(pairs[:, 0]) >= 0).all()
    logits = planted.user_factors @ planted.item_factors.T + planted.item_bias
    chosen = logits[pairs[:, 0], pairs[:, 1]]
    # chosen items sit in the top few percent of each user's logits on average
    pct = (logits[pairs[:, 0]] < chosen[:, None]).mean(axis=1)
    assert pct.mean() > 0.9


def test_content_predicts_cold_item_factors(tiny):
    """Features carry the item factors (linear probe R^2 on cold items well above 0, below 1)."""
    ds = load_dataset(tiny)
    V = ds.extra_array("oracle_item")[:, :-1]
    X = np.hstack([ds.features["v"], ds.features["t"], np.ones((ds.num_items, 1))])
    warm = ds.item_status == WARM
    W = np.linalg.solve(X[warm].T @ X[warm] + 1.0 * np.eye(X.shape[1]), X[warm].T @ V[warm])
    resid = ((X[~warm] @ W - V[~warm]) ** 2).sum()
    r2 = 1 - resid / ((V[~warm] - V[~warm].mean(0)) ** 2).sum()
    assert 0.2 < r2 < 0.95


def test_popularity_is_long_tailed():
    ds_cfg = SynthConfig(scale="default").resolved()
    pairs = sample_interactions(ds_cfg, plant_factors(ds_cfg))
    pop = np.sort(np.bincount(pairs[:, 1], minlength=ds_cfg.num_items))[::-1]
    assert 45_000 <= len(pairs) <= 55_000
    assert pop[:200].sum() / pop.sum() > 0.45  # top 20% of items hold about half the interactions
    per_user = np.bincount(pairs[:, 0])
    assert per_user.min() >= 3 and per_user.max() > 10 * np.median(per_user)


def test_bad_synth_config(tmp_path):
    with pytest.raises(InputError, match="unknown synthetic scale 'huge'"):
        write_synthetic(tmp_path / "x", SynthConfig(scale="huge"))
    with pytest.raises(InputError, match="interactions >= num_users"):
        write_synthetic(tmp_path / "x", replace(SynthConfig(scale="tiny"), interactions=10))
    assert not (tmp_path / "x").exists()


def test_existing_target_refused_without_force(tiny):
    with pytest.raises(InputError, match="already exists; pass --force"):
        write_synthetic(tiny, SynthConfig(scale="tiny"))


def test_sampling_ignores_thread_count_and_chunking():
    import numba

    cfg = SynthConfig(scale="tiny", seed=2, num_items=2500, exact_max_items=1000).resolved()
    planted = plant_factors(cfg)
    ref = sample_interactions(cfg, planted)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = sample_interactions(replace(cfg, chunk_users=7), planted)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(ref, one_thread)
