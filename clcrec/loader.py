"""Streams one epoch of a cached negative generation into training batches.

Reads: a published generation (cache.store.Generation). Writes: nothing.

    producer thread: read chunk (zarr decode) -> permute rows -> cut batches -> dedupe item ids
                     -> pin (CUDA) -> bounded queue
    consumer (train loop): DevicePrefetcher copies batch i+1 to the device on a side stream
                     (non_blocking) while batch i computes.

Order: the epoch's chunk order and each chunk's row permutation derive from (seed, epoch, chunk),
so an epoch is reproducible (resume gives the same batches) and every rank of a distributed run
can compute its own disjoint share (chunks rank::world) with no communication. Every pair is
served exactly once per epoch across ranks: rows left over at the end of a chunk are stitched to
the start of the next chunk of the same rank, and only the last batch of a rank can be short.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numba
import numpy as np
import torch


@dataclass
class Batch:
    users: torch.Tensor  # (B,) int64
    items: torch.Tensor  # (B, 1+K) int64, positive in column 0
    uniq: torch.Tensor | None = None  # (Q,) int64 distinct items, first-appearance order
    inverse: torch.Tensor | None = None  # (B, 1+K) int64 index into uniq

    def tensors(self):
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]

    def apply(self, fn) -> "Batch":
        return Batch(**{f.name: (None if (t := getattr(self, f.name)) is None else fn(t)) for f in fields(self)})

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


def epoch_chunk_order(num_chunks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x0C4C]).permutation(num_chunks)


def rank_chunks(num_chunks: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The chunks rank `rank` reads in epoch `epoch`, in order: a disjoint share of a permutation."""
    return epoch_chunk_order(num_chunks, seed, epoch)[rank::world]


def chunk_permutation(n: int, seed: int, epoch: int, chunk: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, chunk, 0x0C4C]).permutation(n)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class ChunkStream:
    """Iterable of host `Batch`es for one epoch and one rank; a producer thread fills a queue.

    Use as a context manager (or call close()) so the thread stops if training stops early.
    `wait_s` accumulates the time the consumer spent blocked waiting for data.
    """

    def __init__(
        self,
        generation,
        *,
        num_items: int,
        seed: int,
        epoch: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        dedupe: bool = True,
        pin: bool = False,
        prefetch: int = 4,
        verify: bool = True,
    ):
        self.gen = generation
        self.num_items = num_items
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size
        self.chunks = rank_chunks(generation.num_chunks, seed, epoch, rank, world)
        self.dedupe, self.pin, self.verify = dedupe, pin, verify
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producer ---------------------------------------------------------------------------
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _make_batch(self, users: np.ndarray, items: np.ndarray, slot_of: np.ndarray) -> Batch:
        b = Batch(users=torch.from_numpy(users.astype(np.int64)), items=torch.from_numpy(items))
        if self.dedupe:
            flat = items.reshape(-1)
            uniq = np.empty(flat.shape[0], dtype=np.int64)
            inverse = np.empty(flat.shape[0], dtype=np.int64)
            q = _dedupe(flat, slot_of, uniq, inverse)
            b.uniq = torch.from_numpy(uniq[:q].copy())
            b.inverse = torch.from_numpy(inverse.reshape(items.shape))
        if self.pin:
            b = b.apply(lambda t: t.pin_memory())
        return b

    def _produce(self) -> None:
        try:
            slot_of = np.full(self.num_items, -1, dtype=np.int64)
            carry_u = carry_i = None
            bs = self.batch_size
            for c in self.chunks:
                users, pos, neg = self.gen.read_chunk(int(c), verify=self.verify)
                perm = chunk_permutation(len(users), self.seed, self.epoch, int(c))
                items = np.empty((len(users), 1 + neg.shape[1]), dtype=np.int64)  # (n, 1+K)
                items[:, 0] = pos[perm]
                items[:, 1:] = neg[perm]
                users = users[perm]
                start, out = 0, []
                if carry_u is not None:  # stitch the previous chunk's tail to this chunk's head
                    take = min(bs - len(carry_u), len(users))
                    carry_u = np.concatenate([carry_u, users[:take]])
                    carry_i = np.concatenate([carry_i, items[:take]])
                    start = take
                    if len(carry_u) == bs:
                        out.append(self._make_batch(carry_u, carry_i, slot_of))
                        carry_u = carry_i = None
                while start + bs <= len(users):
                    out.append(self._make_batch(users[start : start + bs], items[start : start + bs], slot_of))
                    start += bs
                if start < len(users):
                    carry_u, carry_i = users[start:].copy(), items[start:].copy()
                if out and not self._put(out):
                    return
            if carry_u is not None and not self._put([self._make_batch(carry_u, carry_i, slot_of)]):
                return
            self._put(_DONE)
        except BaseException as e:  # surfaced in the consumer with its cause
            self._put(_Failure(e))

    # -- consumer ---------------------------------------------------------------------------
    def __iter__(self):
        self._thread = threading.Thread(target=self._produce, name="chunk-producer", daemon=True)
        self._thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = self._queue.get()
                self.wait_s += time.perf_counter() - t0
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise RuntimeError(f"the negative-cache reader failed: {item.exc}") from item.exc
                yield from item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # Drain so a producer blocked on put() sees the stop flag promptly.
            while self._thread.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.05)
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DevicePrefetcher:
    """Copies the next batch to the device on a side stream while the current one computes.

    On CPU this is a pass-through; the training loop is the same code either way.
    """

    def __init__(self, batches, device: torch.device):
        self.batches = batches
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _load(self, b: Batch) -> Batch:
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()
        with ctx:
            return b.apply(lambda t: t.to(self.device, non_blocking=True))

    def _ready(self, b: Batch) -> Batch:
        if self.stream is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(self.stream)  # GPU-side wait, not a host sync
            for t in b.tensors():
                t.record_stream(cur)
        return b

    def __iter__(self):
        it = iter(self.batches)
        try:
            nxt = self._load(next(it))
        except StopIteration:
            return
        for host in it:
            cur, nxt = nxt, self._load(host)
            yield self._ready(cur)
        yield self._ready(nxt)
