"""Hyperparameter search: `tune` (clcrec/tune/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from commands.apps import app, console


@app.command()
def tune(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="Study folder (study.db, trials/, best.toml, summary.json); "
                                 "an existing study resumes."),
    dataset: Optional[Path] = typer.Option(None, help="Dataset directory (a new study)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Base TrainConfig fields (TOML) every trial "
                                          "starts from; the space's parameters vary on top."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space (TOML, one table per field); "
                                         "default: l_r, reg_weight, temp_value, lr_lambda, num_sample, dim_E."),
    trials: int = typer.Option(20, "--trials", help="Finished trials the study should reach (counting earlier runs)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds after which no new trial starts."),
    cache: Optional[Path] = typer.Option(None, help="Negative cache shared by the trials (default: built as train does)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs per trial [60]."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience per trial [10]."),
    select_mode: Optional[str] = typer.Option(None, help="The validation score: cold (default), warm, all, mean."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda ..."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0: torch default)."),
    seed: int = typer.Option(0, "--sampler-seed", help="Seed of the TPE sampler."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Trial 0 trains the base config itself."),
):
    """Search hyperparameters with Optuna: each trial a training run, scored on validation only."""
    from clcrec.config import TrainConfig
    from clcrec.tune.space import read_space
    from clcrec.tune.study import TuneConfig, run_tune
    from commands.training import given_fields

    tc = TuneConfig(study_dir=str(study), trials=trials, timeout=timeout, seed=seed, baseline=baseline)
    from_file = TrainConfig.read_toml(config) if config is not None else {}
    given = given_fields(ctx, skip=("study", "config", "space", "trials", "timeout", "seed", "baseline"))
    run_tune(tc, {**from_file, **given}, read_space(space) if space is not None else None, console)
