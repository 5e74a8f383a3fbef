"""Ingest of the three MovieLens layouts, on small files the tests write, and on real ml-100k."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import WARM, load_dataset
from pipeline.features import hashed_title_words
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_movielens import detect_release, ingest_movielens
from pipeline.split import SplitConfig

# 9 rating rows, one duplicate; users 10/20/30 -> 0/1/2; movies 1..4 -> 0..3; movie 5 unrated.
EXPECTED_PAIRS = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 3), (2, 1), (2, 2), (2, 3)}
ML100K = Path("/work/shared/datasets/ml-100k")
NO_COLD = SplitConfig(cold_fraction=0.0, val_fraction=0.0, test_fraction=0.0)


def all_pairs(ds):
    return {tuple(p) for a in (ds.train, ds.val, ds.test) for p in np.asarray(a).tolist()}


def check_common(ds):
    assert ds.num_users == 3 and ds.num_items == 4
    assert ds.user_ids()["original_id"].to_list() == [10, 20, 30]
    assert ds.item_ids()["original_id"].to_list() == [1, 2, 3, 4]
    assert all_pairs(ds) == EXPECTED_PAIRS
    ing = ds.meta["ingest"]
    assert (ing["rows_read"], ing["duplicates_dropped"], ing["interactions"]) == (9, 1, 8)
    assert ing["items_without_interactions_dropped"] == 1 and ing["items_in_source"] == 5
    assert {m["name"] for m in ds.meta["modalities"]} == {"genre", "year", "title"}


def test_ml100k_layout(ml100k_small, tmp_path):
    ds = load_dataset(ingest_movielens(ml100k_small, tmp_path / "out", IngestConfig(split=NO_COLD)))
    check_common(ds)
    assert ds.meta["source"]["release"] == "ml-100k"
    assert ds.item_ids()["title"].to_list() == ["Toy Story (1995)", "Café Society (1990)", "unknown", "Star Wars (1977)"]
    assert ds.features["genre"].shape == (4, 19)
    np.testing.assert_array_equal(np.flatnonzero(ds.features["genre"][0]), [3, 4, 5])
    np.testing.assert_array_equal(np.flatnonzero(ds.features["genre"][3]), [1, 2, 15])
    # years from the release date: 1995, 1990, missing -> median of the 4 known years of all 5 movies
    # (1977, 1980, 1990, 1995 -> 1985), 1977; scaled by min 1977 and max 1995 (movie 5 is dropped later)
    np.testing.assert_allclose(ds.features["year"].ravel(), np.array([18, 13, 8, 0]) / 18, rtol=1e-6)
    assert ds.meta["ingest"]["features"]["year"]["missing"] == 1
    np.testing.assert_array_equal(
        ds.features["title"], hashed_title_words(ds.item_ids()["title"], 64)
    )


def test_ml1m_layout(ml1m_small, tmp_path):
    ds = load_dataset(ingest_movielens(ml1m_small, tmp_path / "out", IngestConfig(split=NO_COLD, title_dim=32)))
    check_common(ds)
    assert ds.meta["source"]["release"] == "ml-1m/ml-10m"
    assert ds.item_ids()["title"].to_list()[:3] == [
        "Toy Story (1995)", "Star Wars: Episode IV - A New Hope (1977)", "Café (2000)",
    ]
    names = ds.meta["ingest"]["features"]["genres"]
    assert names == ["Action", "Animation", "Children's", "Comedy", "Drama", "Sci-Fi"]
    np.testing.assert_array_equal(ds.features["genre"][3], [1, 0, 0, 0, 1, 0])  # Drama|Action
    # years 1995, 1977, 2000, missing -> median(1995, 1977, 2000, 1980) = 1987.5; scale 1977..2000
    np.testing.assert_allclose(ds.features["year"].ravel(), (np.array([1995, 1977, 2000, 1987.5]) - 1977) / 23, rtol=1e-6)
    assert ds.features["title"].shape == (4, 32)


def test_csv_layout(mlcsv_small, tmp_path):
    ds = load_dataset(ingest_movielens(mlcsv_small, tmp_path / "out", IngestConfig(split=NO_COLD)))
    check_common(ds)
    assert ds.item_ids()["title"][0] == "American President, The (1995)"  # quoted comma kept
    assert "(no genres listed)" in ds.meta["ingest"]["features"]["genres"]


def test_detect_release_refuses_other_dirs(tmp_path):
    from common.errors import InputError

    (tmp_path / "ratings.csv").write_text("userId,movieId\n1,1\n")
    with pytest.raises(InputError, match=r"is not a MovieLens release: expected one of the file pairs u.data \+ u.item"):
        detect_release(tmp_path)


def test_real_ml100k(tmp_path):
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (licence forbids bundling it)")
    ds = load_dataset(ingest_movielens(ML100K, tmp_path / "ml"))
    ing = ds.meta["ingest"]
    assert (ing["users"], ing["items"], ing["interactions"], ing["duplicates_dropped"]) == (943, 1682, 100_000, 0)
    assert ds.num_users == 943 and ds.num_items == 1682
    assert len(ds.train) + len(ds.val) + len(ds.test) == 100_000
    assert (ds.item_status != WARM).sum() == round(0.2 * 1682)
    assert ds.item_ids().filter(ds.item_ids()["original_id"] == 50)["title"][0] == "Star Wars (1977)"
    assert ds.features["genre"].shape == (1682, 19) and ds.features["genre"].sum(1).min() >= 1


def test_bad_movielens_inputs(ml1m_small, mlcsv_small, tmp_path):
    from common.errors import InputError

    with open(ml1m_small / "ratings.dat", "a") as f:
        f.write("10::99::5::978300760\n")  # movie 99 is not in movies.dat
    with pytest.raises(InputError, match=r"1 item\(s\) in the interactions have no item/feature row, e.g. item 99"):
        ingest_movielens(ml1m_small, tmp_path / "a")
    (ml1m_small / "ratings.dat").write_text("")
    with pytest.raises(InputError, match=r"ratings file .*ratings.dat is empty"):
        ingest_movielens(ml1m_small, tmp_path / "b")
    (mlcsv_small / "movies.csv").write_text("movieId,name\n1,x\n")
    with pytest.raises(InputError, match=r"movies.csv lacks the column\(s\) title, genres; its header has movieId, name"):
        ingest_movielens(mlcsv_small, tmp_path / "c")
    (mlcsv_small / "ratings.csv").write_text("userId,movieId\n1,2\nx,3\n")
    with pytest.raises(InputError, match=r"ratings.csv user ids must hold integer ids; found 'x'"):
        ingest_movielens(mlcsv_small, tmp_path / "d")
    assert not list(tmp_path.glob("[abcd]"))
