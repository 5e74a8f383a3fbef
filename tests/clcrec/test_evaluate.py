"""Contract tests for clcrec.evaluation.ranking: the vectorised evaluator against a slow, obvious reference."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator, evaluate_ranking
from clcrec.evaluation.report import format_table
from clcrec.evaluation.topk import topk_items
from common.errors import TrainingDivergedError

# ---------------------------------------------------------------------------------------------
# The slow reference: per-user Python loop, candidates by exclusion (no mask values), numpy sort
# ---------------------------------------------------------------------------------------------


def reference_metrics(user_vecs, item_vecs, train, positives, status, ks, mode):
    scores = np.asarray(user_vecs, np.float64) @ np.asarray(item_vecs, np.float64).T
    num_users, num_items = scores.shape
    in_mode = {"all": np.ones(num_items, bool), "warm": status == 0, "cold": status != 0}[mode]
    train_sets = [set() for _ in range(num_users)]
    pos_sets = [set() for _ in range(num_users)]
    for u, i in train:
        train_sets[u].add(int(i))
    for u, i in positives:
        pos_sets[u].add(int(i))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("precision", "recall", "ndcg", "hit")}
    users = 0
    for u in range(num_users):
        pos = {i for i in pos_sets[u] if in_mode[i]}
        if not pos:
            continue
        users += 1
        cands = np.array([i for i in range(num_items) if in_mode[i] and i not in train_sets[u]], dtype=int)
        ranked = cands[np.argsort(-scores[u, cands], kind="stable")] if len(cands) else cands
        for k in ks:
            hit_ranks = [r for r, i in enumerate(ranked[:k]) if int(i) in pos]
            dcg = sum(1.0 / math.log2(r + 2) for r in hit_ranks)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(pos), k)))
            sums[f"precision@{k}"] += len(hit_ranks) / k
            sums[f"recall@{k}"] += len(hit_ranks) / len(pos)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hit@{k}"] += 1.0 if hit_ranks else 0.0
    out = {key: (v / users if users else 0.0) for key, v in sums.items()}
    out["users"] = users
    return out


def random_case(seed, num_users=23, num_items=40, dim=8):
    """Random vectors, ~35% cold items, train on warm items (some users none, one nearly all),
    positives on all items with duplicates and a few that are also training items."""
    rng = np.random.default_rng(seed)
    status = rng.choice(np.array([0, 1, 2], np.int8), size=num_items, p=[0.65, 0.15, 0.2])
    status[:2] = [1, 2]
    warm = np.flatnonzero(status == 0)
    train = [(u, i) for u in range(num_users) for i in rng.choice(warm, rng.integers(0, 6), replace=False)]
    train += [(0, i) for i in warm[:-1]]  # user 0 has a single warm candidate left
    train = np.array(train, dtype=np.int32)
    pos = np.stack([rng.integers(0, num_users, 70), rng.integers(0, num_items, 70)], 1)
    pos = np.concatenate([pos, pos[:5], train[:3]]).astype(np.int32)  # duplicates; train overlap
    users = torch.from_numpy(rng.normal(size=(num_users, dim)).astype(np.float32))
    items = torch.from_numpy(rng.normal(size=(num_items, dim)).astype(np.float32))
    return users, items, train, pos, status


def assert_close(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [1, 5, 1000])
def test_matches_reference_on_random_data(seed, block):
    users, items, train, pos, status = random_case(seed)
    ks = (1, 5, 20, 50)  # 20 and 50 exceed the cold candidates; 50 exceeds all 40 items
    got = evaluate_ranking(users, items, train, pos, status, EvalConfig(ks=ks, user_block=block))
    for mode in ("all", "warm", "cold"):
        assert_close(got[mode], reference_metrics(users, items, train, pos, status, ks, mode))
        assert got[mode]["users"] > 0


def test_hand_computed_tiny_case():
    # item_vecs = identity, so user_vecs rows are the score table. Items 4 (cold-val), 5 (cold-test).
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # train {0}, positives {2, 5}
            [-0.1, -0.5, -0.2, 0.3, -0.4, 0.2],  # train {3}, positives {0, 4}
            [0.0, 0.9, 0.1, 0.2, 0.3, 0.4],  # train {1}, positives {1 (masked), 3}: warm only
        ]
    )
    status = np.array([0, 0, 0, 0, 1, 2], np.int8)
    train = np.array([[0, 0], [1, 3], [2, 1]])
    pos = np.array([[0, 2], [0, 5], [1, 0], [1, 4], [2, 1], [2, 3]])
    res = evaluate_ranking(scores, torch.eye(6), train, pos, status, EvalConfig(ks=(1, 3), user_block=2))
    L = 1 / math.log2(3)
    expected = {
        # all: top-3 are [1,2,3], [5,0,2], [5,4,3]: one hit each, at ranks 1, 1, 2; two positives each
        "all": {"precision@1": 0, "recall@1": 0, "ndcg@1": 0, "hit@1": 0,
                "precision@3": 1 / 3, "recall@3": 1 / 2, "ndcg@3": (2 * L + 0.5) / (1 + L) / 3,
                "hit@3": 1, "users": 3},
        # warm: rankings [1,2,3], [0,2,1], [3,2,0]; positives {2}, {0}, {1, 3}
        "warm": {"precision@1": 2 / 3, "recall@1": 1 / 2, "ndcg@1": 2 / 3, "hit@1": 2 / 3,
                 "precision@3": 1 / 3, "recall@3": 5 / 6, "ndcg@3": (L + 1 + 1 / (1 + L)) / 3,
                 "hit@3": 1, "users": 3},
        # cold: rankings [4,5], [5,4] (K=3 clamped to 2 candidates, precision still /3)
        "cold": {"precision@1": 0, "recall@1": 0, "ndcg@1": 0, "hit@1": 0,
                 "precision@3": 1 / 3, "recall@3": 1, "ndcg@3": L, "hit@3": 1, "users": 2},
    }  # fmt: skip
    for mode, want in expected.items():
        assert_close(res[mode], want)


def test_masked_training_items_are_never_hits():
    # One user, 5 items; the 4 training items score highest and are also positives.
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, -1.0]])
    status = np.zeros(5, np.int8)
    train = np.array([[0, 0], [0, 1], [0, 2], [0, 3]])
    pos = np.array([[0, i] for i in range(5)])
    res = evaluate_ranking(scores, torch.eye(5), train, pos, status, EvalConfig(ks=(1, 5)))["all"]
    # Only item 4 is a candidate: it is ranked first, and the -inf items behind it never count.
    assert res["recall@5"] == pytest.approx(1 / 5) and res["precision@5"] == pytest.approx(1 / 5)
    assert res["recall@1"] == pytest.approx(1 / 5) and res["hit@1"] == 1.0
    # All positives masked: the user counts, every metric is 0.
    res = evaluate_ranking(scores, torch.eye(5), train, pos[:4], status, EvalConfig(ks=(5,)))["all"]
    assert res["users"] == 1 and res["hit@5"] == 0.0 and res["ndcg@5"] == 0.0


def _top1_with_fill(scores: np.ndarray, masked: list[int], fill: float) -> int:
    s = scores.copy()
    s[masked] = fill
    return int(np.argsort(-s, kind="stable")[0])


def test_minus_inf_masking_fixes_the_reference_1e15_bug():
    # All scores negative: the reference code's 1e-15 fill would rank masked items first.
    scores = np.array([-0.1, -0.2, -0.5, -0.9, -0.6, -0.8], np.float32)
    status = np.array([0, 0, 0, 0, 2, 2], np.int8)
    train, pos = np.array([[0, 0], [0, 1]]), np.array([[0, 2], [0, 5]])
    # all mode: masked train item 0 would take the top-1 under 1e-15; -inf leaves item 2 first.
    assert _top1_with_fill(scores, [0, 1], 1e-15) == 0
    assert _top1_with_fill(scores, [0, 1], -np.inf) == 2
    # cold mode: masked warm items would take the top-1; with -inf cold item 4 leads, then 5.
    assert _top1_with_fill(scores, [0, 1, 2, 3], 1e-15) in (0, 1, 2, 3)
    user = torch.from_numpy(scores)[None]  # (1, 6) with identity item vectors: the score row
    res = evaluate_ranking(user, torch.eye(6), train, pos, status, EvalConfig(ks=(1, 2)))
    assert res["all"]["recall@1"] == pytest.approx(1 / 2)  # item 2 is a hit at rank 0
    assert res["cold"]["recall@1"] == 0.0 and res["cold"]["recall@2"] == pytest.approx(1.0)
    assert res["cold"]["ndcg@2"] == pytest.approx(1 / math.log2(3))


def test_bf16_vectors_and_autocast_score_in_float32():
    users, items, train, pos, status = random_case(7)
    cfg = EvalConfig(ks=(5, 20))
    want = evaluate_ranking(users.bfloat16().float(), items.bfloat16().float(), train, pos, status, cfg)
    assert evaluate_ranking(users.bfloat16(), items.bfloat16(), train, pos, status, cfg) == want
    plain = evaluate_ranking(users, items, train, pos, status, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert evaluate_ranking(users, items, train, pos, status, cfg) == plain


def test_evaluator_is_reusable_and_only_counts_users_with_positives():
    users, items, train, pos, status = random_case(3)
    ev = RankingEvaluator(train, pos, status, num_users=users.shape[0], config=EvalConfig(ks=(10,)))
    first = ev(users, items)
    assert ev(users, items) == first
    assert first["all"]["users"] == len(np.unique(pos[:, 0]))
    empty = evaluate_ranking(users, items, train, np.zeros((0, 2), np.int32), status)
    assert all(r["users"] == 0 and r["recall@20"] == 0.0 for r in empty.values())


def test_config_normalises_and_validates():
    cfg = EvalConfig(ks=[50, 10, 10], modes=["cold"])
    assert cfg.ks == (10, 50) and cfg.modes == ("cold",)
    res = evaluate_ranking(*random_case(0), config=cfg)
    assert list(res) == ["cold"] and "recall@50" in res["cold"]
    for bad in ({"ks": ()}, {"ks": (0,)}, {"ks": (2.5,)}, {"modes": ("hot",)}, {"user_block": 0}):
        with pytest.raises(ValueError):
            EvalConfig(**bad)


def test_bad_inputs_raise_clear_errors():
    users, items, train, pos, status = random_case(1)
    with pytest.raises(ValueError, match="same D"):
        evaluate_ranking(users, items[:, :3], train, pos, status)
    with pytest.raises(ValueError, match="item_status has shape"):
        evaluate_ranking(users, items, train, pos, status[:-1])
    with pytest.raises(ValueError, match="users x"):
        RankingEvaluator(train, pos, status, num_users=30)(users, items)
    with pytest.raises(ValueError, match=r"eval_pairs row .* outside"):
        evaluate_ranking(users, items, train, np.array([[0, 40]]), status)
    with pytest.raises(ValueError, match=r"train_pairs row .* outside"):
        evaluate_ranking(users, items, np.array([[23, 0]]), pos, status)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        evaluate_ranking(users, items, train[:, 0], pos, status)
    with pytest.raises(ValueError, match="integer ids"):
        evaluate_ranking(users, items, train, pos.astype(float), status)
    with pytest.raises(ValueError, match="item_status values"):
        evaluate_ranking(users, items, train, pos, np.full(40, 3, np.int8))
    bad = users.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(TrainingDivergedError, match="NaN"):
        evaluate_ranking(bad, items, train, pos, status)


def test_topk_items_excludes_train_restricts_candidates_and_pads():
    users, items, train, _, status = random_case(2)
    scores = (users @ items.T).numpy()
    query = torch.tensor([3, 0, 3])
    s, it = topk_items(users, items, query, train, k=5, user_block=2)
    assert s.shape == it.shape == (3, 5)
    for row, u in enumerate(query.tolist()):
        masked = set(train[train[:, 0] == u, 1].tolist())
        ranked = [i for i in np.argsort(-scores[u]) if i not in masked][:5]
        assert it[row].tolist() == ranked
    cold = torch.from_numpy(np.flatnonzero(status != 0))
    s, it = topk_items(users, items, query, train, k=1000, candidates=cold)
    assert it.shape[1] == len(cold) and set(it[0].tolist()) == set(cold.tolist())
    # User 0 has a single warm item left: the rest of the top-k is padded.
    warm = torch.from_numpy(np.flatnonzero(status == 0))
    s, it = topk_items(users, items, torch.tensor([0]), train, k=3, candidates=warm)
    assert it[0, 1:].tolist() == [-1, -1] and torch.isinf(s[0, 1:]).all() and it[0, 0] >= 0
    s, it = topk_items(users, items, torch.tensor([0]), train, k=3, exclude_train=False, candidates=warm)
    assert (it >= 0).all()
    with pytest.raises(ValueError, match="users must be ids"):
        topk_items(users, items, torch.tensor([99]), train, k=3)


def test_format_table_lists_split_mode_rows():
    from rich.console import Console

    res = evaluate_ranking(*random_case(0), config=EvalConfig(ks=(10, 20)))
    table = format_table({"val": res, "test": res}, ks=(20,))
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    text = buf.getvalue()
    assert "Recall@20" in text and "NDCG@20" in text and "Hit@20" in text
    assert text.count("cold") == 2 and f"{res['cold']['recall@20']:.4f}" in text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    users, items, train, pos, status = random_case(5, num_users=300, num_items=500)
    cfg = EvalConfig(ks=(10, 50), user_block=64)
    want = evaluate_ranking(users, items, train, pos, status, cfg)
    got = evaluate_ranking(users.cuda(), items.cuda(), train, pos, status, cfg)
    for mode in want:
        assert_close(got[mode], want[mode])
    s_cpu, i_cpu = topk_items(users, items, torch.arange(10), train, k=5)
    s_gpu, i_gpu = topk_items(users.cuda(), items.cuda(), torch.arange(10).cuda(), train, k=5)
    assert torch.equal(i_cpu, i_gpu.cpu())
