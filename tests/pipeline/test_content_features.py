"""Content features from metadata (pipeline/features.py): hashed titles, years, genres."""

import hashlib

import numpy as np
import polars as pl

from pipeline.features import (
    genre_multi_hot,
    hashed_title_words,
    scaled_year,
    title_year,
    token_bucket,
)


def test_hashed_titles_same_words_same_vector():
    titles = pl.Series(["Toy Story (1995)", "story TOY", "Toy Story 2 (1999)", "toy, story!", None, "Heat (1995)"])
    h = hashed_title_words(titles, 64)
    assert h.shape == (6, 64) and h.dtype == np.float32
    np.testing.assert_array_equal(h[0], h[1])  # year suffix, case, order and punctuation do not matter
    np.testing.assert_array_equal(h[0], h[3])
    assert not np.array_equal(h[0], h[2])  # "2" adds a word
    np.testing.assert_array_equal(h[4], 0.0)  # missing title -> zero row
    np.testing.assert_allclose(np.linalg.norm(h[[0, 2, 5]], axis=1), 1.0, rtol=1e-6)


def test_token_bucket_is_stable_blake2b():
    """The bucket is fixed by blake2b, so it is the same on every machine and every run."""
    expected = int.from_bytes(hashlib.blake2b(b"story", digest_size=8).digest(), "little") % 128
    assert token_bucket("story", 128) == expected
    # the exact vector of one title, written out: words heat -> its bucket, count 1, L2 norm 1
    v = hashed_title_words(pl.Series(["Heat (1995)"]), 128)[0]
    assert np.flatnonzero(v).tolist() == [token_bucket("heat", 128)] and v.max() == 1.0


def test_scaled_year_fills_missing_with_median():
    y, stats = scaled_year(pl.Series([1990, None, 2000, 1995]))
    np.testing.assert_allclose(y.ravel(), [0.0, 0.5, 1.0, 0.5])
    assert stats == {"missing": 1, "fill": "median", "fill_year": 1995.0, "min_year": 1990.0, "max_year": 2000.0}
    y, stats = scaled_year(pl.Series([None, None], dtype=pl.Int32))
    np.testing.assert_allclose(y.ravel(), [0.5, 0.5])


def test_genre_multi_hot_and_title_year():
    m, names = genre_multi_hot(pl.Series([["Drama", "Action"], [], ["Comedy"], None]))
    assert names == ["Action", "Comedy", "Drama"]
    np.testing.assert_array_equal(m, [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]])
    years = title_year(pl.Series(["A (1995)", "B (2007-)", "C", "D (1994-1998) "]))
    assert years.to_list() == [1995, 2007, None, 1994]
