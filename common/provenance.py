"""Provenance markers: how an output proves that this program wrote it.

Every output directory a command writes holds `.clcrec-output.json`:

    {"kind": "dataset", "command": "ingest movielens", "id": "<random hex>", "digest": "<sha256>"}

where `digest` is the SHA-256 of the canonical JSON of the other three fields. A recommend-all
Parquet file carries the same record as the value of its `clcrec-recommend-all` metadata key.
`--force` replaces only an output whose marker verifies and names the command's own kind
(common/fsutil.py check_output); a directory that merely looks like an output (a config.json, a
meta.json, Parquet columns named user/rank/item/score) is someone else's. The marker is not a
secret, only something no user and no other program writes by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import uuid
from pathlib import Path

MARKER = ".clcrec-output.json"
KINDS = ("dataset", "new-items", "export", "cache", "run", "study", "recommend-all")
# the canonical JSON of a Parquet marker (sorted keys, no spaces), found in the file's footer
_PARQUET_MARKER = re.compile(rb'\{"command":"[^"\\]{0,200}","digest":"[0-9a-f]{64}","id":"[0-9a-f]{32}",'
                             rb'"kind":"recommend-all"\}')


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def current_command() -> str:
    """The CLI command being run ("ingest movielens", "train"...), or "python" from library code."""
    words = [a for a in sys.argv[1:4] if not a.startswith("-")]
    if not words or Path(sys.argv[0]).name not in ("cli.py", "cli_batch.py"):
        return "python"
    return " ".join(words[:2] if words[0] in ("ingest", "bench") else words[:1])[:200].replace('"', "")


def new_marker(kind: str, command: str | None = None) -> dict:
    """A fresh marker record of `kind` (one of KINDS)."""
    assert kind in KINDS, kind
    fields = {"kind": kind, "command": command or current_command(), "id": uuid.uuid4().hex}
    return {**fields, "digest": _digest(fields)}


def marker_bytes(kind: str) -> bytes:
    """A fresh marker as canonical JSON (the Parquet metadata value; fsutil.write_marker writes a directory's)."""
    return json.dumps(new_marker(kind), sort_keys=True, separators=(",", ":")).encode()


def verified_kind(record) -> str | None:
    """The kind a marker record proves, or None if it is not a marker that verifies."""
    if not isinstance(record, dict) or set(record) != {"kind", "command", "id", "digest"}:
        return None
    fields = {k: record[k] for k in ("kind", "command", "id")}
    if not all(isinstance(v, str) for v in fields.values()) or record["kind"] not in KINDS:
        return None
    return record["kind"] if record["digest"] == _digest(fields) else None


def directory_kind(directory: Path) -> str | None:
    """The kind `directory`'s marker proves (None: no marker, or one that does not verify)."""
    path = Path(directory) / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return None
        return verified_kind(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def parquet_kind(footer: bytes) -> str | None:
    """"recommend-all" if a Parquet footer holds a verifying recommend-all marker, else None."""
    for m in _PARQUET_MARKER.finditer(footer):
        if verified_kind(json.loads(m.group())) == "recommend-all":
            return "recommend-all"
    return None
