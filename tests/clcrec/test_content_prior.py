"""The content prior (clcrec/model.py with_prior, clcrec/train/prior.py): cold items rank by
1 - W of the model's score plus W of the content-only cosine, centred per user and scaled to the
model's spread; the trainer chooses W on validation and every serving path ranks with it."""

import json

import numpy as np
import pytest
import torch

from clcrec.config import TrainConfig
from clcrec.evaluation.ranking import EvalConfig, evaluate_ranking
from clcrec.model import NO_PRIOR, PRIOR_GRID, CLCRec, Prior, prior_unit
from clcrec.train.prior import choose_prior
from common.errors import UserError
from pipeline.dataset import load_dataset
from tests.support import config, make_dataset, quiet


def _model(ds, seed=0):
    torch.manual_seed(seed)
    # raw cold rows: the slow references below score the encoder's output as is
    return CLCRec.from_config(TrainConfig(dim_E=8, hidden=16, cold_vectors="raw"), ds).eval()


def test_scores_are_the_mix_of_the_model_and_the_centred_cosine(tmp_path):
    """Slow and obvious: each cold score is the user's mean model score over cold items, plus `share`
    of the model's deviation from it, plus beta times the cosine's deviation from its cold mean."""
    ds = load_dataset(make_dataset(tmp_path / "d", num_users=20, num_items=50, pairs=300))
    model = _model(ds)
    w, beta, share = 0.35, 1.7, 0.6
    users, items = model.tables(ds.train, ds.item_status, Prior(w, beta, share))
    got = (users @ items.T).numpy()  # (U, I)

    # slow and obvious, in numpy
    emb_u = model.user_emb.weight.detach().numpy()
    emb_i = model.item_emb.weight.detach().numpy()
    feats = model.features.numpy()
    unit_f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    enc = model.encoder(model.features).detach().numpy()
    cold = np.flatnonzero(ds.item_status != 0)
    want = np.zeros_like(got)
    for u in range(ds.num_users):
        mine = [i for uu, i in np.asarray(ds.train) if uu == u]
        prof = unit_f[mine].mean(0) if mine else np.zeros(feats.shape[1])
        prof = prof / max(np.linalg.norm(prof), 1e-12)
        cos = unit_f @ prof  # (I,)
        for i in range(ds.num_items):
            if i in cold:  # the model's deviation from its cold mean shrunk, the cosine's added
                model_mean = emb_u[u] @ enc[cold].mean(0)
                want[u, i] = model_mean + share * (emb_u[u] @ enc[i] - model_mean) + beta * (cos[i] - cos[cold].mean())
            else:
                want[u, i] = emb_u[u] @ emb_i[i]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # no prior: the plain tables, dim_E wide
    plain_u, plain_i = model.tables(ds.train, ds.item_status, NO_PRIOR)
    assert plain_u.shape[1] == plain_i.shape[1] == 8
    np.testing.assert_array_equal(plain_i.numpy(), model.ranking_table(torch.as_tensor(ds.item_status)).numpy())


def test_the_unit_matches_the_spreads_and_the_choice_is_the_best_on_validation(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", num_users=40, num_items=120, pairs=900, seed=3))
    model = _model(ds, seed=1)
    cfg = TrainConfig(dim_E=8, hidden=16, select_k=10, ks=(10, 20))
    prior = choose_prior(model, ds, cfg)
    # weight 1: the cosine's within-user spread over cold items equals the model's
    status = torch.as_tensor(ds.item_status)
    users, items = model.user_table(), model.ranking_table(status)
    profiles, content, centre = model.content_tables(ds.train, ds.item_status)
    cold = status != 0
    unit = prior_unit(users, items, profiles, content, cold)
    assert prior["unit"] == pytest.approx(unit)
    m = (users @ items[cold].T).std(dim=1).mean()
    c = (profiles @ content[cold].T).std(dim=1).mean()
    assert float(unit * c) == pytest.approx(float(m), rel=1e-5)
    # every weight of the grid scored independently; the best wins, the smaller on ties
    recalls = {}
    for w in PRIOR_GRID:
        u, i = model.tables(ds.train, ds.item_status, Prior(w, w * unit, 1 - w))
        recalls[f"{w:g}"] = evaluate_ranking(u, i, ds.train, ds.val, ds.item_status, EvalConfig(ks=(10,)))["cold"]["recall@10"]
    assert prior["val"] == pytest.approx(recalls, abs=1e-6)
    best = max(PRIOR_GRID, key=lambda w: (recalls[f"{w:g}"], -w))
    g = prior["gain"]
    assert prior["weight"] == best and prior["beta"] == pytest.approx(g * best * unit)
    assert prior["share"] == pytest.approx(g * (1 - best))
    # the gain keeps the model's within-user spread of cold scores: all-item lists keep their balance
    u, i = model.tables(ds.train, ds.item_status, Prior.of(prior))
    assert float((u @ i[cold].T).std(dim=1).mean()) == pytest.approx(float(m), rel=1e-4)
    # fixed and off
    fixed = choose_prior(model, ds, cfg.replace(content_prior="0.5"))
    assert (fixed["weight"], fixed["val"]) == (0.5, {}) and fixed["beta"] == pytest.approx(fixed["gain"] * 0.5 * unit)
    assert choose_prior(model, ds, cfg.replace(content_prior="off"))["beta"] == 0.0


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "sometimes", True])
def test_a_bad_content_prior_is_refused_naming_the_option(bad):
    with pytest.raises(UserError, match=r"--content-prior must be auto, off or a number W with 0 <= W <= 1"):
        TrainConfig(content_prior=bad)


def test_a_trained_run_records_its_prior_and_serves_what_it_reported(tiny_dataset, tiny_cache, tmp_path):
    from clcrec.evaluation.report import evaluate_run
    from clcrec.rundir import open_run
    from clcrec.train.trainer import train

    run = tmp_path / "run"
    results = train(config(tiny_dataset, tiny_cache, run, epochs=2, content_prior="0.5"), console=quiet())
    record = json.loads((run / "config.json").read_text())["content_prior"]
    assert record["weight"] == 0.5 and record["beta"] > 0 and results["content_prior"] == record
    opened = open_run(run)
    users, items = opened.tables()
    width = 64 + opened.model.features.shape[1]
    assert users.shape[1] == items.shape[1] == width
    # what the trainer reported is what the run serves (cli.py evaluate ranks the opened run)
    served = evaluate_run(run, splits=("test",))["test"]
    for mode in ("all", "warm", "cold"):
        assert served[mode]["recall@20"] == pytest.approx(results["test"][mode]["recall@20"], abs=1e-6)
    # off: the reference's ranking, dim_E wide, nothing mixed
    off = train(config(tiny_dataset, tiny_cache, tmp_path / "off", epochs=2, content_prior="off"), console=quiet())
    assert off["content_prior"]["beta"] == 0.0 and open_run(tmp_path / "off").tables()[1].shape[1] == 64
