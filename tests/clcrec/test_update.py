"""`update`: interactions that arrive after training folded into a new run (clcrec/train/update.py).

One tiny parent run per module (the tiny synthetic data, 2 epochs). The file fed to update holds
pairs on warm items, on the parent's cold items, on brand-new items (copies of cold items' content
under new ids) and from a new user, so every branch of the table extension is exercised.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from clcrec.train.update import initial_state
from common.errors import UserError
from pipeline.dataset import WARM, load_dataset
from pipeline.extend_dataset import extend_dataset
from tests.support import REPO, config, quiet

NEW_BASE = 9000  # original ids of new items and users


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def parent(tiny_dataset, tiny_cache, tmp_path_factory):
    from clcrec import load_run
    from clcrec.train.trainer import train

    run_dir = tmp_path_factory.mktemp("upd") / "parent"
    # raw cold rows, served as they are (a given prior: no form chosen at the end): the blend and the
    # starts below are checked against the encoder's output as is
    train(config(tiny_dataset, tiny_cache, run_dir, epochs=2, cold_vectors="raw", content_prior="off"), console=quiet())
    return load_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def feed(parent, tmp_path_factory):
    """(interactions csv, new-items DIR, ids of the new items)."""
    root = tmp_path_factory.mktemp("feed")
    ds = parent.dataset
    cold = np.flatnonzero(ds.item_status != WARM)
    warm = np.flatnonzero(ds.item_status == WARM)
    new_ids = NEW_BASE + np.arange(5)
    new = parent.embed_items({m: np.asarray(ds.features[m])[cold[:5]] for m in parent.modalities}, ids=new_ids)
    new.save(root / "new")
    rng = np.random.default_rng(0)
    users = parent.user_ids
    rows = [(users[u], parent.item_ids[i]) for u, i in zip(rng.integers(0, len(users), 60), rng.choice(warm, 60))]
    rows += [(users[u], parent.item_ids[c]) for u in range(12) for c in cold[5:8]]  # the parent's cold items
    rows += [(users[u], int(n)) for u in range(20) for n in new_ids[: 1 + u % 5]]  # 1-5 pairs per new item... and more
    rows += [(NEW_BASE + 1, parent.item_ids[i]) for i in warm[:6]] + [(NEW_BASE + 1, int(new_ids[0]))]  # a new user
    pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows],
                  "timestamp": np.arange(len(rows))}).write_csv(root / "new.csv")
    return root / "new.csv", root / "new", new_ids


def test_tables_extend_from_content_and_the_users_items(parent, feed, tmp_path):
    """The initial state: parent rows kept, new/warmed items = their content vector at the ID scale (--item-init
    content) or their known users' summed direction at that scale (fold-in), a user without training pairs = the
    mean of their items' initial vectors."""
    from clcrec.serving.new_items import load_new_items
    from pipeline.extend_dataset import NewItemRows
    from pipeline.new_interactions import read_new_interactions

    csv, new_dir, new_ids = feed
    new = load_new_items(new_dir)
    mods = list(parent.modalities)
    ext = extend_dataset(parent.dataset, mods, read_new_interactions(csv), NewItemRows(new.ids, new.features),
                         tmp_path / "ds", val_fraction=0.0, seed=0, label="t", source={"kind": "test"})
    ds = load_dataset(tmp_path / "ds")
    assert ds.num_items == parent.dataset.num_items + 5 and ds.num_users == parent.dataset.num_users + 1
    state = initial_state(parent.loaded, ds, mods, ext, "content")
    old = parent.loaded.model.state_dict()
    i0, u0 = ext.parent_items, ext.parent_users
    kept = np.setdiff1d(np.arange(i0), ext.init_items)
    torch.testing.assert_close(state["item_emb.weight"][kept], old["item_emb.weight"][kept])
    assert set(range(i0, ds.num_items)) <= set(ext.init_items.tolist()) and (ext.init_items < i0).sum() == 3
    from clcrec.serving.new_items import encode_features

    # the parent encoder's output (embed-items' vectors without the content prior's mix and columns),
    # its direction at the warm ID embeddings' mean norm
    content = torch.as_tensor(encode_features(parent.loaded.model, [new.features[m] for m in mods]))
    warm_norm = old["item_emb.weight"][torch.as_tensor(parent.dataset.item_status) == WARM].norm(dim=1).mean()
    torch.testing.assert_close(state["item_emb.weight"][i0:], content / content.norm(dim=1, keepdim=True) * warm_norm,
                               atol=1e-5, rtol=0)
    assert (ds.item_status[ext.init_items] == WARM).all()
    train = np.asarray(ds.train)
    mine = train[train[:, 0] == u0, 1]
    assert u0 in ext.init_users and len(mine) == 7
    torch.testing.assert_close(state["user_emb.weight"][u0], state["item_emb.weight"][mine].mean(0))

    # fold-in: the slow, obvious way, item by item; the new user (no parent embedding) is left out
    folded = initial_state(parent.loaded, ds, mods, ext, "fold-in")
    users = old["user_emb.weight"]
    for i in ext.init_items:
        known = [u for u, j in train if j == i and u < u0]
        if known:
            v = users[known].sum(0)
            torch.testing.assert_close(folded["item_emb.weight"][i], v / v.norm() * warm_norm, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(folded["item_emb.weight"][i], state["item_emb.weight"][i])
    from dataclasses import replace

    from clcrec.train.update import fold_in

    rows = state["item_emb.weight"][torch.as_tensor(ext.init_items)]
    assert torch.equal(fold_in(rows, ds, replace(ext, parent_users=0), users, 1.0), rows)  # no user known: content
    torch.testing.assert_close(folded["item_emb.weight"][kept], old["item_emb.weight"][kept])
    torch.testing.assert_close(folded["user_emb.weight"][u0], folded["item_emb.weight"][mine].mean(0))


def test_update_writes_a_new_run_and_leaves_the_parent_alone(parent, feed, tmp_path):
    from clcrec import load_run
    from clcrec.evaluation.report import evaluate_run
    from clcrec.serving.export import export_embeddings

    csv, new_dir, new_ids = feed
    root = parent.loaded.root
    before = tree_digest(root)
    new = parent.update(csv, tmp_path / "new-run", new_items=new_dir, epochs=2, console=quiet())
    assert tree_digest(root) == before  # byte-identical, lock file included
    record = json.loads((tmp_path / "new-run" / "config.json").read_text())
    lin = record["lineage"]
    assert lin["parent_checkpoint_sha256"] == hashlib.sha256((root / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    assert lin["interactions_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert record["blend"]["k"] == 2.0 and record["blend"]["chosen_on"] == "the default (docs/results.md)"
    assert len(record["blend"]["val"]) == 9 and record["blend"]["val_new_items"].keys() == record["blend"]["val"].keys()
    assert record["update"]["new_items"] == 5 and record["update"]["new_users"] == 1
    assert record["update"]["replay"] == 1.0 and record["config"]["cold_vectors"] == "scaled"  # the defaults
    assert record["update"]["item_init"] == "fold-in" and record["update"]["blend_k"] == 2.0
    assert not (tmp_path / "new-run" / "cache").exists() and not list(tmp_path.glob(".tmp-*"))
    # the new run serves: new items and the new user are known, with the blend recorded
    reopened = load_run(tmp_path / "new-run", device="cpu")
    assert reopened.loaded.blend_k == record["blend"]["k"] == new.loaded.blend_k
    assert set(new_ids.tolist()) <= set(reopened.item_ids.tolist())
    recs = reopened.recommend([NEW_BASE + 1], k=5)
    assert recs.height == 5 and not set(recs["item"].to_list()) & {int(new_ids[0])}  # its training item is masked
    res = evaluate_run(tmp_path / "new-run")
    assert res["test"]["all"]["recall@10"] == pytest.approx(
        json.loads((tmp_path / "new-run" / "results.json").read_text())["test"]["all"]["recall@10"])
    exported = export_embeddings(tmp_path / "new-run", tmp_path / "emb")
    _, table = reopened.tables()
    np.testing.assert_array_equal(np.load(exported / "items.npy"), table.numpy())  # the blended table
    summary = reopened.recommend_all(tmp_path / "recs.parquet", k=3)
    assert summary["users"] == parent.dataset.num_users + 1 and summary["rows"] == 3 * summary["users"]


def test_replay_trains_on_the_new_pairs_and_a_sample_of_the_old(parent, feed, tmp_path):
    """A generation under replay r holds every new training pair once and round(r * new) distinct
    old ones, a fresh sample per generation; negatives still exclude every training item of the
    user, replayed or not. A dataset without recent pairs is refused."""
    from cache.build import build_generation
    from cache.store import CacheStore, NegativeConfig
    from clcrec.serving.new_items import load_new_items
    from common.errors import CacheError
    from pipeline.extend_dataset import NewItemRows
    from pipeline.new_interactions import read_new_interactions

    csv, new_dir, _ = feed
    new = load_new_items(new_dir)
    ext = extend_dataset(parent.dataset, list(parent.modalities), read_new_interactions(csv),
                         NewItemRows(new.ids, new.features), tmp_path / "ds", val_fraction=0.1, seed=0, label="t",
                         source={"kind": "test"})
    ds = load_dataset(tmp_path / "ds")
    train, recent = np.asarray(ds.train, dtype=np.int64), ds.extra_array("train_recent")

    def keys(a):
        return np.asarray(a, dtype=np.int64) @ np.array([ds.num_items, 1])

    old_keys = keys(parent.dataset.train)
    assert recent.sum() == ext.summary["training_pairs"] and np.isin(keys(train[~recent]), old_keys).all()
    assert not np.isin(keys(train[recent]), old_keys).any()
    cfg = NegativeConfig(num_neg=8, seed=0, chunk_rows=64, replay=0.5)
    for g in (0, 1):
        build_generation(tmp_path / "ds", tmp_path / "cache", g, cfg, progress=False)
    store, n_new = CacheStore(tmp_path / "cache"), int(recent.sum())
    replayed = []
    for g in (0, 1):
        gen = store.open_generation(g)
        users, pos, neg = (np.concatenate(a) for a in zip(*(gen.read_chunk(i) for i in range(gen.num_chunks))))
        got = keys(np.stack([users, pos.astype(np.int64)], 1))
        assert len(got) == n_new + round(0.5 * n_new) and len(np.unique(got)) == len(got)  # no pair twice
        assert np.isin(keys(train[recent]), got).all() and np.isin(got, keys(train)).all()
        replayed.append(set(got[~np.isin(got, keys(train[recent]))].tolist()))
        indptr, items = ds.train_csr()
        for u, negs in zip(users, neg.astype(np.int64)):  # the whole training history is excluded
            assert not np.isin(negs, items[indptr[u]:indptr[u + 1]]).any()
    assert replayed[0] != replayed[1]  # replay draws afresh per generation
    with pytest.raises(CacheError, match="train_recent.npy.*build without replay"):
        build_generation(parent.dataset.root, tmp_path / "c2", 0, cfg, progress=False)
    assert not (tmp_path / "c2").exists()


def test_a_file_larger_than_the_history_is_told_to_retrain():
    from clcrec.train.update import outgrown

    assert outgrown(100, 100) is None and outgrown(0, 5) is None
    assert "more new training pairs (35,000) than the run was trained on (30,000)" in outgrown(35_000, 30_000)


def test_auto_blend_k_is_chosen_on_new_items_then_all_and_leans_on_content_on_a_tie():
    from clcrec.train.update import choose_blend_k

    assert choose_blend_k({0.0: (0.2, 0.1), 5.0: (0.3, 0.0), 50.0: (0.25, 0.9)}) == 50.0  # new items first
    assert choose_blend_k({0.0: (0.2, 0.4), 5.0: (0.3, 0.4), 50.0: (0.2, 0.3)}) == 5.0  # then all items
    # no held-out pair tells the k's apart (a small file): the largest k, what the parent served by
    assert choose_blend_k({0.0: (0.0, 0.03), 2.0: (0.0, 0.03), 100.0: (0.0, 0.03)}) == 100.0


def test_blend_is_the_shrinkage_it_claims(parent):
    model = parent.loaded.model
    status = torch.as_tensor(parent.dataset.item_status)
    counts = torch.arange(parent.dataset.num_items) % 4  # 0..3 interactions
    got = model.ranking_table(status, counts=counts, blend_k=2.0)
    with torch.no_grad():
        ids, content = model.item_emb.weight.float(), model.encode(torch.arange(len(counts))).float()
    w = (counts / (counts + 2.0))[:, None]
    torch.testing.assert_close(got, w * ids + (1 - w) * content)
    assert torch.equal(got[counts == 0], content[counts == 0])  # no interactions: content alone


def test_bad_input_is_refused_and_nothing_is_written(parent, feed, tmp_path):
    csv, new_dir, _ = feed
    out = tmp_path / "out"

    def refused(path, match, **kw):
        with pytest.raises(UserError, match=match):
            parent.update(path, out, console=quiet(), **kw)
        assert not out.exists() and not list(tmp_path.glob(".tmp-*"))

    (tmp_path / "cols.csv").write_text("user,item,rating\n1,2,5\n")
    refused(tmp_path / "cols.csv", "unknown: rating")
    (tmp_path / "empty.csv").write_text("")
    refused(tmp_path / "empty.csv", "is empty")
    (tmp_path / "header.csv").write_text("user,item\n")
    refused(tmp_path / "header.csv", "no rows")
    refused(csv, r"neither in the run nor among the new items \(e.g. item 9000\)")  # no --new-items
    other = tmp_path / "other"
    other.mkdir()
    for f in new_dir.rglob("*"):
        if f.is_file():
            (other / f.relative_to(new_dir)).parent.mkdir(exist_ok=True)
            (other / f.relative_to(new_dir)).write_bytes(f.read_bytes())
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "encoder_sha256": "0" * 64}))  # another run's encoder
    refused(csv, "embedded by another model", new_items=other)
    out.mkdir()
    (out / "config.json").write_text("{}")  # looks like a run: never replaced, --force or not (issue 28)
    for force in (False, True):
        with pytest.raises(UserError, match="runs are never replaced, not even with --force"):
            parent.update(csv, out, new_items=new_dir, force=force, console=quiet())
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_cli_bad_input_is_one_line_and_a_killed_update_leaves_no_run(parent, feed, tmp_path):
    from clcrec import load_run

    csv, new_dir, _ = feed
    run = str(parent.loaded.root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "bad.csv").write_text("user,movie\n1,2\n")
    cmd = [sys.executable, str(REPO / "cli.py"), "update", run, "--out", str(tmp_path / "o")]
    p = subprocess.run(cmd + ["--interactions", str(tmp_path / "bad.csv")], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "movie" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # SIGKILL once the new run is being built: no NEW_RUN appears, and the next update cleans up
    proc = subprocess.Popen(cmd + ["--interactions", str(csv), "--new-items", str(new_dir), "--epochs", "30",
                                   "--replay", "all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tmp-o.*/checkpoints/last.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-build, not refused (its options, --replay all, parse)
    assert not (tmp_path / "o").exists()
    parent.update(csv, tmp_path / "o", new_items=new_dir, epochs=1, replay=None, blend_k="auto",  # every pair
                  cold_vectors="raw", console=quiet())
    assert (tmp_path / "o" / "config.json").exists() and not list(tmp_path.glob(".tmp-o.*"))
    record = json.loads((tmp_path / "o" / "config.json").read_text())
    assert record["config"]["cold_vectors"] == "raw" and load_run(tmp_path / "o").loaded.model.cold_vectors == "raw"
    blend = record["blend"]  # auto: the k best on validation
    grid = {float(k): (blend["val"][k], blend["val_new_items"][k]) for k in blend["val"]}
    assert blend["chosen_on"].startswith("validation") and blend["k"] == max(grid, key=lambda k: (grid[k][1], grid[k][0], k))
    # an updated run keeps no negatives: resuming it is refused with what to do instead
    before = tree_digest(tmp_path / "o")
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--resume", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**env, "COLUMNS": "300"})
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "cannot be resumed" in p.stderr, p.stderr
    assert tree_digest(tmp_path / "o") == before


def test_update_takes_new_movies_from_movielens_rows(tmp_path):
    """`--movielens FILE`: new movies get their content from the release's own rows (genres, year,
    title words, built as ingest built the run's features), and the new run serves them."""
    from clcrec import load_run
    from clcrec.train.trainer import train
    from pipeline.ingest_movielens import ingest_movielens

    rng = np.random.default_rng(0)
    ml = tmp_path / "ml"
    ml.mkdir()
    rows = [(u, int(i), 1000 + 15 * u + k) for u in range(1, 61) for k, i in enumerate(rng.choice(np.arange(1, 81), 15, replace=False))]
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},4,{t}\n" for u, i, t in rows))
    genres = ["Drama", "Comedy", "Action", "Romance", "Thriller"]
    (ml / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},Movie {i} ({1980 + i % 30}),{genres[i % 5]}|{genres[i * 3 % 5]}\n" for i in range(1, 91)))  # 81-90: new
    new = [(u, 81 + u % 5) for u in range(1, 40)] + [(u, u * 7 % 80 + 1) for u in range(1, 30)]
    (tmp_path / "new.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in new))
    data = ingest_movielens(ml, tmp_path / "ds")
    from cache.build import build_generation
    from cache.store import NegativeConfig

    build_generation(data, tmp_path / "cache", 0, NegativeConfig(num_neg=8, seed=0), progress=False)
    train(config(data, tmp_path / "cache", tmp_path / "run", num_neg=8, epochs=1, select_k=10), console=quiet())
    before = tree_digest(tmp_path / "run")

    parent = load_run(tmp_path / "run", device="cpu")
    updated = parent.update(tmp_path / "new.csv", tmp_path / "upd", movielens=ml / "movies.csv", epochs=1,
                            console=quiet())
    assert tree_digest(tmp_path / "run") == before  # the parent is only read
    lineage = json.loads((tmp_path / "upd" / "config.json").read_text())["lineage"]
    assert lineage["new_items"]["kind"] == "movielens"
    assert lineage["new_items"]["sha256"] == hashlib.sha256((ml / "movies.csv").read_bytes()).hexdigest()
    # the five new movies (81-85) are items of the new run, warm (they have pairs), titled from the file
    pos = {int(i): k for k, i in enumerate(updated.item_ids)}
    assert set(range(81, 86)) <= set(pos) and not set(range(86, 91)) & set(pos)  # rows without pairs stay out
    assert all(updated.dataset.item_status[pos[i]] == WARM for i in range(81, 86))
    assert updated._titles[pos[83]] == "Movie 83 (2003)"
    feats = np.asarray(updated.dataset.features["genre"])[pos[83]]
    assert feats.sum() == 2  # Romance|Thriller, in the genre columns ingest built
    top = updated.recommend([1], k=5)
    assert top.height == 5 and top["user"].to_list() == [1] * 5
