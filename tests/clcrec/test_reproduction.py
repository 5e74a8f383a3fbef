"""Reproduction mode: a run on an `all-known` cache says and records that it used held-out data,
a cache built in one exclusion mode is refused by a run asking for the other, and the reference's
with-replacement hybrid draw replaces the fraction it should, the same on any rank split."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cache.build import build_generation
from cache.store import NegativeConfig
from clcrec.train.trainer import Trainer, train
from common.errors import UserError
from tests.support import NUM_NEG

REPO = Path(__file__).resolve().parents[2]


def config(dataset, cache, run_dir, **kw):
    from clcrec.config import TrainConfig

    base = dict(dataset=str(dataset), cache=str(cache), run_dir=str(run_dir), num_neg=NUM_NEG,
                batch_size=64, epochs=2, patience=10, l_r=0.01, log_every=5)
    return TrainConfig(**{**base, **kw})


def recording_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), record=True, width=200)


@pytest.fixture(scope="module")
def all_known_cache(tiny_dataset, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache") / "all-known"
    build_generation(tiny_dataset, cache, 0, NegativeConfig(num_neg=NUM_NEG, chunk_rows=700, exclusion="all-known"),
                     progress=False)
    return cache


def test_a_run_on_an_all_known_cache_prints_and_records_its_use_of_held_out_data(tiny_dataset, all_known_cache, tmp_path):
    console = recording_console()
    cfg = config(tiny_dataset, all_known_cache, tmp_path / "run", exclude="all-known", hybrid_draw="with-replacement")
    results = train(cfg, console=console)
    assert "these numbers use validation and test data" in console.export_text()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["uses_held_out_data"] is True and saved["negatives_exclude"] == "all-known"
    assert results["uses_held_out_data"] is True
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["uses_held_out_data"] is True and record["cache_config"]["exclusion"] == "all-known"
    assert record["config"]["exclude"] == "all-known" and record["config"]["hybrid_draw"] == "with-replacement"


def test_a_cache_built_in_one_mode_is_refused_by_a_run_asking_for_the_other(tiny_dataset, tiny_cache, all_known_cache, tmp_path):
    with pytest.raises(UserError, match="excluding 'train' items but the run asks for --exclude all-known"):
        Trainer(config(tiny_dataset, tiny_cache, tmp_path / "a", exclude="all-known"))
    with pytest.raises(UserError, match="excluding 'all-known' items but the run asks for --exclude train"):
        Trainer(config(tiny_dataset, all_known_cache, tmp_path / "b"))
    # at the command line: one line, exit 1, no run directory written
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "cli.py", "train", "--dataset", str(tiny_dataset), "--cache", str(tiny_cache),
                           "--num-neg", str(NUM_NEG), "--exclude", "all-known", "--run-dir", str(tmp_path / "c")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--exclude all-known" in proc.stderr and "pass --exclude train or another --cache" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_with_replacement_hybrid_draw_replaces_one_minus_exp_minus_num_sample_of_the_slots():
    """int(n * p) draws with replacement over n slots cover 1 - (1 - 1/n)^int(np) ~ 1 - exp(-p) of
    them; the run draws each slot at that rate (rank- and device-independent, like bernoulli)."""
    from clcrec.config import TrainConfig
    from clcrec.data.hybrid import epoch_key, hybrid_mask
    from clcrec.train.plan import hybrid_rate

    rows, width = 256, 129
    for num_sample in (0.5, 0.2):
        cfg = TrainConfig(num_sample=num_sample, hybrid_draw="with-replacement", batch_size=rows, num_neg=width - 1)
        rate = hybrid_rate(cfg)
        assert rate == pytest.approx(1 - math.exp(-num_sample), abs=2e-5)
        assert hybrid_rate(cfg.replace(hybrid_draw="bernoulli")) == num_sample
        mask = hybrid_mask(torch.tensor(epoch_key(3, 0)), torch.arange(20 * rows), width, rate)
        assert mask.float().mean().item() == pytest.approx(1 - math.exp(-num_sample), abs=0.003)
