"""File locks: `flock` on a lock file, exclusive or shared, and `OwnedLock`, which records its holder.

Used by a cache directory (cache/lock.py: the writer lock and the reader leases) and by a training
run directory (clcrec/rundir.py: run.lock). `flock` locks are released by the kernel when their
process dies (no stale lock ever blocks a later writer) and work across processes and threads
(each holder opens its own file description). On NFS, Linux maps flock onto POSIX byte-range
locks, which NFSv4 supports. Reads and writes only the lock file itself: it is opened without
following a symbolic link (O_NOFOLLOW) and must be a regular file with one name, so a link planted
at its path (e.g. `run.lock -> ~/.bashrc` on a shared filesystem) is refused, never truncated.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from common.errors import UserError


class FileLock:
    """One flock on `path`: exclusive or shared, blocking or not. Use as a context manager."""

    def __init__(self, path: Path, *, shared: bool = False, error: type[Exception] = UserError):
        self.path = Path(path)
        self.shared = shared
        self.error = error  # what a lock file that cannot be opened raises
        self.fd: int | None = None

    def acquire(self, *, wait: bool) -> bool:
        """True once held; False if `wait` is off and another process holds a conflicting lock."""
        if self.path.parent.is_symlink():  # e.g. a planted CACHE/leases link: locks are written there
            raise self.error(f"the lock directory {self.path.parent} is a symbolic link (to "
                             f"{os.readlink(self.path.parent)}); a lock file is written, so nothing is created "
                             "through it. Nothing was changed: remove the link (the program creates its own)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if os.path.islink(self.path):
                raise self.error(self._planted("a symbolic link (to " + os.readlink(self.path) + ")")) from None
            raise self.error(
                f"cannot open the lock file {self.path} ({e.strerror}); whoever locks it needs write "
                "access to its directory"
            ) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} hard links"
            raise self.error(self._planted(what))
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def _planted(self, what: str) -> str:
        return (f"the lock file {self.path} is {what}; a lock file is written, so it would overwrite "
                "what it points to. Nothing was changed: remove it (the program creates its own)")

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
        super().__init__(path, error=error)
        self.what, self.busy = what, busy

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


def is_locked(path: Path) -> bool:
    """True if some process holds a lock on `path` right now (probes without blocking)."""
    probe = FileLock(path)
    if probe.acquire(wait=False):
        probe.release()
        return False
    return True
