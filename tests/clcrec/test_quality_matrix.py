"""scripts/quality_matrix.py's replay: the trainer's selection rule on recorded curves, and the
summary it tabulates; a regime whose data is absent is skipped with the reason."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quality_matrix.py"


@pytest.fixture(scope="module")
def qm():
    spec = importlib.util.spec_from_file_location("quality_matrix", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _curve(val_cold, test_cold, distinct, choose=None):
    res = lambda r: {m: {"recall@10": r, "ndcg@10": r / 2, "recall@20": r, "users": 5}  # noqa: E731
                     for m in ("all", "warm", "cold")}
    return {"val": res(val_cold), "test": res(test_cold), "choose": val_cold if choose is None else choose,
            "confirm": 0.0,
            "pers": {"distinct_share": distinct, "distinct_lists": int(distinct * 10), "users": 10,
                     "coverage@10": 0.5, "pop_share@10": 0.2, "common_share": 0.3}}


def test_replay_picks_what_the_trainer_would(qm):
    # raw weights: a one-epoch spike at epoch 1 wins with window 1, loses to the steady run with window 3
    val = [0.1, 0.9, 0.1, 0.6, 0.6, 0.6, 0.2]
    recs = [{"curves": {"raw": {"raw": _curve(v, 10 + e, 0.5)}}} for e, v in enumerate(val)]
    pick1 = qm.replay(recs, qm.rule("raw", "cold@10", 1, None, "raw"))
    pick3 = qm.replay(recs, qm.rule("raw", "cold@10", 3, None, "raw"))
    assert (pick1["epoch"], pick1["test"]["cold"]["recall@10"]) == (1, 11)
    assert pick3["epoch"] == 5  # mean of epochs 3-5 = 0.6 beats 0.533 (epochs 1-3)
    s = qm.summarise([pick1, pick3])
    assert s["cold recall@10"]["mean"] == 13 and s["epochs"] == [1, 5] and s["last_epoch"] == 0


def test_replay_chooses_on_the_choosing_share_and_reports_as_served(qm):
    # all of validation peaks at epoch 1 (a lucky held-back item); the choosing share at epoch 3
    recs = [{"curves": {"raw": {"raw": _curve(v, e, 0.5, choose=c), "raw+served": _curve(v, 100 + e, 0.9)}}}
            for e, (v, c) in enumerate(zip([0.1, 0.9, 0.2, 0.3], [0.1, 0.1, 0.2, 0.3]))]
    on_all = qm.replay(recs, qm.rule("raw", "cold@10", 1, None, "raw"))
    chosen = qm.replay(recs, qm.rule("raw", "choose", 1, None, "raw", served=True))
    assert on_all["epoch"] == 1 and on_all["test"]["cold"]["recall@10"] == 1
    assert chosen["epoch"] == 3 and chosen["test"]["cold"]["recall@10"] == 103  # the served curve
    assert chosen["last"]  # the last epoch of a run that ran out: "best epoch = last epoch"


def test_absent_data_is_skipped_with_the_reason(qm, tmp_path, monkeypatch):
    monkeypatch.setattr(qm, "SHARED", tmp_path / "nowhere")
    path, reason = qm.prepare("citeulike", tmp_path / "data", 10)
    assert path is None and "citeulike-a is absent" in reason
