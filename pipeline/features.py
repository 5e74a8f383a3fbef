"""Content features built from item metadata: genre multi-hot, scaled year, hashed title words.

    python cli.py ingest movielens ../shared/datasets/ml-1m data/ml-1m --title-dim 64

Reads polars columns (genre lists, years, titles); returns float32 matrices, one row per item in
input order. Writes nothing. Every function is deterministic across machines and runs: title
tokens are hashed with blake2b (never Python's salted `hash()`), genre columns are sorted names.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

# A trailing "(1995)" or "(2007-)" / "(1994-1998)" in a MovieLens title.
YEAR_SUFFIX = r"\s*\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$"
TOKEN = r"\w+"


def genre_multi_hot(genres: pl.Series, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(num_items, num_genres) 0/1 matrix from a list[str] column, and the genre names of its columns.

    Without `names` the columns are the sorted genres found. With `names` (the genres a trained
    catalogue was built with) the columns follow `names` and other genres are ignored: a new
    item's genre that no training item had has no column the encoder was trained on.
    """
    if names is None:
        names = sorted(set(genres.explode().drop_nulls().to_list()) - {""})
    col = {g: i for i, g in enumerate(names)}
    out = np.zeros((len(genres), max(len(names), 1)), dtype=np.float32)
    for row, gs in enumerate(genres.to_list()):
        for g in gs or ():
            if g in col:
                out[row, col[g]] = 1.0
    return out, list(names)


def scaled_year(years: pl.Series, fit: dict | None = None) -> tuple[np.ndarray, dict]:
    """(num_items, 1) release year scaled to [0, 1] by the min and max known year.

    Missing years are filled with the median known year (before scaling); with no known year at
    all every item gets 0.5. Returns the matrix and the fill statistics for meta.
    With `fit` (the statistics an ingest recorded) new items are scaled exactly as the training
    items were: the recorded fill, min and max, and a year outside the training range is clamped
    to [0, 1], the only values the encoder saw.
    """
    y = years.cast(pl.Float64).to_numpy()
    known = np.isfinite(y)
    if fit is not None:
        if fit.get("fill") is None:  # the training catalogue had no known year: all were 0.5
            return np.full((len(y), 1), 0.5, dtype=np.float32), {"missing": int((~known).sum())}
        lo, hi = float(fit["min_year"]), float(fit["max_year"])
        y = np.where(known, y, float(fit["fill_year"]))
        scaled = (y - lo) / (hi - lo) if hi > lo else np.full_like(y, 0.5)
        stats = {"missing": int((~known).sum()), "clamped": int(((scaled < 0) | (scaled > 1)).sum())}
        return np.clip(scaled, 0.0, 1.0)[:, None].astype(np.float32), stats
    if not known.any():
        return np.full((len(y), 1), 0.5, dtype=np.float32), {"missing": int(len(y)), "fill": None}
    fill = float(np.median(y[known]))
    y = np.where(known, y, fill)
    lo, hi = float(y.min()), float(y.max())
    scaled = (y - lo) / (hi - lo) if hi > lo else np.full_like(y, 0.5)
    stats = {"missing": int((~known).sum()), "fill": "median", "fill_year": fill, "min_year": lo, "max_year": hi}
    return scaled[:, None].astype(np.float32), stats


def token_bucket(token: str, dim: int) -> int:
    """Stable bucket of a lower-cased token: blake2b, identical on every machine."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


def hashed_title_words(titles: pl.Series, dim: int = 64) -> np.ndarray:
    """(num_items, dim) hashed bag of lower-cased title words (counts), rows L2-normalised.

    A trailing year "(1995)" is removed first (the year is its own modality). Titles with no
    words give a zero row. The same multiset of words always gives the same vector. Counts are
    unsigned so two colliding words add up instead of cancelling out.
    """
    if dim < 1:
        raise ValueError(f"title hash dimension must be >= 1, got {dim}")
    df = pl.DataFrame({"title": titles}).with_row_index("row").select(
        "row",
        tok=pl.col("title").fill_null("").str.replace(YEAR_SUFFIX, "").str.to_lowercase().str.extract_all(TOKEN),
    )
    long = df.explode("tok").drop_nulls("tok")
    vocab = long["tok"].unique().sort().to_list()
    buckets = np.array([token_bucket(tok, dim) for tok in vocab], dtype=np.int64)
    tok_index = pl.DataFrame({"tok": vocab, "k": np.arange(len(vocab), dtype=np.int64)})
    k = long.join(tok_index, on="tok", how="left")
    rows = k["row"].to_numpy().astype(np.int64)
    idx = k["k"].to_numpy()
    out = np.zeros((len(titles), dim), dtype=np.float64)
    np.add.at(out, (rows, buckets[idx]), 1.0)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 0)
    return out.astype(np.float32)


def title_year(titles: pl.Series) -> pl.Series:
    """The year in a trailing "(YYYY)" of each title, or null."""
    return titles.str.extract(YEAR_SUFFIX, 1).cast(pl.Int32, strict=False)


def genome_matrix(scores: pl.DataFrame, item_ids: pl.Series) -> tuple[np.ndarray, dict]:
    """(num_items, num_tags) tag-genome relevances from a (movieId, tagId, relevance) frame.

    Columns are the tag ids in ascending order; rows follow `item_ids`. Items the genome does not
    cover get a zero row (their other modalities still describe them). Returns the matrix and
    {"tags", "items_covered"} for meta.
    """
    tag_ids = scores["tagId"].unique().sort()
    col = pl.DataFrame({"tagId": tag_ids, "col": np.arange(len(tag_ids), dtype=np.int64)})
    row = pl.DataFrame({"movieId": item_ids, "row": np.arange(len(item_ids), dtype=np.int64)})
    cells = scores.join(row, on="movieId", how="inner").join(col, on="tagId", how="inner")
    out = np.zeros((len(item_ids), max(len(tag_ids), 1)), dtype=np.float32)
    out[cells["row"].to_numpy(), cells["col"].to_numpy()] = cells["relevance"].to_numpy()
    return out, {"tags": int(len(tag_ids)), "items_covered": int(cells["row"].n_unique())}


def hashed_tags(tags: pl.DataFrame, item_ids: pl.Series, dim: int = 64) -> tuple[np.ndarray, dict]:
    """(num_items, dim) hashed bag of the user-applied tags of each item, rows L2-normalised.

    Each tag (lower-cased, inner whitespace collapsed) is one token, counted once per user who
    applied it, so "dark comedy" and "comedy" stay different signals. Rows are normalised, so how
    many people tagged an item (a popularity signal) does not enter; untagged items get a zero
    row. Returns the matrix and {"tags", "items_tagged"} for meta.
    """
    if dim < 1:
        raise ValueError(f"tag hash dimension must be >= 1, got {dim}")
    norm = tags.select(
        "movieId", tag=pl.col("tag").cast(pl.String).str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", " ")
    ).filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
    row = pl.DataFrame({"movieId": item_ids, "row": np.arange(len(item_ids), dtype=np.int64)})
    cells = norm.join(row, on="movieId", how="inner")
    vocab = cells["tag"].unique().sort().to_list()
    buckets = pl.DataFrame({"tag": vocab, "bucket": [token_bucket(t, dim) for t in vocab]},
                           schema={"tag": pl.String, "bucket": pl.Int64})
    cells = cells.join(buckets, on="tag", how="left")
    out = np.zeros((len(item_ids), dim), dtype=np.float64)
    np.add.at(out, (cells["row"].to_numpy(), cells["bucket"].to_numpy()), 1.0)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, n, out=out, where=n > 0)
    return out.astype(np.float32), {"tags": len(vocab), "items_tagged": int(cells["row"].n_unique()), "dim": dim}
