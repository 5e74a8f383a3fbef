"""`cli.py tune`: hyperparameter search with Optuna, each trial a real training run.

    space.py   the declared search space (TOML), checked against TrainConfig
    study.py   the study: SQLite storage, trials through the trainer, pruning, resume, the report
"""
