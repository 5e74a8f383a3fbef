"""The negative samplers: the numba kernel held to the contract of the slow reference.

Contract tests run the same assertions on both samplers; determinism and chunking tests pin the
kernel's randomness to (key, row); chi-square tests check uniformity at a stated threshold.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import interactions_to_csr
from pipeline.negatives import (
    SamplingPlan,
    generation_key,
    item_dtype,
    pair_permutation,
    sample_negatives,
    sample_negatives_original,
    sample_negatives_reference,
)

SAMPLERS = {"numba": sample_negatives, "reference": sample_negatives_reference}
# chi-square critical value at p = 0.001 for 19 degrees of freedom (20 allowed items)
CHI2_19_P001 = 43.82


def random_catalogue(seed=0, num_users=50, num_items=400, num_warm=300, max_deg=120):
    """Warm ids, train CSR and a user list with sparse users and a few dense ones
    (fewer than 2 * num_neg allowed items, which takes the kernel's enumeration path)."""
    rng = np.random.default_rng(seed)
    warm = np.sort(rng.choice(num_items, num_warm, replace=False)).astype(np.int32)
    pairs = []
    for u in range(num_users):
        deg = max_deg + 150 if u % 10 == 0 else int(rng.integers(0, max_deg))  # every 10th is dense
        pairs += [(u, i) for i in rng.choice(warm, min(deg, num_warm - 30), replace=False)]
    indptr, indices = interactions_to_csr(np.array(pairs), num_users)
    users = rng.integers(0, num_users, 3000).astype(np.int32)
    return warm, indptr, indices, num_items, users


def assert_contract(neg, users, warm, indptr, indices, num_neg):
    assert neg.shape == (users.size, num_neg)
    assert neg.dtype == np.uint16
    assert np.isin(neg, warm).all(), "a negative is not warm"
    for r, u in enumerate(users):
        row = neg[r].astype(np.int64)
        assert np.unique(row).size == num_neg, f"row {r} has duplicates"
        assert not np.isin(row, indices[indptr[u]:indptr[u + 1]]).any(), f"row {r} holds a training item"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_row_keeps_the_contract(name):
    warm, indptr, indices, n_items, users = random_catalogue()
    sample = SAMPLERS[name]
    users = users[:600] if name == "reference" else users
    neg = sample(users, 0, generation_key(0, 0), warm, indptr, indices, n_items, 20)
    assert_contract(neg, users, warm, indptr, indices, 20)
    allowed = warm.size - np.diff(indptr)[users]
    assert (allowed < 2 * 20).any() and (allowed >= 2 * 20).any(), "the fixture must exercise both paths"


@pytest.mark.parametrize("name", SAMPLERS)
def test_short_users_error_names_count_and_worst_user(name):
    warm = np.arange(10, dtype=np.int32)
    train = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (1, 4)]  # allowed: 7 and 6 of 10
    indptr, indices = interactions_to_csr(np.array(train), 3)
    with pytest.raises(InputError, match=r"2 users have fewer than num_neg=8 .*worst: user 1 with 6.*--on-short repeat"):
        SAMPLERS[name](np.array([0, 1, 2]), 0, 7, warm, indptr, indices, 10, 8)


@pytest.mark.parametrize("name", SAMPLERS)
def test_on_short_repeat_cycles_all_allowed_items(name):
    warm = np.arange(10, dtype=np.int32)
    indptr, indices = interactions_to_csr(np.array([(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)]), 2)
    neg = SAMPLERS[name](np.array([0, 1, 0]), 0, 7, warm, indptr, indices, 10, 8, on_short="repeat")
    for r in (0, 2):  # user 0 has 4 allowed items: all of them, then repeated in the same order
        assert sorted(neg[r, :4]) == [0, 7, 8, 9]
        np.testing.assert_array_equal(neg[r, 4:], neg[r, :4])
    assert np.unique(neg[1]).size == 8  # user 1 is not short: distinct as usual


@pytest.mark.parametrize("name", SAMPLERS)
def test_num_neg_above_warm_catalogue_and_exhausted_user_are_refused(name):
    warm = np.arange(5, dtype=np.int32)
    indptr, indices = interactions_to_csr(np.array([(0, 1)]), 2)
    with pytest.raises(InputError, match=r"num_neg=6 is larger than the warm catalogue \(5 items\)"):
        SAMPLERS[name](np.array([0]), 0, 1, warm, indptr, indices, 5, 6)
    indptr, indices = interactions_to_csr(np.array([(0, i) for i in range(5)]), 1)
    with pytest.raises(InputError, match="user 0 has trained on every warm item"):
        SAMPLERS[name](np.array([0]), 0, 1, warm, indptr, indices, 5, 2, on_short="repeat")


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("num_neg", [8, 15])  # 8: rejection path (20 >= 2*8); 15: enumeration path
def test_negatives_are_uniform_chi_square(name, num_neg):
    """One user, 30 warm items, 10 of them trained: 20 allowed items must be drawn uniformly,
    overall and at the first position (which catches a biased within-row order)."""
    warm = np.arange(10, 40, dtype=np.int32)
    indptr, indices = interactions_to_csr(np.array([(0, i) for i in range(10, 40, 3)]), 1)
    rows = 4000 if name == "numba" else 1500
    neg = SAMPLERS[name](np.zeros(rows, np.int32), 0, generation_key(3, 1), warm, indptr, indices, 40, num_neg)
    allowed = np.setdiff1d(warm, indices)
    assert allowed.size == 20
    for counts in (np.bincount(neg.ravel(), minlength=40)[allowed],
                   np.bincount(neg[:, 0], minlength=40)[allowed]):
        assert counts.sum() in (rows * num_neg, rows)
        expected = counts.sum() / allowed.size
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < CHI2_19_P001, f"chi-square {chi2:.1f} >= {CHI2_19_P001} (p < 0.001)"


def test_kernel_is_identical_for_any_thread_count_and_chunking():
    warm, indptr, indices, n_items, users = random_catalogue(seed=1)
    users = np.tile(users, 2)  # 6000 rows x 20 = 120k negatives: the parallel path
    plan = SamplingPlan(warm, indptr, indices, n_items, 20)
    key = generation_key(5, 2)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = plan.sample(users, 100, key)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = plan.sample(users, 100, key)
    finally:
        numba.set_num_threads(before)
    assert one.tobytes() == two.tobytes()
    pieces = [plan.sample(users[s:s + 700], 100 + s, key) for s in range(0, users.size, 700)]
    assert np.concatenate(pieces).tobytes() == one.tobytes()  # chunk-size independent
    assert plan.sample(users, 100, generation_key(5, 3)).tobytes() != one.tobytes()  # other generation
    assert plan.sample(users, 101, key).tobytes() != one.tobytes()  # rows own their streams


def test_wrapper_says_what_is_wrong():
    warm, indptr, indices, n_items, users = random_catalogue()
    with pytest.raises(InputError, match="warm items must be sorted"):
        SamplingPlan(warm[::-1], indptr, indices, n_items, 5)
    bad = indices.copy()
    bad[indptr[1]], bad[indptr[1] + 1] = bad[indptr[1] + 1], bad[indptr[1]]  # unsort user 1's row
    with pytest.raises(InputError, match="CSR row must be sorted"):
        SamplingPlan(warm, indptr, bad, n_items, 5)
    plan = SamplingPlan(warm, indptr, indices, n_items, 5)
    with pytest.raises(InputError, match="out must be C-contiguous uint16"):
        plan.sample(users[:4], 0, 1, out=np.empty((4, 5), np.int64))
    with pytest.raises(InputError, match="user ids must lie in 0..49"):
        plan.sample(np.array([50]), 0, 1)
    with pytest.raises(InputError, match="users must be a 1-D integer array"):
        plan.sample(np.array([0.5]), 0, 1)


def test_item_dtype_is_the_narrowest():
    assert item_dtype(65536) == np.uint16 and item_dtype(65537) == np.int32


def test_pair_permutation_is_a_seeded_permutation():
    p = pair_permutation(1000, 0, 4)
    assert np.array_equal(np.sort(p), np.arange(1000))
    assert np.array_equal(p, pair_permutation(1000, 0, 4))
    assert not np.array_equal(p, pair_permutation(1000, 0, 5))
    assert not np.array_equal(p, pair_permutation(1000, 1, 4))


def test_original_algorithm_keeps_the_rules_it_is_benchmarked_on():
    warm, indptr, indices, _, users = random_catalogue()
    users = users[:200]
    items = {u: indices[indptr[u]:indptr[u + 1]].tolist() for u in range(indptr.size - 1)}
    neg = np.array(sample_negatives_original(users, items, set(warm.tolist()), 20))
    assert_contract(neg.astype(np.uint16), users, warm, indptr, indices, 20)
