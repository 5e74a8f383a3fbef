"""Synthetic data with planted structure: the built-in default dataset, and test / benchmark sizes.

    python cli.py synth data/synth --scale default --seed 0

Writes a canonical dataset directory (pipeline/dataset.py) through `write_dataset`, with the
paper's cold-item split (pipeline/split.py) and the planted factors in extras/:

    extras/oracle_user.npy  float32 (num_users, dim+1)   [s * U, 1]
    extras/oracle_item.npy  float32 (num_items, dim+1)   [V, b]

so `oracle_user @ oracle_item.T` is exactly the generating affinity logit s * <U_u, V_i> + b_i
(b_i is the Zipf-like popularity bias, -popularity_exponent * log(rank_i), centred).

Generation. U, V ~ N(0, 1/sqrt(dim)) so <U_u, V_i> has unit-ish scale. Each user's number of
interactions is lognormal (sigma `count_sigma`), rescaled so the total is about `interactions`,
clipped to [min_per_user, num_items // 2]. A user's items are drawn without replacement from
softmax(logits) by Gumbel-top-k. On catalogues up to `exact_max_items` items this is exact over
all items; above that a user's candidates are first drawn from the popularity prior exp(b)
(pool of factor * n_u + pool_min draws) and re-weighted by exp(s * <U_u, V_i>) (sampling
importance resampling, exact only as the pool grows: with the default pool it gives popularity
somewhat more weight than the softmax does; `paper` and `large` use it, `tiny` and `default` are
exact). Content features are noisy nonlinear functions
of the item factors, each modality seeing an overlapping two-thirds of the factor dimensions:
    v = tanh(1.5 * V[:, :2d/3] @ A1) @ A2 + noise,  t = relu(V[:, d/3:] @ B1) @ B2 + noise
(columns standardised before the noise), so cold items are predictable from content, not trivially.

Users are generated in chunks (parallel over the users of a chunk); every user has its own RNG
seed derived from the master seed, so the result depends neither on the thread count nor on
the chunk size; memory stays bounded by the chunk buffers plus the output arrays.

Sizes (interactions are about the target; measured on 2 shared CPU cores, numba cache warm):
    tiny     300 users x 200 items,        ~5.9 K interactions, dim 8,  v 24 / t 12    ~0.2 s
    default  2,000 x 1,000,                ~50 K,               dim 16, v 64 / t 32    ~0.3 s
    paper    55,485 x 5,986,               ~1.2 M,              dim 16, v 128 / t 64   ~2 s
    large    1,000,000 x 100,000,          ~100 M,              dim 32, v 64 / t 32    ~5 min, 3.5 GB peak
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
from numba import njit, prange

from common.errors import InputError
from common.fsutil import check_new_target
from pipeline.dataset import write_dataset
from pipeline.split import SplitConfig, split_cold_items

# Sizes per scale name. `interactions` is a target; the actual count is reported in meta.
SCALES: dict[str, dict] = {
    "tiny": dict(num_users=300, num_items=200, interactions=6_000, dim=8, v_dim=24, t_dim=12),
    "default": dict(num_users=2_000, num_items=1_000, interactions=50_000, dim=16, v_dim=64, t_dim=32),
    # the reference MovieLens shape of the public CLCRec code
    "paper": dict(num_users=55_485, num_items=5_986, interactions=1_200_000, dim=16, v_dim=128, t_dim=64),
    "large": dict(num_users=1_000_000, num_items=100_000, interactions=100_000_000, dim=32, v_dim=64, t_dim=32),
}


@dataclass(frozen=True)
class SynthConfig:
    scale: str = "default"  # one of SCALES; the fields left None take the scale's values
    seed: int = 0  # generation seed; also the split seed unless `split` is given
    num_users: int | None = None
    num_items: int | None = None
    interactions: int | None = None  # target total, before dropping nothing (no duplicates arise)
    dim: int | None = None  # planted factor dimension
    v_dim: int | None = None  # modality `v` feature dimension
    t_dim: int | None = None  # modality `t` feature dimension
    affinity_scale: float = 2.5  # s: std of the user-item part of the logits
    popularity_exponent: float = 1.0  # Zipf exponent of the item popularity bias
    count_sigma: float = 1.0  # lognormal sigma of interactions per user
    min_per_user: int = 3
    feature_noise: float = 0.8  # noise std relative to unit-variance feature signal
    exact_max_items: int = 2_000  # catalogues up to this size sample exactly over all items
    pool_factor: int = 8  # SIR candidate pool: pool_factor * n_u + pool_min draws
    pool_min: int = 512
    chunk_users: int = 16_384  # users per chunk (bounds the output buffers; results do not depend on it)
    split: SplitConfig | None = None  # None: SplitConfig(seed=seed)

    def resolved(self) -> "SynthConfig":
        """A copy with every size filled from the scale (unknown scale -> InputError)."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be an integer in 0..2^63-1, got {self.seed!r}")
        if self.scale not in SCALES:
            raise InputError(f"unknown synthetic scale {self.scale!r}; use one of {sorted(SCALES)}")
        sizes = {k: v if getattr(self, k) is None else getattr(self, k) for k, v in SCALES[self.scale].items()}
        cfg = replace(self, **sizes, split=self.split or SplitConfig(seed=self.seed))
        if cfg.num_users < 1 or cfg.num_items < 2 or cfg.dim < 3 or cfg.interactions < cfg.num_users:
            raise InputError(
                "synthetic sizes need num_users >= 1, num_items >= 2, dim >= 3 and "
                f"interactions >= num_users (got {cfg.num_users}, {cfg.num_items}, {cfg.dim}, {cfg.interactions})"
            )
        return cfg


@dataclass
class Planted:
    user_factors: np.ndarray  # (num_users, dim) float32, already multiplied by affinity_scale
    item_factors: np.ndarray  # (num_items, dim) float32
    item_bias: np.ndarray  # (num_items,) float32, popularity logit
    counts: np.ndarray  # (num_users,) int64 interactions requested per user


def plant_factors(cfg: SynthConfig) -> Planted:
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    d = cfg.dim
    U = rng.standard_normal((cfg.num_users, d), dtype=np.float32) * np.float32(d**-0.25)
    V = rng.standard_normal((cfg.num_items, d), dtype=np.float32) * np.float32(d**-0.25)
    rank = rng.permutation(cfg.num_items) + 1
    b = -cfg.popularity_exponent * np.log(rank)
    b = (b - b.mean()).astype(np.float32)
    raw = rng.lognormal(0.0, cfg.count_sigma, size=cfg.num_users)
    counts = np.rint(raw * (cfg.interactions / raw.sum())).astype(np.int64)
    counts = np.clip(counts, min(cfg.min_per_user, cfg.num_items // 2), max(1, cfg.num_items // 2))
    return Planted((U * np.float32(cfg.affinity_scale)).astype(np.float32), V, b, counts)


@njit(cache=True)
def _alias_table(weights, prob, alias):
    """Vose's alias table for sampling index j with probability weights[j] / sum (O(1) per draw)."""
    m = weights.size
    scaled = weights * (m / weights.sum())
    small = np.empty(m, dtype=np.int64)
    large = np.empty(m, dtype=np.int64)
    ns = nl = 0
    for j in range(m):
        if scaled[j] < 1.0:
            small[ns] = j
            ns += 1
        else:
            large[nl] = j
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    for i in range(nl):
        prob[large[i]] = 1.0
        alias[large[i]] = large[i]
    for i in range(ns):  # only from rounding
        prob[small[i]] = 1.0
        alias[small[i]] = small[i]


@njit(cache=True)
def _top_k(keys, k):
    """Positions of the k largest keys (any order); all of them when k >= len(keys)."""
    n = keys.size
    if k >= n:
        return np.arange(n)
    thr = np.partition(keys, n - k)[n - k]
    pos = np.empty(k, dtype=np.int64)
    c = 0
    for i in range(n):
        if keys[i] >= thr and c < k:
            pos[c] = i
            c += 1
    return pos[:c]


@njit(cache=True)
def _gumbel() -> float:
    return -np.log(-np.log(np.random.random()))


@njit(cache=True)
def _user_keys_exact(uf_u, vf, bias):
    """Gumbel keys of every item: logit + Gumbel noise."""
    m, d = vf.shape
    keys = np.empty(m)
    for j in range(m):
        s = bias[j]
        for t in range(d):
            s += uf_u[t] * vf[j, t]
        keys[j] = s + _gumbel()
    return np.arange(m), keys


@njit(cache=True)
def _user_keys_sir(uf_u, vf, prob, alias, c):
    """Distinct candidates drawn c times from the popularity prior, keyed by log(multiplicity) +
    the affinity part of the logit + Gumbel noise (sampling importance resampling)."""
    m, d = vf.shape
    draws = np.empty(c, dtype=np.int64)
    for q in range(c):
        x = np.random.random() * m
        j = min(int(x), m - 1)
        if x - j >= prob[j]:
            j = alias[j]
        draws[q] = j
    draws.sort()
    cand = np.empty(c, dtype=np.int64)
    mult = np.zeros(c)
    nu = 0
    for q in range(c):
        if q == 0 or draws[q] != draws[q - 1]:
            cand[nu] = draws[q]
            nu += 1
        mult[nu - 1] += 1.0
    keys = np.empty(nu)
    for i in range(nu):
        s = np.log(mult[i])
        for t in range(d):
            s += uf_u[t] * vf[cand[i], t]
        keys[i] = s + _gumbel()
    return cand[:nu], keys


@njit(cache=True, parallel=True)
def _sample_users(uf, vf, bias, prob, alias, counts, pools, seeds, out, out_off, out_n):
    """Gumbel-top-k sampling of each user's items.

    uf (n, d) scaled user factors; vf (m, d); bias (m,); prob / alias (m,) alias table of exp(bias);
    counts (n,) items wanted; pools (n,) candidate draws (>= m: exact over all items); seeds (n,)
    one RNG seed per user (the thread's generator is re-seeded per user, so the result does not
    depend on the thread count or the chunking); out / out_off: output buffer and offsets;
    out_n (n,) receives the number written (< counts[u] only if the pool ran short).
    """
    m = vf.shape[0]
    for u in prange(uf.shape[0]):
        np.random.seed(seeds[u])
        if pools[u] >= m:
            cand, keys = _user_keys_exact(uf[u], vf, bias)
        else:
            cand, keys = _user_keys_sir(uf[u], vf, prob, alias, pools[u])
        chosen = np.sort(cand[_top_k(keys, counts[u])])
        o = out_off[u]
        for i in range(chosen.size):
            out[o + i] = chosen[i]
        out_n[u] = chosen.size


def sample_interactions(cfg: SynthConfig, planted: Planted, progress: bool = False) -> np.ndarray:
    """(N, 2) int32 (user, item) pairs, sorted by user then item."""
    m = cfg.num_items
    pools = planted.counts * cfg.pool_factor + cfg.pool_min
    if m <= cfg.exact_max_items:
        pools[:] = m
    pools = np.minimum(pools, m)
    prob, alias = np.ones(m), np.arange(m, dtype=np.int64)
    _alias_table(np.exp(planted.item_bias.astype(np.float64)), prob, alias)
    # one seed per user, derived from the master seed
    seed_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(cfg.seed, spawn_key=(1,))))
    seeds = seed_rng.integers(0, 2**32 - 1, size=cfg.num_users, dtype=np.int64)
    chunks = range(0, cfg.num_users, cfg.chunk_users)
    parts_u, parts_i = [], []
    bar = _progress(progress, len(chunks), "sampling interactions")
    for lo in chunks:
        hi = min(lo + cfg.chunk_users, cfg.num_users)
        cnt = planted.counts[lo:hi]
        out_off = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        out = np.empty(int(cnt.sum()), dtype=np.int32)
        out_n = np.zeros(hi - lo, dtype=np.int64)
        _sample_users(
            planted.user_factors[lo:hi], planted.item_factors, planted.item_bias, prob, alias,
            cnt, pools[lo:hi], seeds[lo:hi], out, out_off, out_n,
        )
        keep = np.arange(out.size) - np.repeat(out_off, cnt) < np.repeat(out_n, cnt)
        parts_i.append(out[keep])
        parts_u.append(np.repeat(np.arange(lo, hi, dtype=np.int32), out_n))
        bar.advance()
    bar.close()
    return np.stack([np.concatenate(parts_u), np.concatenate(parts_i)], axis=1)


def make_features(cfg: SynthConfig, item_factors: np.ndarray) -> dict[str, np.ndarray]:
    """Modalities `v` and `t`: noisy nonlinear views of overlapping factor subsets."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(cfg.seed, spawn_key=(2,))))
    d = cfg.dim
    V = item_factors.astype(np.float64) * d**0.25  # back to unit variance per factor
    out = {}
    for name, cols, dim, act in (
        ("v", slice(0, (2 * d) // 3), cfg.v_dim, lambda x: np.tanh(1.5 * x)),
        ("t", slice(d // 3, d), cfg.t_dim, lambda x: np.maximum(x, 0.0)),
    ):
        X = V[:, cols]
        hidden = 2 * X.shape[1]
        h = act(X @ rng.standard_normal((X.shape[1], hidden)) / np.sqrt(X.shape[1]))
        f = h @ rng.standard_normal((hidden, dim)) / np.sqrt(hidden)
        f = (f - f.mean(0)) / (f.std(0) + 1e-12)
        f += cfg.feature_noise * rng.standard_normal(f.shape)
        out[name] = f.astype(np.float32)
    return out


def write_synthetic(
    target: Path, config: SynthConfig = SynthConfig(), force: bool = False, *, progress: bool = False
) -> Path:
    """Generate the dataset described by `config` and write it to `target`; returns the path."""
    target = Path(target)
    check_new_target(target, force)
    t0 = time.perf_counter()
    cfg = config.resolved()
    planted = plant_factors(cfg)
    pairs = sample_interactions(cfg, planted, progress=progress)
    features = make_features(cfg, planted.item_factors)

    # Drop items nobody sampled (possible in the far tail of small catalogues) and re-index.
    seen = np.zeros(cfg.num_items, dtype=bool)
    seen[pairs[:, 1]] = True
    kept = np.flatnonzero(seen)
    new_index = np.cumsum(seen, dtype=np.int64) - 1
    pairs[:, 1] = new_index[pairs[:, 1]]
    features = {k: v[kept] for k, v in features.items()}
    num_items = len(kept)

    split = split_cold_items(pairs, num_items, cfg.split)
    del pairs
    oracle_user = np.hstack([planted.user_factors, np.ones((cfg.num_users, 1), np.float32)])
    oracle_item = np.hstack([planted.item_factors[kept], planted.item_bias[kept, None]])
    meta_cfg = {k: v for k, v in asdict(cfg).items() if k != "split"}
    write_dataset(
        target,
        train=split.train,
        val=split.val,
        test=split.test,
        item_status=split.item_status,
        features=features,
        user_ids=pl.DataFrame({"original_id": np.arange(cfg.num_users, dtype=np.int64)}),
        item_ids=pl.DataFrame({"original_id": kept.astype(np.int64)}),
        source={"kind": "synthetic", **meta_cfg},
        split=cfg.split.to_meta(),
        extra={
            "ingest": {
                "interactions": int(len(split.train) + len(split.val) + len(split.test)),
                "duplicates_dropped": 0,
                "items_without_interactions_dropped": int(cfg.num_items - num_items),
                "seconds": round(time.perf_counter() - t0, 3),
            },
            "oracle": "score = oracle_user @ oracle_item.T is the generating logit",
        },
        extra_arrays={"oracle_user": oracle_user.astype(np.float32), "oracle_item": oracle_item.astype(np.float32)},
        force=force,
    )
    return target


class _NoBar:
    def advance(self) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, label: str):
        from rich.console import Console
        from rich.progress import Progress

        self._p = Progress(console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def advance(self) -> None:
        self._p.advance(self._task)

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int, label: str):
    return _RichBar(total, label) if enabled and total > 1 else _NoBar()
