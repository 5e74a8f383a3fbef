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


def _curve(val_cold, test_cold, distinct):
    res = lambda r: {m: {"recall@10": r, "ndcg@10": r / 2, "recall@20": r, "users": 5}  # noqa: E731
                     for m in ("all", "warm", "cold")}
    return {"val": res(val_cold), "test": res(test_cold),
            "pers": {"distinct_share": distinct, "distinct_lists": int(distinct * 10), "users": 10,
                     "coverage@10": 0.5, "pop_share@10": 0.2}}


def test_replay_picks_what_the_trainer_would(qm):
    # raw weights: a one-epoch spike at epoch 1 wins with window 1, loses to the steady run with window 3
    val = [0.1, 0.9, 0.1, 0.6, 0.6, 0.6, 0.2]
    recs = [{"curves": {"raw": {"raw": _curve(v, 10 + e, 0.5)}}} for e, v in enumerate(val)]
    pick1 = qm.replay(recs, qm.rule("raw", "cold@10", 1, None, "raw"), 0.9)
    pick3 = qm.replay(recs, qm.rule("raw", "cold@10", 3, None, "raw"), 0.9)
    assert (pick1["epoch"], pick1["test"]["cold"]["recall@10"]) == (1, 11)
    assert pick3["epoch"] == 5  # mean of epochs 3-5 = 0.6 beats 0.533 (epochs 1-3)
    s = qm.summarise([pick1, pick3])
    assert s["cold recall@10"]["mean"] == 13 and s["epochs"] == [1, 5]


def test_absent_data_is_skipped_with_the_reason(qm, tmp_path, monkeypatch):
    monkeypatch.setattr(qm, "SHARED", tmp_path / "nowhere")
    path, reason = qm.prepare("citeulike", tmp_path / "data", 10)
    assert path is None and "citeulike-a is absent" in reason
