"""Metrics of a finished run, and the table every command prints them in.

    python cli.py evaluate runs/RUN [--k 10]

Reads RUN/config.json, its best checkpoint and the run's dataset (clcrec/rundir.py); writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from clcrec.evaluation.ranking import EvalConfig, evaluate_ranking
from clcrec.rundir import RunDir, open_run
from common.errors import UserError


def evaluate_run(run_dir: Path, splits=("val", "test"), ks: tuple[int, ...] = (), notes: list | None = None) -> dict:
    """Metrics of the best checkpoint; `ks` (cut-offs to show) must be among the run's. `notes`
    gets a line when that checkpoint is provisional (a run stopped before its first selectable epoch)."""
    run_ks = RunDir(run_dir).read_config()["config"].get("ks", [10, 20, 50])
    unknown = [k for k in ks if k not in run_ks]
    if unknown:
        raise UserError(f"--k {unknown[0]} is not among the cut-offs run {run_dir} evaluates ({run_ks}); "
                        f"pass --k with one of them")
    run = open_run(run_dir)
    if run.checkpoint.get("provisional") and notes is not None:
        notes.append(f"best.pt of {run_dir} is provisional: epoch {run.checkpoint['epoch']}, before the first epoch "
                     f"the selection rule may choose; continue the run with `cli.py train --resume {run_dir}`")
    users, items = run.tables()
    ecfg = EvalConfig(ks=tuple(run.cfg.ks), user_block=run.cfg.eval_block)
    return {
        s: evaluate_ranking(users, items, run.dataset.train, run.dataset.split(s), run.dataset.item_status, ecfg)
        for s in splits
    }


def format_table(results_by_split: dict[str, dict], ks: tuple[int, ...] = (20,), title: str | None = None,
                 first: str = "Split"):
    """A rich Table: one row per (split, mode), columns Users and Recall/NDCG/Precision/Hit @K;
    `first` labels the first column (e.g. "Model" when its rows are models, not splits)."""
    from rich.table import (
        Table,  # lazy: keep evaluation importable without the CLI stack
    )

    table = Table(title=title)
    table.add_column(first)
    table.add_column("Mode")
    table.add_column("Users", justify="right")
    names = [("recall", "Recall"), ("ndcg", "NDCG"), ("precision", "Precision"), ("hit", "Hit")]
    for k in ks:
        for _, label in names:
            table.add_column(f"{label}@{k}", justify="right")
    for split, by_mode in results_by_split.items():
        for mode, res in by_mode.items():
            if not isinstance(res, dict):
                continue
            cells = [split, mode, str(res.get("users", "-"))]
            for k in ks:
                for key, _ in names:
                    v = res.get(f"{key}@{k}")
                    cells.append("-" if v is None else f"{v:.4f}")
            table.add_row(*cells)
    return table
