"""Using a finished run: evaluate, recommend (original ids, cold items), export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from clcrec.config import TrainConfig
from clcrec.evaluation.report import evaluate_run
from clcrec.rundir import open_run as load_run
from clcrec.serving.export import export_embeddings
from clcrec.serving.run import recommend
from clcrec.train.trainer import train
from common.errors import UserError
from pipeline.dataset import load_dataset
from tests.support import NUM_NEG

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tiny_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainConfig(dataset=str(tiny_dataset), cache=str(tiny_cache), run_dir=str(path), num_neg=NUM_NEG,
                      batch_size=64, epochs=2, l_r=0.01, content_prior="0.5")  # every path serves the prior
    train(cfg, console=Console(file=open(os.devnull, "w")))
    return path


def test_evaluate_reproduces_the_saved_results(run_dir):
    saved = json.loads((run_dir / "results.json").read_text())
    again = evaluate_run(run_dir)
    for split in ("val", "test"):
        for mode in ("all", "warm", "cold"):
            assert again[split][mode] == pytest.approx(saved[split][mode], abs=1e-9), (split, mode)


def test_recommend_uses_original_ids_and_skips_training_items(run_dir, tiny_dataset):
    ds = load_dataset(tiny_dataset)
    users, items = ds.user_ids(), ds.item_ids()
    uid = 5
    original = str(users["original_id"][uid])
    df = recommend(run_dir, original, k=15)
    assert df.height == 15 and df["rank"].to_list() == list(range(1, 16))
    index_of = {v: i for i, v in enumerate(items["original_id"].to_list())}
    recommended = [index_of[v] for v in df["original_id"].to_list()]
    seen = set(ds.train[ds.train[:, 0] == uid, 1].tolist())
    assert not seen & set(recommended)
    assert df["score"].to_list() == sorted(df["score"].to_list(), reverse=True)
    # the same ranking computed directly from the tables
    lr = load_run(run_dir)
    u, t = lr.tables()
    scores = (t @ u[uid]).numpy()
    scores[list(seen)] = -np.inf
    assert recommended == np.argsort(-scores, kind="stable")[:15].tolist()


def test_recommend_cold_candidates_are_all_new_items(run_dir, tiny_dataset):
    ds = load_dataset(tiny_dataset)
    df = recommend(run_dir, str(ds.user_ids()["original_id"][0]), k=10, candidates="cold")
    assert set(df["status"].to_list()) <= {"cold-val", "cold-test"} and df.height == 10


def test_recommend_unknown_user_is_a_clear_error(run_dir):
    with pytest.raises(UserError, match="user 'no-such-user' is not in dataset"):
        recommend(run_dir, "no-such-user")
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "cli.py", "recommend", str(run_dir), "--user", "no-such-user"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "is not in dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_export_writes_the_ranking_tables_with_ids(run_dir, tiny_dataset, tmp_path):
    out = export_embeddings(run_dir, tmp_path / "emb")
    ds = load_dataset(tiny_dataset)
    users, items = np.load(out / "users.npy"), np.load(out / "items.npy")
    u, t = load_run(run_dir).tables()
    width = 64 + load_run(run_dir).model.features.shape[1]  # dim_E, then the content prior's columns
    assert users.shape == (ds.num_users, width) and items.shape == (ds.num_items, width)
    np.testing.assert_array_equal(items, t.numpy())
    np.testing.assert_array_equal(users, u.numpy())


def test_two_recommend_all_writers_one_wins_the_other_exits_1(tmp_path, monkeypatch):
    """Issue 28: without --force, a file a concurrent writer published after our check is never
    overwritten: the later writer fails with EEXIST (one `error:` line), the winner's file stays."""
    import errno

    import torch

    import clcrec.serving.recommend_all as ra
    from cli import describe_failure
    from common.fsutil import output_kind

    def blocks(score):
        return iter([(0, torch.full((2, 2), score), torch.zeros((2, 2), dtype=torch.long))])

    out, users, items = tmp_path / "r.parquet", np.arange(2), np.arange(3)
    assert ra.write_topk_parquet(out, blocks(1.0), users, items) == 4
    first = out.read_bytes()
    monkeypatch.setattr(ra, "check_output", lambda *a, **k: None)  # its check ran before the first published
    with pytest.raises(FileExistsError) as e:
        ra.write_topk_parquet(out, blocks(2.0), users, items)
    assert e.value.errno == errno.EEXIST and describe_failure(e.value).startswith(f"{out}: File exists")
    assert out.read_bytes() == first and os.listdir(tmp_path) == ["r.parquet"]
    assert output_kind(out) == ("recommend-all", "a recommend-all Parquet file", True)  # its marker verifies
