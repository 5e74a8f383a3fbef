"""Atomic filesystem helpers used by every stage that publishes something.

The pattern everywhere: build in a temporary path *beside* the target (same filesystem, so
`os.replace`/`rename` is atomic), fsync, then rename. A killed process leaves only a `.tmp-*`
leftover that the next writer removes; readers never see a half-written file or directory.
The one leftover that is not garbage is `.tmp-<name>.old`, the previous copy that a forced
`publish_dir` had moved aside when it was killed before renaming the new one in: if `<name>` is
missing, `recover_aside` (called by `clean_tmp_leftovers`) renames it back instead of deleting it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
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
    # the pid in the name: a concurrent writer's cleanup leaves a live builder's directory alone
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.{os.getpid()}.", dir=target.parent))


def _live_builder(leftover: Path, name: str) -> bool:
    """Whether `.tmp-<name>.<pid>.*` belongs to another process that is still running."""
    pid = leftover.name[len(TMP_PREFIX + name) + 1:].split(".", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid() or "." not in leftover.name[len(TMP_PREFIX + name) + 1:]:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


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
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed, ignore_errors=True)
    else:  # never reached through check_output, which refuses a file where a directory goes
        doomed.unlink(missing_ok=True)


def publish_dir(tmp: Path, target: Path, *, force: bool = False) -> None:
    """Move a fully built `tmp` directory to `target`.

    Without `force` an existing target is never touched: the caller refused it earlier with a
    helpful message, and one that a concurrent writer published since wins (FileExistsError, EEXIST).
    With `force` the old target is first renamed aside to `.tmp-<name>.old` and removed only after
    the new one is in place, so a crash leaves one complete copy: the new target, or the old one
    aside, which `recover_aside` puts back.
    """
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()  # an empty directory holds nothing to lose (check_output lets it through)
    if target.exists():
        if not force:  # another writer published it since our check: it wins, we fail (exit 1)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        old = aside_path(target)
        if old.exists():  # a stale copy from an earlier kill; the target is the newer one
            _delete_tree(old)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError as e:  # a concurrent writer's output appeared in the meantime: it wins
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
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
        if _live_builder(p, name):  # two builds of one output: the other one's work is not garbage
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


# What each kind of output looks like: the file its writer leaves and the "format" that file names
# (None: the file's presence). Looks only name what is there in messages: what `--force` may replace
# is proven by a provenance marker (common/provenance.py), never guessed from the files.
OUTPUT_KINDS = {
    "dataset": ("a dataset directory (ingest, synth)", "meta.json", "clcrec-dataset"),
    "new-items": ("a new-items directory (embed-items)", "meta.json", "clcrec-new-items"),
    "export": ("an export directory (export)", "export.json", "clcrec-export"),
    "cache": ("a negative cache (build-negatives)", "manifest.json", "clcrec-negative-cache"),
    "study": ("a tune study folder (tune)", "study.db", None),
    "run": ("a run directory (train, update)", "config.json", None),
}
FILE_KINDS = {"recommend-all": "a recommend-all Parquet file"}
RECOMMEND_ALL_KEY = b"clcrec-recommend-all"  # key of the Parquet metadata recommend-all writes (its marker)
NEVER_REPLACED = ("run", "study")  # a run or a study is never replaced, --force or not
_LEGACY_EXPORT = {"users.npy", "items.npy", "user_ids.parquet", "item_ids.parquet"}  # before export.json
_LEGACY_RECS = (b"user", b"rank", b"item", b"score")  # recommend-all's columns, before its key
UNPROVEN = ("it carries no valid .clcrec-output.json marker (written before markers existed, or not by this "
            "program), so --force will not replace it: move it aside (mv PATH PATH.old) or choose another path")


def _json_format(path: Path):
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj.get("format") if isinstance(obj, dict) else None


def _parquet_footer(path: Path) -> bytes:
    """The metadata footer of a Parquet file (b"" if it is not one): holds column names and keys."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PAR1":
                return b""
            size = f.seek(0, os.SEEK_END)
            f.seek(size - 8)
            tail = f.read(8)
            n = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or n > size - 12 or n > 64 << 20:
                return b""
            f.seek(size - 8 - n)
            return f.read(n)
    except OSError:
        return b""


def output_kind(path: Path) -> tuple[str | None, str, bool]:
    """(kind, description, proven) of what is at `path`: kind is a key of OUTPUT_KINDS or FILE_KINDS
    (by its marker if `proven`, else by its looks), "empty" (an empty directory), None with a
    description (anything else), or (None, "", False) if nothing is there."""
    from common.provenance import directory_kind, parquet_kind

    p = Path(path)
    if not os.path.lexists(p):
        return None, "", False
    if p.is_symlink():
        return None, f"a symbolic link (to {os.readlink(p)})", False
    if not p.is_dir():
        footer = _parquet_footer(p) if p.is_file() else b""
        if parquet_kind(footer):
            return "recommend-all", FILE_KINDS["recommend-all"], True
        if RECOMMEND_ALL_KEY in footer or (footer and all(c in footer for c in _LEGACY_RECS)):
            return "recommend-all", "a Parquet file with recommend-all's columns", False
        return None, "a file" if p.is_file() else "not a regular file or directory", False
    try:
        names = sorted(q.name for q in p.iterdir())
    except OSError as e:
        return None, f"a directory that cannot be listed ({e.strerror})", False
    if not names:
        return "empty", "an empty directory", False
    proven = directory_kind(p)
    if proven in OUTPUT_KINDS:
        return proven, OUTPUT_KINDS[proven][0], True
    for kind, (desc, marker, fmt) in OUTPUT_KINDS.items():
        if marker in names and (fmt is None or _json_format(p / marker) == fmt):
            return kind, f"{desc} by its looks only", False
    if set(names) == _LEGACY_EXPORT:
        return "export", f"{OUTPUT_KINDS['export'][0]} by its looks only", False
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return None, f"a directory that no command of this program wrote (it holds {shown})", False


def enclosing_run(path: Path) -> Path | None:
    """The run directory `path` sits directly in (an update run's dataset/, say), or None."""
    parent = Path(path).absolute().parent
    kind, _, _ = output_kind(parent)
    return parent if kind == "run" else None


def check_output(path: Path, what: str, kind: str, force: bool, *,
                 exists: str = "pass --force to replace it", error: type | None = None,
                 forceable: bool = True) -> None:
    """The one check of an output path, before any work is done. The path must be creatable
    (check_output_dir; for a file kind, its directory) and, if something is there already, an
    output of `kind` (OUTPUT_KINDS, FILE_KINDS) whose provenance marker verifies, replaced only with
    `force` (else UserError ending in `exists`). Anything else -- another command's output, an
    output without a marker, a run or study (NEVER_REPLACED), the dataset inside a run, a file where
    a directory goes, a directory the program did not write, a link -- is refused by name, `force`
    or not."""
    from common.errors import UserError

    error = error or UserError
    p = Path(path)
    is_file = kind in FILE_KINDS
    want = FILE_KINDS[kind] if is_file else OUTPUT_KINDS[kind][0]
    if is_file:
        if p.is_dir() and not p.is_symlink():
            raise error(f"{what} {p} is a directory; {what} needs a file name such as recs.parquet")
        if p.is_symlink():
            raise error(f"{what} {p} is a symbolic link (to {os.readlink(p)}); pass the path of a new file")
        check_output_dir(p.parent if str(p.parent) else Path("."), f"{what} {p}: its directory")
    else:
        check_output_dir(p, what)
    found, desc, proven = output_kind(p)
    if (found is None and not desc) or found == "empty":  # nothing there, or an empty directory
        return
    if found == kind and kind in NEVER_REPLACED:
        raise error(f"{what} {p} already exists ({desc}); {exists}" if not forceable else
                    f"{what} {p} already exists ({desc}); runs are never replaced, not even with --force: "
                    "choose another path")
    if found == kind and proven:
        if not force:
            raise error(f"{what} {p} already exists; {exists} (it is {desc})")
        run = enclosing_run(p) if kind == "dataset" else None  # an update run's dataset/ is the run's own
        if run is not None:
            raise error(f"{what} {p} is part of the run {run}, and runs are never replaced, not even in part "
                        "(--force included): choose another path")
        return
    if found == kind:
        raise error(f"{what} {p} is {desc}, but {UNPROVEN.replace('PATH', str(p))}")
    raise error(f"{what} {p} is {desc}, not {want}; nothing was changed: choose another path"
                + (f" (--force only ever replaces {want})" if forceable else ""))


def check_output_dir(path: Path, what: str) -> None:
    """Refuse an output directory that cannot work, before any work is done: a path that is a file
    or a dangling symlink, one under a file, or one whose nearest existing ancestor cannot be
    written (permissions, an immutable or read-only directory, /proc or /sys: probed by creating
    a file there). UserError names `what` (the option or argument) and the path."""
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


def write_marker(directory: Path, kind: str) -> None:
    """Mark `directory` as an output of `kind` (common/provenance.py): what --force checks."""
    from common.provenance import MARKER, new_marker

    atomic_write_json(Path(directory) / MARKER, new_marker(kind))


def check_new_target(target: Path, force: bool, what: str = "target", kind: str = "dataset") -> None:
    """A directory about to be written by a command whose output is `kind`: check_output."""
    from common.errors import InputError

    check_output(target, what, kind, force, error=InputError)


@contextmanager
def building_dir(target: Path, kind: str, *, force: bool = False):
    """The whole pattern for a directory: yields a fresh temporary directory beside `target` (the
    leftovers of killed builds cleaned first) to build in; when the block ends, it gets the marker
    of `kind` (common/provenance.py), its files are flushed and it replaces `target` (`publish_dir`;
    an existing target only with `force`). On any exception it is removed and `target` is as it was
    (a copy moved aside goes back)."""
    target = Path(target)
    clean_tmp_leftovers(target.parent, target.name)
    tmp = make_tmp_dir(target)
    try:
        yield tmp
        write_marker(tmp, kind)
        fsync_tree(tmp)  # on disk before the rename, so a power loss cannot publish empty files
        publish_dir(tmp, target, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_aside(target)  # interrupted between publish_dir's renames: the old copy goes back
        raise
