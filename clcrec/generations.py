"""Which negative generation each epoch reads: built when missing, leased while in use.

Reads and writes the negative cache (through cache.build / cache.store), nothing else.

Epoch e reads generation `config.generation_for_epoch(e)`. If a refresh job has published it, it
is used; otherwise rank 0 builds it, in a background thread during the previous epoch when
possible. A generation is held under a reader lease from the moment it is known to be published
until its epoch ends, so a concurrent `refresh --keep K` can never prune it in between; the
generation built ahead in the background is leased by that thread as soon as it is published.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from cache.build import build_generation
from cache.store import CacheStore
from clcrec import distributed as dist
from pipeline.errors import CacheError, DatasetChangedError, UserError

HELD_OUT_NOTE = (
    "negatives exclude every known item of each user (--exclude all-known, the reference's way): "
    "training knew which items are held out, so these numbers use validation and test data"
)


def check_cache(store: CacheStore, dataset_dir: Path, fingerprint: str, num_neg: int,
                exclude: str = "train") -> None:
    """Refuse a cache built from other data, with another num_neg or another exclusion mode."""
    if store.fingerprint != fingerprint:
        raise DatasetChangedError(
            f"cache {store.cache_dir} was built from another dataset ({store.dataset_path}, fingerprint "
            f"{store.fingerprint[:12]}; {dataset_dir} has {fingerprint[:12]}); rebuild it with "
            f"`cli.py build-negatives {dataset_dir} NEW_CACHE`, or pass another --cache"
        )
    if store.config.num_neg != num_neg:
        raise UserError(
            f"cache {store.cache_dir} holds {store.config.num_neg} negatives per pair but --num-neg is "
            f"{num_neg}; pass --num-neg {store.config.num_neg} or another --cache"
        )
    if store.config.exclusion != exclude:
        raise UserError(
            f"cache {store.cache_dir} was built with negatives excluding {store.config.exclusion!r} "
            f"items but the run asks for --exclude {exclude}; pass --exclude {store.config.exclusion} "
            f"or another --cache (a new one is built with `cli.py build-negatives {dataset_dir} "
            f"NEW_CACHE --exclude {exclude}`)"
        )


class GenerationSupply:
    def __init__(self, dataset_dir: Path, store: CacheStore, ctx: dist.DistContext, console: Console):
        self.dataset_dir, self.store, self.ctx, self.console = Path(dataset_dir), store, ctx, console
        self._ahead: dict | None = None  # {"g", "thread", "error": [], "lease": ExitStack}

    def _build_and_lease(self, store: CacheStore, g: int, progress: bool) -> ExitStack:
        """Build g if unpublished and return a held lease on it (rank 0 only)."""
        for attempt in range(3):
            if g not in store.published():
                build_generation(self.dataset_dir, store.cache_dir, g, store.config, progress=progress)
            lease = ExitStack()
            try:
                lease.enter_context(store.reader_lease(g))
                return lease
            except CacheError:  # pruned between the check and the lease: build it again
                lease.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def lease(self, g: int) -> ExitStack:
        """Generation g, published and leased on every rank until the returned stack closes."""
        lease = ExitStack()
        if self.ctx.is_main:
            ahead = self._take_ahead(g)
            if ahead is not None:
                lease.enter_context(ahead)
            else:
                lease.enter_context(self._build_and_lease(self.store, g, progress=True))
        dist.barrier(self.ctx)  # rank 0 holds its lease: the others' cannot find g pruned
        if not self.ctx.is_main:
            lease.enter_context(self.store.reader_lease(g))
        return lease

    def prefetch(self, g: int) -> None:
        """Start building (and leasing) generation g in the background on rank 0."""
        if not self.ctx.is_main or self._ahead is not None:
            return
        ahead = {"g": g, "error": [], "lease": None}

        def work():
            try:  # its own store object: CacheStore re-reads and caches the manifest
                ahead["lease"] = self._build_and_lease(CacheStore(self.store.cache_dir), g, progress=False)
            except BaseException as e:  # re-raised when the epoch that needs g starts
                ahead["error"].append(e)

        ahead["thread"] = threading.Thread(target=work, name=f"build-gen-{g}", daemon=True)
        ahead["thread"].start()
        self._ahead = ahead

    def _take_ahead(self, g: int) -> ExitStack | None:
        if self._ahead is None or self._ahead["g"] != g:
            return None
        ahead, self._ahead = self._ahead, None
        if ahead["thread"].is_alive():
            self.console.print(f"waiting for the background build of generation {g}")
        ahead["thread"].join()
        if ahead["error"]:
            raise ahead["error"][0]
        return ahead["lease"]

    def close(self) -> None:
        """Let a background build finish (it publishes a valid generation) and release its lease."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            ahead["thread"].join()
            if ahead["lease"] is not None:
                ahead["lease"].close()
