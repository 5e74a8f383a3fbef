"""Data pipeline commands: `synth` and `ingest movielens|refnpy|table|citeulike` (pipeline/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from commands.apps import FORCE, app, console, ingest_app


@app.command()
def synth(
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    scale: str = typer.Option("default", help="Size: tiny | default | paper | large."),
    seed: int = typer.Option(0, help="Seed for generation and the cold split."),
    force: bool = typer.Option(False, "--force", help="Replace an existing target."),
) -> None:
    """Generate a synthetic dataset with planted structure (the built-in default data)."""
    from pipeline.synthetic import SynthConfig, write_synthetic

    path = write_synthetic(target, SynthConfig(scale=scale, seed=seed), force=force, progress=True)
    _wrote(path)


def _wrote(path: Path) -> None:
    """`wrote DIR` with the counts and the split that the dataset's meta.json records."""
    import json

    m = json.loads((path / "meta.json").read_text())
    c = m["counts"]
    console.print(f"wrote {path}: {m['num_users']:,} users, {m['num_items']:,} items, "
                  f"{c['train'] + c['val'] + c['test']:,} interactions; split train / validation / test "
                  f"{c['train']:,} / {c['val']:,} / {c['test']:,}; items {c['warm_items']:,} warm, "
                  f"{c['cold_val_items']:,} cold in validation, {c['cold_test_items']:,} cold in test",
                  highlight=False, soft_wrap=True)


_SEED = typer.Option(0, "--seed", help="Seed of the cold-item split.")
_COLD = typer.Option(0.2, "--cold-fraction", help="Fraction of items made cold.")
_COLD_VAL = typer.Option(0.5, "--cold-val-share", help="Share of cold items for validation (rest: test).")
_VAL = typer.Option(0.1, "--val-fraction", help="Fraction of warm interactions for validation.")
_TEST = typer.Option(0.1, "--test-fraction", help="Fraction of warm interactions for test.")
_COLD_ITEMS = typer.Option(None, "--cold-items", help="File of original item ids (one a line) to make cold.")


_SPLIT = typer.Option("random", "--split", help="random: the paper's cold items (default); temporal: hold out "
                     "everything after --cutoff (needs timestamps: MovieLens).")
_CUTOFF = typer.Option(None, "--cutoff", help="Temporal split: a date (1998-03-01, UTC) or a fraction of the "
                       "interactions in time order (0.8); the latest --val-fraction before it validate.")


def _split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items,
                  split: str = "random", cutoff: Optional[str] = None):
    from common.errors import InputError
    from pipeline.split import SplitConfig
    from pipeline.split_temporal import TemporalSplitConfig

    if split not in ("random", "temporal"):
        raise InputError(f"--split must be random or temporal, got {split!r}")
    if split == "temporal":
        if cutoff is None:
            raise InputError("--split temporal needs --cutoff DATE|FRACTION (e.g. --cutoff 0.8)")
        if cold_items is not None:
            raise InputError("--cold-items belongs to the random split; the temporal split makes the items "
                             "first seen after --cutoff cold")
        return TemporalSplitConfig(cutoff, val_fraction)
    if cutoff is not None:
        raise InputError("--cutoff needs --split temporal")
    return SplitConfig(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items)


@ingest_app.command("movielens")
def ingest_movielens_cmd(
    source: Path = typer.Argument(..., help="A MovieLens release directory (ml-100k, ml-1m, ml-25m, ...)."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    title_dim: int = typer.Option(64, help="Dimensions of the hashed title-word features."),
    tag_dim: int = typer.Option(64, help="Dimensions of the hashed user-tag features (releases with tags.csv)."),
    seed: int = _SEED, cold_fraction: float = _COLD, cold_val_share: float = _COLD_VAL,
    val_fraction: float = _VAL, test_fraction: float = _TEST, cold_items: Optional[Path] = _COLD_ITEMS,
    split: str = _SPLIT, cutoff: Optional[str] = _CUTOFF,
    force: bool = FORCE,
) -> None:
    """Ingest a MovieLens release (detected by its files) with genre, year and title features, plus
    tag-genome and user-tag features when the release has genome-scores.csv / tags.csv."""
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_movielens import ingest_movielens

    split = _split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items, split, cutoff)
    _wrote(ingest_movielens(source, target, IngestConfig(split=split, title_dim=title_dim, tag_dim=tag_dim), force))


@ingest_app.command("refnpy")
def ingest_refnpy_cmd(
    source: Path = typer.Argument(..., help="A Data/<name>/ directory of the public CLCRec code."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickled .npy files (runs code)."),
    num_users: Optional[int] = typer.Option(None, help="num_user, only if it cannot be inferred."),
    force: bool = FORCE,
) -> None:
    """Ingest the reference code's .npy layout, keeping its split."""
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_refnpy import ingest_refnpy

    _wrote(ingest_refnpy(source, target, IngestConfig(allow_pickle=allow_pickle), force, num_users=num_users))


@ingest_app.command("table")
def ingest_table_cmd(
    interactions: Path = typer.Argument(..., help="Interactions .csv / .tsv / .parquet."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    feature: list[str] = typer.Option(
        [], "--feature", help="NAME=FEAT.npy:IDS.txt or NAME=FEAT.parquet; repeat per modality."
    ),
    user_col: str = typer.Option("user", help="User id column."),
    item_col: str = typer.Option("item", help="Item id column (also the id column of Parquet features and --items)."),
    items: Optional[Path] = typer.Option(None, "--items", help="Item table (.csv/.tsv UTF-8, .parquet) whose raw "
                                         "columns --text/--categories/--numeric name; fitted into a featurizer."),
    text: list[str] = typer.Option([], "--text", help="Text column of --items: tf-idf + SVD (repeat: joined with a space)."),
    categories: list[str] = typer.Option([], "--categories", help="COL[:SEP] multi-valued category column of "
                                         "--items (SEP default '|'; 'COL:' one value per cell): multi-hot."),
    numeric: list[str] = typer.Option([], "--numeric", help="Numeric column of --items: standardised, with a missing flag."),
    bow: Optional[Path] = typer.Option(None, "--bow", help="LDA-C bag of words (mult.dat: `n id:count ...` per item; "
                                       "line i is row i of --items, else item id i)."),
    bow_vocab: Optional[Path] = typer.Option(None, "--bow-vocab", help="The --bow file's vocabulary, one word a line."),
    text_dim: int = typer.Option(300, "--text-dim", help="SVD dimensions of --text / --bow (capped by the corpus)."),
    min_word_count: int = typer.Option(2, "--min-word-count", help="Drop words in fewer items' text."),
    min_category_count: int = typer.Option(2, "--min-category-count", help="Drop category values on fewer items."),
    seed: int = _SEED, cold_fraction: float = _COLD, cold_val_share: float = _COLD_VAL,
    val_fraction: float = _VAL, test_fraction: float = _TEST, cold_items: Optional[Path] = _COLD_ITEMS,
    force: bool = FORCE,
) -> None:
    """Ingest an interactions table with item-feature files per modality and/or raw item content
    (--items with --text/--categories/--numeric, --bow), whose fitted featurizer the dataset keeps."""
    from pipeline.content.featurizer import ContentSpec, parse_category
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_table import ingest_table, parse_feature_spec

    config = IngestConfig(
        split=_split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items),
        user_col=user_col,
        item_col=item_col,
        features=tuple(parse_feature_spec(f) for f in feature),
        items=items,
        content=ContentSpec(text=tuple(text), categories=tuple(parse_category(c) for c in categories),
                            numeric=tuple(numeric), bow=bow, bow_vocab=bow_vocab, text_dim=text_dim,
                            min_category_count=min_category_count, min_word_count=min_word_count, seed=seed),
    )
    _wrote(ingest_table(interactions, target, config, force))


@ingest_app.command("citeulike")
def ingest_citeulike_cmd(
    source: Path = typer.Argument(..., help="The CiteULike-a directory (users.dat, item-tag.dat, tags.dat, citations.dat)."),
    target: Path = typer.Argument(..., help="Dataset directory to create."),
    tag_dim: int = typer.Option(128, help="Dimensions of the hashed tag bag (0: no tags modality)."),
    citation_dim: int = typer.Option(64, help="Dimensions of the hashed bag of linked articles (0: no citations modality)."),
    max_users: int = typer.Option(0, help="Keep a seeded random N of the users (0: all), e.g. to fit a small machine."),
    seed: int = _SEED, cold_fraction: float = _COLD, cold_val_share: float = _COLD_VAL,
    val_fraction: float = _VAL, test_fraction: float = _TEST, cold_items: Optional[Path] = _COLD_ITEMS,
    force: bool = FORCE,
) -> None:
    """Ingest CiteULike-a: users' libraries, with hashed tag and citation bags as content."""
    from pipeline.ingest_citeulike import ingest_citeulike
    from pipeline.ingest_common import IngestConfig

    split = _split_config(seed, cold_fraction, cold_val_share, val_fraction, test_fraction, cold_items)
    _wrote(ingest_citeulike(source, target, IngestConfig(split=split, tag_dim=tag_dim), force,
                            citation_dim=citation_dim, max_users=max_users))
