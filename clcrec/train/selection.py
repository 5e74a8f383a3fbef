"""Robust model selection: averaged weights for evaluation, a smoothed validation curve, and the
selection rule itself (which validation recall, and whether the dataset can supply it).

    python cli.py train --dataset data/ml-100k --eval-ema 0.9 --select-window 3    # the defaults

Reads and writes nothing itself: the trainer calls `smoothed_score` on the validation scores it
logged in metrics.jsonl; scripts/ablate_selection.py replays `select_epoch` on recorded curves.

Why: on small validation sets (168 cold items in ml-100k) the cold recall of one epoch's weights
swings from epoch to epoch, so "the best epoch" is often a one-epoch spike that does not carry to
the test split. Two remedies were measured, both applied only at epoch ends (never inside the per-step loop,
which the GPU path captures in a CUDA graph):
  * `EpochAverage`: an exponential moving average of the epoch-end weights, avg <- d*avg + (1-d)*w,
    evaluated, selected and kept (best.pt) in place of the raw weights; training continues on the
    raw ones. `--eval-ema 0.9` is the default: over ten 40-epoch runs on the reference layout of
    ml-100k (5 seeds, two hybrid-draw generators) it held every run's test cold Recall@10 at
    >= 0.0854 when selecting on validation cold Recall@10, against a worst of 0.0709 for raw weights
    (docs/results.md). Its memory is ~1/(1-d) = 10 epochs, so the default patience is 10.
  * `smoothed_score`: the selection score of epoch e is the mean of the validation scores of
    epochs e-W+1..e (epochs before 0 count as 0). A spike of height h in one epoch raises it by only h/W,
    and the epoch selected is the last of the best window (its weights are the ones kept).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from clcrec.config import TrainConfig
from common.errors import UserError


class EpochAverage:
    """EMA of a model's floating-point parameters, updated once per epoch (decay in (0, 1))."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] | None = None  # set by the first update

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current (epoch-end) weights into the average; the first call copies them."""
        params = self._params(model)
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in params.items()}
            return
        for k, v in params.items():
            self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)  # avg + (1-d) * (w - avg)

    def averaged_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the raw ones."""
        state = dict(model.state_dict())
        state.update(self.shadow or {})
        return state

    @contextmanager
    def swapped_in(self, model: nn.Module):
        """Temporarily load the averaged weights into `model` (e.g. to evaluate), then restore."""
        if self.shadow is None:
            yield
            return
        raw = {k: v.detach().clone() for k, v in self._params(model).items()}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(raw, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}  # tensors and floats only

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow = state["shadow"]


def smoothed_score(scores: list[float], window: int) -> float:
    """Sum of the last `window` scores / window; window 1 = the last score. Epochs before the
    first count as 0, so an early spike is damped like any other (a mean over the fewer epochs
    that exist would let a spike at epoch 0 stand alone; measured: it then won on one seed in 5)."""
    if window < 1 or not scores:
        raise ValueError(f"need window >= 1 and at least one score, got {window} and {len(scores)}")
    return sum(scores[-window:]) / window


def first_selectable(decay: float, epochs: int) -> int:
    """The first epoch whose averaged weights may be selected: once the average has seen about its
    memory, 1/(1-decay) epochs (10 at 0.9). Earlier averages are dominated by the first epochs'
    weights, whose cold recall can be high before the ID embeddings have learned anything (on
    ml-100k an average of epochs 0-2 scored above every later one for 10 epochs and stopped the
    run at epoch 13 with test cold Recall@20 0.113, against 0.15-0.18 for later epochs).
    Without averaging (decay 0) every epoch is selectable; the last epoch of a run always is."""
    if decay <= 0:
        return 0
    return min(max(0, round(1.0 / (1.0 - decay)) - 1), max(0, epochs - 1))


def select_epoch(scores: list[float], window: int, patience: int, first: int = 0) -> tuple[int, int]:
    """The trainer's rule replayed on a recorded validation curve: (selected epoch, epochs run).

    Epoch e (from `first` on) improves when its smoothed score beats every earlier selectable
    smoothed score (ties keep the earlier epoch); training stops after `patience` selectable
    epochs without an improvement.
    """
    best, best_epoch, bad = -1.0, -1, 0
    for e in range(len(scores)):
        s = smoothed_score(scores[: e + 1], window)
        if e < first:
            continue
        if s > best:
            best, best_epoch, bad = s, e, 0
        else:
            bad += 1
            if bad >= patience:
                return best_epoch, e + 1
    return best_epoch, len(scores)


def check_selectable(ds, cfg: TrainConfig) -> None:
    """Refuse a run whose model selection would read an empty metric: no validation data, or
    --select-mode cold (or warm) on a split without validation interactions of that kind."""
    val = np.asarray(ds.val)
    cold = bool(val.size) and bool((ds.item_status[val[:, 1]] != 0).any())
    warm = bool(val.size) and bool((ds.item_status[val[:, 1]] == 0).any())
    need = {"cold": cold, "warm": warm, "all": cold or warm, "mean": cold and warm}[cfg.select_mode]
    if not need:
        what = {"cold": "cold items", "warm": "warm items", "all": "interactions",
                "mean": "warm and cold items"}[cfg.select_mode]
        alt = [m for m, ok in (("warm", warm), ("all", cold or warm)) if ok and m != cfg.select_mode]
        raise UserError(
            f"dataset {ds.root} has no validation {what}, so --select-mode {cfg.select_mode} would select "
            f"epochs on a recall that is always 0; "
            + (f"pass --select-mode {alt[0]}" if alt else "ingest it with validation data (--val-fraction, --cold-fraction)")
        )


def describe_selection(cfg: TrainConfig) -> str:
    """e.g. 'cold recall@10, mean of 3 epochs, weights averaged (EMA 0.9)'."""
    parts = [f"{cfg.select_mode} recall@{cfg.select_k}"]
    if cfg.select_window > 1:
        parts.append(f"mean of {cfg.select_window} epochs")
    if cfg.eval_ema > 0:
        parts.append(f"weights averaged (EMA {cfg.eval_ema})")
    if cfg.val_confirm > 0:
        parts.append(f"{cfg.val_confirm:.0%} of the validation-cold items held back to confirm")
    return ", ".join(parts)


# The stream of the validation split's halves: one draw per run seed, apart from every other use of it.
CONFIRM_STREAM = 0x5E1EC7


def split_validation(item_status: np.ndarray, val: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(choosing pairs, confirming pairs) of the validation split: a seeded `fraction` of the
    validation-cold items (at least one, and one left to choose on) is held back, and their pairs
    confirm; everything else (warm pairs, the other cold items) chooses. Why: a choice judged on the
    items that made it keeps its luck (a shared cold list that happens to hold a popular validation
    item wins every choice it enters, and says so on the same items); the confirming items made no
    choice, so what they say about the run is an honest estimate. `fraction` 0, or fewer than two
    validation-cold items: nothing held back (confirming pairs empty)."""
    val = np.asarray(val).reshape(-1, 2)
    status = np.asarray(item_status)
    cold = np.unique(val[status[val[:, 1]] != 0, 1]) if len(val) else np.zeros(0, np.int64)
    if fraction <= 0 or len(cold) < 2:
        return val, val[:0]
    rng = np.random.default_rng([CONFIRM_STREAM, int(seed)])
    n = min(max(1, round(fraction * len(cold))), len(cold) - 1)
    held = np.zeros(len(status), dtype=bool)
    held[rng.permutation(cold)[:n]] = True
    confirm = held[val[:, 1]]
    return val[~confirm], val[confirm]


@contextmanager
def ranked_for_selection(model: nn.Module, select_rank: str):
    """Rank cold items as epochs are selected (`--select-rank`): centred (clcrec/model.py
    cold_shift) or as served. Why centred: early in training, and on sparse data with weak content,
    cold rows point one way and every user gets one list; on ml-latest-small such a list held a
    popular validation item and won the epoch (validation 3.5x the content-only cosine, test 0.6x).
    Without the shared component only what is personal in the ranking can win."""
    with model.ranked_as("centred" if select_rank == "centred" else model.cold_vectors):
        yield


def select_score(val: dict, cfg: TrainConfig) -> float:
    key = f"recall@{cfg.select_k}"
    if cfg.select_mode == "mean":
        return (val["warm"][key] + val["cold"][key]) / 2
    return val[cfg.select_mode][key]
