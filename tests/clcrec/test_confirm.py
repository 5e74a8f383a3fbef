"""Personal cold rankings and confirmed choices (issue: a cold ranking no lucky list can fake):
the encoder-output term of the regulariser, centred cold rows, the common share of cold scores,
and the confirmation of a run's choices on held-back validation items."""

import json
import os

import numpy as np
import pytest
import torch
from rich.console import Console

from clcrec.config import TrainConfig
from clcrec.evaluation.baselines import content_baseline
from clcrec.evaluation.personalisation import common_share
from clcrec.model import NO_PRIOR, CLCRec, concat_normalised_features
from clcrec.serving.new_items import encode_features
from clcrec.train.confirm import (FALLBACK_Z, confirm_choices, decide, describe_confirmation, paired_z, shared_list,
                                  verdict)
from clcrec.train.selection import split_validation
from clcrec.train.trainer import train
from pipeline.dataset import load_dataset
from tests.support import NUM_NEG


def model_over(num_users=12, num_items=30, reg_content=0.0, cold_vectors="raw", seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats = concat_normalised_features([rng.normal(size=(num_items, 5)), rng.normal(size=(num_items, 3))])
    return CLCRec(num_users=num_users, num_items=num_items, features=feats, dim_E=8, hidden=16,
                  cold_vectors=cold_vectors, reg_content=reg_content)


def test_reg_content_adds_the_slots_mean_encoder_output_norm():
    g = torch.Generator().manual_seed(1)
    users, items = torch.randint(0, 12, (6,), generator=g), torch.randint(0, 30, (6, 5), generator=g)
    hybrid = torch.rand((6, 5), generator=g) < 0.5
    plain, held = model_over(), model_over(reg_content=0.7)
    held.load_state_dict(plain.state_dict())
    a, b = plain(users, items, hybrid), held(users, items, hybrid)
    # slow reference: every slot's encoder output, its L2 norm, the mean over the batch's slots
    with torch.no_grad():
        norms = [float(plain.encoder(plain.features[int(i)]).norm()) for i in items.reshape(-1)]
    assert float((b.reg - a.reg).detach()) == pytest.approx(0.7 * np.mean(norms) / 2, rel=1e-5)
    assert torch.equal(b.loss_ui, a.loss_ui) and torch.equal(b.loss_re, a.loss_re)
    # every per-item form of the step computes the same term
    for kw in ({"dense": True}, {"encode_all": True}):
        assert float(held(users, items, hybrid, **kw).reg.detach()) == pytest.approx(float(b.reg.detach()), rel=1e-5)
    b.reg.backward()
    assert held.encoder[0].weight.grad.abs().sum() > 0  # the term reaches the encoder


def test_centred_cold_rows_share_nothing_across_users_and_serve_new_items_alike():
    model = model_over(cold_vectors="centred").eval()
    status = np.zeros(30, dtype=np.int8)
    status[20:25], status[25:] = 1, 2
    table = model.ranking_table(status)
    cold = torch.as_tensor(status != 0)
    users = model.user_table()
    means = users.mean(0) @ table[cold].T  # each cold item's mean score over all users
    assert torch.allclose(means, means[0].expand_as(means), atol=1e-6)  # the same for every cold item
    model.cold_vectors = "raw"
    raw = model.ranking_table(status)
    assert torch.allclose(table[cold].mean(0), raw[cold].mean(0), atol=1e-6)  # the cold level stays
    assert torch.equal(table[~cold], raw[~cold])  # warm rows untouched
    assert common_share(users, table, torch.nonzero(cold).flatten()) < 1e-10
    model.cold_vectors = "centred"
    # a new item with a cold item's content gets that item's row
    feats = [model.features[20:22, :5].numpy(), model.features[20:22, 5:].numpy()]
    rows = encode_features(model, feats, item_status=status)
    assert np.allclose(rows, table[20:22].numpy(), atol=1e-5)


def test_common_share_matches_a_slow_reference():
    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(40, 6, generator=g), torch.randn(25, 6, generator=g)
    cold = torch.arange(5, 25)
    s = (users @ items[cold].T).double().numpy()
    s = s - s.mean(axis=1, keepdims=True)
    want = len(users) * (s.mean(axis=0) ** 2).sum() / (s**2).sum()
    assert common_share(users, items, cold) == pytest.approx(want, rel=1e-6)
    assert common_share(users, items, cold, block=7) == pytest.approx(want, rel=1e-6)
    one = torch.ones_like(users)  # every user the same: one list, all of it common
    assert common_share(one + 1e-3 * users, items, cold) > 0.99


@pytest.fixture(scope="module")
def untrained(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    torch.manual_seed(0)
    cfg = TrainConfig(dataset=str(tiny_dataset))
    return ds, CLCRec.from_config(cfg, ds).eval()


def test_an_untrained_model_is_not_confirmed_and_says_why(untrained):
    ds, model = untrained
    pairs = dict(zip(("choose", "confirm"), split_validation(ds.item_status, ds.val, 0.5, seed=0)))
    c = confirm_choices(model, ds, NO_PRIOR, pairs, select_k=10)
    held = pairs["confirm"]
    assert c["items"] == len(np.unique(held[:, 1])) and c["choosing"]["items"] > 0
    assert c["served"] == c["model_alone"]  # no prior: the served ranking is the model's
    assert c["served"] < c["content"]
    assert decide(c, weight_given=False) == "content" and decide(c, weight_given=True) == "served"
    v = verdict(c, "content")
    assert not v["confirmed"] and v["below_content"] and "content-only cosine" in v["reason"]
    assert v["below_shared_list"] == (c["served"] < c["shared_list"])
    # the content-only score is the baseline's on the held-back pairs alone
    from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator

    ev = RankingEvaluator(ds.train, held, ds.item_status, ds.num_users, EvalConfig(ks=(10,), modes=("cold",)))
    assert c["content"] == ev(*content_baseline(ds))["cold"]["recall@10"]
    users, items = shared_list(model, ds.item_status)
    assert torch.equal(users[0], users[-1])  # one list for everyone
    assert confirm_choices(model, ds, NO_PRIOR, {**pairs, "confirm": held[:0]}, select_k=10) == {}


def test_decide_takes_a_weight_only_where_it_helps_on_held_back_items():
    c = {"served": 0.30, "model_alone": 0.25, "content": 0.20, "shared_list": 0.40}
    assert decide(c, False) == "served" and decide({}, False) == "served"
    assert decide({**c, "served": 0.22}, False) == "alone"  # W lowered the model alone: W = 0
    assert decide({**c, "served": 0.19, "model_alone": 0.21}, False) == "alone"  # W below content, alone above it
    assert decide({**c, "served": 0.18, "model_alone": 0.15}, False) == "content"  # both below content
    assert decide({**c, "served": 0.19, "model_alone": 0.15}, False) == "content"  # W helps, but below content
    v = verdict(c, "served")
    assert v["below_shared_list"] and not v["below_content"] and not v["confirmed"] and "shared list" in v["reason"]
    assert verdict({**c, "shared_list": 0.1}, "served")["confirmed"]


def test_paired_z_matches_a_slow_reference():
    import statistics

    rng = np.random.default_rng(4)
    a, b = rng.random(50), rng.random(50)
    d = [x - y for x, y in zip(a.tolist(), b.tolist())]
    want = statistics.mean(d) / (statistics.stdev(d) / len(d) ** 0.5)
    assert paired_z(a, b) == pytest.approx(want, rel=1e-12) and paired_z(b, a) == pytest.approx(-want, rel=1e-12)
    q = np.arange(8) / 8  # recalls are such fractions; a shift of 1/4 is exact
    assert paired_z(q + 0.25, q) == float("inf") and paired_z(q, q + 0.25) == float("-inf")  # no spread
    assert paired_z(a, a) == 0.0 and paired_z(a[:0], b[:0]) == 0.0


def test_per_user_scores_are_the_terms_of_the_mean(untrained):
    ds, model = untrained
    from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator

    ev = RankingEvaluator(ds.train, ds.test, ds.item_status, ds.num_users, EvalConfig(ks=(5, 10), modes=("all", "cold")))
    tables = model.tables(ds.train, ds.item_status)
    whole = ev(*tables)
    for mode in ("all", "cold"):
        for key in ("recall@10", "ndcg@5", "hit@10"):
            terms = ev.per_user(*tables, mode, key)
            assert len(terms) == whole[mode]["users"] and terms.mean() == pytest.approx(whole[mode][key], rel=1e-12)
    with pytest.raises(ValueError, match="warm recall@10 is not evaluated here"):
        ev.per_user(*tables, "warm", "recall@10")


def test_a_run_falls_back_to_the_cosine_only_when_it_leads_by_more_than_noise():
    c = {"served": 0.20, "model_alone": 0.18, "content": 0.25, "shared_list": 0.05, "users": 60,
         "content_lead_z": {"served": 1.2, "model_alone": 2.5}, "choosing": {}, "metric": "cold recall@10 on 40 items",
         "items": 40}
    assert decide(c, False) == "served"  # below the cosine, by noise: kept
    assert decide({**c, "content_lead_z": {"served": FALLBACK_Z + 0.01, "model_alone": 3.0}}, False) == "content"
    assert decide({**c, "served": 0.17}, False) == "content"  # W not taken; the model alone is clearly below
    v = verdict(c, "served")
    assert v["below_content"] and not v["confirmed"] and v["judged_content_z"] == 1.2  # still says it is below
    text = describe_confirmation({**c, **v})
    assert "no more than noise" in text and "1.20 paired standard errors over 60 users" in text
    v = verdict({**c, "served": 0.17}, "content")
    assert v["judged_content_z"] == 2.5  # the ranking weighed before the fallback: the model alone
    assert "the run's choices are not taken" in describe_confirmation({**c, "served": 0.17, **v})
    assert decide({k: v for k, v in c.items() if k != "content_lead_z"}, False) == "content"  # recorded before: any loss


def served_form(c: dict) -> str:
    """The configured form, unless the other beat it on both halves (slow and obvious)."""
    f = c["forms"]
    mine = f["configured"]
    alt = "centred" if mine == "raw" else "raw"
    (dc, dh), (ac, ah) = f[mine], f[alt]
    return alt if ac > dc and ah >= dh else mine


def test_a_run_records_choosing_and_held_back_side_by_side(tiny_dataset, tiny_cache, tmp_path):
    cfg = TrainConfig(dataset=str(tiny_dataset), cache=str(tiny_cache), run_dir=str(tmp_path / "run"), num_neg=NUM_NEG,
                      epochs=2, patience=2)
    results = train(cfg, console=Console(file=open(os.devnull, "w")))
    c = results["confirmation"]
    assert set(c["choosing"]) >= {"served", "content", "shared_list", "model_alone"}
    below = results["below_content_baseline"]  # computed on the held-back items, which chose nothing
    assert below["model"] == c["served"] and below["content"] == c["content"]
    assert "held-back" in below["metric"]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["content_prior"]
    form = c["forms"]["served"]  # raw rows (the default) unless centred ones won on both halves
    assert c["forms"]["configured"] == "raw" and recorded["cold_vectors"] == form == served_form(c)
    from clcrec import load_run

    assert load_run(tmp_path / "run", device="cpu").loaded.model.cold_vectors == form  # served as chosen
    if c["fell_back_to_content"]:
        assert recorded["weight"] == 1.0 and "not confirmed" in recorded["chosen_on"]
    off = TrainConfig(**{**cfg.to_dict(), "run_dir": str(tmp_path / "off"), "val_confirm": 0.0})
    results = train(off, console=Console(file=open(os.devnull, "w")))
    assert results["confirmation"] == {} and "held-back" not in results["below_content_baseline"]["metric"]


def test_the_below_content_warning_says_what_follows():
    from clcrec.train.flow import below_consequence

    assert "served by the content-only cosine" in below_consequence({"fell_back_to_content": True})
    kept = below_consequence({"fell_back_to_content": False, "judged_content_z": 0.85, "prior_weight_given": False})
    assert "no more than noise (0.85 paired standard errors)" in kept and "kept" in kept
    assert below_consequence({}) == "its cold recommendations are not a result"  # nothing held back
