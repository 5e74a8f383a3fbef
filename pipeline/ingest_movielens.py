"""Ingest a MovieLens release (detected by its files) into a canonical dataset directory.

    python cli.py ingest movielens ../shared/datasets/ml-100k data/ml-100k

Reads one of
    ml-100k                       u.data (tab: user item rating timestamp) + u.item (latin-1, '|',
                                  19 genre flags; genre names from u.genre when present)
    ml-1m, ml-10m                 ratings.dat + movies.dat ('::'; MovieID::Title (Year)::G1|G2)
    ml-20m, ml-25m, ml-latest(-small)  ratings.csv + movies.csv (header, quoted titles)
Every rating is one implicit interaction, with its timestamp (unix seconds; the earliest when a
pair repeats; the temporal split `--split temporal --cutoff` reads them). Writes DATASET/ (see
pipeline/dataset.py) with the modalities `genre` (multi-hot), `year` (release year scaled to [0,1], missing -> median) and
`title` (hashed bag of title words, `title_dim` dims), plus `genome` and `tags` when the release
has genome-scores.csv / tags.csv (pipeline/movielens_tags.py), and the titles in items.parquet.
Text files are decoded as UTF-8, falling back to latin-1 (the older releases' encoding).
`movie_rows_features` builds the same features for movies that arrive after training
(`cli.py embed-items RUN --movielens movies.csv`), with the dataset's recorded genre columns and
year scaling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from common.errors import InputError
from pipeline.dataset import Dataset
from pipeline.features import (
    genre_multi_hot,
    hashed_title_words,
    scaled_year,
    title_year,
)
from pipeline.ingest_common import IngestConfig, assemble, integer_ids, require_file
from pipeline.movielens_tags import polars_reason, tag_modalities

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
    if source.exists() and not source.is_dir():
        raise InputError(f"{source} is a file; ingest movielens takes the release's directory "
                         f"(here {source.parent}, which holds {source.name})")
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


def _require_columns(source, path: Path, wanted: list[str], what: str) -> None:
    """One line naming the file, the missing columns and the header found (polars would print
    its query plan instead)."""
    try:
        have = pl.read_csv(source, n_rows=0, infer_schema=False).columns
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{what} file {path} could not be parsed: {str(e).splitlines()[0]}") from None
    missing = [c for c in wanted if c not in have]
    if missing:
        raise InputError(f"{what} file {path} lacks the column(s) {', '.join(missing)}; its header has "
                         f"{', '.join(have) or 'no columns'} (expected {', '.join(wanted)})")


def _ratings(path: Path, release: str) -> pl.DataFrame:
    """(user, item [, timestamp]) Int64 original ids (and unix seconds) of every rating row."""
    time_col = None
    try:
        if release == "ml-100k":
            df = pl.read_csv(path, has_header=False, separator="\t", infer_schema=False)
            cols = df.columns[:2]
            time_col = df.columns[3] if df.width >= 4 else None
        elif release == "ml-1m/ml-10m":  # '::' splits into value, '', value, '', ...
            df = pl.read_csv(path, has_header=False, separator=":", infer_schema=False, quote_char=None)
            cols = df.columns[0:3:2]
            time_col = df.columns[6] if df.width >= 7 else None
        else:
            _require_columns(path, path, ["userId", "movieId"], "ratings")
            have = pl.read_csv(path, n_rows=0, infer_schema=False).columns
            time_col = "timestamp" if "timestamp" in have else None
            df = pl.read_csv(path, columns=["userId", "movieId", *([time_col] if time_col else [])], infer_schema=False)
            cols = ["userId", "movieId"]
    except pl.exceptions.ComputeError as e:
        raise InputError(f"ratings file {path} could not be parsed: {polars_reason(e)}") from None
    if len(df.columns) < 2 or len(cols) < 2:
        raise InputError(f"ratings file {path} has fewer than two columns; expected user and item ids")
    out = {"user": integer_ids(df[cols[0]], f"{path} user ids"), "item": integer_ids(df[cols[1]], f"{path} item ids")}
    if time_col is not None:
        out["timestamp"] = integer_ids(df[time_col], f"{path} timestamps")
    return pl.DataFrame(out)


def _movies_100k(path: Path) -> tuple[pl.DataFrame, np.ndarray, list[str], pl.Series]:
    try:
        df = pl.read_csv(_utf8_bytes(path), has_header=False, separator="|", quote_char=None, infer_schema=False)
    except pl.exceptions.PolarsError as e:  # rows of different widths, a garbled file
        raise InputError(f"movies file {path} could not be parsed as ml-100k u.item rows ('|'-separated): "
                         f"{polars_reason(e)}") from None
    if df.width < 5 + ML100K_GENRES:
        raise InputError(f"movies file {path} has {df.width} columns; ml-100k u.item has {5 + ML100K_GENRES}")
    raw = df.select(pl.col(df.columns[5 : 5 + ML100K_GENRES]).str.strip_chars()).to_numpy()
    ok = np.isin(raw, ["0", "1"])  # a short row reads as nulls: refused, not taken as "no genre"
    if not ok.all():
        r, c = (int(x) for x in np.argwhere(~ok)[0])
        raise InputError(f"movies file {path} line {r + 1}: genre flag {c + 1} of {ML100K_GENRES} is "
                         f"{'missing' if raw[r, c] is None else repr(raw[r, c])}; u.item rows end in "
                         f"{ML100K_GENRES} genre flags, each 0 or 1")
    flags = (raw == "1").astype(np.float32)
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
    return items, flags, names, years


def _movies_generic(path: Path, release: str) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """(items [original_id, title], genre lists, years) of a movies.dat / movies.csv file."""
    if release == "ml-1m/ml-10m":
        parts = _read_lines(path).str.extract_groups(r"^(\d+)::(.*)::(.*)$").struct.unnest()
        if parts["1"].null_count():
            bad = _read_lines(path).filter(parts["1"].is_null())[0]
            raise InputError(f"movies file {path} has a line not of the form MovieID::Title::Genres: {bad!r}")
        ids, titles, genres = parts["1"], parts["2"], parts["3"]
    else:
        data = _utf8_bytes(path)
        _require_columns(data, path, ["movieId", "title", "genres"], "movies")
        df = pl.read_csv(data, columns=["movieId", "title", "genres"], infer_schema=False)
        ids, titles, genres = df["movieId"], df["title"], df["genres"]
    items = pl.DataFrame({"original_id": integer_ids(ids, f"{path} movie ids"), "title": titles})
    return items, genres.fill_null("").str.split("|"), title_year(titles)


def ingest_movielens(source: Path, target: Path, config: IngestConfig = IngestConfig(), force: bool = False) -> Path:
    """Read the MovieLens release in `source` and write the dataset directory `target`."""
    release, ratings_path, movies_path = detect_release(source)
    with console.status(f"reading {ratings_path}"):
        interactions = _ratings(ratings_path, release)
    if release == "ml-100k":
        items, genre, genre_names, years = _movies_100k(movies_path)
    else:
        items, genre_lists, years = _movies_generic(movies_path, release)
        genre, genre_names = genre_multi_hot(genre_lists)
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
        items_label=str(movies_path),
        extra={"features": {"genres": genre_names, "year": year_stats, "title_dim": config.title_dim, **tag_meta}},
        force=force,
    )


# ---------------------------------------------------------------------------------------------
# New items after training: MovieLens-style rows -> the same features the ingest built
# ---------------------------------------------------------------------------------------------


def movielens_feature_params(dataset: Dataset) -> dict:
    """{"genres": [...], "year": fit, "title_dim": n}: how `dataset`'s features were built.

    Read from what the ingest recorded in meta.json. A dataset without the year statistics (an
    older ingest) gets them recovered from its own titles and stored year feature
    (`fit_year_scaling`), marked `"year_source": "fitted"`.
    """
    if dataset.meta.get("source", {}).get("kind") != "movielens":
        raise InputError(
            f"dataset {dataset.root} was not ingested from MovieLens (source: "
            f"{dataset.meta.get('source', {}).get('kind')!r}); give the new items' features as files instead"
        )
    rec = dataset.meta.get("ingest", {}).get("features", {})
    dims = {m["name"]: m["dim"] for m in dataset.meta["modalities"]}
    if "genres" not in rec:
        raise InputError(f"dataset {dataset.root} records no genre names; re-ingest it with `cli.py ingest movielens`")
    params = {"genres": list(rec["genres"]), "title_dim": int(rec.get("title_dim", dims.get("title", 64)))}
    year = rec.get("year")
    if year is not None and (year.get("fill") is None or "min_year" in year):
        params["year"], params["year_source"] = year, "recorded"
    else:
        params["year"], params["year_source"] = fit_year_scaling(dataset), "fitted"
    return params


def fit_year_scaling(dataset: Dataset) -> dict:
    """The year scaling of an older dataset, recovered from its titles and its year feature.

    feature = (year - min) / (max - min) holds for every item whose year is the one in its title
    (ml-100k takes most years from release dates, which can differ): a robust line fit (median of
    slopes between items far apart in year, then median intercept) ignores the few that differ.
    The fill year of items without a year is approximated by the median stored feature.
    """
    items = dataset.item_ids()
    year = dataset.features.get("year")
    if year is None:
        year = np.load(dataset.root / "features" / "year.npy")
    f = np.asarray(year, dtype=np.float64)[:, 0]
    y = np.full(len(f), np.nan)
    if "title" in items.columns:
        y = title_year(items["title"]).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    ok = np.isfinite(y)
    order = np.flatnonzero(ok)[np.argsort(y[ok], kind="stable")]
    half = len(order) // 2
    lo_i, hi_i = order[:half], order[len(order) - half :]
    spread = y[hi_i] - y[lo_i]
    if half == 0 or not (spread > 0).any():
        raise InputError(
            f"dataset {dataset.root} records no year scaling and its titles hold too few distinct years "
            "to recover it; re-ingest it with `cli.py ingest movielens`"
        )
    slope = float(np.median((f[hi_i] - f[lo_i])[spread > 0] / spread[spread > 0]))
    intercept = float(np.median(f[ok] - slope * y[ok]))
    if slope <= 0:
        raise InputError(
            f"dataset {dataset.root}: its year feature does not increase with the title year; re-ingest it"
        )
    lo, hi = -intercept / slope, (1.0 - intercept) / slope
    lo, hi = float(np.round(lo)), float(np.round(hi))  # the min and max of integer years
    return {"fill": "median", "fill_year": lo + float(np.median(f)) * (hi - lo), "min_year": lo, "max_year": hi}


def movies_format(path: Path) -> str:
    """Which MovieLens movies layout `path` holds, from its first line (not its name): "u.item"
    (id|title|date|...|19 genre flags), "movies.dat" (id::title::genres) or "movies.csv"."""
    with open(path, "rb") as f:
        first = f.read(65536).split(b"\n", 1)[0].decode("latin-1").strip()
    if "::" in first:
        return "movies.dat"
    if first.count("|") >= 5:
        return "u.item"
    if first.count(",") >= 2 or first.lower().startswith("movieid"):
        return "movies.csv"
    raise InputError(f"movies file {path} is in none of the MovieLens movie formats (u.item, movies.dat or "
                     f"movies.csv: id|title|date|...|genre flags, id::title::genres, or a movieId,title,genres "
                     f"header); its first line is {first[:80]!r}")


def movie_rows_features(path: Path, dataset: Dataset) -> tuple[pl.DataFrame, dict[str, np.ndarray], dict]:
    """(items [original_id, title], {"genre", "year", "title"} float32 matrices, notes) of a
    MovieLens-style movies file (u.item, movies.dat or movies.csv rows, told apart by their content), built exactly as
    `ingest_movielens` built `dataset`'s features: its genre columns, its year scaling, its title
    hash width. Genres the dataset never had are ignored and listed in notes["unknown_genres"]."""
    params = movielens_feature_params(dataset)
    path = require_file(path, "movies file")
    kind = movies_format(path)
    if kind == "u.item":
        items, flags, names, years = _movies_100k(path)
        if not path.with_name("u.genre").exists() and len(params["genres"]) == flags.shape[1]:
            names = params["genres"]  # u.item flags are positional: the training release's order
        lists = pl.Series([[names[j] for j in np.flatnonzero(row)] for row in flags], dtype=pl.List(pl.String))
    else:
        items, lists, years = _movies_generic(path, "ml-1m/ml-10m" if kind == "movies.dat" else "csv")
    if items.height == 0:
        raise InputError(f"movies file {path} has no movies")
    genre, _ = genre_multi_hot(lists, params["genres"])
    year, year_notes = scaled_year(years, params["year"])
    title = hashed_title_words(items["title"], params["title_dim"])
    unknown = sorted(set(lists.explode().drop_nulls().to_list()) - set(params["genres"]) - {""})
    notes = {"unknown_genres": unknown, "year_source": params["year_source"], **year_notes}
    return items, {"genre": genre, "year": year, "title": title}, notes
