"""End-to-end flows behind `cli.py train`: prepare the dataset and cache, train, report.

    python cli.py train                    # synthetic default: generate, build negatives, train, table
    python cli.py train --dataset data/ml-100k

Reads/writes: data/synthetic-<scale>/ (dataset), caches/<name>/ (negatives), runs/<name>-<time>/.
Existing datasets and caches are reused when their fingerprints match, so a second demo run
skips straight to training.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from clcrec.config import TrainConfig
from common.errors import UserError

# The built-in synthetic default has ~130 steps per epoch; at the reference l_r of 0.001 the loss
# sits on its initial plateau for ~1,000 steps (measured: cold Recall@20 only passes 0.3 after
# ~15 epochs), so the one-minute demo uses a larger step. Real datasets keep the reference values.
DEMO_PRESET = {"l_r": 0.005, "epochs": 15}


def ensure_synthetic(path: Path, scale: str, seed: int, console: Console) -> Path:
    from pipeline.synthetic import SynthConfig, write_synthetic

    if (path / "meta.json").exists():
        return path
    console.print(f"generating the synthetic '{scale}' dataset in {path}")
    write_synthetic(path, SynthConfig(scale=scale, seed=seed))
    return path


def ensure_cache(dataset: Path, cache: Path, num_neg: int, seed: int, console: Console,
                 exclude: str = "train", replay: float | None = None) -> Path:
    """Reuse `cache` when it was built from this dataset with this num_neg and exclusion mode;
    else build gen 0."""
    from cache.build import build_generation
    from cache.store import CacheStore, NegativeConfig
    from clcrec.train.generations import check_cache
    from pipeline.dataset import read_fingerprint

    if (cache / "manifest.json").exists():
        store = CacheStore(cache)
        check_cache(store, dataset, read_fingerprint(dataset), num_neg, exclude)
        if store.published():
            return cache
    else:
        from cache.publish import check_new_cache_dir

        check_new_cache_dir(cache)  # refused (a file, a dataset...) before saying it builds there
    console.print(f"building negative generation 0 in {cache}")
    build_generation(dataset, cache, 0, NegativeConfig(num_neg=num_neg, seed=seed, exclusion=exclude, replay=replay),
                     progress=True)
    return cache


def default_paths(cfg: TrainConfig, scale: str, root: Path = Path(".")) -> TrainConfig:
    """Fill dataset/cache/run_dir that the user left empty."""
    dataset = Path(cfg.dataset) if cfg.dataset else root / "data" / f"synthetic-{scale}"
    name = dataset.name
    mode = "" if cfg.exclude == "train" else f"-{cfg.exclude}"  # never share a cache across modes
    cache = Path(cfg.cache) if cfg.cache else root / "caches" / f"{name}-neg{cfg.num_neg}-seed{cfg.seed}{mode}"
    run_dir = Path(cfg.run_dir) if cfg.run_dir else root / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg.replace(dataset=str(dataset), cache=str(cache), run_dir=str(run_dir))


def run_training(cfg: TrainConfig, *, scale: str = "default", console: Console | None = None) -> dict:
    """Prepare whatever is missing, train, and print the results table (rank 0)."""
    from clcrec.train import distributed as dist
    from clcrec.train.trainer import train

    console = console or Console(stderr=True)
    synthetic = not cfg.dataset
    cfg = default_paths(cfg, scale)
    from clcrec.device import resolve_device, wants_cuda

    resolve_device(cfg.device)  # `--device bogus`, or cuda without CUDA: refused before anything is made
    ctx = dist.init(wants_cuda(cfg.device))  # under torchrun: rank 0 prepares data and cache, the others wait

    def prepare() -> None:
        from common.fsutil import check_output
        from common.provenance import directory_kind

        # before any data or cache is made; an existing run is continued with --resume, never replaced.
        # A run that failed at its start (no checkpoint) may be called worthless only if it is provably ours.
        stub = (directory_kind(Path(cfg.run_dir)) == "run"
                and not (Path(cfg.run_dir) / "checkpoints" / "last.pt").exists())
        exists = (f"it never finished an epoch (no checkpoint), so nothing in it is worth keeping: remove it to "
                  f"start again with other options, or pass --resume {cfg.run_dir} to restart it with its own"
                  if stub else f"pass --resume {cfg.run_dir} to continue it, or choose another --run-dir")
        check_output(Path(cfg.run_dir), "--run-dir", "run", False, exists=exists, forceable=False)
        if synthetic:
            ensure_synthetic(Path(cfg.dataset), scale, cfg.seed, console)
        elif not (Path(cfg.dataset) / "meta.json").exists():
            raise UserError(f"{cfg.dataset} is not a dataset directory; create it with `cli.py ingest ...`")
        from clcrec.train.selection import check_selectable
        from pipeline.dataset import load_dataset

        check_selectable(load_dataset(cfg.dataset), cfg)  # verified once here, before a cache is built
        ensure_cache(Path(cfg.dataset), Path(cfg.cache), cfg.num_neg, cfg.seed, console, cfg.exclude)

    dist.main_first(ctx, prepare)  # a refusal on rank 0 reaches every rank as the same one line
    existed = os.path.lexists(cfg.run_dir)
    try:
        results = train(cfg, console=console)
    except BaseException:
        if ctx.is_main and not existed:
            remove_stub(Path(cfg.run_dir))
        raise
    if results:
        report(cfg.run_dir, results, console)
    return results


def remove_stub(run_dir: Path) -> None:
    """Remove the run directory this process created if training failed before its first checkpoint
    (a refusal, a diverged first epoch, Ctrl-C): nothing in it could be resumed. Only a directory
    that carries this program's run marker, and only under its lock: a trainer that claimed the
    directory meanwhile (ours failed on its lock) keeps it."""
    from clcrec.rundir import RUN_LOCK
    from common.lock import FileLock
    from common.provenance import directory_kind

    if directory_kind(run_dir) != "run":
        return
    lock = FileLock(run_dir / RUN_LOCK)
    try:
        if not lock.acquire(wait=False):
            return
    except (UserError, OSError):  # a planted lock link: leave everything as it is
        return
    try:
        if not (run_dir / "checkpoints" / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        lock.release()


def below_consequence(c: dict) -> str:
    """What follows from a run below its content-only baseline (the report's warning)."""
    if c.get("fell_back_to_content"):
        return "cold items are served by the content-only cosine instead"
    z = c.get("judged_content_z")
    if z is not None and not c.get("prior_weight_given"):
        return (f"the cosine leads by no more than noise ({z:.2f} paired standard errors), so the model's "
                "ranking is kept; its cold recommendations are not a confirmed result")
    return "its cold recommendations are not a result"


def report(run_dir: str, results: dict, console: Console) -> None:
    from clcrec.evaluation.report import format_table

    console.print(f"\nbest epoch {results['best_epoch']} (selected by validation {results['select']})")
    console.print(format_table({"val": results["val"], "test": results["test"]}, ks=(20,), title="best checkpoint (all K in results.json)"))
    base = results.get("baselines", {}).get("test")
    if base:
        rows = {"CLCRec": results["test"], **base}
        console.print(format_table(rows, ks=(20,), title="test split: CLCRec vs reference points", first="Model"))
    pers = results.get("personalisation")
    if pers:
        from clcrec.evaluation.personalisation import describe

        console.print("cold top-10 lists over all users: " + "; ".join(f"{n} {describe(v)}" for n, v in pers.items()),
                      highlight=False, soft_wrap=True)
    below = results.get("below_content_baseline")
    if below and below["below"]:
        console.print(f"[bold yellow]warning:[/bold yellow] this model is below its content-only baseline: "
                      f"{below['metric']} {below['model']:.4f} < {below['content']:.4f} (content-only cosine); "
                      + below_consequence(results.get("confirmation") or {}), highlight=False, soft_wrap=True)
    if results.get("uses_held_out_data"):
        console.print(f"[yellow]note:[/yellow] {results['note']}")
    console.print(f"run directory: {run_dir}")
