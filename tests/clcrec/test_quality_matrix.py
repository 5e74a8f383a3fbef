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


def _slim(r):
    return {m: {"recall@10": r, "ndcg@10": r / 2, "recall@20": r, "users": 5} for m in ("all", "warm", "cold")}


def _point(val_cold, test_cold, choose=None):
    return {"val_cold": val_cold, "test": _slim(test_cold), "choose": val_cold if choose is None else choose,
            "confirm": 0.0}


def _pers(distinct):
    return {"distinct_share": distinct, "distinct_lists": int(distinct * 10), "users": 10, "coverage@10": 0.5,
            "pop_share@10": 0.2, "common_share": 0.3}


def test_replay_picks_what_the_trainer_would(qm):
    # raw weights: a one-epoch spike at epoch 1 loses to the steady run under the 3-epoch window
    val = [0.1, 0.9, 0.1, 0.6, 0.6, 0.6, 0.2]
    curves = [{"raw": {"raw": _point(v, 10 + e)}} for e, v in enumerate(val)]
    assert qm.replay(curves, "raw", "raw", "val_cold") == 5  # mean of epochs 3-5 = 0.6 beats 0.533 (epochs 1-3)
    # the choosing share's curve, not all of validation's: the held-back items' luck cannot pick
    curves = [{"raw": {"raw": _point(v, e, choose=c)}}
              for e, (v, c) in enumerate(zip([0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.2, 0.9]))]
    assert qm.replay(curves, "raw", "raw", "val_cold") == 2 and qm.replay(curves, "raw", "raw", "choose") == 3


def test_rows_of_a_run(qm):
    # recorded under a default of centred rows: "served"/"alone" are centred, the raw ones named
    choosing = {"served": 0.1, "model_alone": 0.1, "content": 0.1}
    conf = lambda served, alone, content: {"served": served, "model_alone": alone, "content": content,  # noqa: E731
                                           "shared_list": 0.0, "choosing": dict(choosing)}
    ends = {"served": {"test": _slim(0.25), "pers": _pers(1.0), "weight": 0.2, "confirmation": conf(0.2, 0.1, 0.1)},
            "alone": {"test": _slim(0.15), "pers": _pers(1.0)},
            "raw+served": {"test": _slim(0.3), "pers": _pers(0.9), "weight": 0.5, "confirmation": conf(0.2, 0.1, 0.1)},
            "raw+alone": {"test": _slim(0.2), "pers": _pers(0.5)}}
    point = lambda e: {"raw": _point(0.1 * e, e), "centred": _point(0.1 * e, e)}  # noqa: E731
    rec = {"curves": [{"raw": point(e), "ema0.9": point(e)} for e in range(12)], "ends": ends,
           "best_epoch": 11, "epochs_run": 12, "max_epochs": 12}
    content = {"test": _slim(0.05), "pers": _pers(0.8)}
    rows = qm.variants(rec, "honest", content)  # today's default: raw rows
    assert rows["default"]["test"]["cold"]["recall@10"] == 0.3 and rows["default"]["prior_weight"] == 0.5
    assert rows["default"]["last"]  # best epoch = the last of a run that ran out of epochs
    assert rows["model alone (no prior, no fallback)"]["test"]["cold"]["recall@10"] == 0.2
    assert rows["cold vectors centred, served"]["test"]["cold"]["recall@10"] == 0.25
    assert rows["cold vectors centred, model alone"]["pers"]["distinct_share"] == 1.0
    s = qm.summarise([rows["default"], rows["default"]])
    assert s["cold recall@10"]["mean"] == 0.3 and s["last_epoch"] == 2 and s["common_share"] == 0.3
    # the prior's weight replayed as the trainer now decides it: below the model alone on the
    # held-back items, the model alone is served; below the content-only cosine, the cosine
    ends["raw+served"]["confirmation"] = conf(0.1, 0.2, 0.05)
    assert qm.variants(rec, "honest", content)["default"]["test"]["cold"]["recall@10"] == 0.2
    ends["raw+served"]["confirmation"] = conf(0.1, 0.02, 0.15)
    row = qm.variants(rec, "honest", content)["default"]
    assert row["test"]["cold"]["recall@10"] == 0.05 and row["confirmation"]["fell_back_to_content"]
    # the other form is served only where it wins on both halves (the kept scores the run recorded)
    ends["served"]["confirmation"]["forms"] = {"centred": [0.5, 0.16], "raw": [0.1, 0.15], "served": "centred"}
    assert qm.variants(rec, "honest", content)["default"]["test"]["cold"]["recall@10"] == 0.25
    ends["served"]["confirmation"]["forms"] = {"centred": [0.5, 0.14], "raw": [0.1, 0.15], "served": "centred"}
    assert qm.variants(rec, "honest", content)["default"]["test"]["cold"]["recall@10"] == 0.05
    assert list(qm.variants(rec, "repro")) == ["reproduction"]


def test_absent_data_is_skipped_with_the_reason(qm, tmp_path, monkeypatch):
    monkeypatch.setattr(qm, "SHARED", tmp_path / "nowhere")
    path, reason = qm.prepare("citeulike", tmp_path / "data", 10)
    assert path is None and "citeulike-a is absent" in reason


def test_a_claim_is_what_a_run_kept_reported_at_least_the_cosine(qm):
    c = {"served": 0.2, "model_alone": 0.1, "content": 0.15}
    assert qm.claims_content_level({**c, "decision": "served", "below_content": False})
    assert not qm.claims_content_level({**c, "decision": "served", "below_content": True})  # kept below, said so
    assert not qm.claims_content_level({**c, "decision": "content", "below_content": True})  # serves the cosine
    assert qm.claims_content_level(c) and not qm.claims_content_level({**c, "served": 0.1})  # recorded before
    assert not qm.claims_content_level({})  # nothing held back: no claim on held-back items
