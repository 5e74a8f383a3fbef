"""Computing and writing the chunks of one generation (the work under every build path).

    python cli.py build-negatives data/ml caches/ml --generation 0 --shard 0/2

Reads the dataset directory (train.npy, item_status.npy, meta.json) once per build; writes zarr
arrays users/pos/neg into a directory it is given (a `.tmp-gen-*` or `.tmp-shard-*` directory
that the caller later renames). Chunk i of generation g is a pure function of (dataset, config,
g, i): the pair shuffle is `pair_permutation(seed, g)` (under replay, `replay_order`: the dataset's
recent pairs and a sample of the others) and the negatives of shuffled row r come from the
counter-based stream (generation_key(seed, g), r), so any process can compute any chunk.

Sampling chunk i+1 (numba, GIL released) overlaps with compressing and writing chunk i (blosc
and file I/O in a writer thread).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import zarr

from cache.manifest import ARRAYS, NegativeConfig
from cache.store import crc32c
from common.errors import CacheError
from pipeline.dataset import load_dataset
from pipeline.negatives import (
    SamplingPlan,
    generation_key,
    item_dtype,
    pair_permutation,
    replay_count,
    replay_order,
)


class GenerationSource:
    """Everything needed to compute any chunk of any generation of one dataset and config."""

    def __init__(self, dataset_dir: Path, config: NegativeConfig):
        ds = load_dataset(dataset_dir)
        self.dataset_dir = Path(dataset_dir)
        self.meta = ds.meta
        self.fingerprint = ds.fingerprint
        self.config = config
        self.train = np.asarray(ds.train)  # (N, 2) int32, sorted by user then item
        # The kernel excludes whatever the CSR lists: training items, or every known item.
        indptr, indices = ds.known_csr() if config.exclusion == "all-known" else ds.train_csr()
        self.warm = ds.warm_items
        self.plan = SamplingPlan(self.warm, indptr, indices, ds.num_items, config.num_neg, config.on_short)
        self.plan.check_users(np.unique(self.train[:, 0]))  # fail before any writing
        self.item_dtype = item_dtype(ds.num_items)
        self.recent = self._recent(ds) if config.replay is not None else None
        self.num_rows = int(self.train.shape[0])
        if self.recent is not None:  # the recent pairs and their replayed share of the others
            n_new = int(self.recent.sum())
            self.num_rows = n_new + replay_count(n_new, self.num_rows - n_new, config.replay)
        self.num_chunks = -(-self.num_rows // config.chunk_rows)
        self._perm: tuple[int, np.ndarray] | None = None

    @staticmethod
    def _recent(ds) -> np.ndarray:
        """The dataset's recent-pair mask (bool (N_train,)), checked: replay needs one."""
        recent = ds.extra_array("train_recent")
        if recent is None or recent.dtype != np.bool_ or recent.shape != (len(ds.train),) or not recent.any():
            what = "has none" if recent is None else f"has a bad one ({recent.dtype} {recent.shape})"
            raise CacheError(f"replay needs the dataset's recent pairs (extras/train_recent.npy, bool, one per "
                             f"training pair, written by `cli.py update`); {ds.root} {what}: build without replay")
        return recent

    def permutation(self, generation: int) -> np.ndarray:
        """int64 (num_rows,) indices into the training pairs: generation `generation`'s rows in order."""
        if self._perm is None or self._perm[0] != generation:
            order = (pair_permutation(self.num_rows, self.config.seed, generation) if self.recent is None else
                     replay_order(self.recent, self.config.replay, self.config.seed, generation))
            self._perm = (generation, order)
        return self._perm[1]

    def chunk_range(self, i: int) -> tuple[int, int]:
        start = i * self.config.chunk_rows
        return start, min(self.num_rows, start + self.config.chunk_rows)

    def compute_chunk(self, generation: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users int32 (n,), pos item_dtype (n,), neg item_dtype (n, num_neg)) of chunk i."""
        start, stop = self.chunk_range(i)
        pairs = self.train[self.permutation(generation)[start:stop]]  # (n, 2)
        users = np.ascontiguousarray(pairs[:, 0], dtype=np.int32)
        pos = pairs[:, 1].astype(self.item_dtype)
        neg = self.plan.sample(users, start, generation_key(self.config.seed, generation))
        return users, pos, neg


def create_arrays(path: Path, num_rows: int, config: NegativeConfig, dtype: np.dtype) -> dict:
    """Empty zarr arrays users/pos/neg in a new group at `path` (metadata only)."""
    group = zarr.open_group(path, mode="w")
    codec = zarr.codecs.BloscCodec(cname=config.cname, clevel=config.clevel,
                                   shuffle=zarr.codecs.BloscShuffle.bitshuffle)
    specs = {
        "users": ((num_rows,), (config.chunk_rows,), np.int32),
        "pos": ((num_rows,), (config.chunk_rows,), dtype),
        "neg": ((num_rows, config.num_neg), (config.chunk_rows, config.num_neg), dtype),
    }
    return {
        name: group.create_array(name, shape=shape, chunks=chunks, dtype=dt, compressors=codec,
                                 fill_value=0, config={"write_empty_chunks": True})
        for name, (shape, chunks, dt) in specs.items()
    }


def chunk_key(array, i: int) -> str:
    """The store key (relative path) of chunk i of a users/pos/neg array."""
    return array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )


def write_chunks(source: GenerationSource, generation: int, arrays: dict, chunk_ids: range,
                 *, progress: bool = False, label: str = "") -> dict:
    """Compute and write the given chunks; returns {"checksums": {name: {i: crc}}, "seconds",
    "sample_seconds"}. Sampling of the next chunk overlaps the writing of the previous one."""
    sums: dict[str, dict[int, str]] = {name: {} for name in ARRAYS}

    def store(i: int, parts: tuple) -> int:
        start, stop = source.chunk_range(i)
        for name, arr in zip(ARRAYS, parts):
            arrays[name][start:stop] = arr
            sums[name][i] = crc32c(arr)
        return stop - start

    t0, sample_s, done = time.perf_counter(), 0.0, 0
    total = sum(source.chunk_range(i)[1] - source.chunk_range(i)[0] for i in chunk_ids)
    with _progress(progress, total, label) as bar, ThreadPoolExecutor(1, "cache-writer") as pool:
        task = bar.add_task(label or f"generation {generation}", total=total, rate="-") if bar else None
        pending: list[Future] = []

        def drain(keep: int) -> None:
            nonlocal done
            while len(pending) > keep:
                done += pending.pop(0).result()  # re-raises a writer error here
                if bar:
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=done, rate=f"{rate:,.0f}")

        for i in chunk_ids:
            ts = time.perf_counter()
            parts = source.compute_chunk(generation, i)
            sample_s += time.perf_counter() - ts
            pending.append(pool.submit(store, i, parts))
            drain(1)  # at most one chunk is written while the next is sampled
        drain(0)
    return {"checksums": sums, "seconds": time.perf_counter() - t0, "sample_seconds": sample_s}
