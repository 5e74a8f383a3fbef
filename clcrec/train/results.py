"""The end of a run: the best checkpoint's metrics, reference points, plots.

Reads nothing itself (the trainer hands over its evaluation and its metrics); writes
RUN/results.json (validation and, unless a tuning trial asks otherwise, test metrics with the
content-only, random and oracle baselines on the same test split, how personal the cold lists are,
and whether validation cold recall is below the content-only baseline) and the run's plots.
"""

from __future__ import annotations

from rich.console import Console

from clcrec.config import TrainConfig
from clcrec.evaluation.personalisation import (
    below_content_baseline,
    personalisation_results,
)
from clcrec.evaluation.ranking import EvalConfig
from clcrec.rundir import RunDir
from clcrec.train.generations import HELD_OUT_NOTE
from clcrec.train.selection import describe_selection
from common.fsutil import atomic_write_json


def write_results(run: RunDir, cfg: TrainConfig, dataset, evaluate, tables, eval_cfg: EvalConfig,
                  metrics: list[dict], best_epoch: int, console: Console, test: bool = True,
                  extra: dict | None = None, plots: bool = True) -> dict:
    """results.json of the model now loaded (`evaluate(split)` ranks it, `tables()` gives its user
    and ranking tables) and the plots of `metrics`."""
    results = {"best_epoch": best_epoch, "select": describe_selection(cfg), **(extra or {}), "val": evaluate("val")}
    if test:  # with reference points on the same test split: content-only cosine, random, oracle
        from clcrec.evaluation.baselines import baseline_results

        results["test"] = evaluate("test")
        results["baselines"] = {"test": baseline_results(dataset, "test", eval_cfg, seed=cfg.seed)}
        # Cold top-10 lists: distinct per user, coverage, popularity share (evaluation/personalisation.py)
        results["personalisation"] = personalisation_results(dataset, *tables(), seed=cfg.seed)
    results["below_content_baseline"] = below_content_baseline(dataset, results["val"], cfg, eval_cfg,
                                                               results.get("confirmation"))
    results["negatives_exclude"] = cfg.exclude
    results["uses_held_out_data"] = cfg.exclude != "train"
    if results["uses_held_out_data"]:
        results["note"] = HELD_OUT_NOTE
    atomic_write_json(run.results_path, results)
    if not plots:
        return results
    try:
        from clcrec.train.plots import plot_run

        plot_run(metrics, run.root, k=cfg.select_k, best_epoch=best_epoch)
    except Exception as e:  # plots are a convenience; never lose a finished run over them
        console.print(f"[yellow]warning:[/yellow] plotting failed: {e}")
    return results

