"""`cli.py bench negatives`: the numba sampler against the reference code's algorithm, side by side.

    python cli.py bench negatives            # paper-scale synthetic data, generated once

Reads a dataset directory (default: the paper-scale synthetic dataset, written once to
WORKDIR/synth-paper); writes a throw-away cache WORKDIR/cache-<pid> that it deletes at the end.
Prints: kernel negatives/s (after compile, best of 5), the reference algorithm's negatives/s
(`random.sample` over warm set - user set per pair, timed on a random subset and scaled),
their ratio, the seconds to build and publish one whole generation, and a compression table
(ratio and MB/s of candidate blosc settings on one real chunk) behind the default codec.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from rich.console import Console
from rich.table import Table

from cache.build import build_generation
from cache.manifest import NegativeConfig
from common.errors import UserError
from pipeline.dataset import load_dataset
from pipeline.negatives import (
    SamplingPlan,
    generation_key,
    getitem_original,
    pair_permutation,
    sample_negatives_original,
)


@dataclass(frozen=True)
class BenchConfig:
    dataset: Path | None = None  # None: paper-scale synthetic data in workdir
    num_neg: int = 128
    ref_rows: int = 2000  # pairs timed for the reference algorithm
    workdir: Path = Path("caches/bench")
    chunk_rows: int = 16384


def _dataset(cfg: BenchConfig, out: Console) -> Path:
    if cfg.dataset is not None:
        return Path(cfg.dataset)
    path = Path(cfg.workdir) / "synth-paper"
    if not (path / "meta.json").exists():
        from pipeline.synthetic import SynthConfig, write_synthetic

        out.print(f"generating the paper-scale synthetic dataset into {path} (once)")
        write_synthetic(path, SynthConfig(scale="paper", seed=0), force=True)
    return path


def _codec_table(neg: np.ndarray) -> tuple[Table, list[dict]]:
    from numcodecs import Blosc

    table = Table("codec (one real chunk)", "ratio", "encode MB/s", "decode MB/s", title="compression")
    raw, rows = neg.nbytes, []
    for cname, shuffle, label in [("lz4", Blosc.BITSHUFFLE, "blosc lz4 bitshuffle"),
                                  ("zstd", Blosc.BITSHUFFLE, "blosc zstd bitshuffle"),
                                  ("lz4", Blosc.SHUFFLE, "blosc lz4 byte-shuffle"),
                                  ("zstd", Blosc.NOSHUFFLE, "blosc zstd no shuffle")]:
        for clevel in (1, 5):
            codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffle)
            enc_s, dec_s = [], []
            for _ in range(3):
                t = time.perf_counter()
                enc = codec.encode(neg)
                enc_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                codec.decode(enc)
                dec_s.append(time.perf_counter() - t)
            rows.append({"codec": f"{label} clevel {clevel}", "ratio": raw / len(enc),
                         "encode_mb_per_s": raw / min(enc_s) / 1e6, "decode_mb_per_s": raw / min(dec_s) / 1e6})
            table.add_row(rows[-1]["codec"], f"{rows[-1]['ratio']:.3f}", f"{rows[-1]['encode_mb_per_s']:,.0f}",
                          f"{rows[-1]['decode_mb_per_s']:,.0f}")
    return table, rows


def run_negatives_bench(cfg: BenchConfig) -> dict:
    if cfg.ref_rows < 1:
        raise UserError(f"--ref-rows must be >= 1 (pairs timed for the reference algorithm), got {cfg.ref_rows}")
    if cfg.num_neg < 1:
        raise UserError(f"--num-neg must be >= 1, got {cfg.num_neg}")
    out = Console()
    path = _dataset(cfg, out)
    ds = load_dataset(path)
    indptr, indices = ds.train_csr()
    plan = SamplingPlan(ds.warm_items, indptr, indices, ds.num_items, cfg.num_neg, on_short="repeat")
    n = ds.train.shape[0]
    perm = pair_permutation(n, 0, 0)
    users = np.ascontiguousarray(np.asarray(ds.train)[perm, 0])
    key = generation_key(0, 0)
    out.print(f"dataset {path}: {ds.num_users:,} users, {ds.num_items:,} items "
              f"({plan.warm.size:,} warm), {n:,} training pairs; numba threads {numba.get_num_threads()} "
              f"({numba.config.THREADING_LAYER} layer), {os.cpu_count()} CPUs")

    # -- numba kernel: compile/load once, then best of 5 passes over every pair, chunk by chunk
    plan.sample(users[:1000], 0, key)
    buf = np.empty((cfg.chunk_rows, cfg.num_neg), dtype=plan.dtype)
    passes = []
    for _ in range(5):
        t = time.perf_counter()
        for s in range(0, n, cfg.chunk_rows):
            e = min(n, s + cfg.chunk_rows)
            plan.sample(users[s:e], s, key, out=buf[: e - s])
        passes.append(time.perf_counter() - t)
    kernel_rate = n * cfg.num_neg / min(passes)
    last_chunk = buf.copy()

    # -- the reference code's algorithm on a random subset of pairs, scaled; then its whole
    #    __getitem__ (sampling plus two LongTensors per pair), as its DataLoader workers ran it
    rows = np.random.default_rng(0).choice(n, size=min(cfg.ref_rows, n), replace=False)
    user_items = {u: indices[indptr[u]:indptr[u + 1]].tolist() for u in np.unique(users[rows]).tolist()}
    warm_set = set(plan.warm.tolist())
    t = time.perf_counter()
    sample_negatives_original(users[rows], user_items, warm_set, cfg.num_neg)
    ref_s = time.perf_counter() - t
    ref_rate = rows.size * cfg.num_neg / ref_s
    pairs = np.asarray(ds.train)[perm[rows]].tolist()  # the same pairs: users[rows] are their users
    rnd = random.Random(0)
    getitem_original(*pairs[0], user_items, warm_set, cfg.num_neg, rnd)  # imports torch
    t = time.perf_counter()
    for u, i in pairs:
        getitem_original(u, i, user_items, warm_set, cfg.num_neg, rnd)
    getitem_rate = rows.size / (time.perf_counter() - t)

    # -- end to end: one generation built, compressed, written and published
    cache_dir = Path(cfg.workdir) / f"cache-{os.getpid()}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = NegativeConfig(num_neg=cfg.num_neg, chunk_rows=cfg.chunk_rows, on_short="repeat")
    try:
        t = time.perf_counter()
        build_generation(path, cache_dir, 0, config, progress=False)
        e2e_s = time.perf_counter() - t
        from cache.store import CacheStore

        entry = CacheStore(cache_dir).manifest["generations"]["0"]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    table = Table("measure", "value", title=f"negative sampling, {n:,} pairs x {cfg.num_neg}")
    table.add_row("numba kernel (best of 5 passes)", f"{kernel_rate / 1e6:,.1f} M negatives/s  ({min(passes):.2f} s/pass)")
    table.add_row(f"reference random.sample ({rows.size:,} pairs, scaled)",
                  f"{ref_rate / 1e6:,.3f} M negatives/s  (~{n * cfg.num_neg / ref_rate:,.0f} s/pass)")
    table.add_row("speed-up over the reference algorithm", f"{kernel_rate / ref_rate:,.0f}x")
    table.add_row("reference __getitem__ (sample + 2 LongTensors)",
                  f"{getitem_rate:,.0f} pairs/s = {getitem_rate * cfg.num_neg / 1e6:,.3f} M negatives/s "
                  f"(kernel: {kernel_rate / (getitem_rate * cfg.num_neg):,.0f}x)")
    table.add_row("one generation published, end to end", f"{e2e_s:.2f} s (sampling {entry['sample_seconds']:.2f} s "
                  f"of {entry['build_seconds']:.2f} s build; rest: dataset load, CSR, publish)")
    table.add_row("on disk", f"{entry['bytes'] / 2**20:,.1f} MiB, compression {entry['raw_bytes'] / entry['bytes']:.2f}x "
                  f"({config.cname} clevel {config.clevel} bitshuffle)")
    out.print(table)
    codecs, codec_rows = _codec_table(last_chunk)
    out.print(codecs)
    return {"dataset": str(path), "users": ds.num_users, "items": ds.num_items, "warm_items": int(plan.warm.size),
            "pairs": n, "num_neg": cfg.num_neg, "numba_threads": numba.get_num_threads(),
            "kernel_negatives_per_s": kernel_rate, "kernel_pass_s": min(passes),
            "reference_pairs_timed": int(rows.size), "reference_negatives_per_s": ref_rate,
            "reference_pass_s_scaled": n * cfg.num_neg / ref_rate, "ratio": kernel_rate / ref_rate,
            "getitem_pairs_per_s": getitem_rate, "kernel_vs_getitem": kernel_rate / (getitem_rate * cfg.num_neg),
            "end_to_end_s": e2e_s, "sample_s": entry["sample_seconds"], "build_s": entry["build_seconds"],
            "bytes": entry["bytes"], "raw_bytes": entry["raw_bytes"], "compression": entry["raw_bytes"] / entry["bytes"],
            "codec": f"{config.cname} clevel {config.clevel} bitshuffle", "codecs": codec_rows}
