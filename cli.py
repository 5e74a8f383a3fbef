"""The CLCRec command line: thin typer commands that build a config and call library code.

    python cli.py --help
    python cli.py train                      # the whole flow on the built-in synthetic default

Expected failures (bad input, a stale cache, a diverged run) raise `pipeline.errors.UserError`;
`main()` prints their message and exits 1 without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipeline.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="CLCRec: contrastive cold-start recommendation with a data pipeline and cached negatives.",
)
ingest_app = typer.Typer(no_args_is_help=True, help="Turn real data into a canonical dataset directory.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks, measured side by side in one run.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

# ---------------------------------------------------------------------------------------------
# Data pipeline commands (ingest, synth)
# ---------------------------------------------------------------------------------------------

# [pipeline-commands]

# ---------------------------------------------------------------------------------------------
# Negative cache commands (build-negatives, refresh, cache info)
# ---------------------------------------------------------------------------------------------

# [cache-commands]

# ---------------------------------------------------------------------------------------------
# Training commands (train, evaluate, recommend, export)
# ---------------------------------------------------------------------------------------------

# [train-commands]


def main() -> None:
    try:
        app()  # standalone mode: typer handles usage errors (exit 2) and --help itself
    except UserError as e:
        console.print("[bold red]error:[/bold red] ", end="")
        console.print(str(e), highlight=False, markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
