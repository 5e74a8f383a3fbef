"""Text and bags of words -> dense vectors: tf-idf with sublinear tf, then a truncated SVD basis.

    python cli.py ingest table ratings.csv data/mine --items items.csv --text title --text plot
    python cli.py ingest table users.csv data/ctr --bow mult.dat --bow-vocab vocabulary.dat

Reads strings (or LDA-C `mult.dat` lines: `n id:count id:count ...`, ids 0-based into a vocabulary
file of one word per line); writes nothing itself (featurizer.py stores what `fit_tfidf` returns).

The tokenizer is fixed and recorded in the featurizer's JSON: lowercase the text, then every match
of TOKEN_PATTERN (runs of two or more word characters, Unicode-aware: scikit-learn's default).
Fitting (`fit_tfidf`) uses all items' content and nothing else: document frequencies give the smooth
idf, ln((1 + n) / (1 + df)) + 1, and scikit-learn's TruncatedSVD (randomized, fixed random_state)
gives the basis. The transform (`project`) is our own numba kernel over the stored arrays only:
for each row, w_j = (1 + ln count_j) * idf_j over its words in ascending id order, w /= ||w||_2,
out = w @ basis, summed in that order in float64 and cast to float32. Ingest and embed-items call
the same kernel on the same arrays, so an item gets the same vector bit for bit in both.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numba
import numpy as np

from common.errors import InputError

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)


def tokenize(text: str) -> list[str]:
    """The words of `text`: lowercased, then every TOKEN_PATTERN match, in order."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Bag:
    """Word counts of n documents in CSR form; each row's ids ascending and unique."""

    indptr: np.ndarray  # (n+1,) int64
    indices: np.ndarray  # (nnz,) int64 word ids
    counts: np.ndarray  # (nnz,) float64, > 0
    source: str = ""  # where the lines came from, for messages ("--bow file PATH"; read_ldac sets it)

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1

    def check_rows(self, n: int, where: str) -> None:
        """InputError unless the bag has one line per row of the table `where` (n rows)."""
        if self.rows != n:
            raise InputError(f"{self.source or 'the bag-of-words file'} has {self.rows} line(s) but {where} has {n} "
                             "row(s); line i must hold the words of row i")


def bag_from_counters(counters: list[dict[int, float]]) -> Bag:
    """A Bag from one {word id: count} per document (ids sorted here)."""
    indptr = np.zeros(len(counters) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(c) for c in counters])
    indices = np.empty(indptr[-1], dtype=np.int64)
    counts = np.empty(indptr[-1], dtype=np.float64)
    for r, c in enumerate(counters):
        ids = sorted(c)
        indices[indptr[r]:indptr[r + 1]] = ids
        counts[indptr[r]:indptr[r + 1]] = [c[i] for i in ids]
    return Bag(indptr, indices, counts)


def words_bag(docs: list[str], vocab: dict[str, int]) -> tuple[Bag, int]:
    """(Bag over `vocab`, number of word occurrences not in it) of tokenized documents."""
    counters, unknown = [], 0
    for doc in docs:
        c: Counter = Counter()
        for w in tokenize(doc):
            j = vocab.get(w)
            if j is None:
                unknown += 1
            else:
                c[j] += 1
        counters.append(c)
    return bag_from_counters(counters), unknown


def fit_vocabulary(docs: list[str], min_count: int) -> list[str]:
    """Words found in at least `min_count` documents, sorted (their position is their id)."""
    df: Counter = Counter()
    for doc in docs:
        df.update(set(tokenize(doc)))
    return sorted(w for w, n in df.items() if n >= min_count)


def read_vocabulary(path: Path) -> list[str]:
    """One word per line (LDA-C's vocabulary.dat); line i is word id i."""
    try:
        words = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"vocabulary file {path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    if not words:
        raise InputError(f"vocabulary file {path} is empty")
    return [w.strip() for w in words]


def read_ldac(path: Path, num_words: int) -> Bag:
    """The LDA-C bag-of-words file `path` (line i: `n id:count ...` of document i) as a Bag whose
    ids index the vocabulary of `num_words` words. InputError names the first bad line."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"bag-of-words file {path} is not UTF-8 text (byte {e.start})") from None
    counters = []
    for no, line in enumerate(lines, 1):
        parts = line.split()
        try:
            n = int(parts[0])
            pairs = [p.split(":") for p in parts[1:]]
            ids = [int(a) for a, _ in pairs]
            cnt = [float(b) for _, b in pairs]
        except (ValueError, IndexError):
            raise InputError(f"bag-of-words file {path} line {no} is not LDA-C `n id:count ...`: {line[:60]!r}") from None
        if n != len(ids):
            raise InputError(f"bag-of-words file {path} line {no} announces {n} word(s) but lists {len(ids)}")
        bad = [i for i in ids if not 0 <= i < num_words] + [c for c in cnt if not c > 0 or c != c]
        if bad:
            raise InputError(f"bag-of-words file {path} line {no}: {bad[0]} is not a word id in 0..{num_words - 1} "
                             "with a positive count; ids index the vocabulary file, 0-based")
        c: Counter = Counter()
        for i, k in zip(ids, cnt):
            c[i] += k
        counters.append(c)
    if not counters:
        raise InputError(f"bag-of-words file {path} is empty")
    return replace(bag_from_counters(counters), source=f"--bow file {path}")


def remap_bag(bag: Bag, lookup: np.ndarray) -> tuple[Bag, int]:
    """(bag with ids mapped through `lookup` (-1: dropped), count of dropped word occurrences)."""
    new = lookup[bag.indices]
    keep = new >= 0
    rows = np.repeat(np.arange(bag.rows), np.diff(bag.indptr))[keep]
    indptr = np.zeros(bag.rows + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=bag.rows))
    ids, counts = new[keep], bag.counts[keep]
    order = np.lexsort((ids, rows))  # lookup preserves order here, but sort to be sure
    return Bag(indptr, ids[order].astype(np.int64), counts[order]), int(bag.counts[~keep].sum())


def document_frequency(bag: Bag, num_words: int) -> np.ndarray:
    return np.bincount(bag.indices, minlength=num_words)


def fit_tfidf(bag: Bag, num_words: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(idf float64 (V,), basis float64 (V, k)) of a corpus, k = min(dim, V - 1, n - 1)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    n = bag.rows
    idf = np.log((1.0 + n) / (1.0 + document_frequency(bag, num_words))) + 1.0
    k = min(dim, num_words - 1, n - 1)
    if k < 1:
        raise InputError(f"the text has {num_words} distinct word(s) over {n} item(s): too few for an SVD "
                         "(it needs 2 words and 2 items); lower --min-word-count or add text")
    rows = np.repeat(np.arange(n), np.diff(bag.indptr))
    w = (1.0 + np.log(bag.counts)) * idf[bag.indices]
    norm = np.sqrt(np.bincount(rows, weights=w * w, minlength=n))
    w = w / np.where(norm > 0, norm, 1.0)[rows]
    x = csr_matrix((w, bag.indices, bag.indptr), shape=(n, num_words))
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed).fit(x)
    return idf, np.ascontiguousarray(svd.components_.T, dtype=np.float64)


@numba.njit(nogil=True, cache=True)
def _project(indptr, indices, counts, idf, basis, out):
    k = basis.shape[1]
    for r in range(len(indptr) - 1):
        norm2 = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            w = (1.0 + np.log(counts[p])) * idf[indices[p]]
            norm2 += w * w
        if norm2 == 0.0:
            continue
        inv = 1.0 / np.sqrt(norm2)
        for p in range(indptr[r], indptr[r + 1]):
            j = indices[p]
            w = (1.0 + np.log(counts[p])) * idf[j] * inv
            for c in range(k):
                out[r, c] += w * basis[j, c]


def project(bag: Bag, idf: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(n, k) float32 tf-idf rows of `bag` times `basis`; rows are independent of each other."""
    idf = np.ascontiguousarray(idf, dtype=np.float64)
    basis = np.ascontiguousarray(basis, dtype=np.float64)
    if basis.ndim != 2 or idf.shape != (basis.shape[0],):
        raise ValueError(f"idf {idf.shape} and basis {basis.shape} do not fit together")
    if bag.indices.size and (bag.indices.min() < 0 or bag.indices.max() >= len(idf)):
        raise ValueError("word ids outside the vocabulary")
    out = np.zeros((bag.rows, basis.shape[1]), dtype=np.float64)
    _project(np.ascontiguousarray(bag.indptr, dtype=np.int64), np.ascontiguousarray(bag.indices, dtype=np.int64),
             np.ascontiguousarray(bag.counts, dtype=np.float64), idf, basis, out)
    return out.astype(np.float32)
