"""The text-content regime: a dataset whose item content is raw text, built through the generic
`ingest table --items` path (pipeline/content/), from data at hand.

    python scripts/text_regime.py --source ../shared/datasets/ml-100k --out data/text-ml100k
    python cli.py train --dataset data/text-ml100k/dataset --epochs 10

Sources (told apart by their files):
    ml-100k       u.item + u.genre + u.data -> items.csv: item, title (the title without its
                  "(year)"; text), genres (pipe-joined names of the genre flags; categories), year
                  (numeric, from the release date, else the title; empty when neither has one);
                  interactions.csv: user, item (every rating, as implicit feedback)
    citeulike-a   item-tag.dat + tags.dat + users.dat -> items.csv: item, tags (the article's tag
                  NAMES joined with a space; text), interactions.csv: user, item (the libraries).
                  Articles without tags have no text: they and their interactions are dropped
Writes OUT/items.csv, OUT/interactions.csv and OUT/dataset/ (derived from licensed data: keep OUT
under an ignored folder, data/ or out/). `build(out_dir, source_dir, seed)` returns the dataset
directory; scripts/quality_matrix.py may call it for a regime.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def ml100k_tables(source: Path) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(items, interactions, ingest role options) of an ml-100k directory."""
    genres = [line.split("|")[0] for line in (source / "u.genre").read_text(encoding="latin-1").splitlines() if line]
    rows = []
    for line in (source / "u.item").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        title = f[1]
        year = f[2][-4:] if re.fullmatch(r".*\d{4}", f[2]) else (m.group(1) if (m := re.search(r"\((\d{4})\)\s*$", title)) else "")
        text = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip() or title
        flags = [g for g, on in zip(genres, f[5:5 + len(genres)]) if on == "1"]
        rows.append({"item": int(f[0]), "title": text, "genres": "|".join(flags), "year": year})
    inter = pl.read_csv(source / "u.data", separator="\t", has_header=False,
                        new_columns=["user", "item", "rating", "timestamp"]).select("user", "item")
    return pl.DataFrame(rows), inter, ["--text", "title", "--categories", "genres", "--numeric", "year"]


def citeulike_tables(source: Path) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(items, interactions, ingest role options) of a CiteULike-a directory: tag names as text."""
    names = (source / "tags.dat").read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate((source / "item-tag.dat").read_text().splitlines()):
        ids = [int(t) for t in line.split()[1:]]
        text = " ".join(names[t].replace("-", " ").replace("_", " ") for t in ids)
        if text.strip():
            rows.append({"item": i, "tags": text})
    items = pl.DataFrame(rows)
    pairs = [(u, int(i)) for u, line in enumerate((source / "users.dat").read_text().splitlines())
             for i in line.split()[1:]]
    inter = pl.DataFrame(pairs, schema=["user", "item"], orient="row").join(items.select("item"), on="item", how="semi")
    return items, inter, ["--text", "tags"]


def build(out_dir: str | Path, source_dir: str | Path, seed: int = 0, text_dim: int = 300) -> Path:
    """Write OUT/items.csv, OUT/interactions.csv and ingest them (`cli.py ingest table --items`)
    into OUT/dataset with the cold-item split of `seed`; returns OUT/dataset."""
    out, source = Path(out_dir), Path(source_dir)
    if (source / "u.item").exists():
        items, inter, roles = ml100k_tables(source)
    elif (source / "item-tag.dat").exists():
        items, inter, roles = citeulike_tables(source)
    else:
        raise SystemExit(f"error: {source} is neither ml-100k (u.item) nor CiteULike-a (item-tag.dat)")
    out.mkdir(parents=True, exist_ok=True)
    items.write_csv(out / "items.csv")
    inter.write_csv(out / "interactions.csv")
    dataset = out / "dataset"
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "ingest", "table", str(out / "interactions.csv"),
                    str(dataset), "--items", str(out / "items.csv"), *roles, "--text-dim", str(text_dim),
                    "--seed", str(seed), "--force"], check=True, cwd=ROOT)
    return dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "ml-100k")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "text-ml100k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-dim", type=int, default=300)
    args = ap.parse_args()
    print(build(args.out, args.source, args.seed, args.text_dim))


if __name__ == "__main__":
    main()
