"""Which negative generation each epoch reads: built when missing, leased while in use.

Reads and writes the negative cache (through cache.build / cache.store), nothing else.

Epoch e reads generation `config.generation_for_epoch(e)`. If a refresh job has published it, it
is used; otherwise rank 0 builds it in the background, ahead of need: while epoch e trains, the
next `AHEAD` generations the run will read are built one after another (a GPU epoch can be shorter
than a build, so one generation of lead is not always enough). A generation is held under a reader
lease from the moment it is known to be published until its epoch ends, so a concurrent `refresh
--keep K` can never prune it in between; a generation built ahead is leased by its builder as soon
as it is published. The time an epoch waited for its generation is logged (`generation_wait_s`).
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from cache.build import build_generation
from cache.store import CacheStore
from clcrec.config import TrainConfig
from clcrec.train import distributed as dist
from common.errors import CacheError, DatasetChangedError, UserError

HELD_OUT_NOTE = (
    "negatives exclude every known item of each user (--exclude all-known, the reference's way): "
    "training knew which items are held out, so these numbers use validation and test data"
)


def check_cache(store: CacheStore, dataset_dir: Path, fingerprint: str, num_neg: int,
                exclude: str = "train", tune: bool = False) -> None:
    """Refuse a cache built from other data, with another num_neg or another exclusion mode (`tune`:
    the fix named as `tune` takes it, from its --config file)."""
    if store.fingerprint != fingerprint:
        raise DatasetChangedError(
            f"cache {store.cache_dir} was built from another dataset ({store.dataset_path}, fingerprint "
            f"{store.fingerprint[:12]}; {dataset_dir} has {fingerprint[:12]}); rebuild it with "
            f"`cli.py build-negatives {dataset_dir} NEW_CACHE`, or pass another --cache"
        )
    if store.config.num_neg != num_neg:
        n = store.config.num_neg
        fix = (f"set num_neg = {n} in the file given to tune --config" if tune else
               f"pass --num-neg {n} (in a --config file: num_neg = {n})")
        raise UserError(f"cache {store.cache_dir} holds {n} negatives per pair but the run asks for {num_neg}; "
                        f"{fix}, or another --cache")
    if store.config.exclusion != exclude:
        raise UserError(
            f"cache {store.cache_dir} was built with negatives excluding {store.config.exclusion!r} "
            f"items but the run asks for --exclude {exclude}; pass --exclude {store.config.exclusion} "
            f"or another --cache (a new one is built with `cli.py build-negatives {dataset_dir} "
            f"NEW_CACHE --exclude {exclude}`)"
        )


AHEAD = 2  # generations built ahead of the one in training (each costs one generation of disk)


class GenerationSupply:
    def __init__(self, dataset_dir: Path, store: CacheStore, ctx: dist.DistContext, console: Console):
        self.dataset_dir, self.store, self.ctx, self.console = Path(dataset_dir), store, ctx, console
        self._ahead: dict[int, dict] = {}  # g -> {"thread", "error": [], "lease": ExitStack | None}
        self.wait_s = 0.0  # time the last lease() waited for its generation

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
        t0 = time.perf_counter()
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
        self.wait_s = time.perf_counter() - t0
        return lease

    def prefetch(self, gens: list[int]) -> None:
        """Build (and lease) generations `gens`, in order, in the background on rank 0. Builds run
        one at a time (each chains on the previous one): the cache has one writer."""
        if not self.ctx.is_main:
            return
        for g in gens:
            if g in self._ahead:
                continue
            before = self._ahead[max(self._ahead)]["thread"] if self._ahead else None
            ahead = {"error": [], "lease": None}

            def work(ahead=ahead, g=g, before=before):
                if before is not None:
                    before.join()
                try:  # its own store object: CacheStore re-reads and caches the manifest
                    ahead["lease"] = self._build_and_lease(CacheStore(self.store.cache_dir), g, progress=False)
                except BaseException as e:  # re-raised when the epoch that needs g starts
                    ahead["error"].append(e)

            ahead["thread"] = threading.Thread(target=work, name=f"build-gen-{g}", daemon=True)
            ahead["thread"].start()
            self._ahead[g] = ahead

    def _take_ahead(self, g: int) -> ExitStack | None:
        ahead = self._ahead.pop(g, None)
        if ahead is None:
            return None
        if ahead["thread"].is_alive():
            self.console.print(f"waiting for the background build of generation {g}")
        ahead["thread"].join()
        if ahead["error"]:
            raise ahead["error"][0]
        return ahead["lease"]

    def close(self) -> None:
        """Let background builds finish (each publishes a valid generation) and release their leases."""
        for ahead in self._ahead.values():
            ahead["thread"].join()
            if ahead["lease"] is not None:
                ahead["lease"].close()
        self._ahead = {}


def upcoming_generations(cfg: TrainConfig, epoch: int, ahead: int) -> list[int]:
    """The next `ahead` distinct generations the run will read after epoch `epoch`'s."""
    now, out = cfg.generation_for_epoch(epoch), []
    for e in range(epoch + 1, cfg.epochs):
        g = cfg.generation_for_epoch(e)
        if g != now and g not in out:
            out.append(g)
            if len(out) == ahead:
                break
    return out
