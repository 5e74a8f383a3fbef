"""Optional MovieLens content from tag files: the tag genome and user-applied tags.

    python cli.py ingest movielens ../shared/datasets/ml-25m data/ml-25m     # picks them up if present

Reads, when present in the release directory,
    genome-scores.csv   movieId,tagId,relevance    (ml-20m, ml-25m: 1,128 tags per covered movie)
    tags.csv            userId,movieId,tag,timestamp  (ml-20m, ml-25m, ml-latest(-small))
    tags.dat            UserID::MovieID::Tag::Timestamp (ml-10m)
and returns the extra modalities `genome` (relevance per genome tag) and `tags` (hashed bag of
applied tags, `tag_dim` dims), with rows aligned to the movies table. Writes nothing.

Both come from users' activity on the movie (the genome is learned from tags and ratings), so a
"cold" movie with tag content is not new to everyone; they describe the item, never a user, and
the tags rows are normalised so the number of taggers (popularity) does not enter. Train without
them with `--modality genre --modality year --modality title`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from pipeline.features import genome_matrix, hashed_tags

GENOME = "genome-scores.csv"
TAG_FILES = ("tags.csv", "tags.dat")


def polars_reason(e: Exception) -> str:
    """The first line of a polars parse error, without its advice (ignore_errors, infer_schema_length:
    reading past bad rows is not what a dataset should do)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")[:300]


def _read_genome(path: Path) -> pl.DataFrame:
    try:
        df = pl.read_csv(path, columns=["movieId", "tagId", "relevance"],
                         schema_overrides={"movieId": pl.Int64, "tagId": pl.Int64, "relevance": pl.Float32})
    except pl.exceptions.ColumnNotFoundError as e:
        raise InputError(f"tag genome file {path} lacks the columns movieId, tagId, relevance ({e})") from None
    except pl.exceptions.ComputeError as e:
        raise InputError(f"tag genome file {path} could not be parsed (ids must be integers, "
                         f"relevance a number): {polars_reason(e)}") from None
    bad = df.filter(pl.any_horizontal(pl.all().is_null()) | ~pl.col("relevance").is_finite())
    if len(bad):
        raise InputError(f"tag genome file {path} has {len(bad)} row(s) with a missing or non-finite value, "
                         f"e.g. {bad.row(0)}; fix or remove them")
    return df


def _read_tags(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".dat":  # '::'-separated; a tag may itself contain ':'
            lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None,
                                infer_schema=False, new_columns=["line"])["line"]
            parts = lines.str.extract_groups(r"^\d+::(\d+)::(.*)::\d+$").struct.unnest()
            if parts["1"].null_count():
                bad = lines.filter(parts["1"].is_null())[0]
                raise InputError(f"tags file {path} has a line not of the form UserID::MovieID::Tag::Timestamp: {bad!r}")
            df = pl.DataFrame({"movieId": parts["1"].cast(pl.Int64), "tag": parts["2"]})
        else:
            df = pl.read_csv(path, columns=["movieId", "tag"], schema_overrides={"movieId": pl.Int64, "tag": pl.String})
    except pl.exceptions.ColumnNotFoundError as e:
        raise InputError(f"tags file {path} lacks the columns movieId, tag ({e})") from None
    except pl.exceptions.ComputeError as e:
        raise InputError(f"tags file {path} could not be parsed (movieId must be an integer): {polars_reason(e)}") from None
    return df


def tag_modalities(source: Path, item_ids: pl.Series, tag_dim: int) -> tuple[dict[str, np.ndarray], dict]:
    """({"genome": ..., "tags": ...} for the files present, their meta); empty if none are."""
    source = Path(source)
    features: dict[str, np.ndarray] = {}
    meta: dict = {}
    if (source / GENOME).is_file():
        features["genome"], meta["genome"] = genome_matrix(_read_genome(source / GENOME), item_ids)
        meta["genome"]["file"] = GENOME
    for name in TAG_FILES:
        if (source / name).is_file():
            features["tags"], meta["tags"] = hashed_tags(_read_tags(source / name), item_ids, tag_dim)
            meta["tags"]["file"] = name
            break
    return features, meta
