"""The typer app and its command groups, shared by the command modules (commands/*.py)."""

from __future__ import annotations

import typer
from rich.console import Console

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
FORCE = typer.Option(False, "--force", help="Replace an existing target.")  # shared by the writing commands


@app.callback()
def _global_options(
    skip_hash: bool = typer.Option(
        False, "--skip-hash", help="Do not hash dataset files on open (huge data); the shape, dtype, "
        "id-range and finiteness checks still run. Same as CLCREC_SKIP_HASH=1."),
) -> None:
    """CLCRec: contrastive cold-start recommendation with a data pipeline and cached negatives."""
    if skip_hash:
        import os

        from common.integrity import SKIP_HASH_ENV

        os.environ[SKIP_HASH_ENV] = "1"
