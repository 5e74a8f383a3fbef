"""`cli.py bench recommend`: users/s of recommend-all (top-k for every user) at a synthetic scale.

    python cli.py bench recommend                  # paper scale: 55,485 users x 5,986 items
    python cli.py bench recommend --scale large    # 1M users x 100k items (generated once, ~5 min)

Generates (or reuses) data/synthetic-<scale>/, builds a randomly initialised CLCRec on it (the
ranking's cost does not depend on the weights, so nothing is trained), and times the code path of
`cli.py recommend-all` on the device (GPU when present): the block ranking alone (every block's
top-k copied to the host) and end to end into a Parquet file, which is deleted afterwards.
Writes nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from clcrec.config import TrainConfig
from clcrec.device import resolve_device
from clcrec.evaluation.topk import iter_topk
from clcrec.model import CLCRec
from clcrec.serving.recommend_all import default_block, write_topk_parquet
from common.errors import UserError


@dataclass(frozen=True)
class BenchRecommendConfig:
    scale: str = "paper"  # synthetic scale when no dataset: tiny | default | paper | large
    dataset: str = ""  # a dataset directory instead of the synthetic one
    k: int = 50
    candidates: str = "all"  # all | warm | cold
    device: str = "auto"  # auto -> cuda if available
    user_block: int = 0  # users per block (0: recommend-all's default for the device)
    dim_E: int = 64
    seed: int = 0
    out: str = "out/bench-recommend.parquet"  # the end-to-end run's file, deleted afterwards


def run_bench_recommend(cfg: BenchRecommendConfig, console: Console) -> dict:
    from clcrec.train.flow import ensure_synthetic
    from pipeline.dataset import load_dataset

    if cfg.candidates not in ("all", "warm", "cold"):
        raise UserError(f"--candidates must be all, warm or cold, got {cfg.candidates!r}")
    if cfg.user_block < 0:
        raise UserError(f"--user-block must be >= 0 (0: recommend-all's default), got {cfg.user_block}")
    if cfg.k < 1:
        raise UserError(f"--k must be >= 1, got {cfg.k}")
    dev = resolve_device(cfg.device)
    path = Path(cfg.dataset) if cfg.dataset else ensure_synthetic(Path("data") / f"synthetic-{cfg.scale}", cfg.scale,
                                                                  cfg.seed, console)
    ds = load_dataset(path)
    torch.manual_seed(cfg.seed)
    model = CLCRec.from_config(TrainConfig(dataset=str(path), dim_E=cfg.dim_E), ds).eval()
    users, items = model.user_table().to(dev), model.ranking_table(torch.as_tensor(ds.item_status)).to(dev)
    status = ds.item_status
    pool = None if cfg.candidates == "all" else np.flatnonzero((status == 0) == (cfg.candidates == "warm"))
    n_cand = ds.num_items if pool is None else len(pool)
    if cfg.k < 1 or cfg.k > n_cand:
        raise UserError(f"--k must be in 1..{n_cand} (the candidate items), got {cfg.k}")
    block = cfg.user_block or default_block(ds.num_items, dev)
    all_users = torch.arange(ds.num_users)
    blocks = lambda: iter_topk(users, items, all_users, ds.train, cfg.k,  # noqa: E731
                               candidates=None if pool is None else torch.as_tensor(pool, device=dev), user_block=block)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    list(iter_topk(users, items, all_users[:block], ds.train, cfg.k, user_block=block))  # warm-up (kernels, caches)
    sync()
    t0 = time.perf_counter()
    for _, vals, idx in blocks():
        vals.cpu(), idx.cpu()  # what recommend-all copies to the host per block
    sync()
    t_rank = time.perf_counter() - t0
    out = Path(cfg.out)
    t0 = time.perf_counter()
    rows = write_topk_parquet(out, blocks(), np.arange(ds.num_users, dtype=np.int64),
                              np.arange(ds.num_items, dtype=np.int64), force=True)
    t_all = time.perf_counter() - t0
    size = out.stat().st_size
    out.unlink()

    res = {"dataset": str(path), "users": ds.num_users, "items": ds.num_items, "candidates": n_cand, "k": cfg.k,
           "device": str(dev), "threads": torch.get_num_threads(), "user_block": block,
           "rank_s": t_rank, "end_to_end_s": t_all, "rows": rows, "parquet_mib": size / 2**20}
    table = Table(title=f"recommend-all: {ds.num_users:,} users x {n_cand:,} candidates, top {cfg.k}, on {dev} "
                        f"({torch.get_num_threads()} threads, blocks of {block} users)")
    table.add_column("")
    table.add_column("seconds", justify="right")
    table.add_column("users/s", justify="right")
    table.add_row("ranking (scores, mask, top-k, to host)", f"{t_rank:.2f}", f"{ds.num_users / t_rank:,.0f}")
    table.add_row(f"end to end into Parquet ({rows:,} rows, {size / 2**20:.1f} MiB)", f"{t_all:.2f}",
                  f"{ds.num_users / t_all:,.0f}")
    Console().print(table)
    return res
