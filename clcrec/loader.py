"""Streams one epoch of a cached negative generation into training batches.

Reads: a published generation (cache.store.Generation). Writes: nothing.

    producer thread: read chunk (zarr decode) -> permute rows -> cut batches -> dedupe item ids
                     -> pin (CUDA) -> bounded queue
    consumer (train loop): DevicePrefetcher copies batch i+1 to the device on a side stream
                     (non_blocking) while batch i computes.

Order: the epoch's chunk order and each chunk's row permutation derive from (seed, epoch, chunk),
so an epoch is reproducible (resume gives the same batches). Rows left over at the end of a chunk
are stitched to the start of the next one, so only the epoch's last batch can be short.

Distributed runs: every rank walks the same sequence of *global* batches (exactly the batches of a
1-process run) and keeps its own contiguous slice of each, so every pair is served exactly once
per epoch across ranks and every rank runs the same number of steps (DDP needs no Join, and the
ranks' optimizer states stay identical). Each rank decodes every chunk but assembles only its rows.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, fields

import numba
import numpy as np
import torch

from pipeline.errors import UserError


@dataclass
class Batch:
    users: torch.Tensor  # (B,) int64
    items: torch.Tensor  # (B, 1+K) int64, positive in column 0
    uniq: torch.Tensor | None = None  # (Q,) int64 distinct items, first-appearance order
    inverse: torch.Tensor | None = None  # (B, 1+K) int64 index into uniq
    offset: int = 0  # where this slice starts in its global batch (distributed runs)
    global_size: int = -1  # rows of the global batch this slice belongs to (-1: the slice itself)

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


def epoch_chunk_order(num_chunks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x0C4C]).permutation(num_chunks)


def slice_bounds(rows: int, world: int) -> np.ndarray:
    """(world+1,) boundaries splitting a global batch of `rows` into near-equal contiguous slices."""
    return (np.arange(world + 1, dtype=np.int64) * rows) // world


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
        if batch_size % world:
            raise ValueError(f"the global batch size {batch_size} must be divisible by the {world} ranks")
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size  # global batch size
        self.rank, self.world = rank, world
        self.chunks = epoch_chunk_order(generation.num_chunks, seed, epoch)
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

    def _make_batch(self, users: np.ndarray, items: np.ndarray, slot_of: np.ndarray, offset: int, gsize: int) -> Batch:
        b = Batch(users=torch.from_numpy(users.astype(np.int64)), items=torch.from_numpy(items),
                  offset=offset, global_size=gsize)
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
            B, world, rank = self.batch_size, self.world, self.rank
            n_total = self.gen.num_rows
            n_batches = -(-n_total // B)
            last_rows = n_total - (n_batches - 1) * B  # rows of the (possibly short) last global batch
            full_bounds, last_bounds = slice_bounds(B, world), slice_bounds(last_rows, world)

            def slice_of(bi: int) -> tuple[int, int, int]:  # (offset, size, global size) of this rank
                bounds, gsize = (last_bounds, last_rows) if bi == n_batches - 1 else (full_bounds, B)
                return int(bounds[rank]), int(bounds[rank + 1] - bounds[rank]), gsize

            g0, carry_u, carry_i, carry_bi = 0, [], [], -1
            for c in self.chunks:
                users, pos, neg = self.gen.read_chunk(int(c), verify=self.verify)
                n = len(users)
                perm = chunk_permutation(n, self.seed, self.epoch, int(c))
                g = np.arange(g0, g0 + n, dtype=np.int64)  # global epoch positions of the permuted rows
                g0 += n
                bi = g // B
                if world > 1:  # keep only this rank's slice of each global batch
                    p = g - bi * B
                    is_last = bi == n_batches - 1
                    owner = np.where(is_last, np.searchsorted(last_bounds, p, side="right"),
                                     np.searchsorted(full_bounds, p, side="right")) - 1
                    keep = np.flatnonzero(owner == rank)
                    perm, bi = perm[keep], bi[keep]
                items = np.empty((len(perm), 1 + neg.shape[1]), dtype=np.int64)  # (n_rank, 1+K)
                items[:, 0] = pos[perm]
                items[:, 1:] = neg[perm]
                users = users[perm]
                out, start = [], 0
                while start < len(bi):  # rows arrive grouped by global batch, in order
                    cur = int(bi[start])
                    end = int(np.searchsorted(bi, cur, side="right"))
                    if cur != carry_bi:
                        carry_u, carry_i, carry_bi = [], [], cur
                    carry_u.append(users[start:end])
                    carry_i.append(items[start:end])
                    offset, size, gsize = slice_of(cur)
                    if sum(len(u) for u in carry_u) == size:
                        u_cat = carry_u[0] if len(carry_u) == 1 else np.concatenate(carry_u)
                        i_cat = carry_i[0] if len(carry_i) == 1 else np.concatenate(carry_i)
                        out.append(self._make_batch(u_cat, i_cat, slot_of, offset, gsize))
                        carry_u, carry_i = [], []
                    start = end
                if out and not self._put(out):
                    return
            offset, size, gsize = slice_of(n_batches - 1)
            if size == 0 and n_batches > 0:  # this rank's share of a tiny last batch is empty, but
                empty = np.empty((0, 1 + self.gen.num_neg), dtype=np.int64)  # it must still step
                if not self._put([self._make_batch(np.empty(0, np.int64), empty, slot_of, offset, gsize)]):
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
                    if isinstance(item.exc, UserError):  # e.g. a corrupt chunk: its message says what to do
                        raise item.exc
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

    Each copy records a CUDA event; the compute stream waits on that batch's event only (a GPU-side
    wait, not a host sync), so batch i never waits for batch i+1's copy. On CPU this is a
    pass-through; the training loop is the same code either way.
    """

    def __init__(self, batches, device: torch.device):
        self.batches = batches
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _load(self, b: Batch):
        if self.stream is None:
            return b, None
        with torch.cuda.stream(self.stream):
            moved = b.apply(lambda t: t.to(self.device, non_blocking=True))
            done = torch.cuda.Event()
            done.record(self.stream)
        return moved, done

    def _ready(self, loaded) -> Batch:
        b, done = loaded
        if done is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(done)
            for t in b.tensors():
                t.record_stream(cur)  # the caching allocator must not reuse them while compute runs
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
