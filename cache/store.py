"""Reading a negative cache: published generations, chunk by chunk, checksummed, under a lease.

    python cli.py cache-verify caches/ml      # reads and checks every chunk of every generation

Reads CACHE/manifest.json and CACHE/gen-NNNNNN/ (zarr v3 groups, layout in cache/manifest.py);
writes only lease lock files (CACHE/leases/). Readers never see a partial generation: a
generation exists for them only once the manifest lists it.

    store = CacheStore(cache_dir)
    with store.reader_lease(g):
        gen = store.open_generation(g, expect_fingerprint=dataset.fingerprint)
        for i in range(gen.num_chunks):
            users, pos, neg = gen.read_chunk(i)    # (n,) int32, (n,) item dtype, (n, num_neg)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import google_crc32c
import numpy as np
import zarr

from cache.lock import generation_in_use, lease_path
from cache.manifest import (
    NegativeConfig,
    check_fingerprint,
    gen_name,
    published_ids,
    read_manifest,
)
from common.errors import CacheError
from common.lock import FileLock

__all__ = ["CacheStore", "Generation", "NegativeConfig", "UnreadableGenerationError", "crc32c"]


class UnreadableGenerationError(CacheError):
    """A published generation whose store cannot be opened (garbled metadata, directory gone, wrong
    shape): the whole generation is bad, and `cache-verify --drop-bad` drops it like bad chunks."""


def crc32c(arr: np.ndarray) -> str:
    """crc32c of an array's C-order bytes, as 8 hex digits."""
    return f"{google_crc32c.value(np.ascontiguousarray(arr).tobytes()):08x}"  # needs read-only bytes


class Generation:
    """One published generation, opened for reading. Chunks are self-contained and in shuffled order."""

    def __init__(self, cache_dir: Path, generation: int, entry: dict, config: NegativeConfig,
                 item_dtype: np.dtype, path: Path | None = None):
        self.cache_dir = Path(cache_dir)
        self.generation = int(generation)
        self.entry = entry
        self.num_rows = int(entry["num_rows"])
        self.num_chunks = int(entry["num_chunks"])
        self.chunk_rows = int(config.chunk_rows)
        self.num_neg = int(config.num_neg)
        self.item_dtype = np.dtype(item_dtype)
        self.path = Path(path) if path is not None else self.cache_dir / gen_name(generation)
        try:
            group = zarr.open_group(self.path, mode="r")
            self._arrays = {name: group[name] for name in ("users", "pos", "neg")}
        except Exception as e:  # zarr raises several types for missing or garbled metadata
            raise UnreadableGenerationError(
                f"generation {generation} of {cache_dir} is listed in the manifest but its store "
                f"{self.path} cannot be opened ({type(e).__name__}: {e}); drop it with "
                f"`python cli.py cache-verify {cache_dir} --drop-bad` and rebuild"
            ) from e
        neg = self._arrays["neg"]
        if neg.shape != (self.num_rows, self.num_neg) or neg.dtype != self.item_dtype:
            raise UnreadableGenerationError(
                f"generation {generation} of {cache_dir}: neg array is {neg.dtype} {neg.shape}, the "
                f"manifest says {self.item_dtype} {(self.num_rows, self.num_neg)}; drop it with "
                f"`python cli.py cache-verify {cache_dir} --drop-bad` and rebuild"
            )

    def chunk_range(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_chunks:
            raise CacheError(f"generation {self.generation} has chunks 0..{self.num_chunks - 1}, not {i}")
        start = i * self.chunk_rows
        return start, min(self.num_rows, start + self.chunk_rows)

    def read_chunk(self, i: int, verify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users int32 (n,), pos (n,), neg (n, num_neg)) of chunk i; CacheError if it is corrupt."""
        start, stop = self.chunk_range(i)
        where = (f"generation {self.generation}, chunk {i} (rows {start}..{stop - 1}) of "
                 f"{self.cache_dir}")
        try:
            out = tuple(self._arrays[name][start:stop] for name in ("users", "pos", "neg"))
        except Exception as e:  # a garbled chunk fails inside the blosc decoder
            raise CacheError(
                f"{where} cannot be decoded ({type(e).__name__}: {e}); the file is corrupt: drop the "
                f"generation with `python cli.py cache-verify {self.cache_dir} --drop-bad` and rebuild"
            ) from e
        if verify:
            sums = self.entry["checksums"]
            for name, arr in zip(("users", "pos", "neg"), out):
                got = crc32c(arr)
                if got != sums[name][i]:
                    raise CacheError(
                        f"{where} is corrupt: checksum of {name} is {got}, the manifest recorded "
                        f"{sums[name][i]}; drop the generation with `python cli.py cache-verify "
                        f"{self.cache_dir} --drop-bad` and rebuild it"
                    )
        return out

    def verify(self) -> list[str]:
        """Check every chunk; returns one message per bad chunk (empty if all are good)."""
        bad = []
        for i in range(self.num_chunks):
            try:
                self.read_chunk(i, verify=True)
            except CacheError as e:
                bad.append(str(e))
        return bad


class CacheStore:
    """A cache directory, read side. Properties answer from the manifest as last read (at
    construction or `refresh()`); `published`, `open_generation` and `reader_lease` re-read it."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)

    def refresh(self) -> dict:
        self.manifest = read_manifest(self.cache_dir)
        return self.manifest

    @property
    def dataset_path(self) -> Path:
        return Path(self.manifest["dataset"]["path"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["dataset"]["fingerprint"]

    @property
    def config(self) -> NegativeConfig:
        return NegativeConfig.from_dict(self.manifest["config"])

    @property
    def item_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["config"]["item_dtype"])

    def published(self) -> list[int]:
        """Complete generation ids, ascending (re-reads the manifest)."""
        return published_ids(self.refresh())

    def open_generation(self, g: int, expect_fingerprint: str | None = None) -> Generation:
        manifest = self.refresh()
        if expect_fingerprint is not None:
            check_fingerprint(manifest, expect_fingerprint, self.cache_dir)
        entry = manifest["generations"].get(str(int(g)))
        if entry is None:
            have = published_ids(manifest)
            raise CacheError(
                f"generation {g} is not published in {self.cache_dir} (published: {have or 'none'}); "
                f"build it with `python cli.py build-negatives {manifest['dataset']['path']} "
                f"{self.cache_dir} --generation {g}`"
            )
        if entry.get("fingerprint", self.fingerprint) != self.fingerprint:
            raise CacheError(f"generation {g} of {self.cache_dir} records another dataset; rebuild the cache")
        return Generation(self.cache_dir, g, entry, self.config, self.item_dtype)

    @contextmanager
    def reader_lease(self, g: int):
        """Hold a shared lease on generation g: the pruner skips it until the block exits.

        Raises CacheError if g is not (or no longer) published once the lease is held.
        """
        lease = FileLock(lease_path(self.cache_dir, g), shared=True, error=CacheError)
        lease.acquire(wait=True)  # the pruner holds it exclusively only while deleting
        try:
            if int(g) not in self.published():  # checked under the lease: no prune can interleave
                raise CacheError(
                    f"generation {g} is not published in {self.cache_dir} (it may have just been "
                    f"pruned); published: {self.published() or 'none'}"
                )
            yield self
        finally:
            lease.release()

    def in_use(self, g: int) -> bool:
        return generation_in_use(self.cache_dir, g)

    def summary(self) -> dict:
        """Generations with their sizes, for `cache-info`."""
        m = self.refresh()
        gens = []
        for g in published_ids(m):
            e = m["generations"][str(g)]
            gens.append({"generation": g, "rows": e["num_rows"], "chunks": e["num_chunks"],
                         "bytes": e["bytes"], "raw_bytes": e["raw_bytes"], "created": e["created"],
                         "in_use": self.in_use(g)})
        return {"dataset": m["dataset"], "config": m["config"], "generations": gens}
