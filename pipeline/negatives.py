"""Negative sampling: numba kernels behind validating wrappers, plus slow references.

    python cli.py bench negatives            # the fast kernel against the reference algorithm

Reads arrays only (the caller loads the dataset and writes the cache): the shuffled users of a
chunk, the warm item ids and each user's training items as CSR (`Dataset.train_csr()`).
Returns `(n, num_neg)` negatives in the narrowest item dtype (`item_dtype`).

The contract every sampler here keeps, row by row:
  * every negative is a warm item that is not among the user's items in the CSR it is given: the
    cache passes the *training* items (validation and test items are deliberately not excluded:
    that would leak the answers into training), or, for `--exclude all-known` (reproducing the
    reference code), every item the dataset knows the user interacted with;
  * the negatives of one row are distinct and uniform over the allowed items;
  * a user with fewer allowed items than `num_neg` is an error (`on_short="error"`), or, with
    `on_short="repeat"`, the row holds all allowed items in random order, repeated cyclically
    (the only case where a row repeats items);
  * randomness is a pure function of (key, global row index): a counter-based splitmix64 stream
    per row, so the output is byte-identical for any thread count and any chunking.

Kernel paths per row (all exact and uniform): rejection sampling against a per-block stamp array
of size num_items (token = local row + 1 marks the user's items and the draws so far, so no
clearing and no O(K^2) scan), with two 32-bit Lemire multiply-shift draws per splitmix64 output;
when the allowed items are fewer than twice `num_neg`, enumerate them and do a partial
Fisher-Yates shuffle instead. Rows are split into blocks run by `prange` (one stamp per block);
small calls run on one thread, as a parallel launch would cost more than it saves.
"""

from __future__ import annotations

import random

import numba
import numpy as np
from numba import njit, prange

from common.errors import InputError

ON_SHORT = ("error", "repeat")
PARALLEL_MIN_NEGATIVES = 1 << 16  # below this many negatives per call, sample on one thread

# splitmix64 constants, typed uint64 so numba never promotes the arithmetic to float64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_MASK32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)


def item_dtype(num_items: int) -> np.dtype:
    """The narrowest dtype for item ids 0..num_items-1: uint16 below 65,536 items, else int32."""
    return np.dtype(np.uint16) if num_items <= 65536 else np.dtype(np.int32)


def generation_key(seed: int, generation: int) -> np.uint64:
    """The 64-bit RNG key of one generation's negatives (independent of the pair shuffle)."""
    ss = np.random.SeedSequence([int(seed), int(generation), 1])
    return np.uint64(ss.generate_state(1, np.uint64)[0])


def pair_permutation(num_pairs: int, seed: int, generation: int) -> np.ndarray:
    """The generation's shuffle of the training pairs: int64 (num_pairs,) permutation."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(generation)])))
    return rng.permutation(num_pairs)


def replay_count(num_recent: int, num_old: int, replay: float) -> int:
    """Old pairs replayed per generation beside `num_recent` recent ones (all of them at most)."""
    return min(num_old, int(round(replay * num_recent)))


def replay_order(recent: np.ndarray, replay: float, seed: int, generation: int) -> np.ndarray:
    """The generation's rows under replay: int64 indices into the training pairs, every pair where
    `recent` (bool (N,)) and a sample of `replay_count` others without repeats, shuffled together.
    A stream of its own (seed, generation, 1), so the default shuffle stays what it was."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(generation), 1])))
    new, old = np.flatnonzero(recent), np.flatnonzero(~recent)
    rows = np.concatenate([new, rng.choice(old, size=replay_count(len(new), len(old), replay), replace=False)])
    return rows[rng.permutation(len(rows))]


# ---------------------------------------------------------------------------------------------
# numba kernels: arrays and scalars in, nothing raised
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _mix64(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always")
def _below(state, bound):
    """(new_state, uniform integer in [0, bound)) by Lemire's multiply-shift with rejection."""
    state = state + _GOLDEN
    m = (_mix64(state) >> _S32) * bound
    low = m & _MASK32
    if low < bound:
        threshold = (_TWO32 - bound) % bound
        while low < threshold:
            state = state + _GOLDEN
            m = (_mix64(state) >> _S32) * bound
            low = m & _MASK32
    return state, m >> _S32


@njit(nogil=True, cache=True)
def _sample_block(users, lo, hi, row_offset, key, warm, num_items, indptr, indices, allowed,
                  num_neg, out, stamp, scratch):
    n_warm = np.uint64(warm.shape[0])
    threshold = (_TWO32 - n_warm) % n_warm  # Lemire: reject low words below this (exactly uniform)
    for r in range(lo, hi):
        token = np.int32(r - lo + 1)
        u = users[r]
        for p in range(indptr[u], indptr[u + 1]):
            stamp[indices[p]] = token
        state = _mix64(key + np.uint64(row_offset + r) * _GOLDEN)
        a = allowed[u]
        if a >= 2 * num_neg:  # sparse user: rejection against the stamp
            k = 0
            while k < num_neg:  # each 64-bit output gives two 32-bit Lemire draws
                state = state + _GOLDEN
                z = _mix64(state)
                m = (z & _MASK32) * n_warm
                if (m & _MASK32) >= threshold:
                    item = warm[m >> _S32]
                    if stamp[item] != token:
                        stamp[item] = token
                        out[r, k] = item
                        k += 1
                m = (z >> _S32) * n_warm
                if k < num_neg and (m & _MASK32) >= threshold:
                    item = warm[m >> _S32]
                    if stamp[item] != token:
                        stamp[item] = token
                        out[r, k] = item
                        k += 1
        else:  # dense user: enumerate the allowed items, partial Fisher-Yates
            m = 0
            for j in range(warm.shape[0]):
                if stamp[warm[j]] != token:
                    scratch[m] = warm[j]
                    m += 1
            take = min(num_neg, m)
            for k in range(take):
                state, j = _below(state, np.uint64(m - k))
                t = k + np.int64(j)
                tmp = scratch[k]
                scratch[k] = scratch[t]
                scratch[t] = tmp
                out[r, k] = scratch[k]
            for k in range(take, num_neg):  # on_short="repeat": cycle the shuffled allowed items
                out[r, k] = scratch[k % m]
    # a fresh token per row keeps the stamp valid without clearing it; rows never share tokens


@njit(parallel=True, nogil=True, cache=True)
def _sample_rows(users, row_offset, key, warm, num_items, indptr, indices, allowed, num_neg,
                 num_blocks, out):
    n = users.shape[0]
    per = (n + num_blocks - 1) // num_blocks
    for b in prange(num_blocks):
        lo = b * per
        hi = min(n, lo + per)
        if lo < hi:
            stamp = np.zeros(num_items, np.int32)
            scratch = np.empty(warm.shape[0], warm.dtype)
            _sample_block(users, lo, hi, row_offset, key, warm, num_items, indptr, indices,
                          allowed, num_neg, out, stamp, scratch)


# ---------------------------------------------------------------------------------------------
# Validating wrappers
# ---------------------------------------------------------------------------------------------


class SamplingPlan:
    """Validated sampling inputs for one dataset: warm items, CSR, allowed counts per user.

    Checks once what every chunk relies on: sorted unique warm ids, a well-formed CSR with sorted
    rows, and that every user can supply `num_neg` distinct negatives (or `on_short="repeat"`).
    """

    def __init__(self, warm: np.ndarray, indptr: np.ndarray, indices: np.ndarray, num_items: int,
                 num_neg: int, on_short: str = "error"):
        if on_short not in ON_SHORT:
            raise InputError(f"on_short must be one of {ON_SHORT}, got {on_short!r}")
        if int(num_neg) < 1:
            raise InputError(f"num_neg must be at least 1, got {num_neg}")
        warm = np.asarray(warm)
        indptr, indices = np.asarray(indptr), np.asarray(indices)
        if warm.ndim != 1 or not np.issubdtype(warm.dtype, np.integer):
            raise InputError(f"warm items must be a 1-D integer array, got {warm.dtype} {warm.shape}")
        if warm.size == 0:
            raise InputError("the dataset has no warm items to draw negatives from")
        if (np.diff(warm.astype(np.int64)) <= 0).any() or warm[0] < 0 or warm[-1] >= num_items:
            raise InputError(f"warm items must be sorted, unique ids in 0..{num_items - 1}")
        if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or indptr[-1] != indices.size:
            raise InputError("indptr must be 1-D, start at 0 and end at len(indices)")
        if (np.diff(indptr) < 0).any():
            raise InputError("indptr must be non-decreasing")
        if indices.size and (indices.min() < 0 or indices.max() >= num_items):
            raise InputError(f"CSR indices must be item ids in 0..{num_items - 1}")
        steps = np.diff(indices.astype(np.int64))
        row_starts = indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < indices.size)]
        steps[row_starts - 1] = 1  # boundaries between rows may step down
        if (steps <= 0).any():
            raise InputError("each user's CSR row must be sorted ascending without duplicates")
        num_warm = int(warm.size)
        if num_neg > num_warm:
            raise InputError(
                f"num_neg={num_neg} is larger than the warm catalogue ({num_warm} items): no row can "
                f"hold {num_neg} distinct negatives; use --num-neg {num_warm} or fewer"
            )
        is_warm = np.zeros(num_items, dtype=bool)
        is_warm[warm] = True
        csum = np.concatenate([[0], np.cumsum(is_warm[indices], dtype=np.int64)])
        warm_deg = csum[indptr[1:]] - csum[indptr[:-1]]  # each user's warm training items
        self.allowed = (num_warm - warm_deg).astype(np.int64)
        self.num_neg, self.on_short, self.num_items = int(num_neg), on_short, int(num_items)
        self.warm = np.ascontiguousarray(warm, dtype=np.int32)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.dtype = item_dtype(num_items)

    def check_users(self, users: np.ndarray) -> None:
        """Refuse users that cannot supply `num_neg` distinct negatives (per `on_short`)."""
        users = np.asarray(users)
        if users.size == 0:
            return
        if users.min() < 0 or users.max() >= self.allowed.size:
            raise InputError(f"user ids must lie in 0..{self.allowed.size - 1}")
        allowed = self.allowed[users]
        if (allowed == 0).any():
            u = int(users[np.argmin(allowed)])
            raise InputError(f"user {u} has trained on every warm item: there is no negative to draw")
        short = allowed < self.num_neg
        if short.any() and self.on_short == "error":
            bad = np.unique(users[short])
            worst = int(bad[np.argmin(self.allowed[bad])])
            raise InputError(
                f"{bad.size} users have fewer than num_neg={self.num_neg} warm items left after "
                f"excluding their training items (worst: user {worst} with {self.allowed[worst]}); "
                "lower --num-neg, or pass --on-short repeat to fill such rows with all their allowed "
                "negatives repeated"
            )

    def sample(self, users: np.ndarray, row_offset: int, key: np.uint64,
               out: np.ndarray | None = None) -> np.ndarray:
        """(len(users), num_neg) negatives for rows row_offset.. of a generation keyed by `key`."""
        users = np.asarray(users)
        if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
            raise InputError(f"users must be a 1-D integer array, got {users.dtype} {users.shape}")
        users = np.ascontiguousarray(users, dtype=np.int32)
        self.check_users(users)
        shape = (users.size, self.num_neg)
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise InputError(f"out must be C-contiguous {self.dtype} {shape}, got {out.dtype} {out.shape}")
        args = (np.int64(row_offset), np.uint64(key), self.warm, self.num_items, self.indptr,
                self.indices, self.allowed, self.num_neg)
        if users.size * self.num_neg >= PARALLEL_MIN_NEGATIVES and numba.get_num_threads() > 1:
            blocks = int(min(users.size, 4 * numba.get_num_threads()))
            _sample_rows(users, *args, blocks, out)
        elif users.size:  # small chunk: a parallel launch would cost more than it saves
            stamp = np.zeros(self.num_items, np.int32)
            scratch = np.empty(self.warm.size, np.int32)
            _sample_block(users, 0, users.size, *args, out, stamp, scratch)
        return out


def sample_negatives(users, row_offset, key, warm, indptr, indices, num_items, num_neg,
                     on_short="error"):
    """One-shot fast sampler (builds a `SamplingPlan`; reuse the plan for many chunks)."""
    plan = SamplingPlan(warm, indptr, indices, num_items, num_neg, on_short)
    return plan.sample(users, row_offset, key)


# ---------------------------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------------------------


def sample_negatives_reference(users, row_offset, key, warm, indptr, indices, num_items, num_neg,
                               on_short="error"):
    """The obvious version of the contract, row by row in numpy: the fast kernel is held to it.

    Same rules and errors as `sample_negatives`; its random stream differs (numpy Generator per
    row), so compare behaviour and distributions, not bytes.
    """
    plan = SamplingPlan(warm, indptr, indices, num_items, num_neg, on_short)
    users = np.asarray(users, dtype=np.int64)
    plan.check_users(users)
    out = np.empty((users.size, num_neg), dtype=plan.dtype)
    for r, u in enumerate(users):
        rng = np.random.default_rng([int(key), int(row_offset) + r])
        allowed = np.setdiff1d(plan.warm, plan.indices[plan.indptr[u]:plan.indptr[u + 1]])
        if allowed.size >= num_neg:
            out[r] = rng.choice(allowed, size=num_neg, replace=False)
        else:
            out[r] = np.resize(rng.permutation(allowed), num_neg)
    return out


def sample_negatives_original(users, user_items: dict[int, list], warm_set: set, num_neg: int,
                              seed: int = 0) -> list[list[int]]:
    """The original CLCRec DataLoader's algorithm, for the benchmark: per pair,
    `random.sample(warm_set - set(user_items[user]), num_neg)`. (Python >= 3.11 refuses a set
    there; the original ran on versions that turned it into a tuple, as done here. The original
    also put validation/test items into `user_items`; pass training items only.)"""
    rnd = random.Random(seed)
    return [rnd.sample(tuple(warm_set - set(user_items[int(u)])), num_neg) for u in users]


def getitem_original(user: int, pos_item: int, user_items: dict[int, list], warm_set: set,
                     num_neg: int, rnd: random.Random):
    """The original `TrainingDataset.__getitem__` (sampling plus its two LongTensors), for the
    benchmark's second reference figure (the per-sample work of the original DataLoader)."""
    import torch

    neg = rnd.sample(tuple(warm_set - set(user_items[user])), num_neg)
    return torch.LongTensor([user] * (num_neg + 1)), torch.LongTensor([pos_item] + neg)
