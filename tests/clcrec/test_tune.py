"""`cli.py tune`: the search space as TOML, checked; two trials on the tiny synthetic data through
the real trainer, scored on validation only; a killed tune resumes its interrupted trial; the
report's best config trains again through `train --config`."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from clcrec.config import TrainConfig
from clcrec.tune.space import DEFAULT_SPACE, check_space, parse_space
from clcrec.tune.study import STUDY_NAME, TuneConfig, run_tune
from common.errors import UserError
from tests.support import config, quiet


def test_the_default_space_and_what_a_space_file_may_not_say():
    names = [p.name for p in parse_space(DEFAULT_SPACE, "default")]
    assert names == ["l_r", "reg_weight", "temp_value", "lr_lambda", "num_sample", "dim_E"]
    for text, says in [("[num_neg]\nchoices = [64, 128]", "[num_neg] cannot vary: the shared cache has one num_neg"),
                       ("[lr]\nlow = 0.1\nhigh = 1.0", "[lr] is not a TrainConfig field"),
                       ("[l_r]\nlow = 0.0\nhigh = 0.1\nlog = true", "needs low < high (low > 0 with log = true"),
                       ("[epochs]\nlow = 1.5\nhigh = 4", "epochs is an integer field"),
                       ("[dim_E]\nchoices = [32, 'x']", "every choice must be an integer"),
                       ("[l_r]\nlow = 0.1\nhi = 1.0", "unknown key 'hi'"),
                       ("[select_mode]\nlow = 1\nhigh = 2", "select_mode is not a number; give it choices"),
                       ("", "declares no parameter")]:
        with pytest.raises(UserError) as e:
            parse_space(text, "s.toml")
        assert says in str(e.value), str(e.value)
    with pytest.raises(UserError, match="lr_lambda = 2.0 is not a valid config value"):
        check_space(parse_space("[lr_lambda]\nlow = 0.5\nhigh = 2.0", "s.toml"), TrainConfig())


def test_two_trials_on_tiny_data_and_a_killed_tune_resumes(tiny_dataset, tiny_cache, tmp_path):
    study_dir = tmp_path / "study"
    base = config(tiny_dataset, tiny_cache, "", epochs=2)
    given = {k: v for k, v in base.to_dict().items() if v != getattr(TrainConfig(), k)}
    first = run_tune(TuneConfig(str(study_dir), trials=1), given, None, quiet())
    assert first["best_trial"] == 0 and first["baseline"]["trial"] == 0  # trial 0 is the base config itself

    # A tune killed during its next trial leaves that trial running in the database.
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study.enqueue_trial({"l_r": 0.005, "reg_weight": 0.01, "temp_value": 0.5, "lr_lambda": 0.3, "num_sample": 0.7,
                         "dim_E": 32})
    interrupted = study.ask()
    for p in parse_space(DEFAULT_SPACE, "default"):  # what a trial does first: its parameters are stored
        p.suggest(interrupted)
    assert interrupted.number == 1
    summary = run_tune(TuneConfig(str(study_dir), trials=2), {}, None, quiet())

    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert trials[0].params == {"l_r": 0.01, "reg_weight": 0.1, "temp_value": 2.0, "lr_lambda": 0.5,
                                "num_sample": 0.5, "dim_E": 64}  # the base config (tests' l_r 0.01)
    for t in (trials[0], trials[2]):
        run = study_dir / "trials" / f"trial-{t.number:04d}"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 2 and t.user_attrs["epochs"] == 2
        assert t.value == max(m["select_score"] for m in metrics)  # the trainer's selection score, on validation
        saved = json.loads((run / "results.json").read_text())
        assert "test" not in saved  # no trial looks at test
        assert t.user_attrs["val"]["cold"] == pytest.approx(saved["val"]["cold"]["recall@20"])  # as the run serves
        assert list(run.glob("events.out.tfevents.*"))  # each trial's curves
    best = max((trials[0], trials[2]), key=lambda t: t.value)
    assert summary["best_trial"] == best.number and set(summary["test"]) == {"all", "warm", "cold"}
    best_cfg = TrainConfig(**TrainConfig.read_toml(study_dir / "best.toml"))
    assert best_cfg == base.replace(**best.params, cache=str(tiny_cache), run_dir="")

    with pytest.raises(UserError, match="another search space"):
        run_tune(TuneConfig(str(study_dir), trials=2), {}, (parse_space("[l_r]\nlow = 0.001\nhigh = 0.1", "s"),
                                                                "[l_r]\nlow = 0.001\nhigh = 0.1"), quiet())
    with pytest.raises(UserError, match="another base config .epochs: 2 -> 3"):
        run_tune(TuneConfig(str(study_dir), trials=2), {"epochs": 3, "dataset": str(tiny_dataset)}, None, quiet())


def test_a_trial_trailing_the_earlier_ones_is_pruned_at_its_epoch_report(tiny_dataset, tiny_cache, tmp_path):
    """Trial 1 (a learning rate that cannot learn in 2 epochs) reports after its first epoch a score
    below trial 0's at the same epoch: the median pruner stops it there, and it counts as finished."""
    study_dir, text = tmp_path / "study", "[l_r]\nlow = 1e-8\nhigh = 0.1\nlog = true\n"
    space = (parse_space(text, "s.toml"), text)
    given = {"dataset": str(tiny_dataset), "cache": str(tiny_cache), "num_neg": 16, "epochs": 2, "l_r": 0.01,
             "batch_size": 64, "select_k": 20, "select_window": 1, "eval_ema": 0.0}
    run_tune(TuneConfig(str(study_dir), trials=1, prune_after=1), given, space, quiet())
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_dir / 'study.db'}")
    study.enqueue_trial({"l_r": 1e-8})
    summary = run_tune(TuneConfig(str(study_dir), trials=2, prune_after=1), {}, None, quiet())
    trials = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_dir / 'study.db'}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].user_attrs["epochs"] == 1 and list(trials[1].intermediate_values) == [0]
    assert summary["best_trial"] == 0 and summary["finished"] == 2
