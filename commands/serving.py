"""Serving commands: `recommend`, `export`, `embed-items`, `recommend-all` (clcrec/serve, newitems, recommend_all)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from commands.apps import FORCE, app, console


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    user: str = typer.Option(..., help="The user's original id."),
    k: int = typer.Option(10),
    include_seen: bool = typer.Option(False, help="Also rank the user's training items."),
    candidates: str = typer.Option("all", help="Rank among all, warm (with interactions), cold, or new (--new-items) items."),
    new_items: Optional[Path] = typer.Option(None, "--new-items", help="Also rank the items of this DIR from embed-items."),
):
    """Top-k items for a user (original ids; cold items included)."""
    from rich.table import Table

    from clcrec.serving.run import recommend as rec

    df = rec(run_dir, user, k, include_seen, candidates, new_items)
    if df.height < k:  # fewer candidates than --k (the user's training items are skipped)
        seen = "" if include_seen else ", after the user's training items are skipped"
        pool = "candidate" if candidates == "all" else f"--candidates {candidates}"
        console.print(f"note: --k {k} is more than the {df.height} {pool} item(s) left for user {user}{seen}; "
                      f"showing all {df.height}", highlight=False)
    table = Table(title=f"top {df.height} for user {user}")
    for col in df.columns:
        table.add_column(col, justify="right" if col in ("rank", "original_id", "score") else "left")
    for row in df.iter_rows(named=True):
        table.add_row(*[_cell(c, v) for c, v in row.items()])
    Console().print(table)


def _cell(col: str, v) -> str:
    """One table cell: scores with 4 decimals, an untitled item blank (not "None")."""
    if v is None:
        return ""
    return f"{v:.4f}" if col == "score" else str(v)


@app.command()
def export(
    run_dir: Path = typer.Argument(...),
    out: Optional[Path] = typer.Option(None, help="Output directory [RUN_DIR/embeddings]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export."),
):
    """Export user and item embeddings (ranking tables) with their original ids."""
    from clcrec.serving.export import export_embeddings

    console.print(f"wrote {export_embeddings(run_dir, out, force)}")


@app.command("embed-items")
def embed_items(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    features: Optional[list[str]] = typer.Argument(
        None, help="One file per run modality: NAME=FEAT.parquet or NAME=FEAT.npy:IDS.txt (NAME optional)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (vectors.npy, items.parquet, meta.json)."),
    movielens: Optional[Path] = typer.Option(
        None, "--movielens", help="MovieLens-style movie rows instead (u.item, movies.dat or movies.csv)."),
    items: Optional[Path] = typer.Option(
        None, "--items", help="Raw item table (.csv/.tsv/.parquet) with the columns the dataset's `ingest table "
        "--items` used; its saved featurizer makes the features."),
    bow: Optional[Path] = typer.Option(None, "--bow", help="LDA-C lines of the --items rows, for a bag-of-words modality."),
    replace: bool = typer.Option(False, "--replace", help="Allow ids the run has: their vectors are replaced."),
    force: bool = FORCE,
):
    """Ranking vectors of items the run has never seen, from their content (no retraining)."""
    from clcrec.serving.raw_items import describe_notes
    from clcrec.serving.run import load_run
    from common.fsutil import check_output

    check_output(out, "--out", "new-items", force)  # before reading anything
    run = load_run(run_dir, device="cpu")
    new = run.embed_items(files=features or (), movielens=movielens, items=items, bow=bow, replace=replace)
    new.save(out, force=force)
    notes = new.meta.get("notes", {})
    for line in describe_notes(notes):
        console.print(line, highlight=False)
    if notes.get("unknown_genres"):
        console.print(f"genres the run never saw, ignored: {', '.join(notes['unknown_genres'])}", highlight=False)
    if notes.get("clamped"):
        console.print(f"{notes['clamped']} year(s) outside the training range, clamped to it", highlight=False)
    extra = f" ({len(new.replaced)} replace stored vectors)" if new.replaced else ""
    console.print(f"wrote {out}: {len(new)} new item(s){extra}", highlight=False)


@app.command("recommend-all")
def recommend_all_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write: user, rank, item, score (original ids)."),
    k: int = typer.Option(50, "--k"),
    candidates: str = typer.Option("all", help="all, warm, cold, or new (the --new-items)."),
    new_items: Optional[Path] = typer.Option(None, "--new-items", help="Also rank the items of this DIR from embed-items."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda, cuda:1 ..."),
    user_block: int = typer.Option(0, "--user-block", help="Users per block (0: sized to the catalogue and device)."),
    force: bool = FORCE,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Top-k for every user (training items masked) into one Parquet file, in user blocks on the device."""
    from clcrec.serving.run import load_run

    if user_block < 0:
        raise typer.BadParameter("--user-block must be >= 0")
    run = load_run(run_dir, device=device)
    res = run.recommend_all(out, k, candidates, new_items, force=force, progress=not quiet, user_block=user_block or None)
    console.print(f"wrote {out}: {res['rows']:,} rows for {res['users']:,} users over {res['items']:,} candidates "
                  f"on {res['device']}", highlight=False)
