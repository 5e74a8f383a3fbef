"""The item-content featurizer (pipeline/content/) against slow obvious references and known answers."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import polars as pl
import pytest

from common.errors import InputError
from pipeline.content import text as txt
from pipeline.content.featurizer import ContentSpec, fit_featurizer, load_featurizer

DOCS = [
    "The Space War, and the war after it",
    "a space opera: robots in SPACE",
    "Love story by the river",
    "River of love; a dark story",
    "dark night, dark city",
    "City of robots at night",
    "Opera night in the city",
    "War and love",
]


def items(docs=DOCS, **cols) -> pl.DataFrame:
    return pl.DataFrame({"original_id": np.arange(100, 100 + len(docs), dtype=np.int64), "t": docs, **cols})


def reference_vectors(docs, vocab, basis) -> np.ndarray:
    """Pure python: lowercase + the regex, smooth idf, 1 + ln(tf), L2 norm, then the stored basis."""
    index = {w: j for j, w in enumerate(vocab)}
    toks = [[w for w in re.findall(r"(?u)\b\w\w+\b", d.lower()) if w in index] for d in docs]
    n = len(docs)
    df = Counter(w for t in toks for w in set(t))
    idf = {w: math.log((1 + n) / (1 + df[w])) + 1 for w in vocab}
    out = []
    for t in toks:
        w = {word: (1 + math.log(c)) * idf[word] for word, c in Counter(t).items()}
        norm = math.sqrt(sum(v * v for v in w.values()))
        out.append([sum(v / norm * basis[index[word], k] for word, v in w.items()) for k in range(basis.shape[1])])
    return np.array(out)


def test_text_matches_the_slow_reference_and_sklearn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    fz = fit_featurizer(ContentSpec(text=("t",), text_dim=4, min_word_count=1), items(), None, "t")
    feats, notes = fz.transform(items())
    vocab = fz.state["modalities"]["text"]["vocabulary"]
    basis = fz.arrays["text_basis.npy"]
    assert basis.shape == (len(vocab), 4) and notes["unknown_words"] == 0
    assert vocab == sorted(set(re.findall(r"\w\w+", " ".join(DOCS).lower())))
    np.testing.assert_allclose(feats["text"], reference_vectors(DOCS, vocab, basis), rtol=1e-5, atol=1e-6)
    sk = TfidfVectorizer(sublinear_tf=True, vocabulary=vocab).fit(DOCS)  # the same tokenizer by default
    np.testing.assert_allclose(fz.arrays["text_idf.npy"], sk.idf_, rtol=1e-12)
    np.testing.assert_allclose(feats["text"], sk.transform(DOCS) @ basis, rtol=1e-5, atol=1e-6)


def test_rows_do_not_depend_on_the_batch_and_survive_a_save(tmp_path):
    spec = ContentSpec(text=("t",), categories=(("g", "|"),), numeric=("y",), text_dim=3, min_word_count=1)
    df = items(g=["a|b", "b", "a", "c", "b|c", "a", "zz", None],
               y=["1990", "", "2000", "1995", "1980", "2010", "1999", "2001"])
    fz = fit_featurizer(spec, df, None, "t")
    whole, _ = fz.transform(df)
    fz.save(tmp_path / "fz")
    back = load_featurizer(tmp_path / "fz", fz.digest())
    for r in (0, 5, 7):
        one, _ = back.transform(df.slice(r, 1))
        for m in whole:
            assert np.array_equal(one[m][0], whole[m][r]), m  # bit for bit
    with pytest.raises(InputError, match="digest differs"):
        load_featurizer(tmp_path / "fz", "0" * 64)


def test_categories_and_numeric_known_answer():
    spec = ContentSpec(categories=(("g", "|"),), numeric=("y",))
    df = items(DOCS[:4], g=["a|b|rare|rare", " b ", "a", None], y=["1", "", "3", "5"])
    fz = fit_featurizer(spec, df, None, "t")
    assert fz.state["modalities"]["categories"]["columns"][0]["values"] == ["a", "b"]  # "rare" on 1 item (twice): dropped
    feats, notes = fz.transform(df)
    np.testing.assert_array_equal(feats["categories"], [[1, 1], [0, 1], [1, 0], [0, 0]])
    assert notes["unknown_categories"] == {"g": 1}
    z = (np.array([1, 3, 5]) - 3) / np.std([1, 3, 5])
    np.testing.assert_allclose(feats["numeric"], [[z[0], 0, 1], [0, 1, 1], [z[1], 0, 1], [z[2], 0, 1]], rtol=1e-6)
    with pytest.raises(InputError, match=r"column 'y' \(--numeric\) holds 'x' at row 2"):
        fz.transform(df.with_columns(y=pl.Series(["1", "x", "3", "5"])), where="items file n.csv")


def test_empty_and_wordless_text_name_the_row():
    with pytest.raises(InputError, match=r"items file a.csv column 't' is empty at row 3 \(item 102\)"):
        fit_featurizer(ContentSpec(text=("t",)), items(["ab bc", "bc cd", "  ", "cd de"]), None, "items file a.csv")
    fz = fit_featurizer(ContentSpec(text=("t",), min_word_count=1), items(["I.Q.", "bc cd", "cd de"]), None, "x")
    feats, notes = fz.transform(items(["I.Q.", "bc cd", "cd de"]))  # no word of two letters: a zero vector
    assert notes["texts_without_words"] == 1 and not feats["text"][0].any() and feats["text"][1].any()
    with pytest.raises(InputError, match="--text-dim must be an integer >= 1"):
        ContentSpec(text=("t",), text_dim=0)


def test_ldac_parsing_and_the_same_path_as_text(tmp_path):
    (tmp_path / "m.dat").write_text("2 0:3 2:1\n1 1:2\n\n".replace("\n\n", "\n"))
    bag = txt.read_ldac(tmp_path / "m.dat", 3)
    assert bag.indptr.tolist() == [0, 2, 3] and bag.indices.tolist() == [0, 2, 1] and bag.counts.tolist() == [3, 1, 2]
    for line, msg in [("3 0:1 1:1", "line 1 announces 3 word"), ("1 7:1", "7 is not a word id in 0..2"),
                      ("1 0-1", "line 1 is not LDA-C")]:
        (tmp_path / "bad.dat").write_text(line + "\n")
        with pytest.raises(InputError, match=msg):
            txt.read_ldac(tmp_path / "bad.dat", 3)
    # the corpus as LDA-C counts over its own sorted vocabulary gives the text path's vectors
    spec = ContentSpec(text=("t",), text_dim=4, min_word_count=1)
    fz = fit_featurizer(spec, items(), None, "t")
    vocab = fz.state["modalities"]["text"]["vocabulary"]
    (tmp_path / "vocab.dat").write_text("\n".join(vocab) + "\n")
    lines = []
    for d in DOCS:
        c = Counter(vocab.index(w) for w in txt.tokenize(d))
        lines.append(f"{len(c)} " + " ".join(f"{j}:{c[j]}" for j in sorted(c)))
    (tmp_path / "mult.dat").write_text("\n".join(lines) + "\n")
    bow = txt.read_ldac(tmp_path / "mult.dat", len(vocab))
    bspec = ContentSpec(bow=tmp_path / "mult.dat", bow_vocab=tmp_path / "vocab.dat", text_dim=4, min_word_count=1)
    fb = fit_featurizer(bspec, items().select("original_id"), bow, "b")
    got, _ = fb.transform(items().select("original_id"), bow)
    want, _ = fz.transform(items())
    np.testing.assert_allclose(got["bow"], want["text"], rtol=1e-6, atol=1e-7)
