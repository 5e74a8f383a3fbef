"""The reference code's data path, reproduced for `bench train` to time against: per-pair
negative sampling in DataLoader workers, exactly as the reference TrainingDataset does it.

Reads nothing itself (the bench hands it the training pairs); writes nothing.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from clcrec.data.batches import Batch, _dedupe


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """Per-pair negative sampling exactly as the reference TrainingDataset does it."""

    def __init__(self, train: np.ndarray, warm_items: np.ndarray, num_neg: int):
        self.pairs = np.asarray(train)
        self.num_neg = num_neg
        self.all_set = set(int(i) for i in warm_items)
        self.user_items: dict[int, set] = {}
        for u, i in self.pairs.tolist():
            self.user_items.setdefault(u, set()).add(i)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        user, pos = (int(x) for x in self.pairs[index])
        # Python 3.11 removed sampling from a set, so the reference's set difference becomes a list.
        neg = random.sample(list(self.all_set - self.user_items[user]), self.num_neg)
        return user, [pos] + neg


class Collate:
    """Batches reference-style rows; dedupes item ids like the streaming producer does, so both
    loops run the identical model step. A class (not a closure) so spawned workers can pickle it."""

    def __init__(self, num_items: int, dedupe: bool):
        self.num_items, self.dedupe = num_items, dedupe
        self.slot_of = None

    def __call__(self, rows) -> Batch:
        users = torch.tensor([r[0] for r in rows], dtype=torch.int64)
        items_np = np.asarray([r[1] for r in rows], dtype=np.int64)  # (B, 1+K)
        b = Batch(users=users, items=torch.from_numpy(items_np))
        if self.dedupe:
            if self.slot_of is None:
                self.slot_of = np.full(self.num_items, -1, dtype=np.int64)
            flat = items_np.reshape(-1)
            uniq, inverse = np.empty_like(flat), np.empty_like(flat)
            q = _dedupe(flat, self.slot_of, uniq, inverse)
            b.uniq, b.inverse = torch.from_numpy(uniq[:q].copy()), torch.from_numpy(inverse.reshape(items_np.shape))
        return b


def worker_context() -> str:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
