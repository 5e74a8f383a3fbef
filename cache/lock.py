"""File locks of a cache directory: the single writer and the per-generation reader leases.

    python cli.py refresh caches/ml --wait     # waits for the writer lock instead of failing

The locks themselves are common/lock.py's (flock: released by the kernel when their process
dies). Files: CACHE/writer.lock, CACHE/leases/gen-NNNNNN.lock.
"""

from __future__ import annotations

from pathlib import Path

from cache.manifest import LEASES, WRITER_LOCK, gen_name
from common.errors import CacheError
from common.lock import OwnedLock, is_locked


class WriterLock(OwnedLock):
    """The one-writer-at-a-time lock of a cache."""

    def __init__(self, cache_dir: Path, what: str = "build"):
        super().__init__(Path(cache_dir) / WRITER_LOCK, what, error=CacheError, busy=(
            "another writer is running on {path} ({holder}); only one build, refresh or publish runs "
            "at a time. Wait for it, or pass --wait to queue behind it"))
        self.cache_dir = Path(cache_dir)


def lease_path(cache_dir: Path, generation: int) -> Path:
    return Path(cache_dir) / LEASES / (gen_name(generation) + ".lock")


def generation_in_use(cache_dir: Path, generation: int) -> bool:
    """True if some process holds a reader lease on the generation right now."""
    return is_locked(lease_path(cache_dir, generation))
