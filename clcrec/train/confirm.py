"""Confirmation: the run's choices checked on validation items that made none of them.

Reads the model now loaded and the dataset (the trainer hands them over); writes nothing (the
trainer records the result in results.json as "confirmation").

`clcrec.train.selection.split_validation` holds back a seeded share of the validation-cold items
(`--val-confirm`, half by default). Every choice a run makes on validation (the epoch and early
stopping, the averaged weights, the content prior's weight) is made on the others. When training
ends, the cold ranking those choices produce is scored on the held-back items next to:
- the content-only cosine (clcrec/evaluation/baselines.py), which chose nothing;
- the shared list: the cold items in the order of the model's mean score over all users, the same
  list for everyone (what the model's cold ranking would be with nothing personal in it).
The choices are taken only if the served ranking is at least both. Otherwise the run serves the
content-only cosine for cold items (the prior's W = 1) and says so: a choice that loses on items
it was not made on is luck, not signal. Why a shared list as a bar: on a large catalogue a list
that happens to hold one popular validation item scores high for every user who liked it, so a
model whose cold ranking is mostly one list can win validation and lose test (ml-latest-small:
validation 3.5x the cosine, test 0.6x).
"""

from __future__ import annotations

import numpy as np
import torch

from rich.console import Console

from clcrec.config import TrainConfig
from clcrec.evaluation.baselines import content_baseline
from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator
from clcrec.model import CLCRec, Prior
from clcrec.train.prior import choose_prior, describe_prior

CONTENT_ONLY = 1.0  # the prior's weight that ranks cold items by the content cosine alone


@torch.no_grad()
def shared_list(model: CLCRec, item_status) -> tuple[torch.Tensor, torch.Tensor]:
    """(users (U, D), items (I, D)) that give every user one cold list: the model's raw rows ranked
    by their mean score over all users (every user row is the mean user row)."""
    kind = model.cold_vectors
    model.cold_vectors = "raw"
    try:
        items = model.ranking_table(torch.as_tensor(np.asarray(item_status)))
    finally:
        model.cold_vectors = kind
    users = model.user_table()
    return users.mean(0, keepdim=True).expand_as(users).contiguous(), items


@torch.no_grad()
def confirm_choices(model: CLCRec, dataset, prior: Prior, confirm_pairs: np.ndarray, select_k: int,
                    eval_block: int = 1024) -> dict:
    """{"metric", "items", "served", "model_alone", "content", "shared_list", "confirmed", "reason"}
    on the held-back validation pairs (`confirm_pairs`); empty dict when there are none."""
    pairs = np.asarray(confirm_pairs).reshape(-1, 2)
    if len(pairs) == 0:
        return {}
    status = np.asarray(dataset.item_status)
    key = f"recall@{select_k}"
    ev = RankingEvaluator(dataset.train, pairs, status, dataset.num_users,
                          EvalConfig(ks=(select_k,), user_block=eval_block, modes=("cold",)))
    dev = model.item_emb.weight.device
    score = lambda tables: ev(*(t.to(dev) for t in tables))["cold"][key]  # noqa: E731
    served = score(model.tables(dataset.train, status, prior))
    alone = served if prior.weight == 0 else score(model.tables(dataset.train, status))
    content = score(content_baseline(dataset))
    shared = score(shared_list(model, status))
    losses = [name for name, bar in (("content-only cosine", content), ("shared list", shared)) if served < bar]
    return {
        "metric": f"cold {key} on {len(np.unique(pairs[:, 1]))} held-back validation-cold items",
        "items": int(len(np.unique(pairs[:, 1]))),
        "served": served, "model_alone": alone, "content": content, "shared_list": shared,
        "confirmed": not losses,
        "reason": "" if not losses else f"the served cold ranking ({served:.4f}) is below the {' and the '.join(losses)}",
    }


def describe_confirmation(c: dict, fell_back: bool) -> str:
    """One line for the run's report."""
    if not c:
        return "choices not confirmed: no validation-cold items were held back (--val-confirm 0, or too few)"
    line = (f"confirmed on {c['items']} held-back validation-cold items (recall: served {c['served']:.4f}, "
            f"model alone {c['model_alone']:.4f}, content-only {c['content']:.4f}, shared list {c['shared_list']:.4f})")
    if c["confirmed"]:
        return line
    what = "cold items now rank by the content-only cosine" if fell_back else "kept: the content prior was given"
    return (f"NOT confirmed: {c['reason']} on {c['items']} held-back validation-cold items; {what} "
            f"(model alone {c['model_alone']:.4f})")


def choose_and_confirm(model: CLCRec, dataset, cfg: TrainConfig, val_pairs: dict, console: Console) -> tuple[dict, dict]:
    """(the content prior as served, the confirmation) for the model now loaded: W chosen on
    `val_pairs["choose"]`, the result confirmed on `val_pairs["confirm"]`; a run whose choices lose
    there serves the content-only cosine (unless the prior's weight was given). Prints both."""
    prior = choose_prior(model, dataset, cfg, val_pairs=val_pairs["choose"])
    confirmation = confirm_choices(model, dataset, Prior.of(prior), val_pairs["confirm"], cfg.select_k, cfg.eval_block)
    fell_back = bool(confirmation) and not confirmation["confirmed"] and cfg.prior_weight is None
    if fell_back:
        prior = choose_prior(model, dataset, cfg, weight=CONTENT_ONLY,
                             chosen_on="content only: the run's choices were not confirmed on held-back items")
    if confirmation:
        confirmation["fell_back_to_content"] = fell_back
    console.print(describe_prior(prior), highlight=False)
    line = describe_confirmation(confirmation, fell_back)
    console.print(line if confirmation.get("confirmed", True) else f"[yellow]warning:[/yellow] {line}", highlight=False)
    return prior, confirmation
