"""Ingest a MovieLens release (detected by its files) into a canonical dataset directory.

    python cli.py ingest movielens ../shared/datasets/ml-100k data/ml-100k

Reads one of
    ml-100k                       u.data (tab: user item rating timestamp) + u.item (latin-1, '|',
                                  19 genre flags; genre names from u.genre when present)
    ml-1m, ml-10m                 ratings.dat + movies.dat ('::'; MovieID::Title (Year)::G1|G2)
    ml-20m, ml-25m, ml-latest(-small)  ratings.csv + movies.csv (header, quoted titles)
Every rating is one implicit interaction. Writes DATASET/ (see pipeline/dataset.py) with the
modalities `genre` (multi-hot), `year` (release year scaled to [0,1], missing -> median) and
`title` (hashed bag of title words, `title_dim` dims), plus `genome` and `tags` when the release
has genome-scores.csv / tags.csv (pipeline/movielens_tags.py), and the titles in items.parquet.
Text files are decoded as UTF-8, falling back to latin-1 (the older releases' encoding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from pipeline.errors import InputError
from pipeline.features import genre_multi_hot, hashed_title_words, scaled_year, title_year
from pipeline.ingest_common import IngestConfig, assemble, integer_ids, require_file
from pipeline.movielens_tags import tag_modalities

console = Console(stderr=True)
ML100K_GENRES = 19
LAYOUTS = (
    ("ml-100k", "u.data", "u.item"),
    ("ml-1m/ml-10m", "ratings.dat", "movies.dat"),
    ("ml-20m/ml-25m/ml-latest", "ratings.csv", "movies.csv"),
)


def detect_release(source: Path) -> tuple[str, Path, Path]:
    """(release, ratings file, movies file) of a MovieLens directory, by the files it holds."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"MovieLens directory {source} does not exist")
    for release, ratings, movies in LAYOUTS:
        if (source / ratings).exists() and (source / movies).exists():
            return release, require_file(source / ratings, "ratings file"), require_file(source / movies, "movies file")
    wanted = ", ".join(f"{r} + {m}" for _, r, m in LAYOUTS)
    raise InputError(f"{source} is not a MovieLens release: expected one of the file pairs {wanted}")


def _utf8_bytes(path: Path) -> bytes:
    """File content as UTF-8 bytes, decoding latin-1 when the file is not valid UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return raw
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")


def _read_lines(path: Path) -> pl.Series:
    """The non-empty lines of a text file as a polars String series."""
    df = pl.read_csv(
        _utf8_bytes(path), has_header=False, separator="\x1f", quote_char=None, infer_schema=False,
        new_columns=["line"],
    )
    lines = df["line"].str.strip_chars_end("\r")
    return lines.filter(lines.str.strip_chars() != "")


def _ratings(path: Path, release: str) -> pl.DataFrame:
    """(user, item) Int64 original ids of every rating row."""
    try:
        if release == "ml-100k":
            df = pl.read_csv(path, has_header=False, separator="\t", infer_schema=False)
            cols = df.columns[:2]
        elif release == "ml-1m/ml-10m":  # '::' splits into value, '', value, '', ...
            df = pl.read_csv(path, has_header=False, separator=":", infer_schema=False, quote_char=None)
            cols = df.columns[0:3:2]
        else:
            df = pl.read_csv(path, columns=["userId", "movieId"], infer_schema=False)
            cols = ["userId", "movieId"]
    except pl.exceptions.ColumnNotFoundError as e:
        raise InputError(f"ratings file {path} lacks the columns userId, movieId ({e})") from None
    except pl.exceptions.ComputeError as e:
        raise InputError(f"ratings file {path} could not be parsed: {e}") from None
    if len(df.columns) < 2 or len(cols) < 2:
        raise InputError(f"ratings file {path} has fewer than two columns; expected user and item ids")
    return pl.DataFrame(
        {
            "user": integer_ids(df[cols[0]], f"{path} user ids"),
            "item": integer_ids(df[cols[1]], f"{path} item ids"),
        }
    )


def _movies_100k(path: Path) -> tuple[pl.DataFrame, np.ndarray, list[str], pl.Series]:
    df = pl.read_csv(_utf8_bytes(path), has_header=False, separator="|", quote_char=None, infer_schema=False)
    if df.width < 5 + ML100K_GENRES:
        raise InputError(f"movies file {path} has {df.width} columns; ml-100k u.item has {5 + ML100K_GENRES}")
    flags = df.select(df.columns[5 : 5 + ML100K_GENRES]).cast(pl.Float32, strict=False).fill_null(0.0)
    names_path = path.with_name("u.genre")
    names = [f"genre_{k}" for k in range(ML100K_GENRES)]
    if names_path.exists():
        g = _read_lines(names_path).str.split("|").list.first().to_list()
        if len(g) == ML100K_GENRES:
            names = g
    titles = df[df.columns[1]]
    date_year = df[df.columns[2]].str.extract(r"(\d{4})\s*$", 1).cast(pl.Int32, strict=False)
    years = date_year.fill_null(title_year(titles))  # release date first, then "(1995)" in the title
    items = pl.DataFrame({"original_id": integer_ids(df[df.columns[0]], f"{path} movie ids"), "title": titles})
    return items, flags.to_numpy().astype(np.float32), names, years


def _movies_generic(path: Path, release: str) -> tuple[pl.DataFrame, np.ndarray, list[str], pl.Series]:
    if release == "ml-1m/ml-10m":
        parts = _read_lines(path).str.extract_groups(r"^(\d+)::(.*)::(.*)$").struct.unnest()
        if parts["1"].null_count():
            bad = _read_lines(path).filter(parts["1"].is_null())[0]
            raise InputError(f"movies file {path} has a line not of the form MovieID::Title::Genres: {bad!r}")
        ids, titles, genres = parts["1"], parts["2"], parts["3"]
    else:
        try:
            df = pl.read_csv(_utf8_bytes(path), columns=["movieId", "title", "genres"], infer_schema=False)
        except pl.exceptions.ColumnNotFoundError as e:
            raise InputError(f"movies file {path} lacks the columns movieId, title, genres ({e})") from None
        ids, titles, genres = df["movieId"], df["title"], df["genres"]
    multi_hot, names = genre_multi_hot(genres.fill_null("").str.split("|"))
    items = pl.DataFrame({"original_id": integer_ids(ids, f"{path} movie ids"), "title": titles})
    return items, multi_hot, names, title_year(titles)


def ingest_movielens(source: Path, target: Path, config: IngestConfig = IngestConfig(), force: bool = False) -> Path:
    """Read the MovieLens release in `source` and write the dataset directory `target`."""
    release, ratings_path, movies_path = detect_release(source)
    with console.status(f"reading {ratings_path}"):
        interactions = _ratings(ratings_path, release)
    if release == "ml-100k":
        items, genre, genre_names, years = _movies_100k(movies_path)
    else:
        items, genre, genre_names, years = _movies_generic(movies_path, release)
    year, year_stats = scaled_year(years)
    features = {"genre": genre, "year": year, "title": hashed_title_words(items["title"], config.title_dim)}
    tag_features, tag_meta = tag_modalities(source, items["original_id"], config.tag_dim)
    features.update(tag_features)  # genome / tags, when the release ships those files
    return assemble(
        target,
        interactions=interactions,
        items=items,
        features=features,
        config=config,
        source={"kind": "movielens", "release": release, "path": str(Path(source).resolve())},
        label=str(ratings_path),
        extra={"features": {"genres": genre_names, "year": year_stats, "title_dim": config.title_dim, **tag_meta}},
        force=force,
    )
