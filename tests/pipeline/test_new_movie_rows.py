"""Movies that arrive after training get the features the ingest would have given them
(pipeline.ingest_movielens.movie_rows_features): same genre columns, year scaling, title hash."""

import json

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import load_dataset
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_movielens import fit_year_scaling, movie_rows_features
from pipeline.split import SplitConfig

NO_COLD = SplitConfig(cold_fraction=0.0, val_fraction=0.0, test_fraction=0.0)


@pytest.mark.parametrize("fixture, movies", [("ml100k_small", "u.item"), ("ml1m_small", "movies.dat"),
                                             ("mlcsv_small", "movies.csv")])
def test_training_movies_rebuilt_as_new_rows_get_their_stored_features(fixture, movies, request, tmp_path):
    from pipeline.ingest_movielens import ingest_movielens

    src = request.getfixturevalue(fixture)
    ds = load_dataset(ingest_movielens(src, tmp_path / "ds", IngestConfig(split=NO_COLD, title_dim=16)))
    items, feats, notes = movie_rows_features(src / movies, ds)
    assert items["original_id"].to_list() == [1, 2, 3, 4, 5]  # movie 5 has no ratings: new here
    for name in ("genre", "year", "title"):  # rows 0..3 are the dataset's items 1..4
        np.testing.assert_array_equal(feats[name][:4], ds.features[name], err_msg=name)
    assert notes["unknown_genres"] == [] and notes["year_source"] == "recorded"


def test_new_movies_use_the_training_scaling_and_genre_columns(mlcsv_small, tmp_path):
    from pipeline.ingest_movielens import ingest_movielens

    ds = load_dataset(ingest_movielens(mlcsv_small, tmp_path / "ds", IngestConfig(split=NO_COLD)))
    new = tmp_path / "movies.csv"
    new.write_text("movieId,title,genres\n"
                   "90,Later (2030),Drama|Western\n"       # after the training range: clamped to 1
                   "91,Earlier (1950),Comedy\n"            # before it: clamped to 0
                   "92,No Year,Drama\n")                   # missing: the recorded fill year
    items, feats, notes = movie_rows_features(new, ds)
    rec = ds.meta["ingest"]["features"]["year"]  # years 1995 x3, 1980 (unrated) -> min 1980, max 1995
    assert (rec["min_year"], rec["max_year"], rec["fill_year"]) == (1980.0, 1995.0, 1995.0)
    np.testing.assert_array_equal(feats["year"].ravel(), [1.0, 0.0, 1.0])
    assert notes["clamped"] == 2 and notes["missing"] == 1 and notes["unknown_genres"] == ["Western"]
    names = ds.meta["ingest"]["features"]["genres"]
    assert feats["genre"].shape == (3, len(names))
    assert [names[j] for j in np.flatnonzero(feats["genre"][0])] == ["Drama"]


def test_older_dataset_without_year_statistics_recovers_them(ml100k_small, tmp_path):
    from pipeline.ingest_movielens import ingest_movielens

    path = ingest_movielens(ml100k_small, tmp_path / "ds", IngestConfig(split=NO_COLD))
    meta = json.loads((path / "meta.json").read_text())
    del meta["ingest"]["features"]["year"]  # as an ingest that did not record them ...
    for key in ("digest", "files"):  # ... which also predates meta digests and per-file hashes
        meta.pop(key, None)
    (path / "meta.json").write_text(json.dumps(meta))
    ds = load_dataset(path)
    fit = fit_year_scaling(ds)
    assert (fit["min_year"], fit["max_year"]) == (1977.0, 1995.0)  # exactly the ingest's range
    _, feats, notes = movie_rows_features(ml100k_small / "u.item", ds)
    assert notes["year_source"] == "fitted"
    np.testing.assert_allclose(feats["year"][[0, 1, 3]], ds.features["year"][[0, 1, 3]], atol=1e-6)


def test_movie_rows_need_a_movielens_dataset_and_a_known_file_name(ml100k_small, tmp_path):
    from pipeline.ingest_movielens import ingest_movielens
    from pipeline.synthetic import SynthConfig, write_synthetic

    ds = load_dataset(ingest_movielens(ml100k_small, tmp_path / "ds", IngestConfig(split=NO_COLD)))
    odd = tmp_path / "movies.txt"
    odd.write_text("1|x\n")
    with pytest.raises(InputError, match="u.item, movies.dat or movies.csv"):
        movie_rows_features(odd, ds)
    synth = load_dataset(write_synthetic(tmp_path / "syn", SynthConfig(scale="tiny")))
    with pytest.raises(InputError, match="was not ingested from MovieLens"):
        movie_rows_features(ml100k_small / "u.item", synth)
