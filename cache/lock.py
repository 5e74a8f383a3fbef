"""File locks of a cache directory: the single writer and the per-generation reader leases.

    python cli.py refresh caches/ml --wait     # waits for the writer lock instead of failing

`OwnedLock` (the writer lock's kind, recording its holder) also locks a training run directory
(clcrec/checkpoint.py). All are `fcntl.flock` locks, so the kernel releases them when their process dies (no stale
lock ever blocks a later writer or pruner) and they work across processes and threads (each
holder opens its own file description). Files: CACHE/writer.lock, CACHE/leases/gen-NNNNNN.lock.
On NFS, Linux maps flock onto POSIX byte-range locks, which NFSv4 supports.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from cache.manifest import LEASES, WRITER_LOCK, gen_name
from pipeline.errors import CacheError, UserError


class FileLock:
    """One flock on `path`: exclusive or shared, blocking or not. Use as a context manager."""

    def __init__(self, path: Path, *, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self.fd: int | None = None

    def acquire(self, *, wait: bool) -> bool:
        """True once held; False if `wait` is off and another process holds a conflicting lock."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CacheError(
                f"cannot open the lock file {self.path} ({e.strerror}); readers and writers of a "
                "cache need write access to its directory (leases are lock files)"
            ) from e
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class OwnedLock(FileLock):
    """An exclusive, non-shared lock that records its holder (pid, host, what, since) in the lock
    file, so the process refused can say who has it. `busy` is the refusal, with {path} and
    {holder}. Used for a cache's writer lock and a run directory's trainer lock."""

    def __init__(self, path: Path, what: str, busy: str, error: type[Exception] = UserError):
        super().__init__(path)
        self.what, self.busy, self.error = what, busy, error

    def acquire(self, *, wait: bool) -> bool:
        if not super().acquire(wait=wait):
            holder = self.holder() or "another process"
            raise self.error(self.busy.format(path=self.path.parent, holder=holder))
        info = f"pid {os.getpid()} on {socket.gethostname()}, {self.what}, since {time.strftime('%H:%M:%S')}"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info.encode(), 0)
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""


class WriterLock(OwnedLock):
    """The one-writer-at-a-time lock of a cache."""

    def __init__(self, cache_dir: Path, what: str = "build"):
        super().__init__(Path(cache_dir) / WRITER_LOCK, what, error=CacheError, busy=(
            "another writer is running on {path} ({holder}); only one build, refresh or publish runs "
            "at a time. Wait for it, or pass --wait to queue behind it"))
        self.cache_dir = Path(cache_dir)


def lease_path(cache_dir: Path, generation: int) -> Path:
    return Path(cache_dir) / LEASES / (gen_name(generation) + ".lock")


def is_locked(path: Path) -> bool:
    """True if some process holds a lock on `path` right now (probes without blocking)."""
    probe = FileLock(path)
    if probe.acquire(wait=False):
        probe.release()
        return False
    return True


def generation_in_use(cache_dir: Path, generation: int) -> bool:
    """True if some process holds a reader lease on the generation right now."""
    return is_locked(lease_path(cache_dir, generation))
