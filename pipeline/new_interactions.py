"""Interactions that arrive after training, as `cli.py update` reads them.

    python cli.py update runs/ml --interactions new.csv --out runs/ml-upd

Reads a CSV (or .tsv) or Parquet file with the columns `user,item` (original ids) and optionally
`timestamp` (integer unix seconds); nothing else. Returns a polars frame of Int64 columns, with
repeated (user, item) rows folded into one (the earliest time kept). Writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from common.errors import InputError
from pipeline.ingest_common import integer_ids, require_file

REQUIRED = ("user", "item")
OPTIONAL = ("timestamp",)


def read_new_interactions(path: Path) -> pl.DataFrame:
    """(user, item [, timestamp]) Int64, one row per distinct pair; InputError names the problem."""
    path = require_file(Path(path), "interactions file")  # missing or 0 bytes
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            df = pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        else:
            raise InputError(f"interactions file {path}: unsupported type {suffix!r}; use .csv, .tsv or .parquet")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"interactions file {path} could not be read: {str(e).splitlines()[0]}") from None
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    missing = [c for c in REQUIRED if c not in df.columns]
    if unknown or missing:
        raise InputError(f"interactions file {path} has the columns {df.columns}; expected user,item and "
                         f"optionally timestamp" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if df.height == 0:
        raise InputError(f"interactions file {path} has no rows")
    out = df.select(*(pl.Series(c, integer_ids(df[c], f"{path} column {c}")) for c in df.columns))
    if "timestamp" in out.columns:
        return out.group_by("user", "item").agg(pl.col("timestamp").min()).sort("user", "item")
    return out.unique(["user", "item"]).sort("user", "item")
