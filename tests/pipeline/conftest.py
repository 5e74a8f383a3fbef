"""Small source files written by the tests themselves, and a helper that runs the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# (user, item) ratings shared by the small MovieLens fixtures: users 10, 20, 30 and movies 1..4
# (movie 5 exists in the movies file but nobody rated it; (10, 1) appears twice).
RATINGS = [(10, 1), (10, 2), (10, 3), (20, 1), (20, 4), (30, 2), (30, 3), (30, 4), (10, 1)]


@pytest.fixture
def ml100k_small(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{i}\t4\t88125094{k}\n" for k, (u, i) in enumerate(RATINGS)))
    flags = ["0"] * 19
    rows = []
    for mid, title, date, genres in [
        (1, "Toy Story (1995)", "01-Jan-1995", [3, 4, 5]),
        (2, "Café Society (1990)", "01-Jan-1990", [8]),
        (3, "unknown", "", [0]),
        (4, "Star Wars (1977)", "01-Jan-1977", [1, 2, 15]),
        (5, "Nobody Rated This (1980)", "01-Jan-1980", [8]),
    ]:
        f = list(flags)
        for g in genres:
            f[g] = "1"
        rows.append("|".join([str(mid), title, date, "", "http://x"] + f))
    (d / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    return d


@pytest.fixture
def ml1m_small(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::5::97830076{k}\n" for k, (u, i) in enumerate(RATINGS)))
    movies = [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "2::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi",
        "3::Café (2000)::Drama",
        "4::Untitled::Drama|Action",
        "5::Nobody Rated This (1980)::Drama",
    ]
    (d / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    return d


@pytest.fixture
def mlcsv_small(tmp_path: Path) -> Path:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},3.5,1{k}\n" for k, (u, i) in enumerate(RATINGS))
    )
    (d / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Heat (1995),Action|Crime|Thriller\n"
        '3,"Babylon 5",(no genres listed)\n'
        "4,Jumanji (1995),Adventure|Children|Fantasy\n"
        "5,Nobody Rated This (1980),Drama\n"
    )
    return d


def write_reference_layout(d: Path) -> dict:
    """A small Data/<name>/ layout: 4 users, 6 items (ids 4..9), items 8 (val) and 9 (test) cold,
    plus item 7 cold with no interactions. Returns the expected values."""
    d.mkdir(parents=True, exist_ok=True)
    nu = 4

    def obj(rows):
        a = np.empty(len(rows), dtype=object)
        a[:] = [list(r) for r in rows]
        return a

    train = np.array([[0, 4], [0, 5], [1, 4], [1, 6], [2, 5], [3, 6], [3, 4], [0, 4]], dtype=np.int64)
    np.save(d / "train.npy", train)
    val_warm, val_cold = [[0, 6], [2, 4]], [[1, 8], [3, 8]]
    test_warm, test_cold = [[3, 5]], [[0, 9], [2, 9]]
    np.save(d / "val_warm.npy", obj(val_warm), allow_pickle=True)
    np.save(d / "val_cold.npy", obj(val_cold), allow_pickle=True)
    np.save(d / "val_full.npy", obj([[0, 6], [1, 8], [2, 4], [3, 8]]), allow_pickle=True)
    np.save(d / "test_warm.npy", obj(test_warm), allow_pickle=True)
    np.save(d / "test_cold.npy", obj(test_cold), allow_pickle=True)
    np.save(d / "test_full.npy", obj([[0, 9], [2, 9], [3, 5]]), allow_pickle=True)
    np.save(d / "warm_set.npy", np.array([4, 5, 6]))
    np.save(d / "cold_set.npy", np.array([7, 8, 9]))
    np.save(d / "user_item_train_dict.npy", np.array({0: [4, 5]}, dtype=object), allow_pickle=True)
    feat_v = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    feat_t = np.ones((6, 2), dtype=np.float64)
    np.save(d / "feat_v.npy", feat_v)
    np.save(d / "feat_t.npy", feat_t)
    return {"num_user": nu, "num_item": 6, "feat_v": feat_v}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in the repo root; a wide console so rich does not wrap messages."""
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def ref_layout(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "Data" / "small"
    return d, write_reference_layout(d)
