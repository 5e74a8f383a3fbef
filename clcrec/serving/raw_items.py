"""New items' raw content -> the run's modalities, through the featurizer its dataset kept.

    python cli.py embed-items runs/RUN --items new_items.csv --out new/
    run.embed_items(items=pl.DataFrame({"item": [9001], "title": ["a space opera"], ...}))

Reads an item table (a .csv/.tsv/.parquet path or a polars DataFrame) with the columns the dataset's
`ingest table --items` named (its id column, --text, --categories, --numeric), an LDA-C file for a
`bow` modality, and feature files for any modality the ingest took as --feature; writes nothing.
The featurizer is the dataset's own (DATASET/featurizer/, checked against the digest in its
fingerprint), so an item gets the vector it would have got at ingest, bit for bit. Words and
category values the featurizer never saw are counted in the notes, not refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from pipeline.dataset import Dataset, validate_features


def featurize_items(dataset: Dataset, modalities: dict[str, int], items, bow=None, files=()):
    """(ids Int64 (N,), {modality: float32 (N, dim)} in the run's order, titles or None, notes)."""
    from pipeline.content import text as txt
    from pipeline.content.items_table import read_items_file, select_items

    fz = dataset.featurizer()
    if fz is None:
        raise InputError(f"the run's dataset {dataset.root} was not ingested from raw item content (ingest table "
                         "--items ...), so it has no featurizer; give the new items' feature files instead")
    if isinstance(items, pl.DataFrame):
        df, where = items, "the items DataFrame"
    else:
        df, where = read_items_file(Path(items)), f"items file {items}"
    table = select_items(df, fz.state["id_col"], fz.columns(modalities), where)
    bag = None
    if "bow" in fz.modalities and "bow" in modalities:
        if bow is None:
            raise InputError("the run's modality 'bow' is built from LDA-C lines: give the new items' lines with "
                             f"--bow FILE (line i: the words of row i of {where})")
        bag = txt.read_ldac(Path(bow), int(fz.state["modalities"]["bow"]["source_words"]))
    elif bow is not None:
        raise InputError(f"--bow {bow}: the run has no bag-of-words modality (its modalities: {list(modalities)})")
    feats, notes = fz.transform(table, bag, where, only=modalities)
    out = {m: feats[m] for m in modalities if m in feats}
    rest = {m: d for m, d in modalities.items() if m not in feats}
    ids = table["original_id"]
    if rest:
        from clcrec.serving.new_items import read_feature_files

        if not files:
            raise InputError(f"the run's modality {next(iter(rest))!r} was given as a --feature file at ingest, not "
                             f"built from raw content; give the new items' file for it too (NAME=FEAT.parquet)")
        file_ids, file_feats = read_feature_files(list(files), rest)
        have = pl.DataFrame({"original_id": file_ids, "_r": np.arange(len(file_ids), dtype=np.int64)})
        rows = pl.DataFrame({"original_id": ids}).join(have, on="original_id", how="left", maintain_order="left")["_r"]
        if rows.null_count():
            k = int(rows.is_null().arg_max())
            raise InputError(f"{where} row {k + 1} (item {ids[k]}) has no row in the feature file(s) {list(files)}")
        out.update({m: file_feats[m][rows.to_numpy()] for m in rest})
    elif files:
        raise InputError("feature files were given, but the item table already gives every run modality")
    out = validate_features({m: out[m] for m in modalities}, len(ids), where=f" ({where})")
    for m, arr in out.items():
        if arr.shape[1] != modalities[m]:
            raise InputError(f"modality {m!r}: {arr.shape[1]} columns from {where}, the run has {modalities[m]}")
    titles = df["title"].cast(pl.String).to_list() if "title" in df.columns else None
    return ids, out, titles, notes


def describe_notes(notes: dict) -> list[str]:
    """Lines telling what the featurizer did not know (printed by embed-items, never fatal)."""
    lines = []
    if notes.get("unknown_words"):
        lines.append(f"{notes['unknown_words']:,} word occurrence(s) not in the run's vocabulary, ignored")
    if notes.get("texts_without_words"):
        lines.append(f"{notes['texts_without_words']:,} text(s) with no word the run knows: their text vector is zero")
    if notes.get("unknown_bow_words"):
        lines.append(f"{notes['unknown_bow_words']:,.0f} bag-of-words count(s) of words the run dropped, ignored")
    for col, n in (notes.get("unknown_categories") or {}).items():
        if n:
            lines.append(f"{n:,} value(s) of category column {col!r} the run never saw, ignored")
    for col, n in (notes.get("missing_numeric") or {}).items():
        if n:
            lines.append(f"{n:,} missing value(s) in numeric column {col!r}, flagged")
    return lines
