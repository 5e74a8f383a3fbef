"""A hyperparameter study: Optuna over a declared space, each trial a real training run.

    python cli.py tune studies/ml --dataset data/ml-100k --trials 20 --timeout 1500
    python cli.py tune studies/ml --trials 30          # resumes the study (killed or finished) and adds trials
    tensorboard --logdir studies/ml/trials             # every trial's curves

Reads a dataset and its negative cache (built once, shared by every trial: num_neg cannot vary).
Writes the study folder:

    study.db            the Optuna study (SQLite): trials, parameters, per-epoch reports, base config, space
    trials/trial-NNNN/  each trial's run directory (the trainer's: metrics, checkpoints, curves)
    best.toml           the best trial's config, as `train --config` reads it
    summary.json        the best trial: parameters, validation metrics, and its test metrics
    tune.lock           one `tune` at a time on a study

The objective is the trainer's own selection score on the validation split (smoothed validation
Recall@select_k of --select-mode), reported after each epoch so the median pruner stops a trial
that trails the earlier ones at the same epoch; a diverged trial counts as pruned. The test split
is evaluated once, at the end, for the best trial (and the baseline trial, trial 0: the base
config itself, so the table says what tuning gained). A killed `tune` leaves its running trial
marked running; the next `tune` on the study marks it failed and runs its parameters again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clcrec.config import TrainConfig
from clcrec.tune.space import Param, check_space, parse_space, read_space
from common.errors import TrainingDivergedError, UserError

STUDY_NAME = "clcrec"
MODES = ("all", "warm", "cold")


@dataclass(frozen=True)
class TuneConfig:
    study_dir: str
    trials: int = 20  # the study's target of finished (complete or pruned) trials, across resumes
    timeout: float | None = None  # seconds after which no new trial starts (the running one finishes)
    seed: int = 0  # the sampler's seed
    baseline: bool = True  # trial 0 trains the base config itself
    startup: int = 8  # random trials before TPE models the space
    prune_after: int = 4  # completed trials before the pruner compares

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:  # numpy's seed range (TPESampler)
            raise UserError(f"--sampler-seed must be an integer from 0 to 2^32-1, got {self.seed}")
        if not 1 <= self.trials <= 100_000:
            raise UserError(f"--trials must be from 1 to 100000, got {self.trials}")
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1, got {self.trials}")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"--timeout must be > 0 seconds, got {self.timeout}")


def run_tune(tc: TuneConfig, given: dict, space: tuple[list[Param], str] | None, console: Console) -> dict:
    """Create or resume the study, run trials until `tc.trials` have finished (or the timeout),
    then report; returns the summary (also written to summary.json). `given`: the base config's
    TrainConfig fields set by the user (a --config file, options); the rest take their defaults."""
    import optuna

    from cache.store import CacheStore
    from clcrec.device import resolve_device
    from clcrec.train.flow import default_paths, ensure_cache
    from clcrec.train.generations import check_cache
    from clcrec.train.selection import check_selectable
    from common.fsutil import check_output_dir, output_kind, write_marker
    from common.lock import OwnedLock
    from pipeline.dataset import load_dataset, read_fingerprint

    root = Path(tc.study_dir)
    check_output_dir(root, "the study folder")
    db = root / "study.db"
    found, desc, proven = output_kind(root)
    if desc and found not in ("study", "empty"):  # never write into a run, a dataset, a user's folder...
        raise UserError(f"the study folder {root} is {desc}, not a tune study folder; nothing was changed: "
                        "pass a new or empty folder to start a study")
    stored = load_stored(db) if db.exists() else None  # a study from before markers: resumed if it loads
    if found == "study" and not proven and stored is None:
        raise UserError(f"the study folder {root} is {desc}, but not a study of this program; nothing was "
                        "changed: pass a new or empty folder to start a study")
    if stored is None and not given.get("dataset"):
        raise UserError(f"{root} holds no study yet; a new one needs --dataset (or --config with a dataset)")
    if stored is not None:  # resume: the study's own base and space; a different one is refused
        base, space = check_same(stored, given, space, root)
    else:
        base, space = TrainConfig(**given), space or read_space(None)
    params, space_text = space
    base = default_paths(base.replace(run_dir=str(root / "trials" / "base")), "default")
    check_space(params, base)
    check_selectable(load_dataset(base.dataset), base)  # before anything is written
    resolve_device(base.device)  # `--device tpu`: refused here, not in every trial
    if (Path(base.cache) / "manifest.json").exists():  # another num_neg or exclusion: refused before the lock
        check_cache(CacheStore(base.cache), Path(base.dataset), read_fingerprint(base.dataset), base.num_neg, base.exclude,
                    tune=True)

    root.mkdir(parents=True, exist_ok=True)
    lock = OwnedLock(root / "tune.lock", f"tune of {root}", busy=(
        "another tune is running on {path} ({holder}); wait for it, or study in another folder"))
    lock.acquire(wait=False)
    try:
        if not proven:
            write_marker(root, "study")
        ensure_cache(Path(base.dataset), Path(base.cache), base.num_neg, base.seed, console, base.exclude)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
            # seeded by the trials already run too: a resumed study must not replay its first draws
            sampler=optuna.samplers.TPESampler(seed=tc.seed + (stored or {}).get("trials", 0),
                                               n_startup_trials=tc.startup),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=tc.prune_after))
        if stored is None:
            study.set_user_attr("base_config", base.to_dict())
            study.set_user_attr("space", space_text)
            if tc.baseline:
                study.enqueue_trial({p.name: getattr(base, p.name) for p in params}, user_attrs={"baseline": True})
        retry_killed(study, storage, console)
        finished = count_finished(study)
        left = tc.trials - finished
        console.print(f"study {root}: {finished} trials finished, {left if left > 0 else 0} to run; "
                      f"space: {'; '.join(p.describe() for p in params)}", highlight=False, soft_wrap=True)
        if left > 0:
            run_trials(study, params, base, root, tc, left, console)
        return report(study, base, root, console)
    finally:
        lock.release()


def load_stored(db: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{db.resolve()}")
    except Exception as e:  # a foreign or corrupt database
        raise UserError(f"{db} is not a study of this program ({str(e).splitlines()[0][:200]})") from None
    attrs = study.user_attrs
    return {"base": TrainConfig.from_dict(attrs["base_config"]), "space": attrs["space"], "trials": len(study.trials)}


def check_same(stored: dict, given: dict, space, root: Path):
    """The stored (base, space) of a study being resumed; UserError if a value given differs."""
    old = stored["base"]
    diff = [f"{k}: {getattr(old, k)!r} -> {v!r}" for k, v in given.items() if k != "run_dir" and v != getattr(old, k)]
    if diff:
        raise UserError(f"study {root} was started with another base config ({', '.join(diff)}); resume it "
                        "without those options, or start a new study folder")
    if space is not None and space[1] != stored["space"]:
        raise UserError(f"study {root} was started with another search space; resume it without --space, "
                        "or start a new study folder")
    return old, (parse_space(stored["space"], f"{root}/study.db"), stored["space"])


def count_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def retry_killed(study, storage, console: Console) -> None:
    """Trials left running by a killed `tune` (we hold the study's lock, so none really runs):
    mark them failed and queue their parameters again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **({"baseline": True}
                                                                           if t.user_attrs.get("baseline") else {})})
        console.print(f"trial {t.number} was interrupted; its parameters run again")


def run_trials(study, params: list[Param], base: TrainConfig, root: Path, tc: TuneConfig, n: int,
               console: Console) -> None:
    import optuna
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from clcrec.train.trainer import train

    quiet = Console(file=open(os.devnull, "w"))  # the trials' own output: their run dirs hold it all
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("trials", total=tc.trials, completed=count_finished(study))
    key = f"recall@{base.select_k}"

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial) for p in params}
        run_dir = root / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        seen = {"best": -1.0, "epochs": 0}

        def on_epoch(epoch: int, record: dict, best: float) -> None:
            seen.update(best=best, epochs=epoch + 1)
            progress.update(task, description=f"trial {trial.number}: epoch {epoch}, val cold {key} "
                                              f"{record['val']['cold'][key]:.4f}, best score {max(best, 0):.4f}")
            if best >= 0:  # from the first selectable epoch (an average needs its memory)
                trial.report(best, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: best score {best:.4f} trails the earlier trials' median")

        try:
            results = train(base.replace(**values, run_dir=str(run_dir)), console=quiet, on_epoch=on_epoch, test=False)
        except TrainingDivergedError as e:  # a value that diverges is a bad value, not a broken study
            raise optuna.TrialPruned(f"diverged: {str(e).split(';')[0]}") from None
        finally:
            trial.set_user_attr("epochs", seen["epochs"])
        trial.set_user_attr("best_epoch", results["best_epoch"])
        trial.set_user_attr("val", {m: results["val"][m][key] for m in MODES})
        return seen["best"]

    def said(study, t) -> None:
        progress.update(task, completed=count_finished(study))
        state = t.state.name.lower()
        value = f"score {t.value:.4f}" if t.value is not None else state
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})" if any(
            s.value is not None for s in study.trials) else ""
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        console.print(f"trial {t.number} {state} after {t.user_attrs.get('epochs', 0)} epochs: {value}; {best}; "
                      f"{shown}", highlight=False, soft_wrap=True)

    started, before = time.time(), count_finished(study)
    with progress:
        study.optimize(objective, n_trials=n, timeout=tc.timeout, callbacks=[said])
    console.print(f"{count_finished(study) - before} trials finished in {time.time() - started:.0f} s")


def report(study, base: TrainConfig, root: Path, console: Console, top: int = 5) -> dict:
    """The best trials' table, best.toml, and the test metrics of the best (and baseline) trial."""
    from optuna.trial import TrialState

    from clcrec.evaluation.report import evaluate_run, format_table
    from common.fsutil import atomic_write_bytes, atomic_write_json

    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    if not done:
        console.print("no trial has completed yet")
        return {}
    key = f"recall@{base.select_k}"
    names = list(done[0].params)
    table = Table(title=f"best trials of {len(done)} complete ({count_finished(study) - len(done)} pruned)",
                  caption=f"score: the selection score (validation {base.select_mode} {key}, as the trainer smooths it); "
                          f"val: {key} of the selected checkpoint")
    for col in ["trial", "score", *(f"val {m}" for m in MODES), "epochs", *names]:
        table.add_column(col, justify="right")
    for t in done[:top] + [t for t in done[top:] if t.user_attrs.get("baseline")]:
        val = t.user_attrs.get("val", {})
        table.add_row(f"{t.number}{' (base)' if t.user_attrs.get('baseline') else ''}", f"{t.value:.4f}",
                      *(f"{val.get(m, float('nan')):.4f}" for m in MODES), str(t.user_attrs.get("epochs", "")),
                      *(f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n))
                        for n in names))
    wide = Console(width=max(160, Console().width))  # the result, on stdout; logs are not terminals
    wide.print(table)

    best = done[0]
    best_cfg = base.replace(**best.params, run_dir="")
    atomic_write_bytes(root / "best.toml", best_cfg.to_toml().encode())
    shown = {f"best (trial {best.number})": best}
    baseline = next((t for t in done if t.user_attrs.get("baseline")), None)
    if baseline is not None and baseline.number != best.number:
        shown[f"base config (trial {baseline.number})"] = baseline
    test = {name: evaluate_run(t.user_attrs["run_dir"], splits=("test",))["test"] for name, t in shown.items()}
    wide.print(format_table(test, ks=(base.select_k,), title="test split (evaluated for these trials only)"))
    summary = {
        "best_trial": best.number, "score": best.value, "params": best.params, "run_dir": best.user_attrs["run_dir"],
        "val": best.user_attrs.get("val"), "test": test[f"best (trial {best.number})"],
        "baseline": None if baseline is None else {
            "trial": baseline.number, "score": baseline.value, "val": baseline.user_attrs.get("val"),
            "test": test.get(f"base config (trial {baseline.number})", test[f"best (trial {best.number})"])},
        "complete": len(done), "finished": count_finished(study),
    }
    atomic_write_json(root / "summary.json", summary)
    wide.print(f"best config: {root / 'best.toml'} (train it again: python cli.py train --config {root / 'best.toml'})",
               highlight=False)
    return summary
