"""Personalisation of cold-item recommendations: do users get their own top-K, or one shared list?

    stats = cold_list_stats(user_vecs, item_vecs, item_status, popularity, k=10)
    stats["distinct_lists"], stats["coverage@10"], stats["pop_share@10"]

Reads vectors and arrays from the caller (the trainer's `finish`, scripts/quality_matrix.py);
writes nothing. Every user (all `num_users`, not only those with a held-out positive) is given
their top-K among the cold candidates (validation-cold and test-cold items, as in evaluation;
cold items have no training interactions, so nothing is masked). Then:

- `distinct_lists`: the number of different top-K *sets* among the users (order inside a list
  ignored), and `distinct_share` = distinct_lists / users. 1 list for everyone = collapse.
- `coverage@K`: the share of the cold items that appear in at least one user's top K.
- `common_share`: the share of the cold-score variance that is common to all users. Within each
  user the scores are taken as deviations from the user's mean over the cold items (what orders a
  list); the common part is each item's mean deviation over the users. 0: nothing shared (each
  user's order is their own); 1: every user ranks by one list. Over the first 2,048 users.
- `pop_share@K` (popularity share): the share of all users x K recommended slots taken by the
  *head* of the cold items: the ceil(10%) cold items with the most held-out interactions
  (validation + test pairs; a cold item's interactions are all held out), ties broken by the
  lower item index. A ranking that ignores popularity puts ~0.10 of its slots there (a random
  ranking: exactly 0.10 in expectation when 10% divides evenly); a popularity ranking puts all of
  them there (1.0 when K <= the head's size). It says whether the lists are popularity-like.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clcrec.evaluation.topk import iter_topk

HEAD_FRACTION = 0.10  # the popularity head: this share of the cold items, by held-out interactions


def held_out_popularity(num_items: int, *held_out_pairs: np.ndarray) -> np.ndarray:
    """(num_items,) int64 count of held-out (user, item) pairs per item (duplicates counted once)."""
    pairs = [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in held_out_pairs]
    both = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.bincount(both[:, 1], minlength=num_items).astype(np.int64)


def head_items(cold: np.ndarray, popularity: np.ndarray, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """The ceil(fraction * |cold|) cold items with the highest popularity (ties: lower index first)."""
    n = max(1, math.ceil(fraction * len(cold)))
    order = np.lexsort((cold, -popularity[cold]))  # by popularity descending, then item index
    return np.sort(cold[order[:n]])


@torch.no_grad()
def cold_list_stats(
    user_vecs: torch.Tensor,  # (U, D)
    item_vecs: torch.Tensor,  # (I, D)
    item_status: np.ndarray,  # (I,) 0 warm, 1/2 cold
    popularity: np.ndarray,  # (I,) held-out interactions per item (held_out_popularity)
    k: int = 10,
    user_block: int = 1024,
) -> dict:
    """{"users", "distinct_lists", "distinct_share", "coverage@K", "pop_share@K", "cold_items",
    "head_items"} of every user's top-K among the cold items (module docstring: definitions)."""
    status = np.asarray(item_status)
    cold = np.flatnonzero(status != 0)
    num_users = user_vecs.shape[0]
    if len(cold) == 0 or num_users == 0:
        return {"users": int(num_users), "cold_items": int(len(cold)), "distinct_lists": 0, "distinct_share": 0.0,
                "common_share": 0.0,
                f"coverage@{k}": 0.0, f"pop_share@{k}": 0.0, "head_items": 0}
    users = torch.arange(num_users, device=user_vecs.device)
    cand = torch.as_tensor(cold, device=user_vecs.device)
    lists = [idx.cpu().numpy() for _, _, idx in iter_topk(user_vecs, item_vecs, users, np.zeros((0, 2), np.int64), k,
                                                          exclude_train=False, candidates=cand, user_block=user_block)]
    top = np.sort(np.concatenate(lists), axis=1)  # (U, k') each list as a sorted set
    distinct = len(np.unique(top, axis=0))
    head = head_items(cold, np.asarray(popularity))
    return {
        "common_share": common_share(user_vecs, item_vecs, cand),
        "users": int(num_users),
        "cold_items": int(len(cold)),
        "distinct_lists": int(distinct),
        "distinct_share": distinct / num_users,
        f"coverage@{k}": len(np.unique(top)) / len(cold),
        f"pop_share@{k}": float(np.isin(top, head).sum()) / top.size,
        "head_items": int(len(head)),
    }


@torch.no_grad()
def common_share(user_vecs: torch.Tensor, item_vecs: torch.Tensor, cold: torch.Tensor, sample: int = 2048,
                 block: int = 65536) -> float:
    """The share of the users' centred cold scores that is common to all of them (module docstring)."""
    users = user_vecs[:sample].double()
    sums = torch.zeros(users.shape[0], dtype=torch.float64, device=users.device)  # (S,) per-user sums
    col, total = [], 0.0
    for s in range(0, cold.numel(), block):
        sc = users @ item_vecs[cold[s : s + block]].double().T  # (S, b)
        sums += sc.sum(1)
        col.append(sc.mean(0))
        total += float((sc * sc).sum())
    n_items, n_users = cold.numel(), users.shape[0]
    mu = sums / max(n_items, 1)  # (S,) each user's mean cold score
    item_mean = torch.cat(col) - mu.mean()  # (C,) each item's mean centred score over users
    centred = total - n_items * float((mu * mu).sum())  # sum of squared centred scores
    return float(n_users * (item_mean * item_mean).sum() / centred) if centred > 0 else 0.0


def personalisation_results(dataset, user_vecs: torch.Tensor, item_vecs: torch.Tensor, seed: int = 0,
                            k: int = 10) -> dict[str, dict]:
    """{"CLCRec": stats, "content": stats, "random": stats} for a trained model's vectors and the
    baselines of clcrec/evaluation/baselines.py on the same dataset (vectors on the CPU for the baselines)."""
    from clcrec.evaluation.baselines import content_baseline, random_baseline

    pop = held_out_popularity(dataset.num_items, dataset.val, dataset.test)
    out = {"CLCRec": cold_list_stats(user_vecs, item_vecs, dataset.item_status, pop, k)}
    out["content"] = cold_list_stats(*content_baseline(dataset), dataset.item_status, pop, k)
    out["random"] = cold_list_stats(*random_baseline(dataset.num_users, dataset.num_items, seed), dataset.item_status, pop, k)
    return out


def describe(stats: dict, k: int = 10) -> str:
    """'412/943 distinct (44%), common share 0.35, coverage@10 0.52, pop share@10 0.31'."""
    return (f"{stats['distinct_lists']}/{stats['users']} distinct ({stats['distinct_share']:.0%}), "
            + (f"common share {stats['common_share']:.2f}, " if "common_share" in stats else "")
            + f"coverage@{k} {stats[f'coverage@{k}']:.2f}, pop share@{k} {stats[f'pop_share@{k}']:.2f}")


def below_content_baseline(dataset, val_results: dict, cfg, eval_cfg, confirmation: dict | None = None) -> dict:
    """Whether the selected model's cold Recall@select_k is below the content-only cosine's:
    {"metric", "model", "content", "below"}, on the held-back validation items when the run held
    some back (`confirmation`, clcrec/train/confirm.py: items that made no choice, and the served
    ranking before any fallback), else on all of validation. A run that is below says so in its
    report and results.json instead of presenting the number as a result."""
    from clcrec.evaluation.baselines import content_baseline
    from clcrec.evaluation.ranking import RankingEvaluator

    if confirmation:
        kept = confirmation["model_alone"] if confirmation.get("decision") == "alone" else confirmation["served"]
        return {"metric": f"held-back validation {confirmation['metric']}", "model": kept,
                "content": confirmation["content"], "below": bool(kept < confirmation["content"])}
    key = f"recall@{cfg.select_k}"
    ev = RankingEvaluator(dataset.train, dataset.val, dataset.item_status, dataset.num_users, eval_cfg)
    content = ev(*content_baseline(dataset))["cold"][key]
    model = val_results["cold"][key]
    return {"metric": f"val cold {key}", "model": model, "content": content, "below": bool(model < content)}
