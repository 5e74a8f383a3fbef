"""Streams one epoch of a cached negative generation into training batches.

Reads: a published generation (cache.store.Generation). Writes: nothing.

Two ways to assemble batches, with the same order and the same batches:

    host   (CPU training): producer thread: read chunks (zarr decode, checksum; `readers` threads)
           -> permute rows -> cut batches -> dedupe item ids -> bounded queue; the training loop
           takes batches (DevicePrefetcher is then a pass-through).
    device (CUDA training): producer thread: read chunks -> the chunk's row permutation -> pin the
           chunk *as stored* (uint16 item ids where they fit) -> bounded queue; the training loop
           copies each chunk to the GPU once on a side stream, permutes and widens it there, and
           cuts batches as views of the permuted chunk. The host does O(chunks) work, not O(batches).

Order: the epoch's chunk order and each chunk's row permutation derive from (seed, epoch, chunk),
so an epoch is reproducible (resume gives the same batches) and the same on CPU and GPU. Rows left
over at the end of a chunk are stitched to the start of the next one, so only the epoch's last
batch can be short. Each batch knows `row0`, its first row's position in the epoch, which seeds
the per-slot hybrid draws (clcrec.step.hybrid_mask) independently of batching and ranks.

Distributed runs: every rank walks the same sequence of *global* batches (exactly the batches of a
1-process run) and keeps its own contiguous slice of each, so every pair is served exactly once
per epoch across ranks and every rank runs the same number of steps (DDP needs no Join, and the
ranks' optimizer states stay identical). Each rank decodes every chunk but assembles only its rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numba
import numpy as np
import torch

from clcrec.step import hybrid_mask, hybrid_mask_np
from pipeline.errors import UserError

ASSEMBLE_MODES = ("host", "device")


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


@dataclass
class HostChunk:
    """One chunk as stored, with this rank's row order: what device assembly ships to the GPU."""

    users: torch.Tensor  # (n,) int32
    pos: torch.Tensor  # (n,) int16 (uint16 bits) or int32
    neg: torch.Tensor  # (n, K) like pos
    perm: torch.Tensor  # (m,) int64 rows this rank keeps, in epoch order
    bi: np.ndarray  # (m,) global batch of each kept row
    where: torch.Tensor  # (m,) int64 epoch position of each kept row (seeds the hybrid draws)
    unsigned16: bool  # pos/neg hold uint16 bits in int16


def _as_torch_ids(a: np.ndarray) -> tuple[torch.Tensor, bool]:
    """Item ids as stored, as a torch tensor without widening: uint16 travels as int16 bits."""
    if a.dtype == np.uint16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)), True
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int32, copy=False)), False


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class ChunkStream:
    """Iterable of `Batch`es for one epoch and one rank; a producer thread fills a queue.

    assemble="host" yields host batches (pinned when pin=True); assemble="device" yields batches
    already on `device` (see the module docstring). Use as a context manager (or call close()) so
    the thread stops if training stops early. `wait_s` accumulates the time the consumer spent
    blocked waiting for data.
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
        assemble: str = "host",
        device: torch.device | str = "cpu",
        readers: int = 1,
        hybrid: tuple[int, float] | None = None,
    ):
        self.gen = generation
        self.num_items = num_items
        if batch_size % world:
            raise ValueError(f"the global batch size {batch_size} must be divisible by the {world} ranks")
        if assemble not in ASSEMBLE_MODES:
            raise UserError(f"assemble must be one of {ASSEMBLE_MODES}, got {assemble!r}")
        if assemble == "device" and dedupe:
            raise UserError("device batch assembly does not deduplicate item ids; use encode 'slots' or scoring 'dense'")
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size  # global batch size
        self.rank, self.world = rank, world
        self.chunks = epoch_chunk_order(generation.num_chunks, seed, epoch)
        self.dedupe, self.pin, self.verify = dedupe, pin, verify
        self.assemble, self.device, self.readers = assemble, torch.device(device), max(1, int(readers))
        self.hybrid = hybrid  # (epoch key, num_sample): draw each row's hybrid slots per chunk
        self.plan = EpochPlan(generation.num_rows, batch_size, rank, world, seed, epoch)
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

    def _read_chunks(self):
        """(chunk id, users, pos, neg) in epoch order; `readers` threads decode ahead in parallel
        (zarr decoding and checksums release the GIL for most of their time)."""
        if self.readers == 1:
            for c in self.chunks:
                yield int(c), *self.gen.read_chunk(int(c), verify=self.verify)
            return
        with ThreadPoolExecutor(self.readers, thread_name_prefix="chunk-reader") as pool:
            pending: deque = deque()
            order = iter(self.chunks)
            for c in order:
                pending.append((int(c), pool.submit(self.gen.read_chunk, int(c), verify=self.verify)))
                if len(pending) >= 2 * self.readers:
                    break
            while pending and not self._stop.is_set():
                c, fut = pending.popleft()
                nxt = next(order, None)
                if nxt is not None:
                    pending.append((int(nxt), pool.submit(self.gen.read_chunk, int(nxt), verify=self.verify)))
                yield c, *fut.result()
            for _, fut in pending:
                fut.cancel()

    def _produce(self) -> None:
        try:
            slot_of = np.full(self.num_items, -1, dtype=np.int64) if self.dedupe else None
            cutter = BatchCutter(self.plan) if self.assemble == "host" else None
            g0 = 0
            for c, users, pos, neg in self._read_chunks():
                n = len(users)
                perm, bi, where = self.plan.chunk_rows(c, n, g0)
                g0 += n
                if cutter is None:  # device assembly: ship the chunk as stored
                    item = self._host_chunk(users, pos, neg, perm, bi, where)
                else:
                    items = np.empty((len(perm), 1 + neg.shape[1]), dtype=np.int64)  # (n_rank, 1+K)
                    items[:, 0] = pos[perm]
                    items[:, 1:] = neg[perm]
                    u = torch.from_numpy(users[perm].astype(np.int64))
                    hyb = None
                    if self.hybrid is not None:
                        cutter.with_hybrid = True
                        hyb = torch.from_numpy(hybrid_mask_np(self.hybrid[0], where, items.shape[1], self.hybrid[1]))
                    item = cutter.feed(u, torch.from_numpy(items), bi, hyb)
                    item = [self._finish(b, slot_of) for b in item]
                if (cutter is None or item) and not self._put(item):
                    return
            if cutter is not None:
                tail = cutter.tail(torch.empty((0, 1 + self.gen.num_neg), dtype=torch.int64))
                if tail and not self._put([self._finish(b, slot_of) for b in tail]):
                    return
            self._put(_DONE)
        except BaseException as e:  # surfaced in the consumer with its cause
            self._put(_Failure(e))

    def _finish(self, b: Batch, slot_of) -> Batch:
        if self.dedupe:
            b = dedupe_batch(b, slot_of)
        if self.pin:
            b = b.apply(lambda t: t.pin_memory())
        return b

    def _host_chunk(self, users, pos, neg, perm, bi, where) -> HostChunk:
        p, unsigned = _as_torch_ids(pos)
        q, _ = _as_torch_ids(neg)
        hc = HostChunk(users=torch.from_numpy(np.ascontiguousarray(users, dtype=np.int32)), pos=p, neg=q,
                       perm=torch.from_numpy(perm.astype(np.int64, copy=False)), bi=bi,
                       where=torch.from_numpy(where), unsigned16=unsigned)
        if self.pin:  # pinned, so the copy to the GPU is a true async DMA
            for f in ("users", "pos", "neg", "perm", "where"):
                setattr(hc, f, getattr(hc, f).pin_memory())
        return hc

    # -- consumer ---------------------------------------------------------------------------
    def _get(self):
        """The producer's next item (None when the epoch is done); its failure, re-raised here."""
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if item is _DONE:
            return None
        if isinstance(item, _Failure):
            if isinstance(item.exc, UserError):  # e.g. a corrupt chunk: its message says what to do
                raise item.exc
            raise RuntimeError(f"the negative-cache reader failed: {item.exc}") from item.exc
        return item

    def __iter__(self):
        self._thread = threading.Thread(target=self._produce, name="chunk-producer", daemon=True)
        self._thread.start()
        try:
            if self.assemble == "host":
                while (item := self._get()) is not None:
                    yield from item
                return
            # Device assembly, one chunk ahead: chunk c+1 is copied and permuted on the side stream
            # while the batches of chunk c compute.
            assembler, pending = _DeviceAssembler(self.plan, self.device, self.hybrid), None
            while (item := self._get()) is not None:
                launched = assembler.feed(item)
                if pending is not None:
                    yield from assembler.ready(*pending)
                pending = launched
            if pending is not None:
                yield from assembler.ready(*pending)
            yield from assembler.tail()
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


class _DeviceAssembler:
    """The consumer half of device assembly: one H2D copy per chunk on a side stream, the
    permutation and widening there too, then batches cut as views (BatchCutter). The compute
    stream waits on the chunk's event (a GPU-side wait, no host sync). On CPU the same code runs
    synchronously, which is what the tests compare against host assembly."""

    def __init__(self, plan: EpochPlan, device: torch.device, hybrid: tuple[int, float] | None):
        self.cutter, self.device, self.hybrid = BatchCutter(plan), device, hybrid
        self.cutter.with_hybrid = hybrid is not None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._width = None

    def _assemble(self, hc: HostChunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        dev = self.device
        users = hc.users.to(dev, non_blocking=True)
        pos = hc.pos.to(dev, non_blocking=True)
        neg = hc.neg.to(dev, non_blocking=True)
        perm = hc.perm.to(dev, non_blocking=True)
        items = torch.empty((perm.numel(), 1 + neg.shape[1]), dtype=torch.int64, device=dev)  # (m, 1+K)
        items[:, 0] = pos.index_select(0, perm)
        items[:, 1:] = neg.index_select(0, perm)
        if hc.unsigned16:  # int16 bits of uint16 ids: undo the sign extension
            items &= 0xFFFF
        hybrid = None
        if self.hybrid is not None:  # one launch sequence per chunk, not per step
            key = torch.full((), self.hybrid[0], dtype=torch.int64, device=dev)
            hybrid = hybrid_mask(key, hc.where.to(dev, non_blocking=True), items.shape[1], self.hybrid[1])
        return users.index_select(0, perm).long(), items, hybrid

    def feed(self, hc: HostChunk) -> tuple[list[Batch], object]:
        """Launch the chunk's copy and assembly; returns (its batches, the event that ends them)."""
        self._width = 1 + hc.neg.shape[1]
        if self.stream is None:
            users, items, hybrid = self._assemble(hc)
            return self.cutter.feed(users, items, hc.bi, hybrid), None
        with torch.cuda.stream(self.stream):  # batches spanning two chunks are cat here too
            users, items, hybrid = self._assemble(hc)
            batches = self.cutter.feed(users, items, hc.bi, hybrid)
            done = torch.cuda.Event()
            done.record(self.stream)
        # Pinned sources may be freed now: torch's host allocator keeps them until the copy ends.
        return batches, done

    def ready(self, batches: list[Batch], done) -> list[Batch]:
        """Make the compute stream wait for the chunk (a GPU-side wait, no host sync)."""
        if done is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(done)
            for b in batches:
                for t in b.tensors():
                    t.record_stream(cur)  # made on the side stream, used on the compute stream
        return batches

    def tail(self) -> list[Batch]:
        return self.cutter.tail(torch.empty((0, self._width or 1), dtype=torch.int64, device=self.device))


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


def batches_on_device(stream: ChunkStream, device: torch.device):
    """The training loop's batch source: device-assembled batches as they are, host batches through
    the side-stream prefetcher."""
    return stream if stream.assemble == "device" else DevicePrefetcher(stream, device)
