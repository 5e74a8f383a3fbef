"""Atomic filesystem helpers used by every stage that publishes something.

The pattern everywhere: build in a temporary path *beside* the target (same filesystem, so
`os.replace`/`rename` is atomic), fsync, then rename. A killed process leaves only a `.tmp-*`
leftover that the next writer removes; readers never see a half-written file or directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Persist a rename inside `path` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def make_tmp_dir(target: Path) -> Path:
    """A fresh temporary directory beside `target`, for building it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent))


def publish_dir(tmp: Path, target: Path, *, force: bool = False) -> None:
    """Move a fully built `tmp` directory to `target`.

    Without `force` an existing target is never touched (the caller should have refused
    earlier with a helpful message). With `force` the old target is first renamed aside and
    removed only after the new one is in place, so a crash leaves one complete copy.
    """
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        if not force:
            raise FileExistsError(target)
        old = target.with_name(TMP_PREFIX + target.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_tmp_leftovers(parent: Path, name: str) -> int:
    """Remove `.tmp-<name>.*` leftovers of killed builds in `parent`; returns how many."""
    n = 0
    parent = Path(parent)
    if not parent.exists():
        return 0
    for p in parent.glob(TMP_PREFIX + name + ".*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
