"""The fitted featurizer of an item table: raw columns by role -> one float32 modality per role.

    python cli.py ingest table ratings.csv data/mine --items items.csv --text title \\
        --categories genres:'|' --numeric year --bow mult.dat --bow-vocab vocabulary.dat

Roles and the modality each becomes:
    text        --text COL (repeatable; a row's columns joined with a space): tf-idf + SVD (text.py)
    bow         --bow mult.dat --bow-vocab vocabulary.dat: LDA-C counts through the same tf-idf + SVD
    categories  --categories COL[:SEP] (repeatable; SEP default `|`, `COL:` for one value per cell):
                multi-hot over the values found on at least --min-category-count items, one block
                per column
    numeric     --numeric COL (repeatable): per column (x - mean) / scale and a missing flag (a missing
                value is 0 with flag 1), then one constant 1 column, so the encoder's per-row L2
                normalisation keeps the values' magnitudes
Fitted on item content only: every item of the table (cold ones included, their content is known
at ingest) and no interactions. `save` writes DIR/featurizer.json (the tokenizer, columns,
vocabularies, category values, means and scales) and DIR/<modality>_<array>.npy (idf, SVD basis,
bag-of-words id map), loaded back with allow_pickle=False. `transform` is the only path from raw
content to features, at ingest and at embed-items alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from common.errors import InputError
from pipeline.content import text as txt

FORMAT = "clcrec-featurizer"
VERSION = 1
FITTED_ON = "the content of every item in the item table (cold items included); no interactions"


@dataclass(frozen=True)
class ContentSpec:
    """What `ingest table --items` featurizes (the options of the same names)."""

    text: tuple[str, ...] = ()
    categories: tuple[tuple[str, str], ...] = ()  # (column, separator; "" = one value per cell)
    numeric: tuple[str, ...] = ()
    bow: Path | None = None  # LDA-C mult.dat
    bow_vocab: Path | None = None  # its vocabulary, one word per line
    text_dim: int = 300  # SVD dimensions, capped at min(words, items) - 1
    min_category_count: int = 2  # a category value on fewer items is dropped
    min_word_count: int = 2  # a word in fewer items' text is dropped
    seed: int = 0  # TruncatedSVD's random_state

    def __post_init__(self):
        for name in ("text_dim", "min_category_count", "min_word_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if (self.bow is None) != (self.bow_vocab is None):
            raise InputError("--bow FILE and --bow-vocab FILE go together: the word ids of mult.dat index the vocabulary")

    @property
    def empty(self) -> bool:
        return not (self.text or self.categories or self.numeric or self.bow)

    def roles(self) -> dict[str, list[str]]:
        return {"--text": list(self.text), "--categories": [c for c, _ in self.categories],
                "--numeric": list(self.numeric)}


def parse_category(text: str) -> tuple[str, str]:
    """COL[:SEP] -> (column, separator); the default separator is `|`."""
    col, sep, rest = text.partition(":")
    if not col:
        raise InputError(f"--categories {text!r}: use COL or COL:SEP (e.g. genres:'|')")
    return col, (rest if sep else "|")


class Featurizer:
    """A fitted featurizer: its JSON `state` and its arrays, by file name."""

    def __init__(self, state: dict, arrays: dict[str, np.ndarray]):
        self.state, self.arrays = state, arrays

    @property
    def modalities(self) -> list[str]:
        return list(self.state["modalities"])

    def columns(self, only=None) -> dict[str, list[str]]:
        """The item-table columns each option needs at transform time (of the modalities `only`)."""
        m = {k: v for k, v in self.state["modalities"].items() if only is None or k in only}
        return {"--text": m["text"]["columns"] if "text" in m else [],
                "--categories": [c["column"] for c in m.get("categories", {}).get("columns", [])],
                "--numeric": [c["column"] for c in m.get("numeric", {}).get("columns", [])]}

    def digest(self) -> str:
        """SHA-256 of the JSON state and every array (dtype, shape, bytes): in the dataset's fingerprint."""
        h = hashlib.sha256(json.dumps(self.state, sort_keys=True, separators=(",", ":")).encode())
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    # --- transform ------------------------------------------------------------------------------

    def transform(self, items: pl.DataFrame, bow: txt.Bag | None = None, where: str = "items", only=None):
        """({modality: float32 (n, dim)}, notes) of `items` (original_id + the role columns) and, for
        a bow modality, its counts (one row per item row, over the source vocabulary's ids).
        `only`: the modalities to build (default all)."""
        feats, notes = {}, {}
        for name, m in self.state["modalities"].items():
            if only is not None and name not in only:
                continue
            if m["role"] == "text":
                docs = text_column(items, m["columns"], where)
                vocab = {w: j for j, w in enumerate(m["vocabulary"])}
                bag, notes["unknown_words"] = txt.words_bag(docs, vocab)
                notes["texts_without_words"] = int((np.diff(bag.indptr) == 0).sum())
            elif m["role"] == "bow":
                if bow is None:
                    raise InputError("the run's modality 'bow' is built from LDA-C lines: give them with --bow FILE "
                                     "(one line per row of the item table)")
                bow.check_rows(items.height, where)
                bag, notes["unknown_bow_words"] = txt.remap_bag(bow, self.arrays[f"{name}_lookup.npy"])
            elif m["role"] == "categories":
                feats[name], notes["unknown_categories"] = _multi_hot(items, m["columns"])
                continue
            else:
                feats[name], notes["missing_numeric"] = _standardised(items, m["columns"], where)
                continue
            feats[name] = txt.project(bag, self.arrays[f"{name}_idf.npy"], self.arrays[f"{name}_basis.npy"])
        return feats, notes

    # --- storage --------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir()
        for name, arr in self.arrays.items():
            np.save(folder / name, arr)
        (folder / "featurizer.json").write_text(json.dumps(self.state, indent=1, ensure_ascii=False) + "\n")


def load_featurizer(folder: Path, digest: str | None = None) -> Featurizer:
    """The featurizer saved in `folder`; InputError if it is malformed or not the `digest` recorded."""
    path = folder / "featurizer.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION}")
        arrays = {name: np.load(folder / name, allow_pickle=False) for name in state["arrays"]}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"featurizer {path} cannot be read ({e}); re-run the ingest") from None
    fz = Featurizer(state, arrays)
    if digest is not None and fz.digest() != digest:
        raise InputError(f"featurizer {folder} is not the one the dataset recorded (digest differs); re-run the ingest")
    return fz


# --- fitting ------------------------------------------------------------------------------------

def fit_featurizer(spec: ContentSpec, items: pl.DataFrame, bow: txt.Bag | None, where: str,
                   id_col: str = "item") -> Featurizer:
    """Fit every role of `spec` on `items` (all of them: content only, no interactions)."""
    mods: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    if spec.text:
        docs = text_column(items, list(spec.text), where)
        vocab = txt.fit_vocabulary(docs, spec.min_word_count)
        bag, _ = txt.words_bag(docs, {w: j for j, w in enumerate(vocab)})
        idf, basis = _fit_svd(bag, len(vocab), spec, "--text")
        mods["text"] = {"role": "text", "columns": list(spec.text), "vocabulary": vocab,
                        "min_word_count": spec.min_word_count, "requested_dim": spec.text_dim, "dim": basis.shape[1]}
        arrays.update({"text_idf.npy": idf, "text_basis.npy": basis})
    if spec.bow is not None:
        words = txt.read_vocabulary(spec.bow_vocab)
        df = txt.document_frequency(bow, len(words))
        keep = df >= spec.min_word_count
        lookup = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
        bag, _ = txt.remap_bag(bow, lookup)
        idf, basis = _fit_svd(bag, int(keep.sum()), spec, "--bow")
        mods["bow"] = {"role": "bow", "vocabulary": [w for w, k in zip(words, keep) if k],
                       "source_words": len(words), "min_word_count": spec.min_word_count,
                       "requested_dim": spec.text_dim, "dim": basis.shape[1]}
        arrays.update({"bow_idf.npy": idf, "bow_basis.npy": basis, "bow_lookup.npy": lookup})
    if spec.categories:
        cols = []
        for col, sep in spec.categories:
            counts = _values(items[col], sep).explode().drop_nulls().value_counts()
            kept = sorted(counts.filter(pl.col("count") >= spec.min_category_count)[col].to_list())
            if not kept:
                raise InputError(f"--categories {col}: no value of column {col!r} is on {spec.min_category_count} or "
                                 "more items; lower --min-category-count or check the separator (COL:SEP)")
            cols.append({"column": col, "sep": sep, "values": kept})
        mods["categories"] = {"role": "categories", "columns": cols, "min_count": spec.min_category_count}
    if spec.numeric:
        cols = []
        for col in spec.numeric:
            x = _numbers(items, col, where)
            ok = x[np.isfinite(x)]
            mean = float(ok.mean()) if ok.size else 0.0
            scale = float(ok.std()) if ok.size else 1.0
            cols.append({"column": col, "mean": mean, "scale": scale if scale > 0 else 1.0})
        mods["numeric"] = {"role": "numeric", "columns": cols}
    state = {"format": FORMAT, "version": VERSION, "fitted_on": FITTED_ON, "id_col": id_col,
             "tokenizer": {"lowercase": True, "pattern": txt.TOKEN_PATTERN}, "seed": spec.seed,
             "modalities": mods, "arrays": sorted(arrays)}
    return Featurizer(state, arrays)


def _fit_svd(bag: txt.Bag, num_words: int, spec: ContentSpec, option: str):
    if num_words < 2:
        raise InputError(f"{option}: only {num_words} word(s) are in {spec.min_word_count} or more items; "
                         "lower --min-word-count or add text")
    return txt.fit_tfidf(bag, num_words, spec.text_dim, spec.seed)


# --- the roles' columns -------------------------------------------------------------------------

def text_column(items: pl.DataFrame, cols: list[str], where: str) -> list[str]:
    """Each row's text columns joined with a space; an empty row is refused by name (a text without
    a word of two letters, e.g. "I.Q.", is not: its vector is zero, counted as `texts_without_words`)."""
    parts = [items[c].cast(pl.String).fill_null("") for c in cols]
    docs = parts[0]
    for part in parts[1:]:
        docs = docs + " " + part
    empty = docs.str.strip_chars() == ""
    label = f"column {cols[0]!r}" if len(cols) == 1 else f"columns {cols}"
    if empty.any():
        k = int(empty.arg_max())
        raise InputError(f"{where} {label} is empty at row {k + 1} (item {items['original_id'][k]}); "
                         "every item needs some text: fill it in or drop the row")
    return docs.to_list()


def _values(col: pl.Series, sep: str) -> pl.Series:
    """Each cell's distinct values (stripped, empty ones dropped): split on `sep`, or a Parquet list."""
    if isinstance(col.dtype, (pl.List, pl.Array)):
        lists = col.cast(pl.List(pl.String))
    elif sep:
        lists = col.cast(pl.String).str.split(sep)
    else:
        lists = pl.Series(col.name, [[v] if v is not None else [] for v in col.cast(pl.String).to_list()],
                          dtype=pl.List(pl.String))
    return lists.list.eval(pl.element().str.strip_chars().filter(pl.element() != "").unique(maintain_order=True)
                           ).alias(col.name)


def _multi_hot(items: pl.DataFrame, cols: list[dict]) -> tuple[np.ndarray, dict]:
    blocks, unknown = [], {}
    for c in cols:
        index = {v: j for j, v in enumerate(c["values"])}
        block = np.zeros((items.height, len(index)), dtype=np.float32)
        misses = 0
        for r, vals in enumerate(_values(items[c["column"]], c["sep"]).to_list()):
            for v in vals or ():
                j = index.get(v)
                if j is None:
                    misses += 1
                else:
                    block[r, j] = 1.0
        blocks.append(block)
        unknown[c["column"]] = misses
    return np.concatenate(blocks, axis=1), unknown


def _numbers(items: pl.DataFrame, col: str, where: str) -> np.ndarray:
    """float64 values of a numeric column; missing (empty, null, NaN) -> NaN; text refused by row."""
    s = items[col]
    if not s.dtype.is_numeric():
        s = s.cast(pl.String).str.strip_chars()
        s = s.replace("", None)
        parsed = s.cast(pl.Float64, strict=False)
        bad = parsed.is_null() & s.is_not_null()
        if bad.any():
            k = int(bad.arg_max())
            raise InputError(f"{where} column {col!r} (--numeric) holds {s[k]!r} at row {k + 1}, not a number; "
                             "leave a missing value empty")
        s = parsed
    x = s.cast(pl.Float64).to_numpy().astype(np.float64)
    if np.isinf(x).any():
        k = int(np.flatnonzero(np.isinf(x))[0])
        raise InputError(f"{where} column {col!r} (--numeric) is infinite at row {k + 1}; give a finite value or none")
    return x


def _standardised(items: pl.DataFrame, cols: list[dict], where: str) -> tuple[np.ndarray, dict]:
    out = np.zeros((items.height, 2 * len(cols) + 1), dtype=np.float32)
    missing = {}
    for k, c in enumerate(cols):
        x = _numbers(items, c["column"], where)
        miss = ~np.isfinite(x)
        out[:, 2 * k] = np.where(miss, 0.0, (np.nan_to_num(x) - c["mean"]) / c["scale"])
        out[:, 2 * k + 1] = miss
        missing[c["column"]] = int(miss.sum())
    out[:, -1] = 1.0
    return out, missing
