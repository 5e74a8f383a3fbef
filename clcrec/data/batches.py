"""Batches and the epoch plan: which rows of which chunk form which batch, on any device.

Reads and writes nothing. Pure planning and cutting, shared by host and device batch assembly
(clcrec/data/stream.py), so both serve the same batches in the same order.

Order: the epoch's chunk order and each chunk's row permutation derive from (seed, epoch, chunk).
Rows left over at the end of a chunk are stitched to the start of the next one, so only the
epoch's last batch can be short. Distributed runs: every rank walks the same sequence of global
batches and keeps its own contiguous slice of each (`EpochPlan.slice_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numba
import numpy as np
import torch

from common.errors import UserError


@dataclass
class Batch:
    users: torch.Tensor  # (B,) int64
    items: torch.Tensor  # (B, 1+K) int64, positive in column 0
    uniq: torch.Tensor | None = None  # (Q,) int64 distinct items, first-appearance order
    inverse: torch.Tensor | None = None  # (B, 1+K) int64 index into uniq
    offset: int = 0  # where this slice starts in its global batch (distributed runs)
    global_size: int = -1  # rows of the global batch this slice belongs to (-1: the slice itself)
    row0: int = 0  # position of this slice's first row in the epoch (seeds the hybrid draws)
    hybrid: torch.Tensor | None = None  # (B, 1+K) bool hybrid draws, when the stream makes them

    def tensors(self):
        return [t for f in fields(self) if isinstance(t := getattr(self, f.name), torch.Tensor)]

    def apply(self, fn) -> "Batch":
        return Batch(**{f.name: (fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True), which leaves objects without it unpinned."""
        return self.apply(lambda t: t.pin_memory())

    @property
    def size(self) -> int:
        return int(self.users.shape[0])


@numba.njit(nogil=True, cache=True)
def _dedupe(items, slot_of, uniq, inverse):  # pragma: no cover - compiled
    """items (n,) int64 -> number of distinct ids q; fills uniq[:q] and inverse (n,).
    slot_of (num_items,) must be all -1 on entry and is restored to -1 on exit."""
    q = 0
    for i in range(items.shape[0]):
        it = items[i]
        s = slot_of[it]
        if s < 0:
            s = q
            slot_of[it] = q
            uniq[q] = it
            q += 1
        inverse[i] = s
    for j in range(q):
        slot_of[uniq[j]] = -1
    return q


def dedupe_batch(b: Batch, slot_of: np.ndarray) -> Batch:
    """Fill b.uniq / b.inverse (host tensors) with the numba first-appearance dedupe."""
    items = b.items.numpy()
    flat = items.reshape(-1)
    uniq = np.empty(flat.shape[0], dtype=np.int64)
    inverse = np.empty(flat.shape[0], dtype=np.int64)
    q = _dedupe(flat, slot_of, uniq, inverse)
    b.uniq = torch.from_numpy(uniq[:q].copy())
    b.inverse = torch.from_numpy(inverse.reshape(items.shape))
    return b


def check_batch_split(batch_size: int, world: int) -> None:
    """Every rank trains an equal, contiguous slice of each global batch: the one check of that rule."""
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} (the global batch) must be divisible by the {world} ranks; "
                        f"pass a multiple of {world}")


def epoch_chunk_order(num_chunks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x0C4C]).permutation(num_chunks)


def slice_bounds(rows: int, world: int) -> np.ndarray:
    """(world+1,) boundaries splitting a global batch of `rows` into near-equal contiguous slices."""
    return (np.arange(world + 1, dtype=np.int64) * rows) // world


def chunk_permutation(n: int, seed: int, epoch: int, chunk: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, chunk, 0x0C4C]).permutation(n)


class EpochPlan:
    """Which rows of each chunk this rank trains on, in which order, in which global batch."""

    def __init__(self, num_rows: int, batch_size: int, rank: int, world: int, seed: int, epoch: int):
        self.B, self.rank, self.world, self.seed, self.epoch = batch_size, rank, world, seed, epoch
        self.n_batches = -(-num_rows // batch_size)
        self.last_rows = num_rows - (self.n_batches - 1) * batch_size  # the (possibly short) last batch
        self.full_bounds, self.last_bounds = slice_bounds(batch_size, world), slice_bounds(self.last_rows, world)

    def slice_of(self, bi: int) -> tuple[int, int, int]:
        """(offset, size, global size) of this rank's slice of global batch bi."""
        bounds, gsize = (self.last_bounds, self.last_rows) if bi == self.n_batches - 1 else (self.full_bounds, self.B)
        return int(bounds[self.rank]), int(bounds[self.rank + 1] - bounds[self.rank]), gsize

    def chunk_rows(self, chunk: int, n: int, g0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(perm, bi, where): the chunk's rows this rank keeps, in epoch order, each one's global
        batch and its position in the epoch. g0 is the epoch position of the chunk's first row."""
        perm = chunk_permutation(n, self.seed, self.epoch, chunk)
        g = np.arange(g0, g0 + n, dtype=np.int64)  # global epoch positions of the permuted rows
        bi = g // self.B
        if self.world > 1:  # keep only this rank's slice of each global batch
            p = g - bi * self.B
            is_last = bi == self.n_batches - 1
            owner = np.where(is_last, np.searchsorted(self.last_bounds, p, side="right"),
                             np.searchsorted(self.full_bounds, p, side="right")) - 1
            keep = np.flatnonzero(owner == self.rank)
            perm, bi, g = perm[keep], bi[keep], g[keep]
        return perm, bi, g


class BatchCutter:
    """Stitches permuted chunk rows (tensors on any device) into this rank's slices of the global
    batches. Rows arrive grouped by global batch, in order; a batch that spans two chunks is
    concatenated (once per chunk boundary), every other batch is a view of the chunk's tensors."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan
        self.carry: list[tuple] = []  # pieces (users, items, hybrid) of the batch being stitched
        self.carry_bi = -1
        self.with_hybrid = False  # set when the stream draws hybrid masks (tail batches carry one too)

    def feed(self, users: torch.Tensor, items: torch.Tensor, bi: np.ndarray, hybrid: torch.Tensor | None = None) -> list[Batch]:
        out, start = [], 0
        while start < len(bi):
            cur = int(bi[start])
            end = int(np.searchsorted(bi, cur, side="right"))
            if cur != self.carry_bi:
                self.carry, self.carry_bi = [], cur
            self.carry.append((users[start:end], items[start:end], None if hybrid is None else hybrid[start:end]))
            offset, size, gsize = self.plan.slice_of(cur)
            if sum(len(p[0]) for p in self.carry) == size:
                u, i, h = (self.carry[0][k] if len(self.carry) == 1 or self.carry[0][k] is None
                           else torch.cat([p[k] for p in self.carry]) for k in range(3))
                out.append(Batch(users=u, items=i, hybrid=h, offset=offset, global_size=gsize,
                                 row0=cur * self.plan.B + offset))
                self.carry = []
            start = end
        return out

    def tail(self, like_items: torch.Tensor) -> list[Batch]:
        """This rank's share of a tiny last global batch may be empty; it must still step (DDP)."""
        offset, size, gsize = self.plan.slice_of(self.plan.n_batches - 1)
        if size == 0 and self.plan.n_batches > 0:
            dev = like_items.device
            hybrid = torch.empty((0, like_items.shape[1]), dtype=torch.bool, device=dev) if self.with_hybrid else None
            return [Batch(users=torch.empty(0, dtype=torch.int64, device=dev),
                          items=torch.empty((0, like_items.shape[1]), dtype=torch.int64, device=dev), hybrid=hybrid,
                          offset=offset, global_size=gsize, row0=(self.plan.n_batches - 1) * self.plan.B + offset)]
        return []
