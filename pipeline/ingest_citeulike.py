"""Ingest CiteULike-a (users' article libraries, article tags and citations) into a dataset directory.

    python cli.py ingest citeulike ../shared/datasets/citeulike-a data/citeulike-a [--max-users 1500]

Reads, from the release directory (0-based ids, space-separated, each line `count id id ...`):
    users.dat       line u: the articles user u saved (implicit feedback; required)
    item-tag.dat    line i: the tag ids of article i (required while --tag-dim > 0)
    tags.dat        one tag name per line; line t names tag t (required with item-tag.dat)
    citations.dat   line i: articles linked to article i by citation (required while --citation-dim > 0)
The number of articles is the line count of item-tag.dat (or of citations.dat without tags).
Writes DATASET/ (pipeline/dataset.py) through `ingest_common.assemble`, with the modalities
    tags        hashed bag of the article's tag names (lower-cased, blake2b buckets, `tag_dim`)
    citations   hashed bag of the linked articles' ids (`citation_dim`): two articles that cite
                or are cited by the same papers share buckets (co-citation)
each row L2-normalised, so how many users tagged an article (popularity) does not enter; an
article without tags or links gets a zero row in that modality.

Why citations are kept: the links are bibliographic, not user behaviour, and a new article's
reference list is known when it appears, so they are content. They are item ids, though: hashed,
so a cold article is described by the neighbours it shares with others (never by its own id).
Caveat, as for MovieLens tags: tags come from the users who saved an article, so a "cold" article
with tags is not new to everyone; the links also include later papers citing it. Train without a
modality with `--modality tags` or `--modality citations`, or ingest with `--citation-dim 0`.

`--max-users N` keeps a seeded random N of the users (the split seed): the quality matrix uses it
to fit a 2-core machine. Bad input (a missing or empty file, a line whose count does not match its
ids, a non-integer or out-of-range id) stops with one line naming the file, the line and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from pipeline.features import token_bucket
from pipeline.ingest_common import MAX_HASH_DIM, IngestConfig, assemble, require_file

FILES = {"users": "users.dat", "item_tags": "item-tag.dat", "tags": "tags.dat", "citations": "citations.dat"}


def read_id_lists(path: Path, what: str, upper: int | None = None, upper_what: str = "") -> list[np.ndarray]:
    """One int64 array per line of a `count id id ...` file; InputError naming the line at fault.

    Trailing empty lines are ignored; an empty line inside the file is an entity with no ids.
    `upper`: ids must be < upper (`upper_what` says where that bound comes from)."""
    lines = require_file(path, what).read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"{what} {path} holds no lines; it needs one `count id id ...` line per entity")
    out = []
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        try:
            vals = np.array([int(f) for f in fields], dtype=np.int64)
        except ValueError:
            bad = next(f for f in fields if not f.lstrip("-").isdigit())
            raise InputError(f"{what} {path} line {n}: {bad!r} is not an integer; each line must be "
                             "`count id id ...` with integer ids") from None
        count, ids = int(vals[0]), vals[1:]
        if count != len(ids):
            raise InputError(f"{what} {path} line {n} starts with the count {count} but lists {len(ids)} id(s); "
                             "fix the count or the ids (each line is `count id id ...`)")
        if len(ids) and ids.min() < 0:
            raise InputError(f"{what} {path} line {n} has a negative id {int(ids.min())}; ids are 0-based")
        if upper is not None and len(ids) and ids.max() >= upper:
            raise InputError(f"{what} {path} line {n} names id {int(ids.max())}, but {upper_what}; "
                             "check that the files come from the same release")
        out.append(ids)
    return out


def hashed_bag(lists: list[np.ndarray], buckets: np.ndarray, dim: int) -> np.ndarray:
    """(len(lists), dim) float32 counts of `buckets[id]` per row, rows L2-normalised (zero rows stay 0)."""
    lens = np.array([len(x) for x in lists], dtype=np.int64)
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), lens)  # (T,)
    ids = np.concatenate(lists) if lens.sum() else np.zeros(0, dtype=np.int64)  # (T,)
    out = np.zeros((len(lists), dim), dtype=np.float64)
    np.add.at(out, (rows, buckets[ids]), 1.0)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 0)
    return out.astype(np.float32)


def sample_users(num_users: int, max_users: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random `max_users` of `num_users` users (all when 0 or more)."""
    if max_users <= 0 or max_users >= num_users:
        return np.arange(num_users, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(num_users, size=max_users, replace=False))


def ingest_citeulike(source: Path, target: Path, config: IngestConfig = IngestConfig(), force: bool = False,
                     *, citation_dim: int = 64, max_users: int = 0) -> Path:
    """Read the CiteULike-a release in `source` and write the dataset directory `target`."""
    source, tag_dim = Path(source), config.tag_dim
    if not source.is_dir():
        raise InputError(f"CiteULike directory {source} does not exist")
    for name, v in (("--tag-dim", tag_dim), ("--citation-dim", citation_dim), ("--max-users", max_users)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (name != "--max-users" and v > MAX_HASH_DIM):
            raise InputError(f"{name} must be an integer from 0 to {MAX_HASH_DIM}, got {v!r}"
                             if name != "--max-users" else f"{name} must be an integer >= 0, got {v!r}")
    if tag_dim == 0 and citation_dim == 0:
        raise InputError("--tag-dim 0 and --citation-dim 0 leave no content; CLCRec needs at least one modality")
    features: dict[str, np.ndarray] = {}
    meta: dict = {"max_users": max_users}
    num_items = None
    if tag_dim:
        names_path = require_file(source / FILES["tags"], "tag names file")
        names = names_path.read_text(encoding="utf-8", errors="replace").split("\n")
        while names and not names[-1].strip():
            names.pop()
        item_tags = read_id_lists(source / FILES["item_tags"], "article tags file", len(names),
                                  f"{names_path} names only {len(names)} tags (ids 0..{len(names) - 1})")
        num_items = len(item_tags)
        buckets = np.array([token_bucket(" ".join(t.strip().lower().split()), tag_dim) for t in names], dtype=np.int64)
        features["tags"] = hashed_bag(item_tags, buckets, tag_dim)
        meta["tags"] = {"dim": tag_dim, "tags": len(names), "items_tagged": int(sum(len(t) > 0 for t in item_tags))}
    if citation_dim:
        cpath = source / FILES["citations"]
        bound = (num_items, f"{source / FILES['item_tags']} has {num_items} lines (articles 0..{(num_items or 1) - 1})")
        links = read_id_lists(cpath, "citations file", *(bound if num_items is not None else (None, "")))
        if num_items is None:
            num_items = len(links)
            over = [k for k, x in enumerate(links) if len(x) and x.max() >= num_items]
            if over:
                raise InputError(f"citations file {cpath} line {over[0] + 1} names an article beyond its "
                                 f"{num_items} lines; check that the file is complete")
        elif len(links) != num_items:
            raise InputError(f"citations file {cpath} has {len(links)} lines but {source / FILES['item_tags']} "
                             f"has {num_items}; both need one line per article")
        buckets = np.array([token_bucket(f"article:{i}", citation_dim) for i in range(num_items)], dtype=np.int64)
        features["citations"] = hashed_bag(links, buckets, citation_dim)
        meta["citations"] = {"dim": citation_dim, "items_linked": int(sum(len(x) > 0 for x in links))}
    users_path = source / FILES["users"]
    first_content = source / (FILES["item_tags"] if tag_dim else FILES["citations"])
    libraries = read_id_lists(users_path, "user libraries file", num_items,
                              f"{first_content} has {num_items} lines (articles 0..{num_items - 1})")
    keep = sample_users(len(libraries), max_users, config.split.seed)
    meta["users_in_source"] = len(libraries)
    libraries = [libraries[u] for u in keep]
    lens = np.array([len(x) for x in libraries], dtype=np.int64)
    interactions = pl.DataFrame({
        "user": np.repeat(keep, lens),
        "item": np.concatenate(libraries) if lens.sum() else np.zeros(0, dtype=np.int64),
    }, schema={"user": pl.Int64, "item": pl.Int64})
    items = pl.DataFrame({"original_id": np.arange(num_items, dtype=np.int64)})
    return assemble(
        target, interactions=interactions, items=items, features=features, config=config,
        source={"kind": "citeulike", "path": str(source.resolve())}, label=str(users_path),
        extra={"features": meta}, force=force,
    )
