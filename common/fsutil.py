"""Atomic filesystem helpers used by every stage that publishes something.

The pattern everywhere: build in a temporary path *beside* the target (same filesystem, so
`os.replace`/`rename` is atomic), fsync, then rename. A killed process leaves only a `.tmp-*`
leftover that the next writer removes; readers never see a half-written file or directory.
The one leftover that is not garbage is `.tmp-<name>.old`, the previous copy that a forced
`publish_dir` had moved aside when it was killed before renaming the new one in: if `<name>` is
missing, `recover_aside` (called by `clean_tmp_leftovers`) renames it back instead of deleting it.
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


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk (np.save, parquet and zarr do not fsync)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def aside_path(target: Path) -> Path:
    """Where a forced `publish_dir` keeps the old `target` until the new one is in place."""
    target = Path(target)
    return target.with_name(TMP_PREFIX + target.name + ".old")


def _delete_tree(path: Path) -> None:
    """Rename aside to a `.del-` name first, so a kill mid-delete never leaves a partial tree
    under a name that means something (the `.old` copy must be complete or absent)."""
    doomed = path.with_name(f"{path.name}.del-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_dir(tmp: Path, target: Path, *, force: bool = False) -> None:
    """Move a fully built `tmp` directory to `target`.

    Without `force` an existing target is never touched (the caller should have refused
    earlier with a helpful message). With `force` the old target is first renamed aside to
    `.tmp-<name>.old` and removed only after the new one is in place, so a crash leaves one
    complete copy: the new target, or the old one aside, which `recover_aside` puts back.
    """
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        if not force:
            raise FileExistsError(target)
        old = aside_path(target)
        if old.exists():  # a stale copy from an earlier kill; the target is the newer one
            _delete_tree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        _delete_tree(old)


def recover_aside(target: Path) -> bool:
    """Undo a forced `publish_dir` killed between its two renames: if `target` is missing and
    `.tmp-<name>.old` exists, rename it back. Returns whether it did."""
    target = Path(target)
    old = aside_path(target)
    if os.path.lexists(target) or not old.is_dir():
        return False
    os.rename(old, target)
    fsync_dir(target.parent)
    return True


def clean_tmp_leftovers(parent: Path, name: str) -> int:
    """Remove `.tmp-<name>.*` leftovers of killed builds in `parent`; returns how many.

    A `.tmp-<name>.old` whose `<name>` is missing is the only copy of the previous version:
    it is renamed back (`recover_aside`), never deleted.
    """
    n = 0
    parent = Path(parent)
    if not parent.exists():
        return 0
    recover_aside(parent / name)
    for p in parent.glob(TMP_PREFIX + name + ".*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def check_output_dir(path: Path, what: str) -> None:
    """Refuse an output directory that cannot work, before any work is done: a path that is a file
    or a dangling symlink, one under a file, or one whose nearest existing ancestor cannot be
    written (permissions, an immutable or read-only directory: probed by creating a file there).
    UserError names `what` (the option or argument) and the path."""
    from common.errors import UserError

    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise UserError(f"{what} {p} is a dangling symbolic link (to {os.readlink(p)}); remove it or pass another path")
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a directory; pass a directory path")
    probe = p
    if not p.exists():
        for parent in p.absolute().parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise UserError(f"{what} {p}: {parent} is a file, so nothing can be created under it; "
                                    "pass another path")
                probe = parent
                break
    try:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + "probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"{what} {p}: cannot write in {probe} ({e.strerror}); choose a writable location "
                        "or fix its permissions") from None


def check_new_target(target: Path, force: bool, what: str = "target") -> None:
    """A dataset (or export) directory about to be written: writable, and new unless `force`."""
    from common.errors import InputError

    check_output_dir(target, what)
    if Path(target).exists() and not force:
        raise InputError(f"{target} already exists; pass --force to replace it")
