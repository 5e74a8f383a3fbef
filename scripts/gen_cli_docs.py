"""Write docs/cli.md, the command-line reference, from the typer app itself.

    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is not what the CLI says

The `--help` texts are the source: every command, argument and option of `cli.py` with its type,
default and help text, in the order `--help` lists them. tests/test_docs.py fails when the page and
the CLI differ, so a changed option is one run of this script away from its reference page.
Reads: cli.py and commands/. Writes: docs/cli.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from the typer app by `python scripts/gen_cli_docs.py` (do not edit by hand:
`tests/test_docs.py` fails when this page and the commands' own `--help` differ). The guide
says when to use what: [index](index.md).
"""


def root_command():
    """The click command tree of cli.py's typer app."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from typer.main import get_command

    import cli

    return get_command(cli.app)


def walk(command, path=()):
    """(path, command) for every group and command, depth first, in --help order."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def cell(text) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def describe(param, ctx) -> tuple[str, str, str, str]:
    """(names, type, default, help) of one parameter, as --help shows them."""
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}`" + (" ..." if param.nargs == -1 else "")
    else:
        names = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
    kind = "flag" if getattr(param, "is_flag", False) else param.display_type(ctx).strip("<>")
    default = param.default
    shown = "" if default is None or callable(default) or getattr(param, "is_flag", False) and default is False \
        else f"`{default}`" if not isinstance(default, (list, tuple)) else " ".join(f"`{d}`" for d in default)
    need = "required" if param.required else shown
    return names, cell(kind), need, cell(param.help or "")


def render() -> str:
    """The whole page."""
    root = root_command()
    out = [HEADER]
    for path, command in walk(root):
        ctx = command.context_class(command, info_name=" ".join(("cli.py", *path)))
        title = " ".join(path) if path else "cli.py (global options)"
        out.append(f"## {title}\n")
        out.append(cell(command.help or "") + "\n")
        if getattr(command, "commands", None):
            listed = ", ".join(f"`{' '.join((*path, name))}`" for name in command.commands)
            out.append(f"Commands: {listed}.\n")
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            out.append("| name | type | default | help |\n|---|---|---|---|")
            out.extend("| " + " | ".join(describe(p, ctx)) + " |" for p in params)
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if "--check" in argv:
        if PAGE.exists() and PAGE.read_text() == page:
            return 0
        print(f"{PAGE.relative_to(REPO)} differs from the CLI: run python scripts/gen_cli_docs.py", file=sys.stderr)
        return 1
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
