"""Reference points for a trained model: user/item vectors that `evaluate_ranking` scores.

Reads a loaded `pipeline.dataset.Dataset` (its train pairs, item features and, for synthetic
datasets, the planted factors in extras/oracle_user.npy and extras/oracle_item.npy); writes nothing.

- content: cosine between a user's mean training-item content vector and each item's content
  vector. Needs no training, and is the bar a cold-start model must clear on cold items.
- random:  random vectors, so each user's ranking is a uniformly random permutation; expected
  recall@K in cold mode is K / #cold candidates.
- oracle:  the planted factors of a synthetic dataset (an upper reference), None elsewhere.

    from clcrec.evaluation.baselines import baseline_results
    results = baseline_results(load_dataset("data/synth"), split="test")   # {"content": ..., ...}
"""

from __future__ import annotations

import numpy as np
import torch

from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator

_EPS = 1e-12  # rows with a smaller norm stay zero instead of becoming NaN


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=_EPS)  # (N, D)


def item_content_vectors(features: dict[str, np.ndarray]) -> torch.Tensor:
    """(num_items, sum of dims) float32: each modality L2-normalised per row, concatenated, then
    L2-normalised again, so every modality weighs the same whatever its scale or width."""
    if not features:
        raise ValueError("the dataset has no item features; the content baseline needs at least one modality")
    parts = [_l2_normalise(torch.tensor(np.asarray(f), dtype=torch.float32)) for f in features.values()]
    return _l2_normalise(torch.cat(parts, dim=1))  # (I, D)


def content_baseline(dataset, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_vecs (U, D), item_vecs (I, D)) on the CPU: cosine of mean-of-history vs item content.

    A user vector is the mean of their training items' content vectors, L2-normalised (ranking is
    unchanged by the normalisation; scores become true cosines). Users with no training items get
    zeros, so every item scores 0 for them. Pairs are summed `chunk` at a time to bound memory.
    """
    items = item_content_vectors(dataset.features)  # (I, D)
    train = np.asarray(dataset.train)
    users = torch.zeros(dataset.num_users, items.shape[1], dtype=torch.float64)  # (U, D) sums
    for s in range(0, len(train), chunk):
        block = torch.as_tensor(np.asarray(train[s : s + chunk], dtype=np.int64))  # (C, 2)
        users.index_add_(0, block[:, 0], items[block[:, 1]].double())
    counts = np.bincount(train[:, 0].astype(np.int64), minlength=dataset.num_users)  # (U,)
    users /= torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)[:, None]
    return _l2_normalise(users).float(), items


def random_baseline(
    num_users: int, num_items: int, seed: int = 0, dim: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_vecs (U, dim), item_vecs (I, dim)) standard normal on the CPU, from `seed`.

    Item vectors are i.i.d., so for any user vector the item ranking is a uniformly random
    permutation (rankings of different users are weakly correlated through the shared items).
    """
    if num_users < 1 or num_items < 1 or dim < 1:
        raise ValueError(f"need num_users, num_items, dim >= 1, got {num_users}, {num_items}, {dim}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(num_users, dim, generator=gen), torch.randn(num_items, dim, generator=gen)


def oracle_baseline(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The planted (user, item) factors of a synthetic dataset as float32 tensors, or None."""
    user_f, item_f = dataset.extra_array("oracle_user"), dataset.extra_array("oracle_item")
    if user_f is None or item_f is None:
        return None
    if (
        user_f.ndim != 2 or item_f.ndim != 2 or user_f.shape[1] != item_f.shape[1]
        or user_f.shape[0] != dataset.num_users or item_f.shape[0] != dataset.num_items
    ):  # fmt: skip
        raise ValueError(
            f"{dataset.root}/extras: oracle_user {user_f.shape} and oracle_item {item_f.shape} must be "
            f"({dataset.num_users}, D) and ({dataset.num_items}, D); regenerate the synthetic dataset"
        )
    to_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return to_t(user_f), to_t(item_f)


def baseline_results(
    dataset,
    split: str = "test",
    config: EvalConfig = EvalConfig(),
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, dict[str, float]]]:
    """{"content": results, "random": results[, "oracle": results]} on `split` ("val" or "test"),
    each in `evaluate_ranking`'s format; the oracle only for datasets that have planted factors."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    evaluator = RankingEvaluator(
        dataset.train, dataset.split(split), dataset.item_status, dataset.num_users, config
    )
    vectors = {
        "content": content_baseline(dataset),
        "random": random_baseline(dataset.num_users, dataset.num_items, seed),
        "oracle": oracle_baseline(dataset),
    }
    results = {}
    for name, pair in vectors.items():
        if pair is not None:
            user_vecs, item_vecs = pair
            results[name] = evaluator(user_vecs.to(device), item_vecs.to(device))
    return results
