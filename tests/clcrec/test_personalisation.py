"""Personalisation of cold lists, exact values on hand-made vectors; and the cold-row scaling
(`cold_vectors`) that ranking, serving and new items share."""

import numpy as np
import pytest
import torch

from clcrec.evaluation.personalisation import (
    cold_list_stats,
    head_items,
    held_out_popularity,
)
from clcrec.model import CLCRec, concat_normalised_features
from clcrec.serving.new_items import encode_features

# 4 users, 7 items: 0 and 1 warm, 2..6 cold (2, 3 validation-cold, 4, 5, 6 test-cold).
STATUS = np.array([0, 0, 1, 1, 2, 2, 2], dtype=np.int8)
# item vectors on the unit circle's axes and diagonals: a user's top 2 is easy to read off
ITEMS = torch.tensor([[9, 9], [9, 9], [1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, -1]], dtype=torch.float32)


def test_held_out_popularity_and_head():
    val = np.array([[0, 2], [1, 2], [1, 2], [2, 3]])  # (1, 2) twice: counted once
    test = np.array([[0, 4], [1, 4], [3, 4], [2, 5]])
    pop = held_out_popularity(7, val, test)
    assert pop.tolist() == [0, 0, 2, 1, 3, 1, 0]
    cold = np.flatnonzero(STATUS != 0)
    assert head_items(cold, pop).tolist() == [4]  # ceil(10% of 5) = 1: the most popular cold item
    assert head_items(cold, pop, fraction=0.5).tolist() == [2, 3, 4]  # 3 items; 3 and 5 tie at 1: lower id
    assert head_items(cold, np.zeros(7, dtype=np.int64), fraction=0.4).tolist() == [2, 3]


def test_cold_list_stats_exact_values():
    users = torch.tensor([[1, 0], [1, 0.05], [0, 1], [0.05, 1]], dtype=torch.float32)
    pop = np.array([0, 0, 5, 1, 2, 1, 0])  # head (1 item): item 2
    s = cold_list_stats(users, ITEMS, STATUS, pop, k=2)
    # users 0, 1 -> {2, 3}; users 2, 3 -> {4, 5}: 2 distinct lists, 4 of 5 cold items covered,
    # and item 2 (the head) fills 2 of the 8 slots
    # common share: each user's cold scores less their mean; the items' mean of that over users,
    # squared and summed over items and users, over the whole sum of squares
    dev = (users @ ITEMS[2:].T).double().numpy()
    dev -= dev.mean(axis=1, keepdims=True)
    common = 4 * (dev.mean(axis=0) ** 2).sum() / (dev**2).sum()
    assert s.pop("common_share") == pytest.approx(common, rel=1e-6) and 0.70 < common < 0.71
    assert s == {"users": 4, "cold_items": 5, "distinct_lists": 2, "distinct_share": 0.5,
                 "coverage@2": 0.8, "pop_share@2": 0.25, "head_items": 1}


def test_collapsed_lists_are_one_list_and_order_is_ignored():
    # every user prefers the same two items, in different orders: one list (sets), coverage 2/5
    users = torch.tensor([[1, 0.02], [0.98, 0.05], [1, 0.0], [0.9, 0.0]], dtype=torch.float32)
    s = cold_list_stats(users, ITEMS, STATUS, np.array([0, 0, 0, 9, 0, 0, 0]), k=2)
    assert (s["distinct_lists"], s["coverage@2"], s["pop_share@2"]) == (1, 0.4, 0.5)  # head: item 3, in every list


def test_k_above_the_cold_count_is_clamped():
    s = cold_list_stats(torch.eye(2), ITEMS, STATUS, np.zeros(7), k=10)
    assert s["distinct_lists"] == 1 and s["coverage@10"] == 1.0  # everyone gets all 5 cold items
    assert s["pop_share@10"] == pytest.approx(1 / 5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    feats = concat_normalised_features([np.random.default_rng(0).standard_normal((7, 5))])  # as the trainer builds it
    return CLCRec(4, 7, feats, dim_E=3, hidden=8)


def test_normalised_cold_rows_take_the_warm_mean_norm(model):
    status = torch.as_tensor(STATUS)
    raw = model.ranking_table(status)
    model.cold_vectors = "normalised"
    table = model.ranking_table(status)
    warm_norm = model.item_emb.weight[:2].norm(dim=1).mean()
    torch.testing.assert_close(table[:2], raw[:2])  # warm rows untouched
    torch.testing.assert_close(table[2:].norm(dim=1), warm_norm.expand(5))
    torch.testing.assert_close(table[2:], torch.nn.functional.normalize(raw[2:], dim=1) * warm_norm)
    # new items get exactly the rows the catalogue's cold items get
    new = encode_features(model, [model.features[2:].numpy()], item_status=STATUS)
    np.testing.assert_allclose(new, table[2:].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="item_status"):
        encode_features(model, [model.features[2:].numpy()])


def test_scaled_cold_rows_keep_their_lengths_at_the_warm_scale(model):
    status = torch.as_tensor(STATUS)
    raw = model.ranking_table(status)
    model.cold_vectors = "scaled"
    table = model.ranking_table(status)
    with torch.no_grad():  # the slow, obvious factor: warm ID norm over warm encoder-output norm, item by item
        ids = [float(model.item_emb.weight[i].norm()) for i in range(2)]
        outs = [float(model.encode(torch.tensor([i]))[0].norm()) for i in range(2)]
    factor = (sum(ids) / 2) / (sum(outs) / 2)
    torch.testing.assert_close(table[:2], raw[:2])  # warm rows untouched
    torch.testing.assert_close(table[2:], raw[2:] * factor)  # one factor: relative lengths kept
    new = encode_features(model, [model.features[2:].numpy()], item_status=STATUS)
    np.testing.assert_allclose(new, table[2:].numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_cold_vectors_is_refused():
    with pytest.raises(ValueError, match="cold_vectors"):
        CLCRec(2, 2, torch.ones(2, 2), dim_E=2, cold_vectors="cosine")
