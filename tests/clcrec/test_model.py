"""The model's losses against a direct transcription of the reference code's forward pass."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clcrec.losses import info_nce
from clcrec.model import CLCRec, concat_normalised_features


def reference_losses(model: CLCRec, users, items, hybrid):
    """The reference CLCRec forward, written the way the reference code computes it:
    repeated user/positive tensors, exp then sum then log, a hybrid replacement by mask."""
    B, S = items.shape
    user_rep = users.view(-1, 1).repeat(1, S).view(-1)  # (B*S,)
    pos_rep = items[:, 0].view(-1, 1).repeat(1, S).view(-1)
    flat = items.reshape(-1)
    feature = model.encoder(model.features)  # the reference encodes every item
    all_item_feat = feature[flat]
    user_embedding = model.user_emb.weight[user_rep]
    pos_item_embedding = model.item_emb.weight[pos_rep]
    all_item_embedding = model.item_emb.weight[flat]
    head_feat = F.normalize(all_item_feat, dim=1)
    head_embed = F.normalize(pos_item_embedding, dim=1)
    all_item_input = all_item_embedding.clone()
    idx = hybrid.reshape(-1)
    all_item_input[idx] = all_item_feat[idx]

    def loss_contrastive(a, b, temp):
        score = torch.exp(torch.sum(a * b, dim=1) / temp).view(-1, S)
        return (-torch.log(score[:, 0] / score.sum(dim=1))).mean()

    l1 = loss_contrastive(head_embed, head_feat, model.temp_value)
    l2 = loss_contrastive(user_embedding, all_item_input, model.temp_value)
    reg = (torch.sqrt((user_embedding**2).sum(1)).mean() + torch.sqrt((all_item_embedding**2).sum(1)).mean()) / 2
    return l1, l2, reg


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feats = concat_normalised_features([rng.normal(size=(30, 5)), rng.normal(size=(30, 3))])
    return CLCRec(num_users=12, num_items=30, features=feats, dim_E=8, hidden=16, temp_value=2.0)


def batch(seed=1, B=6, K=4):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 12, (B,), generator=g)
    items = torch.randint(0, 30, (B, 1 + K), generator=g)
    hybrid = torch.rand((B, 1 + K), generator=g) < 0.5
    return users, items, hybrid


def test_losses_match_reference_transcription(small_model):
    users, items, hybrid = batch()
    ours = small_model(users, items, hybrid)
    ref = reference_losses(small_model, users, items, hybrid)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unique_encoding_equals_per_slot_encoding(small_model):
    users, items, hybrid = batch(seed=3)
    uniq, inverse = torch.unique(items, return_inverse=True)
    a = small_model(users, items, hybrid)
    b = small_model(users, items, hybrid, uniq, inverse)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    # and the gradients agree too
    small_model.zero_grad()
    small_model.combine(*a, 0.1).backward()
    g1 = [p.grad.clone() for p in small_model.parameters()]
    small_model.zero_grad()
    small_model.combine(*small_model(users, items, hybrid, uniq, inverse), 0.1).backward()
    for p, g in zip(small_model.parameters(), g1):
        torch.testing.assert_close(p.grad, g)


def test_info_nce_is_stable_where_exp_overflows():
    scores = torch.tensor([[100.0, 99.0, -5.0]])  # exp(100) overflows float32
    expected = torch.log1p(torch.exp(torch.tensor(-1.0)) + torch.exp(torch.tensor(-105.0)))
    torch.testing.assert_close(info_nce(scores), expected, atol=2e-5, rtol=0)  # fp32 ulp at 100 is 7.6e-6
    naive = -torch.log(torch.exp(scores[:, 0]) / torch.exp(scores).sum(1))
    assert not torch.isfinite(naive).all()  # the reference formula breaks here


def test_ranking_table_uses_ids_for_warm_and_encoder_for_cold(small_model):
    status = torch.zeros(30, dtype=torch.int8)
    status[[3, 7, 20]] = torch.tensor([1, 2, 1], dtype=torch.int8)
    table = small_model.ranking_table(status)
    warm = status == 0
    torch.testing.assert_close(table[warm], small_model.item_emb.weight[warm])
    torch.testing.assert_close(table[[3, 7, 20]], small_model.encode(torch.tensor([3, 7, 20])).detach())


def test_features_are_row_normalised_per_modality():
    a = np.array([[3.0, 4.0], [0.0, 2.0]])
    b = np.array([[1.0], [-5.0]])
    f = concat_normalised_features([a, b])
    np.testing.assert_allclose(f.numpy(), [[0.6, 0.8, 1.0], [0.0, 1.0, -1.0]], rtol=1e-6)


def test_gradients_match_reference_transcription(small_model):
    """The fused CPU kernels' backward against autograd through the reference formulation."""
    users, items, hybrid = batch(seed=5, B=7, K=6)
    uniq, inverse = torch.unique(items, return_inverse=True)
    small_model.zero_grad()
    small_model.combine(*small_model(users, items, hybrid, uniq, inverse), 0.1).backward()
    ours = [p.grad.clone() for p in small_model.parameters()]
    small_model.zero_grad()
    small_model.combine(*reference_losses(small_model, users, items, hybrid), 0.1).backward()
    for p, g in zip(small_model.parameters(), ours):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def grads(model, *args, **kw):
    model.zero_grad()
    losses = model(*args, **kw)
    model.combine(*losses, 0.1).backward()
    return [x.detach().clone() for x in losses], [p.grad.clone() for p in model.parameters()]


def test_dense_scoring_equals_gather_scoring_in_float64(small_model):
    """The dense path (whole-table matmuls, column gather) computes the same losses and gradients
    as the gather paths (per slot, per distinct item, whole catalogue encoded), to float64 rounding; repeated ids in a
    row (as `--on-short repeat` makes) included."""
    model = small_model.double()
    users, items, hybrid = batch(seed=7, B=9, K=5)
    items[0, 2] = items[0, 3]  # a repeated negative
    uniq, inverse = torch.unique(items, return_inverse=True)
    dense = grads(model, users, items, hybrid, dense=True)
    for other in (grads(model, users, items, hybrid), grads(model, users, items, hybrid, uniq, inverse),
                  grads(model, users, items, hybrid, encode_all=True)):
        for a, b in zip(dense[0] + dense[1], other[0] + other[1]):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # and the item table's gradient is dense (no sparse rows skipped): untouched items get exactly 0
    untouched = sorted(set(range(30)) - set(items.flatten().tolist()))
    assert untouched and dense[1][1][untouched].abs().max() == 0


@pytest.mark.parametrize("loss", ["gather", "dense"])
def test_bf16_scores_are_divided_by_the_temperature_in_fp32(loss):
    """Under bf16 autocast the scores arrive in bf16; the temperature divides them after the
    upcast, so the loss is the fp32 loss of the bf16 scores (a bf16 quotient rounds every logit
    to 8 bits a second time)."""
    from clcrec.losses import (
        dense_contrastive_loss,
        torch_contrastive_loss,
        torch_gather_dot,
    )

    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 16, generator=g).bfloat16()  # (R, D)
    vec = torch.randn(8, 16, generator=g).bfloat16()  # (B, D)
    idx = torch.randint(0, 50, (8, 9), generator=g)  # (B, 1+K)
    fn = torch_contrastive_loss if loss == "gather" else dense_contrastive_loss
    temp = 3.0
    scores = torch_gather_dot(table, idx, vec) if loss == "gather" else torch.gather(vec @ table.t(), 1, idx)  # bf16
    s = scores.float() / temp
    expected = (torch.logsumexp(s, 1) - s[:, 0]).mean()
    got = fn(table, idx, vec, temp)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    s16 = (scores / temp).float()  # the old order: divided in bf16, then upcast
    assert abs(float((torch.logsumexp(s16, 1) - s16[:, 0]).mean() - expected)) > 1e-4
