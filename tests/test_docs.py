"""Docs that cannot drift: README.md and docs/*.md are checked against the code they describe.

- every `python cli.py ...` line (fenced code blocks, inline code that starts with it, and inline
  code that starts with a command name, `train --cache C`) names a command of the typer app and only
  options that command has, with no more arguments than it takes;
- every other option named in inline code exists in the CLI, and every `python scripts/X.py ...`
  line names only options X parses;
- docs/cli.md is what scripts/gen_cli_docs.py generates from the CLI's own --help texts;
- every relative link and `#anchor` resolves (GitHub's heading slugs).
The README's per-stage example is run by tests/test_docs_example.py.

Each failure names the file and line. Run: python -m pytest tests/test_docs.py -n 0
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

import pytest

from tests.support import REPO, cli_tokens, doc_files, fenced_blocks, joined, prose_lines, where


def cli_commands(path: Path, names: set[str] = frozenset()):
    """(line number, command text) of every cli.py command line in one Markdown file: in code
    blocks, in inline code, and inline code in prose that starts with one of `names` (the CLI's
    commands: `train --cache C`), given the `cli.py` it leaves out."""
    text = path.read_text()
    for start, info, body in fenced_blocks(text):
        if info in ("python", "toml", "json"):
            continue
        for n, line in joined(start, body):
            if re.search(r"(^|\s|/)cli\.py(\s|$)", line):
                yield n, line
    for n, line in prose_lines(text):
        for span in re.findall(r"`([^`]+)`", line):
            if re.match(r"^(\S*/)?python\s+cli\.py(\s|$)", span.strip()):
                yield n, span
            elif span.split()[:1] and span.split()[0] in names and len(span.split()) > 1:
                yield n, "cli.py " + span


# --- checking a command line against the click tree ------------------------------------------------

def option_table(command) -> dict[str, object]:
    return {o: p for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


def takes_value(param) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


def check_options(command, args: list[str], name: str) -> tuple[list[str], list[str]]:
    """(problems, positional arguments) of `args` against one command's options."""
    table, problems, positional, i = option_table(command), [], [], 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("-") and len(tok) > 1 and not re.match(r"^-\d", tok):
            opt = tok.split("=", 1)[0]
            param = table.get(opt)
            if param is None:
                near = difflib.get_close_matches(opt, list(table), n=1)
                problems.append(f"`{name}` has no option {opt}" + (f" (did you mean {near[0]}?)" if near else ""))
                if "=" not in tok and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    i += 1  # its value, most likely: not an extra argument
            elif takes_value(param) and "=" not in tok:
                i += 1  # its value, placeholder or not
        else:
            positional.append(tok)
        i += 1
    return problems, positional


def check_command(root, args: list[str]) -> list[str]:
    """What is wrong with `cli.py ARGS` (empty: nothing)."""
    command, path, i = root, [], 0
    while hasattr(command, "commands"):  # a group: its own options, then a subcommand
        group_options = option_table(command)
        while i < len(args) and args[i].startswith("-") and args[i] not in ("--help",):
            if path and any(args[i] in option_table(sub) for sub in command.commands.values()):
                return []  # `ingest --cold-val-share`: an option of the group's commands
            if args[i] not in group_options:
                nor = " (nor any of its commands)" if path else ""
                return [f"`{' '.join(['cli.py', *path])}`{nor} has no option {args[i]}"]
            i += 1
        if i >= len(args) or args[i] in ("...", "--help"):
            return []
        name = args[i]
        if name not in command.commands:
            near = difflib.get_close_matches(name, list(command.commands), n=1)
            return [f"no command `{' '.join([*path, name])}`" + (f" (did you mean {near[0]}?)" if near else "")]
        command, path, i = command.commands[name], [*path, name], i + 1
    rest = [a for a in args[i:] if a not in ("...", "…")]
    problems, positional = check_options(command, rest, " ".join(path))
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    if all(p.nargs >= 0 for p in arguments) and len(positional) > sum(p.nargs for p in arguments):
        problems.append(f"`{' '.join(path)}` takes {sum(p.nargs for p in arguments)} argument(s), "
                        f"given {len(positional)}: {' '.join(positional)}")
    return problems


@pytest.fixture(scope="module")
def root():
    from typer.main import get_command

    import cli

    return get_command(cli.app)


def test_every_documented_command_and_option_exists(root):
    found, bad = 0, []
    for path in doc_files():
        for line, command in cli_commands(path, set(root.commands)):
            found += 1
            for problem in check_command(root, cli_tokens(command)):
                bad.append(f"{where(path, line)}: {problem}\n    {command.strip()}")
    assert found > 50, f"only {found} cli.py command lines found in the docs: is the parser broken?"
    assert not bad, "commands in the docs that the CLI does not have:\n" + "\n".join(bad)


def script_options(script: Path) -> set[str]:
    """The options a script parses: every quoted "--name" in its source (argparse, or a shell test)."""
    return set(re.findall(r"""["'](--[a-zA-Z][\w-]*)["']""", script.read_text()))


def option_mentions(path: Path):
    """(line number, command text) of every line or inline code span that runs a script of
    scripts/, and of every inline code span that names options."""
    text = path.read_text()
    for start, info, body in fenced_blocks(text):
        for n, line in joined(start, body):
            if re.search(r"(^|\s)(python|bash)\s+scripts/", line):
                yield n, line
    for n, line in prose_lines(text):
        for span in re.findall(r"`([^`]+)`", line):
            if "--" in span:
                yield n, span


def test_every_option_named_in_prose_and_scripts_exists(root):
    """`--refresh-every N` in a sentence names an option of some command; `python scripts/X.py
    --reuse` names an option of X (tools that are not ours, tensorboard or pytest's, are skipped)."""
    every = set()
    stack = [root]
    while stack:
        command = stack.pop()
        every |= set(option_table(command)) | {"--help"}
        stack.extend(getattr(command, "commands", {}).values())
    scripts = {p.name: script_options(p) for p in (REPO / "scripts").iterdir() if p.suffix in (".py", ".sh")}
    any_script = set().union(*scripts.values())
    bad, count = [], 0
    for path in doc_files():
        for line, text in option_mentions(path):
            head = text.split()
            if re.search(r"(^|\s|/)cli\.py(\s|$)", text) or head[0] in ("tensorboard", "torchrun", "-n", "pytest"):
                continue  # cli.py lines: the command test above; other tools' options are not ours
            script = re.search(r"scripts/([\w.-]+)", text)
            script = script.group(1) if script and head[0] in ("python", "bash") else None
            known = scripts.get(script, set()) if script else every | any_script
            for opt in re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", text.split(" # ")[0]):
                count += 1
                if opt not in known:
                    what = f"scripts/{script}" if script else "the CLI or scripts/"
                    bad.append(f"{where(path, line)}: {opt} is not an option of {what}\n    {text.strip()}")
    assert count > 100, f"only {count} option mentions found: is the parser broken?"
    assert not bad, "options in the docs that nothing parses:\n" + "\n".join(bad)


def test_cli_reference_is_generated_from_the_cli():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_cli_docs
    finally:
        sys.path.remove(str(REPO / "scripts"))
    page = REPO / "docs" / "cli.md"
    have = page.read_text() if page.exists() else ""
    want = gen_cli_docs.render()
    diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "docs/cli.md", "the CLI", n=0))
    assert have == want, f"docs/cli.md is not what the CLI says: run python scripts/gen_cli_docs.py\n{diff[:3000]}"


# --- links ------------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation but hyphens dropped,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(2))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def links(path: Path):
    """(line number, target) of every Markdown link outside code."""
    for n, line in prose_lines(path.read_text()):
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            yield n, target


def test_every_relative_link_and_anchor_resolves():
    bad, count = [], 0
    for path in doc_files():
        for line, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            count += 1
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                shown = dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest
                bad.append(f"{where(path, line)}: {target}: no file {shown}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                near = difflib.get_close_matches(anchor, sorted(anchors(dest)), n=1)
                bad.append(f"{where(path, line)}: {target}: no heading #{anchor} in {dest.relative_to(REPO)}"
                           + (f" (did you mean #{near[0]}?)" if near else ""))
    assert count > 30, f"only {count} relative links found: is the parser broken?"
    assert not bad, "broken links:\n" + "\n".join(bad)


