"""What tag content does to cold recall, on a small MovieLens-style release built here.

Planted case: users like the movies of one of four hidden groups; titles, genres and years carry
no trace of the group, while user tags and the tag genome do. Cold movies (no interactions in
training) can then only be ranked through the tag modalities: the content-only baseline (cosine of
a user's history to each item) and a short CLCRec run both rank cold movies about twice as well
with them as without.

The CLCRec figure (`measure_clcrec`: cold test Recall@10 with the tag modalities over without, a
short run) depends on the training trajectory; its bound (tests/trajectory_bounds.json) is the
worst of several seeds and kernel targets less a margin; `python scripts/derive_bounds.py --write`
measures it again and rewrites this block:

Measured by scripts/derive_bounds.py:
    on AMD EPYC (2 cores, torch's native capability AVX512), torch 2.13.0+cpu, numba 0.68.1,
    2026-12-08, commit 8a70063 with uncommitted changes; seeds [0, 1, 2]; targets ['aten=avx512',
    'aten=avx512+numba=generic', 'aten=avx2', 'aten=avx2+numba=generic', 'aten=default',
    'aten=default+numba=generic']:
    with tags / without: worst 2.0990 (seed 0, aten=default+numba=generic), bound 1.889 (worst - 10%)
      target                          seed 0    seed 1    seed 2
      aten=avx512                     2.1327    3.9824    3.7089
      aten=avx512+numba=generic       2.1741    3.6281    3.6089
      aten=avx2                       2.1327    3.9824    3.7089
      aten=avx2+numba=generic         2.1741    3.6281    3.6089
      aten=default                    2.2312    4.1275    3.6725
      aten=default+numba=generic      2.0990    3.9212    3.5541
(end of measured block)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clcrec.config import TrainConfig
from clcrec.evaluation.baselines import baseline_results
from clcrec.evaluation.ranking import EvalConfig
from clcrec.train.flow import ensure_cache
from clcrec.train.trainer import train
from pipeline.dataset import load_dataset
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_movielens import ingest_movielens
from tests.trajectory import assert_within_bounds

GROUPS, MOVIES, USERS = 4, 160, 240
BASE = ["genre", "year", "title"]


def write_planted_release(d: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    group = rng.integers(0, GROUPS, MOVIES)
    genres = ["Drama", "Comedy", "Action", "Horror", "Romance"]
    (d / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m + 1},Movie {m} ({1950 + rng.integers(0, 60)}),{'|'.join(rng.choice(genres, 2, replace=False))}\n"
        for m in range(MOVIES)))
    ratings = []
    for u in range(USERS):
        likes = np.flatnonzero(group == u % GROUPS)
        ratings += [(u + 1, m + 1) for m in rng.choice(likes, 12, replace=False)]
        ratings += [(u + 1, m + 1) for m in rng.choice(MOVIES, 2, replace=False)]  # noise
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},4.0,1\n" for u, m in ratings))
    vocab = [[f"g{g}-tag{j}" for j in range(3)] for g in range(GROUPS)]
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + "".join(
        f"{rng.integers(1, USERS)},{m + 1},{t},1\n"
        for m in range(MOVIES) for t in rng.choice(vocab[group[m]], 2, replace=False)))
    rel = rng.uniform(0, 0.3, (MOVIES, 2 * GROUPS))
    rel[np.arange(MOVIES), 2 * group] += 0.6
    (d / "genome-scores.csv").write_text("movieId,tagId,relevance\n" + "".join(
        f"{m + 1},{t + 1},{rel[m, t]:.4f}\n" for m in range(MOVIES) for t in range(2 * GROUPS)))
    return d


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    return ingest_movielens(write_planted_release(root / "src"), root / "data", IngestConfig(tag_dim=32))


def cold_recall(results: dict) -> float:
    return results["cold"]["recall@10"]


def test_tag_modalities_carry_the_planted_signal_to_the_content_baseline(planted):
    cfg = EvalConfig(ks=(10,))
    score = {}
    for name, mods in {"base": BASE, "tags": BASE + ["tags"], "genome": BASE + ["genome"]}.items():
        score[name] = cold_recall(baseline_results(load_dataset(planted, modalities=mods), "test", cfg)["content"])
    rand = cold_recall(baseline_results(load_dataset(planted), "test", cfg)["random"])
    print(f"content-only cold test Recall@10: {score}, random {rand:.4f}")
    # measured (seed 0): base 0.43, tags 0.83, genome 0.89, random 0.28 (16 cold test movies)
    assert score["tags"] > 1.6 * score["base"] and score["genome"] > 1.6 * score["base"]
    assert min(score["tags"], score["genome"]) > 2.5 * rand


def measure_clcrec(planted: Path, tmp_path: Path, seed: int = 0) -> dict[str, float]:
    """Train on the planted release without and with the tag modalities (negatives and training
    seeded by `seed`) -> cold test Recall@10 with over without."""
    from rich.console import Console

    cache = ensure_cache(planted, tmp_path / "cache", 16, seed, Console(file=open(os.devnull, "w")))
    got = {}
    for name, mods in {"base": BASE, "with tags": BASE + ["tags", "genome"]}.items():
        cfg = TrainConfig(dataset=str(planted), cache=str(cache), run_dir=str(tmp_path / name), num_neg=16,
                          batch_size=128, epochs=8, patience=8, l_r=0.01, modalities=tuple(mods), ks=(10, 20), seed=seed)
        got[name] = cold_recall(train(cfg, console=Console(file=open(os.devnull, "w")))["test"])
    print(f"CLCRec cold test Recall@10: {got}")
    return {"with tags / without": got["with tags"] / max(got["base"], 1e-9)}


def measure(tmp_path: Path, seed: int = 0) -> dict[str, float]:
    """The whole measurement from scratch: the release written with `seed`, ingested, trained on."""
    planted = ingest_movielens(write_planted_release(tmp_path / "src", seed), tmp_path / "data", IngestConfig(tag_dim=32))
    return measure_clcrec(planted, tmp_path, seed)


@pytest.mark.trajectory
def test_clcrec_ranks_cold_movies_through_the_tag_modalities(planted, tmp_path):
    assert_within_bounds("tags", measure_clcrec(planted, tmp_path, seed=0))
