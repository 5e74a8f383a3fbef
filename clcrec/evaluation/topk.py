"""The k best items per user, in user blocks, training items masked: what `recommend`,
`recommend-all` and their benchmark rank with. Reads and writes no files.

    for start, scores, items in iter_topk(user_vecs, item_vecs, users, ds.train, k=50): ...
"""

from __future__ import annotations

import numpy as np
import torch

from clcrec.evaluation.ranking import _check_vectors, _csr, _gather_rows
from pipeline.dataset import check_pairs


def iter_topk(
    user_vecs: torch.Tensor,  # (U, D)
    item_vecs: torch.Tensor,  # (I, D)
    users: torch.Tensor,  # (R,) user ids
    train_pairs: np.ndarray,  # (N, 2)
    k: int,
    exclude_train: bool = True,
    candidates: torch.Tensor | None = None,  # (C,) item ids to rank among; None = all items
    user_block: int = 1024,
):
    """The k best items per user, one user block at a time: yields (start, scores (B, k') float32,
    items (B, k') int64) on the device, rows `users[start:start+B]`, best first.

    k' = min(k, number of candidates). Where a user has fewer than k' unmasked candidates the
    tail is padded with score -inf and item -1. Ties are ordered by torch.topk. Inputs are checked
    before the first block is computed.
    """
    _check_vectors(user_vecs, item_vecs)
    num_users, num_items = user_vecs.shape[0], item_vecs.shape[0]
    dev = user_vecs.device
    if not isinstance(k, (int, np.integer)) or k < 1 or user_block < 1:
        raise ValueError(f"k and user_block must be integers >= 1, got k={k!r}, user_block={user_block!r}")
    users_np = torch.as_tensor(users).reshape(-1).cpu().numpy().astype(np.int64)  # one host copy
    if users_np.size and (users_np.min() < 0 or users_np.max() >= num_users):
        raise ValueError(f"users must be ids in 0..{num_users - 1}")
    cols = None
    if candidates is not None:
        cols = torch.as_tensor(candidates, device=dev).reshape(-1).long()  # (C,)
        if cols.numel() == 0 or bool((cols < 0).any() | (cols >= num_items).any()):
            raise ValueError(f"candidates must be a non-empty set of item ids in 0..{num_items - 1}")
    mask = None
    if exclude_train:
        # Host CSR of the requested users; each block copies only its slice to the device.
        train = check_pairs("train_pairs", train_pairs, num_users, num_items, ValueError)
        indptr, indices = _csr(train[:, 0], train[:, 1], num_users)
        if np.array_equal(users_np, np.arange(num_users)):  # every user in order: the CSR itself
            mask = (indptr, indices)
        else:
            _, t_cols, t_indptr = _gather_rows(indptr, indices, users_np)
            mask = (t_indptr, t_cols)
    users_dev = torch.as_tensor(users_np, device=dev)
    kk = min(int(k), num_items if cols is None else len(cols))
    return _topk_blocks(user_vecs, item_vecs, users_dev, cols, kk, user_block, mask)


def _topk_blocks(user_vecs, item_vecs, users_dev, cols, kk, user_block, mask):
    dev = user_vecs.device
    with torch.no_grad(), torch.autocast(device_type=dev.type, enabled=False):
        items_f = item_vecs.float()  # (I, D)
        for s in range(0, len(users_dev), user_block):
            e = min(s + user_block, len(users_dev))
            scores = user_vecs.index_select(0, users_dev[s:e]).float() @ items_f.T  # (B, I)
            if mask is not None:
                indptr, t_cols = mask
                a, b = int(indptr[s]), int(indptr[e])
                rows = np.repeat(np.arange(e - s), np.diff(indptr[s : e + 1]))  # (T,) row in the block
                scores[torch.as_tensor(rows, device=dev), torch.as_tensor(t_cols[a:b], device=dev)] = float("-inf")
            sub = scores if cols is None else scores.index_select(1, cols)  # (B, C)
            vals, idx = torch.topk(sub, kk, dim=1)  # (B, k')
            if cols is not None:
                idx = cols[idx]
            yield s, vals, idx.masked_fill(vals == float("-inf"), -1)


@torch.no_grad()
def topk_items(
    user_vecs: torch.Tensor,  # (U, D)
    item_vecs: torch.Tensor,  # (I, D)
    users: torch.Tensor,  # (R,) user ids
    train_pairs: np.ndarray,  # (N, 2)
    k: int,
    exclude_train: bool = True,
    candidates: torch.Tensor | None = None,  # (C,) item ids to rank among; None = all items
    user_block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items per user: (scores (R, k') float32, items (R, k') int64), best first;
    `iter_topk`'s blocks concatenated (see there)."""
    blocks = list(iter_topk(user_vecs, item_vecs, users, train_pairs, k, exclude_train, candidates, user_block))
    if not blocks:
        dev = user_vecs.device
        kk = min(int(k), item_vecs.shape[0] if candidates is None else len(candidates))
        return torch.empty(0, kk, device=dev), torch.empty(0, kk, dtype=torch.int64, device=dev)
    return torch.cat([b[1] for b in blocks]), torch.cat([b[2] for b in blocks])
