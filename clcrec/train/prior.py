"""The content prior's weight, chosen when a run finishes (clcrec/model.py with_prior).

Cold items rank by a mix: 1 - W of the model's score, W of the content-only cosine (scaled to the
model's spread, centred per user). Why: the
encoder learns content -> ID space from a few epochs of contrastive steps and compresses the
content into dim_E numbers; where content is strong (CiteULike's tags), sparse (items with a few
interactions) or the run is short, the raw cosine holds signal the encoder has not learned yet,
and where the encoder learned well, a small W only breaks its ties. The quality matrix (README
section 5) measured both: W = 0 falls below the content-only cosine on two of five regimes, and a
W chosen on validation is above both in every regime.

W is chosen among PRIOR_GRID by validation cold Recall@select_k of the selected weights, the
smaller W on ties (W = 1 ranks cold items by the content cosine alone: chosen only where the
model's cold scores add nothing on validation); `--content-prior W` (0 <= W <= 1) fixes it and
`off` is W = 0. Writes nothing:
the trainer records the choice in config.json ("content_prior") and results.json.
"""

from __future__ import annotations

import numpy as np
import torch

from clcrec.config import TrainConfig
from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator
from clcrec.model import (
    NO_PRIOR,
    PRIOR_GRID,
    CLCRec,
    Prior,
    prior_gain,
    prior_unit,
    with_prior,
)


@torch.no_grad()
def choose_prior(model: CLCRec, dataset, cfg: TrainConfig, val_pairs=None, weight: float | None = None,
                 chosen_on: str = "") -> dict:
    """{"weight", "beta", "share" (a Prior), "unit", "gain", "chosen_on", "val": {weight: recall}}
    for the model now loaded, W chosen on `val_pairs` (default: all of validation; the trainer
    passes the choosing share, clcrec/train/selection.py split_validation), or `weight` as given
    (`chosen_on` says why)."""
    model.eval()
    fixed = cfg.prior_weight if weight is None else weight
    val = np.asarray(dataset.val if val_pairs is None else val_pairs)
    if fixed == 0.0:
        return {**NO_PRIOR._asdict(), "unit": None, "chosen_on": chosen_on or "off (--content-prior off)", "val": {}}
    status = np.asarray(dataset.item_status)
    users, items = model.user_table(), model.ranking_table(torch.as_tensor(status))
    profiles, content, centre = model.content_tables(dataset.train, status)
    cold = torch.as_tensor(status != 0)
    unit = prior_unit(users, items, profiles, content, cold)
    key = f"recall@{cfg.select_k}"
    ecfg = EvalConfig(ks=(cfg.select_k,), user_block=cfg.eval_block, modes=("cold",))

    mean_row = items[cold.to(items.device)].mean(0)  # (D,) the cold rows' mean (ranking_table's cold_centre)

    def tables(w: float):
        # = model.tables(..., Prior(w, w * unit, 1 - w)) from tables computed once (the gain g, 1
        # here, is measured on these; tests/clcrec/test_content_prior.py checks that the two agree)
        mixed = items.clone()
        mixed[cold.to(items.device)] = mean_row + (1 - w) * (items[cold.to(items.device)] - mean_row)
        return with_prior(users, mixed, profiles, content, centre, cold.float(), w * unit)

    if fixed is None and unit > 0 and len(val):
        ev = RankingEvaluator(dataset.train, val, status, dataset.num_users, ecfg)
        grid = {w: ev(*tables(w))["cold"][key] for w in PRIOR_GRID}
        weight = max(grid, key=lambda w: (grid[w], -w))
        chosen = f"validation cold {key}"
    else:  # given, or nothing to choose on (no cold items or no validation pairs)
        grid, weight = {}, fixed if fixed is not None else 0.0
        chosen = (chosen_on or f"given (--content-prior {cfg.content_prior})") if fixed is not None else "no cold validation items"
    if unit <= 0:
        weight = 0.0  # no cold items, or a constant ranking: nothing to mix
    # g does not change a cold ranking (both deviations scale together), only all-item ones
    gain = prior_gain(users, items, tables(weight), cold) if weight > 0 else 1.0
    prior = Prior(float(weight), float(gain * weight * unit), float(gain * (1 - weight)))
    return {**prior._asdict(), "unit": float(unit), "gain": float(gain), "chosen_on": chosen,
            "val": {f"{w:g}": round(float(v), 6) for w, v in grid.items()}}


def describe_prior(prior: dict) -> str:
    """'content prior: weight 0.5 (chosen on validation cold recall@10: 0 0.0712, 0.25 0.0801, ...)'."""
    if prior["weight"] == 0 and not prior["val"]:
        return f"content prior: none ({prior['chosen_on']})"
    tried = ", ".join(f"{w} {v:.4f}" for w, v in prior["val"].items())
    return (f"content prior: weight {prior['weight']:g} (beta {prior['beta']:.4g}; {prior['chosen_on']}"
            + (f": {tried}" if tried else "") + ")")
