"""Tag content of MovieLens releases: the tag genome (genome-scores.csv) and user-applied tags
(tags.csv / tags.dat) become the modalities `genome` and `tags`, with exact values on tiny files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from common.errors import InputError
from pipeline.dataset import load_dataset
from pipeline.features import genome_matrix, hashed_tags, token_bucket
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_movielens import ingest_movielens
from pipeline.split import SplitConfig

NO_COLD = SplitConfig(cold_fraction=0.0, val_fraction=0.0, test_fraction=0.0)


def test_genome_matrix_places_each_relevance_and_zeros_uncovered_items():
    scores = pl.DataFrame({"movieId": [4, 4, 1, 1, 9], "tagId": [20, 7, 7, 20, 7],
                           "relevance": [0.25, 0.5, 0.75, 1.0, 0.1]})
    m, meta = genome_matrix(scores, pl.Series([1, 2, 4]))  # movie 9 is not in the catalogue
    np.testing.assert_array_equal(m, np.array([[0.75, 1.0], [0, 0], [0.5, 0.25]], np.float32))
    assert meta == {"tags": 2, "items_covered": 2}


def test_hashed_tags_count_normalised_tags_per_item_and_l2_normalise_rows():
    tags = pl.DataFrame({"movieId": [1, 1, 1, 2, 3], "tag": ["Dark  Comedy", "dark comedy", "space", " ", "x"]})
    m, meta = hashed_tags(tags, pl.Series([1, 2]), dim=1024)
    expect = np.zeros(1024)
    expect[token_bucket("dark comedy", 1024)] += 2
    expect[token_bucket("space", 1024)] += 1
    np.testing.assert_allclose(m[0], expect / np.linalg.norm(expect), rtol=1e-6)
    assert not m[1].any()  # a blank tag is no tag; movie 3 is not in the catalogue
    assert meta == {"tags": 2, "items_tagged": 1, "dim": 1024}


def write_csv_release(d: Path, *, genome=True, tags="csv") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},4.0,1\n" for u, i in [(1, 10), (1, 20), (2, 20), (2, 30), (3, 10), (3, 30)]))
    (d / "movies.csv").write_text('movieId,title,genres\n10,A (1990),Drama\n20,"B, The (1995)",Comedy\n30,C (2000),Drama\n')
    if genome:
        (d / "genome-scores.csv").write_text("movieId,tagId,relevance\n10,1,0.9\n10,2,0.1\n30,1,0.2\n30,2,0.8\n")
    if tags == "csv":
        (d / "tags.csv").write_text('userId,movieId,tag,timestamp\n1,20,"funny, very",5\n2,20," Funny,  Very",6\n')
    elif tags == "dat":
        (d / "tags.dat").write_text("1::20::funny, very::5\n2::20::a::b tag::6\n")
    return d


def test_ingest_adds_genome_and_tags_modalities_when_the_release_has_them(tmp_path):
    ds = load_dataset(ingest_movielens(write_csv_release(tmp_path / "ml"), tmp_path / "out", IngestConfig(split=NO_COLD, tag_dim=16)))
    assert [m["name"] for m in ds.meta["modalities"]] == ["genre", "year", "title", "genome", "tags"]
    np.testing.assert_array_equal(ds.features["genome"], np.array([[0.9, 0.1], [0, 0], [0.2, 0.8]], np.float32))
    row = np.zeros(16, np.float32)
    row[token_bucket("funny, very", 16)] = 1.0
    np.testing.assert_array_equal(ds.features["tags"], np.stack([np.zeros(16), row, np.zeros(16)]).astype(np.float32))
    feats = ds.meta["ingest"]["features"]
    assert feats["genome"]["items_covered"] == 2 and feats["tags"]["file"] == "tags.csv"
    # without the files: the three base modalities only
    plain = load_dataset(ingest_movielens(write_csv_release(tmp_path / "plain", genome=False, tags=None), tmp_path / "o2",
                                          IngestConfig(split=NO_COLD)))
    assert [m["name"] for m in plain.meta["modalities"]] == ["genre", "year", "title"]


def test_ml10m_tags_dat_is_parsed_including_tags_with_colons(tmp_path):
    src = write_csv_release(tmp_path / "ml", genome=False, tags="dat")
    ds = load_dataset(ingest_movielens(src, tmp_path / "out", IngestConfig(split=NO_COLD, tag_dim=64)))
    row = np.zeros(64)
    row[token_bucket("funny, very", 64)] += 1
    row[token_bucket("a::b tag", 64)] += 1
    np.testing.assert_allclose(ds.features["tags"][1], row / np.linalg.norm(row), rtol=1e-6)


def test_a_bad_genome_file_is_refused_naming_it(tmp_path):
    src = write_csv_release(tmp_path / "ml")
    (src / "genome-scores.csv").write_text("movieId,tag,relevance\n10,1,0.5\n")
    with pytest.raises(InputError, match="genome-scores.csv lacks the columns movieId, tagId, relevance"):
        ingest_movielens(src, tmp_path / "out", IngestConfig(split=NO_COLD))
    (src / "genome-scores.csv").write_text("movieId,tagId,relevance\n10,1,\n")
    with pytest.raises(InputError, match="missing or non-finite value"):
        ingest_movielens(src, tmp_path / "out", IngestConfig(split=NO_COLD))
    assert not (tmp_path / "out").exists()
