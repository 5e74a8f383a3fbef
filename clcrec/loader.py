"""Streams one epoch of a cached negative generation into training batches.

Reads: a published generation (cache.store.Generation). Writes: nothing.

Two ways to assemble batches, with the same order and the same batches:

    Per chunk, in `readers` threads (each chunk independent of the others): read it (zarr decode,
    checksum), take this rank's rows in epoch order and draw their hybrid slots (compiled hash,
    40M rows/s per core). Then one producer thread, in chunk order:
    host   (CPU training): permuted rows -> cut batches -> dedupe item ids -> bounded queue; the
           training loop takes batches (DevicePrefetcher is then a pass-through).
    device (CUDA training): the chunk *as stored* (uint16 item ids where they fit) and its draws as
           bytes, pinned in the reader -> bounded queue; the training loop copies each chunk to the
           GPU once on a side stream, permutes and widens it there, and cuts batches as views of
           the permuted chunk. The host does O(chunks) work, not O(batches).

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
from dataclasses import dataclass

import numpy as np
import torch

from clcrec.batches import Batch, BatchCutter, EpochPlan, dedupe_batch, epoch_chunk_order
from clcrec.step import hybrid_mask_np
from pipeline.errors import UserError

ASSEMBLE_MODES = ("host", "device")


@dataclass
class HostChunk:
    """One chunk as stored, with this rank's row order: what device assembly ships to the GPU."""

    users: torch.Tensor  # (n,) int32
    pos: torch.Tensor  # (n,) int16 (uint16 bits) or int32
    neg: torch.Tensor  # (n, K) like pos
    perm: torch.Tensor  # (m,) int64 rows this rank keeps, in epoch order
    bi: np.ndarray  # (m,) global batch of each kept row
    unsigned16: bool  # pos/neg hold uint16 bits in int16
    hybrid: torch.Tensor | None = None  # (m, 1+K) bool hybrid draws of the kept rows, in their order


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

    def _prepared_chunks(self):
        """Each chunk of the epoch, in order, as `_prepare` leaves it; with `readers` > 1, threads
        prepare ahead in parallel (zarr decoding, checksums, numpy indexing, the compiled hash and
        pinning copies all release the GIL for most of their time), so the producer thread only
        orders, cuts and queues."""
        sizes = [stop - start for start, stop in (self.gen.chunk_range(int(c)) for c in self.chunks)]
        starts = np.cumsum([0] + sizes)
        jobs = [(int(c), int(g0)) for c, g0 in zip(self.chunks, starts[:-1])]  # (chunk, epoch position of its first row)
        if self.readers == 1:
            for c, g0 in jobs:
                yield self._prepare(c, g0)
            return
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="chunk-reader", initializer=self._bind_device)
        pending: deque = deque()
        try:
            order = iter(jobs)
            for job in order:
                pending.append(pool.submit(self._prepare, *job))
                if len(pending) >= 2 * self.readers:
                    break
            while pending and not self._stop.is_set():
                fut = pending.popleft()
                nxt = next(order, None)
                if nxt is not None:
                    pending.append(pool.submit(self._prepare, *nxt))
                yield fut.result()
        finally:
            # An early stop closes this generator at its yield (GeneratorExit): cancel the reads not
            # yet started before waiting, so only the `readers` in flight finish, not 2 x readers.
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, c: int, g0: int):
        """Chunk c, read and verified, with this rank's rows in epoch order and their hybrid draws:
        a pinned HostChunk for device assembly; (users, items, batch of each row, hybrid) for the
        host's batch cutter. Independent of every other chunk, so it runs in any reader thread."""
        users, pos, neg = self.gen.read_chunk(c, verify=self.verify)
        perm, bi, where = self.plan.chunk_rows(c, len(users), g0)
        hyb = None
        if self.hybrid is not None:
            hyb = torch.from_numpy(hybrid_mask_np(self.hybrid[0], where, 1 + neg.shape[1], self.hybrid[1]))
        if self.assemble == "device":  # ship the chunk as stored
            return self._host_chunk(users, pos, neg, perm, bi, hyb)
        items = np.empty((len(perm), 1 + neg.shape[1]), dtype=np.int64)  # (n_rank, 1+K)
        items[:, 0] = pos[perm]
        items[:, 1:] = neg[perm]
        return torch.from_numpy(users[perm].astype(np.int64)), torch.from_numpy(items), bi, hyb

    def _bind_device(self) -> None:
        """A new thread's current CUDA device is 0. Threads that pin bind to this stream's GPU, so no
        CUDA call of theirs opens a context (hundreds of MB) on GPU 0 in every rank's process."""
        if self.pin and self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)

    def _produce(self) -> None:
        try:
            self._bind_device()
            slot_of = np.full(self.num_items, -1, dtype=np.int64) if self.dedupe else None
            cutter = BatchCutter(self.plan) if self.assemble == "host" else None
            if cutter is not None:
                cutter.with_hybrid = self.hybrid is not None
            for prepared in self._prepared_chunks():
                if cutter is None:  # device assembly: the HostChunk goes as it is
                    item = prepared
                else:
                    item = [self._finish(b, slot_of) for b in cutter.feed(*prepared)]
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

    def _host_chunk(self, users, pos, neg, perm, bi, hybrid) -> HostChunk:
        p, unsigned = _as_torch_ids(pos)
        q, _ = _as_torch_ids(neg)
        # The hybrid draws travel as bytes: the compiled hash does 40M rows/s on one core, where
        # the same hash in int64 tensor ops is ~20 full-width kernels per chunk on the GPU.
        hc = HostChunk(users=torch.from_numpy(np.ascontiguousarray(users, dtype=np.int32)), pos=p, neg=q,
                       perm=torch.from_numpy(perm.astype(np.int64, copy=False)), bi=bi, unsigned16=unsigned,
                       hybrid=hybrid)
        if self.pin:  # pinned, so the copy to the GPU is a true async DMA
            for f in ("users", "pos", "neg", "perm", "hybrid"):
                if getattr(hc, f) is not None:
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
        hybrid = None if hc.hybrid is None else hc.hybrid.to(dev, non_blocking=True)  # drawn on the host
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
