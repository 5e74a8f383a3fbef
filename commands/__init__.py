"""The CLI's commands, one module per stage: data, negatives, training, serving, bench. Each is a
thin typer command that builds a config and calls library code; `cli.py` is the entry point."""
