"""The CLCRec command line: thin typer commands that build a config and call library code.

    python cli.py --help
    python cli.py train                      # the whole flow on the built-in synthetic default

The commands live in commands/ (one module per stage); this file registers them and is the entry
point. Expected failures (bad input, a stale cache, a diverged run) raise
`common.errors.UserError`; `main()` prints their message and exits 1 without a traceback.
"""

from __future__ import annotations

import clcrec  # noqa: F401 - first: sets the OpenMP wait default before torch loads (clcrec/__init__.py)
import sys

from commands import data, negatives, training, tune, serving, bench  # noqa: F401,I001 - registers the commands, in flow order (--help lists them so)
from commands.apps import app, console
from common.errors import UserError


def main() -> None:
    try:
        app()  # standalone mode: typer handles usage errors (exit 2) and --help itself
    except UserError as e:
        # soft_wrap: never break a path in the message when stderr is not a terminal
        console.print("[bold red]error:[/bold red] ", end="")
        console.print(str(e), highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
