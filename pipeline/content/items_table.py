"""Read an item table (.csv / .tsv / .parquet) for its content roles, or take a polars DataFrame.

    python cli.py embed-items runs/RUN --items new_items.csv --out new/

Reads the id column and the columns named by role (--text, --categories, --numeric); writes nothing.
CSV/TSV files must be UTF-8 and are read with every column as text (a header row names them);
Parquet keeps its types. Rows are numbered from 1 in messages (the first row after the header).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import polars as pl

from common.errors import InputError
from pipeline.ingest_common import integer_ids, require_file

SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def read_items_file(path: Path) -> pl.DataFrame:
    """The whole item table at `path`; InputError for a wrong type, non-UTF-8 bytes or bad CSV."""
    path = require_file(Path(path), "items file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"items file {path}: unsupported type {suffix!r}; use .csv, .tsv or .parquet")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise InputError(f"items file {path} is not UTF-8 text (line {line}, byte {e.start}); "
                             "re-save it as UTF-8") from None
        return pl.read_csv(BytesIO(raw), separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"items file {path} could not be read: {str(e).splitlines()[0]}") from None


def select_items(df: pl.DataFrame, id_col: str, roles: dict[str, list[str]], where: str) -> pl.DataFrame:
    """`df`'s id column (as Int64 `original_id`, unique) and the role columns, checked to exist.
    `roles` maps an option (e.g. "--text") to the columns it names; `where` names the table."""
    for option, cols in [("--item-col", [id_col]), *roles.items()]:
        for col in cols:
            if col not in df.columns:
                raise InputError(f"{where} has no column {col!r} ({option} {col}); its columns are {df.columns}")
    ids = integer_ids(df[id_col], f"{where} column {id_col!r}")
    if ids.is_duplicated().any():
        dup = ids.filter(ids.is_duplicated())[0]
        raise InputError(f"{where}: item id {dup} has more than one row (row {int(ids.is_duplicated().arg_max()) + 1}, "
                         f"column {id_col!r}); each item needs one row")
    if df.height == 0:
        raise InputError(f"{where} has no rows")
    used = sorted({c for cols in roles.values() for c in cols} - {id_col})
    return df.select(pl.Series("original_id", ids), *used)
