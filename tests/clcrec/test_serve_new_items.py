"""Serving the cold start: items that arrive after training (embed-items), recommendations for
every user (recommend-all), the Python API (clcrec.load_run), and their bad-input messages.

One tiny run per module: the tiny synthetic data re-ingested through `ingest table` with original
ids that are not the indices (users 1000 + 7u, items 50000 + 3i), so every id check means something.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from cache.build import build_generation
from cache.store import NegativeConfig
from clcrec.config import TrainConfig
from clcrec.serving.run import recommend as serve_recommend
from clcrec.train.trainer import train
from common.errors import UserError
from pipeline.dataset import load_dataset
from pipeline.ingest_common import FeatureSpec, IngestConfig
from pipeline.ingest_table import ingest_table
from tests.support import NUM_NEG

REPO = Path(__file__).resolve().parents[2]
NEW_BASE = 90000  # new item ids: NEW_BASE + k for a copy of the k-th cold item


def quiet_train(cfg: TrainConfig) -> None:
    train(cfg, console=Console(file=open(os.devnull, "w")))


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    """(run dir, dataset, files) where files holds new-item feature files: copies of the run's
    cold items' features under new ids, `v` as .npy + ids, `t` as Parquet in another row order."""
    src = load_dataset(tiny_dataset)
    root = tmp_path_factory.mktemp("keyed")
    pairs = np.concatenate([src.train, src.val, src.test]).astype(np.int64)
    pl.DataFrame({"user": 1000 + 7 * pairs[:, 0], "item": 50000 + 3 * pairs[:, 1]}).write_parquet(root / "inter.parquet")
    ids = 50000 + 3 * np.arange(src.num_items)
    np.save(root / "v.npy", np.asarray(src.features["v"]))
    (root / "ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    pl.DataFrame({"item": ids, "vec": np.asarray(src.features["t"]).tolist()}).write_parquet(root / "t.parquet")
    feats = (FeatureSpec("v", root / "v.npy", root / "ids.txt"), FeatureSpec("t", root / "t.parquet"))
    data = ingest_table(root / "inter.parquet", root / "data", IngestConfig(features=feats))
    build_generation(data, root / "cache", 0, NegativeConfig(num_neg=NUM_NEG, seed=0), progress=False)
    run = root / "run"
    quiet_train(TrainConfig(dataset=str(data), cache=str(root / "cache"), run_dir=str(run), num_neg=NUM_NEG,
                            batch_size=64, epochs=2, l_r=0.01, content_prior="0.5"))  # new rows carry the prior

    ds = load_dataset(data)
    cold = np.flatnonzero(ds.item_status != 0)
    new_ids = NEW_BASE + np.arange(len(cold))
    np.save(root / "new_v.npy", np.asarray(ds.features["v"])[cold])
    (root / "new_ids.txt").write_text("\n".join(map(str, new_ids)) + "\n")
    order = np.random.default_rng(0).permutation(len(cold))  # alignment is by id, not by row
    pl.DataFrame({"item": new_ids[order], "vec": np.asarray(ds.features["t"])[cold][order].tolist()}).write_parquet(
        root / "new_t.parquet")
    files = [f"v={root / 'new_v.npy'}:{root / 'new_ids.txt'}", f"t={root / 'new_t.parquet'}"]
    return run, ds, files


@pytest.fixture(scope="module")
def served(env):
    from clcrec import load_run

    run_dir, ds, files = env
    run = load_run(run_dir, device="cpu")
    return run, run.embed_items(files=files)


def test_a_new_item_with_a_cold_items_features_gets_its_vector_and_its_rank(env, served):
    _, ds, _ = env
    run, new = served
    cold = np.flatnonzero(ds.item_status != 0)
    twin = {NEW_BASE + k: int(run.item_ids[c]) for k, c in enumerate(cold)}
    _, table = run.tables()
    np.testing.assert_array_equal(new.ids, NEW_BASE + np.arange(len(cold)))
    # the same encoder on the same rows; only the matmul's blocking (batch size) may differ
    np.testing.assert_allclose(new.vectors, table[cold].numpy(), rtol=0, atol=1e-5)
    for user in run.user_ids[:8].tolist():
        among_cold = run.recommend([user], k=len(cold), candidates="cold")["item"].to_list()
        among_new = run.recommend([user], k=len(cold), candidates="new", new_items=new)["item"].to_list()
        assert [twin[i] for i in among_new] == among_cold
        both = run.recommend([user], k=ds.num_items + len(cold), new_items=new)
        assert set(both["status"]) >= {"new", "warm"}
        ranked = both["item"].to_list()
        assert [i for i in ranked if i < NEW_BASE] == run.recommend([user], k=ds.num_items)["item"].to_list()
        pos = {i: r for r, i in enumerate(ranked)}
        assert all(abs(pos[c] - pos[t]) == 1 for c, t in twin.items())  # each copy right beside its twin


def reference_topk(run, new, k):
    """Slow and obvious: every user's scores in numpy, training items to -inf, a stable sort."""
    cat = run.catalogue(new)
    users, _ = run.tables()
    scores = users.numpy().astype(np.float64) @ cat.table.numpy().astype(np.float64).T  # (U, I')
    train = run.dataset.train
    scores[train[:, 0], train[:, 1]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return cat.ids[top], np.take_along_axis(scores, top, 1)


def test_recommend_all_equals_per_user_recommend_and_a_slow_reference(env, served, tmp_path):
    _, ds, _ = env
    run, _ = served
    # new items unlike any stored one (copies would tie with their twins and make the order moot)
    rng = np.random.default_rng(1)
    feats = {m: rng.standard_normal((30, d)).astype(np.float32) for m, d in run.modalities.items()}
    new = run.embed_items(feats, ids=NEW_BASE + np.arange(30))
    out = tmp_path / "recs.parquet"
    res = run.recommend_all(out, k=10, new_items=new, user_block=7)  # 7: ragged blocks
    df = pl.read_parquet(out)
    assert df.columns[:5] == ["user", "rank", "item", "score", "status"] and res["rows"] == df.height == 10 * ds.num_users
    assert df["user"].dtype == pl.Int64 and df["item"].dtype == pl.Int64 and df["score"].dtype == pl.Float32
    # the Parquet round trip keeps original ids: users 1000 + 7u in order, items 50000 + 3i or new ones
    assert df["user"].to_list() == np.repeat(1000 + 7 * np.arange(ds.num_users), 10).tolist()
    assert df["rank"].to_list() == list(range(1, 11)) * ds.num_users
    items, scores = reference_topk(run, new, 10)
    np.testing.assert_array_equal(df["item"].to_numpy().reshape(-1, 10), items)
    np.testing.assert_allclose(df["score"].to_numpy().reshape(-1, 10), scores, rtol=1e-5, atol=1e-5)
    for u in (0, 5, 299):  # per-user recommend, as `cli.py recommend` computes it
        one = serve_recommend(run.loaded.cfg.run_dir, str(1000 + 7 * u), k=10, new_items=new)
        assert one["original_id"].to_list() == items[u].tolist()
    # a pool restricts every row to it
    cold = run.recommend_all(tmp_path / "cold.parquet", k=5, candidates="cold")
    got = pl.read_parquet(tmp_path / "cold.parquet")["item"].to_numpy()
    assert cold["rows"] == 5 * ds.num_users and np.isin(got, run.item_ids[ds.item_status != 0]).all()


def test_score_matches_the_ranking_tables(env, served):
    run, new = served
    users, table = run.tables()
    got = run.score([1000, "1007"], [50000, NEW_BASE + 1], new_items=new)
    cold = np.flatnonzero(run.dataset.item_status != 0)
    expected = users[[0, 1]].numpy() @ np.stack([table[0].numpy(), new.vectors[1]]).T
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.isclose(got[0, 1], float(users[0] @ table[cold[1]]), atol=1e-4)
    with pytest.raises(UserError, match="item '12345' is neither in run"):
        run.score([1000], [12345])
    with pytest.raises(UserError, match="user '3' is not in dataset"):
        run.recommend([1000, 3], k=5)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"}, timeout=120)


def test_api_and_cli_give_identical_results(env, served, tmp_path):
    run_dir, ds, files = env
    run, new = served
    proc = run_cli("embed-items", run_dir, *files, "--out", tmp_path / "new")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "new")) == [".clcrec-output.json", "features", "items.parquet", "meta.json", "vectors.npy"]
    for m, arr in new.features.items():  # the raw content too, which `update` trains on
        np.testing.assert_array_equal(np.load(tmp_path / "new" / "features" / f"{m}.npy"), arr)
    np.testing.assert_array_equal(np.load(tmp_path / "new" / "vectors.npy"), new.vectors)
    assert pl.read_parquet(tmp_path / "new" / "items.parquet")["original_id"].to_list() == new.ids.tolist()
    proc = run_cli("recommend-all", run_dir, "--k", 7, "--out", tmp_path / "cli.parquet", "--new-items",
                   tmp_path / "new", "--candidates", "new", "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    run.recommend_all(tmp_path / "api.parquet", k=7, candidates="new", new_items=tmp_path / "new")
    cli_df, api_df = pl.read_parquet(tmp_path / "cli.parquet"), pl.read_parquet(tmp_path / "api.parquet")
    assert cli_df.equals(api_df)
    listed = run.recommend(run.user_ids.tolist(), k=7, candidates="new", new_items=new)
    assert listed.select("user", "rank", "item", "score").equals(api_df.select("user", "rank", "item", "score"))
    assert listed["status"].to_list() == api_df["status"].cast(pl.String).to_list() == ["new"] * listed.height


def test_replace_swaps_a_stored_vector(env):
    from clcrec import load_run

    run_dir, ds, _ = env
    run = load_run(run_dir, device="cpu")
    warm = int(np.flatnonzero(ds.item_status == 0)[0])
    wid = int(run.item_ids[warm])
    feats = {m: np.asarray(ds.features[m])[[warm]] for m in run.modalities}
    with pytest.raises(UserError, match=f"already in run .* item {wid}.*--replace"):
        run.embed_items(feats, ids=[wid])
    new = run.embed_items(feats, ids=[wid], replace=True)
    assert new.replaced == [wid]
    cat = run.catalogue(new)
    assert len(cat.ids) == ds.num_items and cat.status[warm] == 3  # same index, now "new"
    np.testing.assert_array_equal(cat.table[warm].numpy(), new.vectors[0])


# The bad inputs, through the real CLI entry point (cli.main) in one subprocess: each case runs
# as `python cli.py ARGS` would, its exit code and stderr captured, so a dozen cases cost one start.
DRIVER = r"""
import contextlib, io, json, sys
import cli
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = ["cli.py", *args]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def test_bad_input_is_one_clear_message_exit_1_and_nothing_written(env, served, tmp_path):
    run_dir, ds, files = env
    run, new = served
    new.save(tmp_path / "newdir")
    v_file, t_file = files[0].split("=", 1)[1], files[1].split("=", 1)[1]
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 24), np.nan, dtype=np.float32))
    ids3 = tmp_path / "ids3.txt"
    ids3.write_text("7\n8\n9\n")
    dup = tmp_path / "dup.txt"
    dup.write_text("7\n8\n7\n")
    np.save(tmp_path / "ok3.npy", np.ones((3, 24), dtype=np.float32))
    (tmp_path / "empty.parquet").write_bytes(b"")
    in_run = tmp_path / "in_run.txt"
    in_run.write_text("50000\n50003\n50006\n")
    in_run_t = tmp_path / "in_run_t.parquet"
    pl.DataFrame({"item": [50000, 50003, 50006], "vec": np.ones((3, 12)).tolist()}).write_parquet(in_run_t)
    foreign = tmp_path / "foreign"
    new.save(foreign)
    meta = json.loads((foreign / "meta.json").read_text())
    (foreign / "meta.json").write_text(json.dumps({**meta, "encoder_sha256": "0" * 64}))
    (tmp_path / "u.item").write_text("1|A (1990)|01-Jan-1990||x" + "|0" * 19 + "\n")
    existing = tmp_path / "exists.parquet"
    existing.write_bytes(b"keep")
    out = tmp_path / "out"  # no case may create it
    cases = [
        (["embed-items", run_dir, f"t={v_file}", f"v={t_file}", "--out", out], "has 24 columns but the run's modality 't' has 12"),
        (["embed-items", run_dir, f"x={t_file}", files[0], "--out", out], "modality 'x', which the run does not use"),
        (["embed-items", run_dir, files[0], "--out", out], "no feature file for modality 't'"),
        (["embed-items", run_dir, f"v={nan}:{ids3}", files[1], "--out", out], "NaN/inf"),
        (["embed-items", run_dir, f"t={tmp_path / 'empty.parquet'}", files[0], "--out", out], "is empty"),
        (["embed-items", run_dir, f"v={tmp_path / 'ok3.npy'}:{dup}", files[1], "--out", out], "item id 7 has more than one row"),
        (["embed-items", run_dir, f"v={tmp_path / 'ok3.npy'}:{ids3}", files[1], "--out", out], "list different items"),
        (["embed-items", run_dir, f"v={tmp_path / 'ok3.npy'}:{in_run}", f"t={in_run_t}", "--out", out],
         "already in run"),
        (["embed-items", run_dir, *files, "--out", tmp_path / "newdir"], "already exists; pass --force"),
        (["recommend", run_dir, "--user", "3"], "user '3' is not in dataset"),
        (["embed-items", run_dir, "--movielens", tmp_path / "u.item", "--out", out], "was not ingested from MovieLens"),
        (["recommend-all", run_dir, "--k", 0, "--out", out], "--k must be an integer >= 1"),
        (["recommend-all", run_dir, "--k", ds.num_items + 1, "--out", out], f"larger than the {ds.num_items} candidate"),
        (["recommend-all", run_dir, "--k", 5, "--out", out, "--candidates", "new"], "--candidates new needs new items"),
        (["recommend-all", run_dir, "--k", 5, "--out", out, "--new-items", foreign], "embedded by another model"),
        (["recommend-all", run_dir, "--k", 5, "--out", existing], "is a file, not a recommend-all Parquet file"),
    ]
    argv = json.dumps([[str(a) for a in args] for args, _ in cases])
    proc = subprocess.run([sys.executable, "-c", DRIVER, argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for (args, expected), (rc, err) in zip(cases, json.loads(proc.stdout)):
        assert rc == 1, (args, err)
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not out.exists() and existing.read_bytes() == b"keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def write_small_movielens(d: Path) -> None:
    """An ml-100k-layout directory: 40 users rate 20 of movies 1..60; movies 61..63 are unrated."""
    rng = np.random.default_rng(0)
    d.mkdir()
    rows = [f"{u}\t{m}\t4\t881250{u:02d}" for u in range(1, 41) for m in rng.choice(np.arange(1, 61), 20, replace=False)]
    (d / "u.data").write_text("\n".join(rows) + "\n")
    words = ["star", "night", "river", "love", "war", "city", "ghost", "king"]
    lines = []
    for m in range(1, 64):
        flags = ["0"] * 19
        for g in rng.choice(19, 2, replace=False):
            flags[g] = "1"
        year = 1960 + (m * 7) % 40
        title = f"{words[m % 8].title()} {words[(m * 3) % 8]} {m} ({year})"
        lines.append("|".join([str(m), title, f"01-Jan-{year}", "", "http://x", *flags]))
    (d / "u.item").write_text("\n".join(lines) + "\n")
    (d / "u.genre").write_text("".join(f"g{k}|{k}\n" for k in range(19)))


def test_movielens_rows_become_vectors_the_way_training_movies_did(tmp_path):
    from clcrec import load_run
    from pipeline.ingest_movielens import ingest_movielens

    write_small_movielens(tmp_path / "ml")
    data = ingest_movielens(tmp_path / "ml", tmp_path / "data", IngestConfig(title_dim=16))
    build_generation(data, tmp_path / "cache", 0, NegativeConfig(num_neg=8, seed=0, on_short="repeat"), progress=False)
    quiet_train(TrainConfig(dataset=str(data), cache=str(tmp_path / "cache"), run_dir=str(tmp_path / "run"),
                            num_neg=8, batch_size=64, epochs=1, l_r=0.01))
    run = load_run(tmp_path / "run", device="cpu")
    with pytest.raises(UserError, match="60 new item id.*already in run.*--replace"):
        run.embed_items(movielens=tmp_path / "ml" / "u.item")
    new = run.embed_items(movielens=tmp_path / "ml" / "u.item", replace=True)
    assert new.ids.tolist() == list(range(1, 64)) and sorted(new.replaced) == list(range(1, 61))
    assert new.titles[62] == "King city 63 (1961)"
    _, table = run.tables()
    cold = np.flatnonzero(run.dataset.item_status != 0)  # item index i is movie i + 1
    np.testing.assert_allclose(new.vectors[cold], table[cold].numpy(), rtol=0, atol=1e-5)
    recs = run.recommend([1], k=3, candidates="new", new_items=new)
    assert recs.columns == ["user", "rank", "item", "score", "status", "title"] and set(recs["status"]) == {"new"}


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_recommend_all_on_cuda_equals_cpu(env, tmp_path):
    from clcrec import load_run

    run_dir, _, _ = env
    load_run(run_dir, device="cpu").recommend_all(tmp_path / "cpu.parquet", k=20)
    load_run(run_dir, device="cuda").recommend_all(tmp_path / "cuda.parquet", k=20, user_block=64)
    cpu, gpu = pl.read_parquet(tmp_path / "cpu.parquet"), pl.read_parquet(tmp_path / "cuda.parquet")
    assert cpu["user"].equals(gpu["user"]) and cpu["rank"].equals(gpu["rank"])
    np.testing.assert_allclose(cpu["score"].to_numpy(), gpu["score"].to_numpy(), rtol=1e-4, atol=1e-4)
    assert (cpu["item"] == gpu["item"]).mean() > 0.99  # order may differ only between near-ties
