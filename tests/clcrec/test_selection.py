"""Robust selection: a smoothed validation curve, and an EMA of epoch-end weights evaluated and kept.

The rule (clcrec/train/selection.py): epoch e's selection score is the mean of the validation scores of
epochs e-W+1..e (epochs before 0 count as 0); the best is the first epoch with the highest smoothed score; training stops
after `patience` epochs without a new best. Tested on a recorded curve with a planted one-epoch
spike, and on real short runs whose logged curves must give the epoch the trainer picked."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from clcrec.rundir import load_checkpoint
from clcrec.train.selection import (
    EpochAverage,
    first_selectable,
    select_epoch,
    smoothed_score,
)
from clcrec.train.trainer import Trainer, train
from tests.support import NUM_NEG

# A validation curve that climbs to a plateau, with a one-epoch spike at epoch 3.
SPIKED = [0.10, 0.20, 0.30, 0.60, 0.30, 0.38, 0.42, 0.45, 0.46, 0.47, 0.45, 0.44]


def test_raw_selection_takes_the_spike_and_a_window_of_three_takes_the_plateau():
    assert select_epoch(SPIKED, window=1, patience=20) == (3, 12)
    # window 3: the spike's windows score (0.2+0.3+0.6)/3=0.367, (0.3+0.6+0.3)/3=0.4, (0.6+0.3+0.38)/3=0.427;
    # the plateau's best window is epochs 7..9 = (0.45+0.46+0.47)/3 = 0.46
    assert select_epoch(SPIKED, window=3, patience=20) == (9, 12)
    assert smoothed_score(SPIKED[:10], 3) == pytest.approx(0.46)
    # with patience 3 the raw rule stops three epochs after the spike; the smoothed one keeps going
    # (its curve dips for two epochs as the spike leaves the window: 0.427 -> 0.367, 0.417 -> 0.443)
    assert select_epoch(SPIKED, window=1, patience=3) == (3, 7)
    assert select_epoch(SPIKED, window=3, patience=3) == (9, 12)
    # an average is selectable once it has seen its memory: an early peak cannot end the run
    assert first_selectable(0.9, 40) == 9 and first_selectable(0.9, 4) == 3 and first_selectable(0, 40) == 0
    assert select_epoch([0.9, 0.1, 0.1, 0.5, 0.5, 0.6, 0.4], 1, 2, first=3) == (5, 7)
    # epochs before the first count as 0, so an early spike is damped too; ties keep the earlier epoch
    assert smoothed_score([0.2], 5) == pytest.approx(0.04)
    assert select_epoch([0.9, 0.1, 0.1, 0.5, 0.5, 0.5], 3, 5) == (5, 6)
    assert select_epoch([0.9, 0.1, 0.1, 0.5, 0.5, 0.5], 1, 5) == (0, 6)
    assert select_epoch([0.3, 0.3, 0.1], 1, 5) == (0, 3)


def test_epoch_average_of_the_ablation_is_the_exponential_moving_average_and_swaps_back():
    model = torch.nn.Linear(2, 1)
    avg = EpochAverage(model, 0.5)
    for value, expect in ((1.0, 1.0), (3.0, 2.0), (5.0, 3.5)):
        with torch.no_grad():
            model.weight.fill_(value)
        avg.update(model)
        assert torch.allclose(avg.shadow["weight"], torch.full((1, 2), expect))
    with avg.swapped_in(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 3.5))
    assert torch.allclose(model.weight, torch.full((1, 2), 5.0))  # raw weights restored
    with pytest.raises(ValueError, match="decay must be in"):
        EpochAverage(model, 1.0)


def config(dataset, cache, run_dir, **kw):
    from clcrec.config import TrainConfig

    base = dict(dataset=str(dataset), cache=str(cache), run_dir=str(run_dir), num_neg=NUM_NEG,
                batch_size=64, epochs=6, patience=10, l_r=0.01, log_every=5, seed=1, select_k=20, eval_ema=0)
    return TrainConfig(**{**base, **kw})


def quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_real_run_selects_by_the_smoothed_rule(tiny_dataset, tiny_cache, tmp_path):
    # results.json ranks as served; without a content prior that is how the epochs were logged
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", select_window=3, content_prior="off")
    results = train(cfg, console=quiet())
    metrics = read_metrics(tmp_path / "run")
    # epochs are chosen on the choosing share of validation; the held-back items are only logged
    scores = [m["val_choose"]["cold"]["recall@20"] for m in metrics]
    assert [m["select_score"] for m in metrics] == scores
    assert all(0 <= m["val_confirm"]["recall@20"] <= 1 for m in metrics)
    assert results["best_epoch"] == select_epoch(scores, 3, 10)[0]
    assert metrics[-1]["select_smoothed"] == pytest.approx(sum(scores[-3:]) / 3)
    assert metrics[0]["select_smoothed"] == pytest.approx(scores[0] / 3)
    # best.pt holds the selected epoch's weights: evaluating them gives that epoch's logged score
    best = metrics[results["best_epoch"]]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == results["best_epoch"]
    assert results["val"]["cold"]["recall@20"] == pytest.approx(best["val"]["cold"]["recall@20"])


def test_a_smoothed_run_resumed_midway_selects_like_an_uninterrupted_one(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "whole", epochs=4, select_window=3)
    whole = train(cfg, console=quiet())
    part = cfg.replace(run_dir=str(tmp_path / "part"), epochs=2)
    train(part, console=quiet())
    trainer = Trainer(part.replace(epochs=4), resume=True, console=quiet())
    resumed = trainer.fit()
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["test"]["cold"]["recall@20"] == pytest.approx(whole["test"]["cold"]["recall@20"], abs=1e-6)
    a = [m["val"]["cold"]["recall@20"] for m in read_metrics(tmp_path / "whole")]
    b = [m["val"]["cold"]["recall@20"] for m in read_metrics(tmp_path / "part")]
    assert a == pytest.approx(b, abs=1e-6)


def test_the_trainer_evaluates_and_keeps_an_ema_of_epoch_end_weights(tiny_dataset, tiny_cache, tmp_path):
    """Averaging never touches training (the raw weights follow the same path as without it); the
    average is an exact EMA of the epoch-end weights; best.pt holds the averaged weights that were
    evaluated, last.pt the raw ones and the average, and a resumed run ends like a whole one."""
    raw = {}  # raw epoch-end weights of a run without averaging: its last.pt as each epoch ends
    last_pt = tmp_path / "raw" / "checkpoints" / "last.pt"
    train(config(tiny_dataset, tiny_cache, tmp_path / "raw", epochs=3), console=quiet(),
          on_epoch=lambda epoch, record, best: raw.__setitem__(epoch, load_checkpoint(last_pt)["model"]))
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "ema", epochs=3, eval_ema=0.5, select_k=10, content_prior="off")
    results = train(cfg, console=quiet())
    last = load_checkpoint(tmp_path / "ema" / "checkpoints" / "last.pt")
    for k, v in raw[2].items():
        assert torch.equal(last["model"][k], v)  # training unchanged by averaging
    ema = {k: 0.25 * raw[0][k] + 0.25 * raw[1][k] + 0.5 * raw[2][k] for k in raw[2] if raw[2][k].is_floating_point()}
    for k, v in ema.items():
        torch.testing.assert_close(last["ema"]["shadow"][k], v)
    best = load_checkpoint(tmp_path / "ema" / "checkpoints" / "best.pt")
    assert best["epoch"] == results["best_epoch"]
    metrics = read_metrics(tmp_path / "ema")
    assert results["val"]["cold"]["recall@10"] == pytest.approx(metrics[results["best_epoch"]]["val"]["cold"]["recall@10"])
    if results["best_epoch"] == 2:
        for k, v in ema.items():
            torch.testing.assert_close(best["model"][k], v)
    # killed after epoch 1 and resumed: the average carries over
    part = cfg.replace(run_dir=str(tmp_path / "part"), epochs=2)
    train(part, console=quiet())
    resumed = Trainer(part.replace(epochs=3), resume=True, console=quiet()).fit()
    assert resumed["best_epoch"] == results["best_epoch"]
    again = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["ema"]["shadow"]
    for k, v in ema.items():
        torch.testing.assert_close(again[k], v)


def test_split_validation_holds_back_a_seeded_share_of_the_cold_items():
    from clcrec.train.selection import split_validation

    status = np.array([0, 0, 1, 1, 1, 1, 2, 2], dtype=np.int8)  # items 2-5 validation-cold, 6-7 test-cold
    val = np.array([[0, 0], [0, 2], [1, 2], [1, 3], [2, 4], [2, 5], [3, 5], [3, 1]])
    choose, confirm = split_validation(status, val, 0.5, seed=0)
    held = set(confirm[:, 1].tolist())
    assert len(held) == 2 and held <= {2, 3, 4, 5}  # half of the 4 validation-cold items
    assert not held & set(choose[:, 1].tolist())  # an item chooses or confirms, never both
    both = np.concatenate([choose, confirm])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, val.tolist()))  # a partition of the pairs
    assert [0, 0] in choose.tolist() and [3, 1] in choose.tolist()  # warm pairs always choose
    again = split_validation(status, val, 0.5, seed=0)
    assert np.array_equal(again[1], confirm)  # seeded
    assert any(set(split_validation(status, val, 0.5, seed=s)[1][:, 1].tolist()) != held for s in range(1, 10))
    # off, or too few cold items to keep one on each side: nothing held back
    assert len(split_validation(status, val, 0.0, seed=0)[1]) == 0
    assert len(split_validation(status, val[:2], 0.5, seed=0)[1]) == 0
    # at least one held back, at least one left to choose on
    assert len(set(split_validation(status, val, 0.01, seed=0)[1][:, 1].tolist())) == 1
    assert len(set(split_validation(status, val, 0.9, seed=0)[1][:, 1].tolist())) == 3
