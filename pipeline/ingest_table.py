"""Ingest any interactions table (CSV or Parquet) plus one item-feature file per modality.

    python cli.py ingest table ratings.parquet data/mine --user-col uid --item-col iid \\
        --feature img=img.npy:img_ids.txt --feature text=text.parquet

Reads
    INTERACTIONS   .csv / .tsv / .parquet with integer user and item id columns (other columns ignored)
    --feature NAME=FEAT.npy:IDS     float (n, d) rows in the order of IDS (.txt, one id per line,
                                    or an integer .npy); the row count must equal the id count
    --feature NAME=FEAT.parquet     an item-id column (--item-col, else `item`) and the vector as
                                    one list/array column or as all the other numeric columns
    --items ITEMS.{csv,tsv,parquet} with --text COL, --categories COL[:SEP], --numeric COL, and/or
    --bow mult.dat --bow-vocab vocabulary.dat: raw content, featurized by pipeline/content/ (one
                                    modality per role: text, categories, numeric, bow)
Writes DATASET/ (pipeline/dataset.py) with the paper's cold split (pipeline/split.py), and the
fitted featurizer as DATASET/featurizer/ when raw content was given.
Every interacted item must have a row in every feature file (else InputError with the count and
an example id); feature rows of items without interactions are dropped (counted in meta).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from common.fsutil import check_new_target
from pipeline.dataset import validate_features
from pipeline.ingest_common import (
    FeatureSpec,
    IngestConfig,
    assemble,
    console,
    integer_ids,
    require_file,
)


def parse_feature_spec(text: str) -> FeatureSpec:
    """NAME=PATH.parquet or NAME=PATH.npy:IDS (the --feature option) -> FeatureSpec."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise InputError(f"--feature {text!r}: use NAME=FEAT.parquet or NAME=FEAT.npy:IDS.txt")
    if rest.endswith(".parquet"):
        return FeatureSpec(name=name, path=Path(rest))
    path, sep, ids = rest.rpartition(":")
    if not sep or not path.endswith(".npy"):
        raise InputError(
            f"--feature {text!r}: a .npy feature file needs its item-id order file, NAME=FEAT.npy:IDS.txt"
        )
    return FeatureSpec(name=name, path=Path(path), ids=Path(ids))


def _read_table(path: Path, columns: list[str]) -> pl.DataFrame:
    require_file(path, "interactions file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            have = list(pl.read_parquet_schema(path))
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            have = pl.read_csv(path, n_rows=0, separator=sep).columns
        else:
            raise InputError(f"interactions file {path}: unsupported type {suffix!r}; use .csv, .tsv or .parquet")
        missing = [c for c in columns if c not in have]
        if missing:
            raise InputError(
                f"interactions file {path} has no column {missing[0]!r}; its columns are {have}. "
                "Choose them with --user-col / --item-col"
            )
        if suffix == ".parquet":
            return pl.read_parquet(path, columns=columns)
        return pl.read_csv(path, columns=columns, separator=sep, infer_schema=False)
    except (pl.exceptions.ComputeError, OSError) as e:
        raise InputError(f"interactions file {path} could not be read: {e}") from None


def _read_ids(path: Path) -> pl.Series:
    require_file(path, "item-id order file")
    if path.suffix == ".npy":
        return pl.Series("id", np.load(path, allow_pickle=False).ravel())
    lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, infer_schema=False)
    col = lines[lines.columns[0]].str.strip_chars()
    return col.filter(col != "")


def read_feature(spec: FeatureSpec, item_col: str) -> tuple[pl.Series, np.ndarray]:
    """(item ids Int64 (n,), float32 (n, d)) of one modality file, validated."""
    path = require_file(spec.path, f"feature file for {spec.name!r}")
    if path.suffix == ".npy":
        try:
            mat = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"feature file {path} is not a plain numeric .npy array ({e})") from None
        ids = integer_ids(_read_ids(spec.ids), f"item-id order file {spec.ids}")
        if mat.ndim != 2:
            raise InputError(
                f"feature file {path} is a {mat.ndim}-D array of shape {mat.shape}; it must be 2-D "
                "(one row of features per id in the order file): reshape it, e.g. to (n, 1)"
            )
        if mat.shape[0] != len(ids):
            raise InputError(
                f"feature file {path} has shape {mat.shape} but {spec.ids} lists {len(ids)} ids; "
                "they must have one row per id"
            )
    else:
        try:
            df = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as e:  # truncated or garbled: ComputeError
            raise InputError(
                f"feature file {path} for {spec.name!r} could not be read as parquet ({e}); it is "
                "truncated or corrupt: write it again, or pass the features as NAME=FEAT.npy:IDS.txt"
            ) from None
        id_col = item_col if item_col in df.columns else "item"
        if id_col not in df.columns:
            raise InputError(f"feature file {path} has no item-id column ({item_col!r} or 'item'); columns: {df.columns}")
        ids = integer_ids(df[id_col], f"feature file {path} column {id_col!r}")
        rest = df.drop(id_col)
        lists = [c for c, t in rest.schema.items() if isinstance(t, (pl.List, pl.Array))]
        if len(lists) == 1 and rest.width == 1:
            vec = rest[lists[0]]
            lens = vec.list.len() if isinstance(vec.dtype, pl.List) else None
            if lens is not None and (lens.null_count() or lens.n_unique() != 1):
                raise InputError(f"feature file {path}: vectors in {lists[0]!r} must all have the same length")
            mat = np.asarray(vec.to_list(), dtype=np.float64) if len(vec) else np.zeros((0, 1))
        else:
            bad = [c for c, t in rest.schema.items() if not t.is_numeric()]
            if bad or rest.width == 0:
                raise InputError(
                    f"feature file {path}: the vector must be one list column or numeric columns; "
                    f"{'non-numeric: ' + str(bad) if bad else 'no vector columns'}"
                )
            mat = rest.to_numpy().astype(np.float64)
    if mat.ndim == 2 and mat.shape[1] == 0:  # every item's content the same (empty) vector: nothing to learn
        raise InputError(f"feature file {path} for {spec.name!r} has 0 feature columns (shape {mat.shape}); "
                         "each item needs at least one content value")
    if ids.is_duplicated().any():
        raise InputError(f"feature file {path}: item id {ids.filter(ids.is_duplicated())[0]} has more than one row")
    mat = validate_features({spec.name: mat}, len(ids), where=f" ({path})")[spec.name]
    return ids, mat


def read_content(config: IngestConfig) -> tuple[pl.DataFrame, dict[str, np.ndarray], object, dict]:
    """(items [original_id (, title)], {modality: float32}, featurizer, notes) of the raw content roles:
    the featurizer is fitted on every row of the item table (content only) and then applied to it."""
    from pipeline.content import text as txt
    from pipeline.content.featurizer import fit_featurizer
    from pipeline.content.items_table import read_items_file, select_items

    spec = config.content
    roles = spec.roles()
    if any(roles.values()) and config.items is None:
        raise InputError("--text, --categories and --numeric name columns of an item table: give it with --items FILE")
    bag = None
    if spec.bow is not None:
        words = txt.read_vocabulary(require_file(spec.bow_vocab, "--bow-vocab file"))
        bag = txt.read_ldac(require_file(spec.bow, "--bow file"), len(words))
    if config.items is not None:
        where = f"items file {config.items}"
        df = read_items_file(config.items)
        items = select_items(df, config.item_col, roles, where)
        titles = df["title"].cast(pl.String) if "title" in df.columns else None
        if bag is not None:
            bag.check_rows(items.height, where)  # before fitting on it
    else:  # LDA-C alone: line i is item id i (0-based), as the public datasets number them
        where, titles = f"--bow file {spec.bow}", None
        items = pl.DataFrame({"original_id": np.arange(bag.rows, dtype=np.int64)})
    fz = fit_featurizer(spec, items, bag, where, config.item_col)
    feats, notes = fz.transform(items, bag, where)
    frame = items.select("original_id")
    if titles is not None:
        frame = frame.with_columns(title=titles)
    return frame, feats, fz, notes


def ingest_table(
    interactions_path: Path, target: Path, config: IngestConfig = IngestConfig(), force: bool = False
) -> Path:
    """Read an interactions table, its feature files and item table; write the dataset directory `target`."""
    path, target = Path(interactions_path), Path(target)
    check_new_target(target, force)
    if not config.features and config.content.empty:
        raise InputError("no --feature and no --items roles given; CLCRec needs at least one item content modality "
                         "(--feature NAME=PATH, or --items FILE with --text/--categories/--numeric, or --bow)")
    if config.items is not None and config.content.empty:
        raise InputError(f"--items {config.items} needs at least one role: --text COL, --categories COL, --numeric COL")
    with console.status(f"reading {path}"):
        df = _read_table(path, [config.user_col, config.item_col])
        inter = pl.DataFrame(
            {
                "user": integer_ids(df[config.user_col], f"{path} column {config.user_col!r}"),
                "item": integer_ids(df[config.item_col], f"{path} column {config.item_col!r}"),
            }
        )
    if inter.height == 0:
        raise InputError(f"interactions file {path} has no rows")
    wanted = inter.select(original_id="item").unique()
    # name -> (label of its source, ids, matrix)
    loaded = {s.name: (f"feature file {s.path}", *read_feature(s, config.item_col)) for s in config.features}
    featurizer, notes, titles = None, {}, None
    if not config.content.empty:
        with console.status("fitting the item-content featurizer"):
            items, feats, featurizer, notes = read_content(config)
        label = f"items file {config.items}" if config.items is not None else f"--bow file {config.content.bow}"
        for name, mat in feats.items():
            if name in loaded:
                raise InputError(f"modality {name!r} is both a --feature and a content role; rename the --feature")
            loaded[name] = (label, items["original_id"], mat)
        titles = items.select("original_id", "title") if "title" in items.columns else None
    names = list(loaded)
    if len(set(names)) != len(names):
        raise InputError(f"modality names must be unique; got {names}")
    union = pl.concat([pl.DataFrame({"original_id": ids}) for _, ids, _ in loaded.values()]).unique().sort("original_id")
    features = {}
    for name, (label, ids, mat) in loaded.items():
        have = pl.DataFrame({"original_id": ids, "_r": np.arange(len(ids), dtype=np.int64)})
        lacking = wanted.join(have, on="original_id", how="anti")
        if lacking.height:
            raise InputError(
                f"{label} lacks {lacking.height} item(s) that have interactions, "
                f"e.g. item {lacking['original_id'].sort()[0]}; every interacted item needs a row"
            )
        rows = union.join(have, on="original_id", how="left", maintain_order="left")["_r"]
        aligned = np.zeros((union.height, mat.shape[1]), dtype=np.float32)
        ok = rows.is_not_null().to_numpy()
        aligned[ok] = mat[rows.drop_nulls().to_numpy()]  # rows of other files' extra items stay zero
        features[name] = aligned
    if titles is not None:
        union = union.join(titles, on="original_id", how="left", maintain_order="left")
    spec = config.content
    content = {} if spec.empty else {"content": {
        "items": str(config.items) if config.items else None, "text": list(spec.text),
        "categories": [f"{c}:{s}" for c, s in spec.categories], "numeric": list(spec.numeric),
        "bow": str(spec.bow) if spec.bow else None, "bow_vocab": str(spec.bow_vocab) if spec.bow_vocab else None,
        "text_dim": spec.text_dim, "min_category_count": spec.min_category_count,
        "min_word_count": spec.min_word_count, "seed": spec.seed}}
    if notes:
        console.print(f"content featurizer: {_describe_notes(notes, features, featurizer)}", highlight=False)
    return assemble(
        target,
        interactions=inter,
        items=union,
        features=features,
        config=config,
        source={
            "kind": "table",
            "path": str(path.resolve()),
            "user_col": config.user_col,
            "item_col": config.item_col,
            "features": {s.name: str(s.path) + (f":{s.ids}" if s.ids else "") for s in config.features},
            **content,
        },
        label=str(path),
        force=force,
        extra={"featurizer_notes": notes} if notes else None,
        featurizer=featurizer,
    )


def _describe_notes(notes: dict, features: dict, featurizer) -> str:
    """One line: each fitted modality's width and what the fit dropped (rare words, rare values)."""
    parts = [f"{m} {features[m].shape[1]} dims" for m in featurizer.modalities]
    if notes.get("unknown_words"):
        parts.append(f"{notes['unknown_words']:,} rare word occurrence(s) dropped")
    if notes.get("unknown_bow_words"):
        parts.append(f"{notes['unknown_bow_words']:,.0f} rare bag-of-words count(s) dropped")
    if notes.get("texts_without_words"):
        parts.append(f"{notes['texts_without_words']:,} text(s) without a kept word (zero vectors)")
    rare = sum((notes.get("unknown_categories") or {}).values())
    if rare:
        parts.append(f"{rare:,} rare category value(s) dropped")
    missing = sum((notes.get("missing_numeric") or {}).values())
    if missing:
        parts.append(f"{missing:,} missing numeric value(s) flagged")
    return ", ".join(parts)
