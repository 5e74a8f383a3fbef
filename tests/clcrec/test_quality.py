"""Quality on synthetic data with planted structure: a short, seeded run must recover most of what
content can tell about cold items.

The config (800 users, 500 items, 20k interactions, num_neg 32, batch 128, l_r 0.01, 8 epochs,
per-epoch selection on raw weights) is trained by `measure`; the figures are its test Recall@20
over the planted oracle's (which sees the exact item factors, while any content model sees them
through noisy features), over the content-only cosine's and over random's, on cold items, and its
warm Recall@20 over the content-only cosine's on warm items (where the ID embeddings pay off).
The bounds (tests/trajectory_bounds.json) are the worst of several seeds and kernel targets less
a margin; `python scripts/derive_bounds.py --write` measures them again and rewrites this block:

Measured by scripts/derive_bounds.py:
    on AMD EPYC (2 cores, torch's native capability AVX2), torch 2.13.0+cpu, numba 0.68.1,
    2026-12-06, commit 5106e25; seeds [0, 1, 2]; targets ['aten=avx2',
    'aten=avx2+numba=generic', 'aten=default', 'aten=default+numba=generic']; aten=avx512: not
    available on this CPU (torch reports AVX2), not measured:
    cold / oracle: worst 0.3961 (seed 2, aten=avx2), bound 0.356 (worst - 10%)
      target                          seed 0    seed 1    seed 2
      aten=avx2                       0.5190    0.4980    0.3961
      aten=avx2+numba=generic         0.5175    0.5215    0.4388
      aten=default                    0.5109    0.5032    0.4363
      aten=default+numba=generic      0.5289    0.4621    0.3994
    cold / content: worst 0.8333 (seed 0, aten=default), bound 0.749 (worst - 10%)
      target                          seed 0    seed 1    seed 2
      aten=avx2                       0.8466    0.9060    0.9252
      aten=avx2+numba=generic         0.8440    0.9488    1.0249
      aten=default                    0.8333    0.9154    1.0190
      aten=default+numba=generic      0.8628    0.8407    0.9329
    cold / random: worst 1.9098 (seed 2, aten=avx2), bound 1.718 (worst - 10%)
      target                          seed 0    seed 1    seed 2
      aten=avx2                       2.6825    2.1414    1.9098
      aten=avx2+numba=generic         2.6745    2.2425    2.1156
      aten=default                    2.6405    2.1637    2.1034
      aten=default+numba=generic      2.7338    1.9870    1.9258
    warm / content warm: worst 1.5774 (seed 0, aten=default), bound 1.419 (worst - 10%)
      target                          seed 0    seed 1    seed 2
      aten=avx2                       1.5822    1.7737    1.6724
      aten=avx2+numba=generic         1.5871    1.7742    1.7109
      aten=default                    1.5774    1.7588    1.7455
      aten=default+numba=generic      1.5959    1.7052    1.6936
(end of measured block)
"""

import os

import pytest
from rich.console import Console

from cache.build import build_generation
from cache.store import NegativeConfig
from clcrec.config import TrainConfig
from clcrec.train.trainer import train
from pipeline.synthetic import SynthConfig, write_synthetic
from tests.trajectory import assert_within_bounds


def measure(tmp_path, seed: int = 0) -> dict[str, float]:
    """Train the config above on its synthetic data (data, negatives and training seeded by `seed`)."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_synthetic(data, SynthConfig(scale="default", num_users=800, num_items=500, interactions=20000, seed=seed))
    build_generation(data, cache, 0, NegativeConfig(num_neg=32, seed=seed), progress=False)
    cfg = TrainConfig(dataset=str(data), cache=str(cache), run_dir=str(tmp_path / "run"), num_neg=32,
                      batch_size=128, l_r=0.01, epochs=8, patience=8, seed=seed,
                      select_window=1, select_k=20, eval_ema=0)  # per-epoch selection, raw weights
    results = train(cfg, console=Console(file=open(os.devnull, "w")))
    ours = results["test"]["cold"]["recall@20"]
    base = {k: v["cold"]["recall@20"] for k, v in results["baselines"]["test"].items()}
    warm = results["test"]["warm"]["recall@20"] / results["baselines"]["test"]["content"]["warm"]["recall@20"]
    return {"cold / oracle": ours / base["oracle"], "cold / content": ours / base["content"],
            "cold / random": ours / base["random"], "warm / content warm": warm}


@pytest.mark.slow
@pytest.mark.trajectory
def test_cold_recall_approaches_the_planted_oracle(tmp_path):
    assert_within_bounds("quality", measure(tmp_path, seed=0))
