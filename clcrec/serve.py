"""Use a finished run: evaluate it, recommend for a user, export embeddings.

    python cli.py evaluate runs/RUN
    python cli.py recommend runs/RUN --user 196 --k 10 [--new-items DIR]
    python cli.py export runs/RUN

Reads RUN/config.json, RUN/checkpoints/best.pt and the run's dataset directory (whose fingerprint
must match the checkpoint's). Original ids go in and come out; cold items are ranked by their
content representation, so brand-new items appear in recommendations. Items that arrive after
training, recommendations for every user and the Python API live in clcrec/api.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from clcrec.checkpoint import RunDir, check_model_state, load_checkpoint
from clcrec.config import TrainConfig
from clcrec.model import CLCRec, concat_normalised_features
from pipeline.dataset import STATUS_NAMES, Dataset, load_dataset
from pipeline.errors import DatasetChangedError, UserError


@dataclass
class LoadedRun:
    cfg: TrainConfig
    dataset: Dataset
    model: CLCRec
    checkpoint: dict

    @torch.no_grad()
    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors (U, D), ranking table (I, D)) in float32."""
        status = torch.as_tensor(self.dataset.item_status)
        return self.model.user_table(), self.model.ranking_table(status)


def load_run(run_dir: Path, which: str = "best") -> LoadedRun:
    run = RunDir(run_dir)
    record = run.read_config()
    try:
        cfg = TrainConfig.from_dict(record["config"])
    except TypeError as e:  # an unknown-typed or mangled field in a hand-edited config.json
        raise UserError(f"{run.config_path} holds an invalid config ({e}); start a new run") from None
    ck = load_checkpoint(run.best if which == "best" else run.last)
    dataset = load_dataset(cfg.dataset)
    if ck["dataset_fingerprint"] != dataset.fingerprint:
        raise DatasetChangedError(
            f"dataset {cfg.dataset} changed since run {run_dir} was trained (fingerprints differ); "
            "re-train, or point the run at the original data"
        )
    feats = concat_normalised_features([dataset.features[m] for m in ck["modalities"]])
    model = CLCRec(dataset.num_users, dataset.num_items, feats, cfg.dim_E, cfg.hidden, cfg.temp_value, cfg.lr_lambda, cfg.num_sample,
                   cfg.cold_vectors)
    check_model_state(ck, model, run.best if which == "best" else run.last)
    model.load_state_dict(ck["model"])
    model.eval()
    return LoadedRun(cfg, dataset, model, ck)


def evaluate_run(run_dir: Path, splits=("val", "test"), ks: tuple[int, ...] = ()) -> dict:
    """Metrics of the best checkpoint; `ks` (cut-offs to show) must be among the run's."""
    from clcrec.evaluate import EvalConfig, evaluate_ranking

    run_ks = RunDir(run_dir).read_config()["config"].get("ks", [10, 20, 50])
    unknown = [k for k in ks if k not in run_ks]
    if unknown:
        raise UserError(f"--k {unknown[0]} is not among the cut-offs run {run_dir} evaluates ({run_ks}); "
                        f"pass --k with one of them")
    lr = load_run(run_dir)
    users, items = lr.tables()
    ecfg = EvalConfig(ks=tuple(lr.cfg.ks), user_block=lr.cfg.eval_block)
    return {
        s: evaluate_ranking(users, items, lr.dataset.train, lr.dataset.split(s), lr.dataset.item_status, ecfg)
        for s in splits
    }


def recommend(run_dir: Path, user: str, k: int = 10, include_seen: bool = False, candidates: str = "all",
              new_items: Path | None = None) -> pl.DataFrame:
    """Top-k items for one user (original id) as `cli.py recommend` shows them: rank, original_id
    [, title], score (rounded), status. A wrapper over clcrec.api.Run.recommend (see there)."""
    from clcrec.api import load_run as load_api_run

    df = load_api_run(run_dir, device="cpu").recommend([user], k, candidates, new_items, include_seen)
    return df.select(
        "rank", pl.col("item").alias("original_id"), *(["title"] if "title" in df.columns else []),
        pl.col("score").cast(pl.Float64).round(4), "status",
    )


def export_embeddings(run_dir: Path, out_dir: Path | None = None, force: bool = False) -> Path:
    """Write users.npy / items.npy (the ranking tables) and their id tables under out_dir, built
    beside it and renamed into place; an existing out_dir is replaced only with `force`."""
    import shutil

    from pipeline.fsutil import check_output_dir, fsync_tree, make_tmp_dir, publish_dir

    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "embeddings"
    check_output_dir(out_dir, "--out")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(f"--out {out_dir} already holds files (an earlier export?); pass --force to replace it")
    lr = load_run(run_dir)
    users, items = lr.tables()
    tmp = make_tmp_dir(out_dir)
    try:
        np.save(tmp / "users.npy", users.numpy().astype(np.float32))
        np.save(tmp / "items.npy", items.numpy().astype(np.float32))
        lr.dataset.user_ids().write_parquet(tmp / "user_ids.parquet")
        lr.dataset.item_ids().with_columns(
            pl.Series("status", [STATUS_NAMES[int(s)] for s in lr.dataset.item_status])
        ).write_parquet(tmp / "item_ids.parquet")
        fsync_tree(tmp)
        publish_dir(tmp, out_dir, force=out_dir.exists())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
