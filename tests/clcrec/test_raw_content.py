"""Raw item content end to end (issue 29), through the real CLI: an item table with text, a
multi-valued category and a number ingests in one command, a one-epoch run trains on it, brand-new
items go through `embed-items --items` in one command and are recommended; an item gets the same
features at ingest and at embed-items bit for bit; bad tables are refused in one line, exit 1,
nothing written. One cli_batch.py process runs every command (real `cli.main()` per case)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.support import run_batch

WORDS = "space war love story robot city night dark river king queen ghost music dream fire".split()
GENRES = "Action Comedy Drama Horror SciFi".split()
ROLES = ["--text", "title", "--text", "blurb", "--categories", "genres", "--numeric", "year"]


def write_tables(root: Path) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(100, 160):
        rows.append({"item": i, "title": " ".join(rng.sample(WORDS, 3)).title(), "blurb": " ".join(rng.sample(WORDS, 5)),
                     "genres": "|".join(rng.sample(GENRES, rng.randint(1, 2))),
                     "year": "" if i % 7 == 0 else str(rng.randint(1950, 2010))})
    pl.DataFrame(rows).write_csv(root / "items.csv")
    pl.DataFrame([{"user": u, "item": i} for u in range(40) for i in rng.sample(range(100, 160), 8)]
                 ).write_csv(root / "inter.csv")
    twin = {**rows[0], "item": 9100}  # item 100's content under a new id
    new = [{"item": 9001, "title": "Space Robot Zebras", "blurb": "robot war", "genres": "SciFi|Western",
            "year": "1999"}, twin]
    pl.DataFrame(new).write_csv(root / "new.csv")
    pl.DataFrame(new).drop("genres").write_csv(root / "new_nogenres.csv")
    pl.DataFrame([new[0], {**twin, "title": "", "blurb": ""}]).write_csv(root / "new_empty.csv")
    (root / "latin1.csv").write_bytes((root / "new.csv").read_bytes().replace(b"Zebras", "Zèbras".encode("latin-1")))
    (root / "items_empty.csv").write_text((root / "items.csv").read_text().replace(
        f"101,{rows[1]['title']},{rows[1]['blurb']}", "101,,"))
    (root / "items_latin1.csv").write_bytes((root / "items.csv").read_bytes() + "999,Café,x,Drama,\n".encode("latin-1"))
    # LDA-C lines, one per row of items.csv, over a 6-word vocabulary; new.dat has new.csv's rows
    # (the twin repeats item 100's line; word 5 "zeta" for 9001)
    bags = [f"2 {a}:{rng.randint(1, 3)} {a + 1}:1" for a in (rng.randrange(5) for _ in rows)]
    (root / "mult.dat").write_text("\n".join(bags) + "\n")
    (root / "vocab.dat").write_text("alpha\nbeta\ngamma\ndelta\neps\nzeta\n")
    (root / "new.dat").write_text(f"1 5:2\n{bags[0]}\n")
    (root / "short.dat").write_text(f"{bags[0]}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_tables(root)
    ds, run, new = root / "ds", root / "run", root / "new_out"
    ok = [
        ["ingest", "table", root / "inter.csv", ds, "--items", root / "items.csv", *ROLES, "--text-dim", "8"],
        ["train", "--dataset", ds, "--cache", root / "cache", "--run-dir", run, "--epochs", "1", "--num-neg", "8",
         "--batch-size", "64"],
        ["embed-items", run, "--items", root / "new.csv", "--out", new],
        ["recommend", run, "--user", "3", "--candidates", "new", "--new-items", new, "--k", "2"],
        # a bag-of-words modality (LDA-C lines beside the item table), from ingest to embed-items
        ["ingest", "table", root / "inter.csv", root / "ds_bow", "--items", root / "items.csv", "--text", "title",
         "--bow", root / "mult.dat", "--bow-vocab", root / "vocab.dat", "--text-dim", "4"],
        ["train", "--dataset", root / "ds_bow", "--cache", root / "cache_bow", "--run-dir", root / "run_bow",
         "--epochs", "1", "--num-neg", "8", "--batch-size", "64"],
        ["embed-items", root / "run_bow", "--items", root / "new.csv", "--bow", root / "new.dat", "--out",
         root / "new_bow"],
    ]
    bad_ingest = root / "ds_bad"
    bad_new = root / "new_bad"
    refusals = [
        (["ingest", "table", root / "inter.csv", bad_ingest, "--items", root / "items.csv", "--text", "nope"],
         ["error:", "has no column 'nope' (--text nope)"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--items", root / "items_latin1.csv", *ROLES],
         ["error:", "items_latin1.csv is not UTF-8 text (line 62"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--items", root / "items_empty.csv", *ROLES],
         ["error:", "columns ['title', 'blurb'] is empty at row 2 (item 101)"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--items", root / "items.csv", *ROLES, "--text-dim", "0"],
         ["error:", "--text-dim must be an integer >= 1, got 0"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--bow", root / "items.csv"],
         ["error:", "--bow FILE and --bow-vocab FILE go together"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--items", root / "items.csv", "--text", "title", "--bow",
          root / "short.dat", "--bow-vocab", root / "vocab.dat"],
         ["error:", "short.dat has 1 line(s) but items file", "items.csv has 60 row(s); line i must hold the words"]),
        (["ingest", "table", root / "inter.csv", bad_ingest, "--text", "title"],
         ["error:", "give it with --items FILE"]),
        (["embed-items", run, "--items", root / "new_nogenres.csv", "--out", bad_new],
         ["error:", "has no column 'genres' (--categories genres)"]),
        (["embed-items", run, "--items", root / "latin1.csv", "--out", bad_new],
         ["error:", "latin1.csv is not UTF-8 text (line 2"]),
        (["embed-items", run, "--items", root / "new_empty.csv", "--out", bad_new],
         ["error:", "columns ['title', 'blurb'] is empty at row 2 (item 9100)"]),
        (["embed-items", root / "run_bow", "--items", root / "new.csv", "--out", bad_new],
         ["error:", "give the new items' lines with --bow FILE (line i: the words of row i of items file"]),
        (["embed-items", root / "run_bow", "--items", root / "new.csv", "--bow", root / "short.dat", "--out", bad_new],
         ["error:", "short.dat has 1 line(s) but items file", "new.csv has 2 row(s); line i must hold the words of row i"]),
        (["embed-items", run, "--items", root / "new.csv", "--bow", root / "new.dat", "--out", bad_new],
         ["error:", "the run has no bag-of-words modality (its modalities: ['text', 'categories', 'numeric'])"]),
    ]
    cases = [{"argv": a} for a in ok] + [{"argv": a, "watch": [bad_ingest, bad_new, ds, run]} for a, _ in refusals]
    res = run_batch(cases, root)
    return {"root": root, "ds": ds, "run": run, "new": new, "ok": res[:len(ok)],
            "refusals": list(zip(refusals, res[len(ok):]))}


def test_one_command_each_from_table_to_new_recommendations(world):
    for r in world["ok"]:
        assert r["rc"] == 0, r["out"][-2000:]
    meta = json.loads((world["ds"] / "meta.json").read_text())
    assert [m["name"] for m in meta["modalities"]] == ["text", "categories", "numeric"]
    assert meta["featurizer"]["modalities"] == ["text", "categories", "numeric"]
    assert "featurizer/text_basis.npy" in meta["files"] and "featurizer/featurizer.json" in meta["files"]
    record = json.loads((world["run"] / "config.json").read_text())  # the run names its featurizer
    assert record["featurizer_sha256"] == meta["featurizer"]["sha256"]
    assert record["dataset_fingerprint"] == meta["fingerprint"]
    embed = " ".join(world["ok"][2]["out"].split())
    assert "word occurrence(s) not in the run's vocabulary" in embed  # "zebras"
    assert "1 value(s) of category column 'genres' the run never saw" in embed  # Western
    assert "wrote" in embed and "2 new item(s)" in embed
    assert "9001" in world["ok"][3]["out"] and "9100" in world["ok"][3]["out"]


@pytest.mark.parametrize("ds, new, modalities", [("ds", "new_out", ("text", "categories", "numeric")),
                                                  ("ds_bow", "new_bow", ("text", "bow"))])
def test_an_item_gets_the_same_features_at_ingest_and_at_embed_items(world, ds, new, modalities):
    ds, new = world["root"] / ds, world["root"] / new
    assert [m["name"] for m in json.loads((ds / "meta.json").read_text())["modalities"]] == list(modalities)
    row = pl.read_parquet(ds / "items.parquet")["original_id"].to_list().index(100)
    ids = pl.read_parquet(new / "items.parquet")["original_id"].to_list()
    assert ids == [9001, 9100]
    for m in modalities:
        at_ingest = np.load(ds / "features" / f"{m}.npy")[row]
        at_embed = np.load(new / "features" / f"{m}.npy")[ids.index(9100)]
        assert at_ingest.tobytes() == at_embed.tobytes(), m


def test_the_python_api_takes_a_dataframe(world):
    from clcrec.serving.run import load_run

    run = load_run(world["run"], device="cpu")
    df = pl.read_csv(world["root"] / "new.csv", infer_schema=False)
    new = run.embed_items(items=df)
    from clcrec.serving.new_items import load_new_items

    saved = load_new_items(world["new"])
    assert np.array_equal(new.vectors, saved.vectors) and new.ids.tolist() == [9001, 9100]


def test_bad_tables_are_refused_in_one_line(world):
    for (argv, says), res in world["refusals"]:
        out = res["out"]
        assert res["rc"] == 1, (argv, out)
        assert "Traceback" not in out, out
        flat = " ".join(out.split())
        for frag in says:
            assert frag in flat, (frag, out)
        assert len(out.strip().splitlines()) == 1, out
        assert res["changed"] == [], (argv, res["changed"])


def test_bow_lines_and_feature_files_go_with_an_item_table(tmp_path):
    """In process, no training: a dataset from LDA-C lines + a --feature file + a text column; new
    items' raw rows, lines and feature file give their ingest features back bit for bit."""
    from clcrec.serving.raw_items import featurize_items
    from common.errors import InputError
    from pipeline.content.featurizer import ContentSpec
    from pipeline.dataset import load_dataset
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_table import ingest_table, parse_feature_spec

    write_tables(tmp_path)
    items = pl.read_csv(tmp_path / "items.csv", infer_schema=False)
    rng = np.random.default_rng(0)
    lines = [f"2 {a}:{rng.integers(1, 4)} {a + 1}:1" for a in rng.integers(0, 5, items.height)]
    (tmp_path / "mult.dat").write_text("\n".join(lines) + "\n")
    (tmp_path / "vocab.dat").write_text("alpha\nbeta\ngamma\ndelta\neps\nzeta\n")
    vecs = rng.standard_normal((items.height, 3))
    pl.DataFrame({"item": items["item"].cast(pl.Int64), "v": vecs.tolist()}).write_parquet(tmp_path / "v.parquet")
    spec = ContentSpec(text=("title",), bow=tmp_path / "mult.dat", bow_vocab=tmp_path / "vocab.dat", text_dim=4)
    cfg = IngestConfig(features=(parse_feature_spec(f"v={tmp_path / 'v.parquet'}"),), items=tmp_path / "items.csv",
                       content=spec)
    ds = load_dataset(ingest_table(tmp_path / "inter.csv", tmp_path / "ds", cfg))
    dims = {m["name"]: m["dim"] for m in ds.meta["modalities"]}
    assert sorted(dims) == ["bow", "text", "v"] and dims["text"] == 4
    rows = [0, 7]  # two known items under new ids: their content again
    new = items[rows].with_columns(item=pl.Series(["8000", "8007"]))
    (tmp_path / "new.dat").write_text("\n".join(lines[r] for r in rows) + "\n")
    pl.DataFrame({"item": [8007, 8000], "v": vecs[[7, 0]].tolist()}).write_parquet(tmp_path / "nv.parquet")
    ids, feats, titles, notes = featurize_items(ds, dims, new, tmp_path / "new.dat", [f"v={tmp_path / 'nv.parquet'}"])
    assert ids.to_list() == [8000, 8007] and titles == new["title"].to_list()
    index = pl.read_parquet(tmp_path / "ds" / "items.parquet")["original_id"].to_list()
    for m in dims:
        want = np.asarray(ds.features[m])[[index.index(100), index.index(107)]]
        assert want.tobytes() == feats[m].tobytes(), m
    with pytest.raises(InputError, match="give the new items' lines with --bow FILE"):
        featurize_items(ds, dims, new, None, [f"v={tmp_path / 'nv.parquet'}"])
    with pytest.raises(InputError, match="modality 'v' was given as a --feature file"):
        featurize_items(ds, dims, new, tmp_path / "new.dat")
