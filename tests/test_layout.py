"""The layout's rules, read from the source (ast), lazy imports inside functions included:

- layers import downstream only: common <- pipeline <- cache <- clcrec <- commands <- cli;
- inside clcrec/: the top modules import only each other; data/ and evaluation/ import only the
  top (and themselves); train/ may add data/ and evaluation/; serving/ may add evaluation/, never
  train/ or data/; bench/ and tune/ sit on top. The package's lazy `load_run` facade is the one exception;
- no import cycle anywhere; no module past 400 lines; at most 8 modules flat in clcrec/.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pipeline", "cache", "clcrec", "commands")
LAYER = {"common": 0, "pipeline": 1, "cache": 2, "clcrec": 3, "commands": 4, "cli": 5}
# clcrec part -> the clcrec parts it may import ("top": the modules directly in clcrec/)
CLCREC_ALLOWED = {
    "top": {"top"},
    "data": {"top", "data"},
    "evaluation": {"top", "evaluation"},
    "train": {"top", "data", "evaluation", "train"},
    "serving": {"top", "evaluation", "serving"},
    "bench": {"top", "data", "evaluation", "train", "serving", "bench"},
    "tune": {"top", "data", "evaluation", "train", "tune"},  # trials train through the trainer
}
FACADE = ("clcrec", "clcrec.serving.run")  # clcrec/__init__.py's lazy `from clcrec import load_run`
# Run.update is the API's door to fine-tuning (cli.py update): one lazy import inside that method,
# so serving without updates never loads training.
RUN_UPDATE = ("clcrec.serving.run", "clcrec.train.update")


def modules() -> dict[str, Path]:
    found = {"cli": REPO / "cli.py"}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (a from-import of a submodule counts as
    that submodule)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t:
                out.add(t)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def clcrec_part(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and (REPO / "clcrec" / parts[1]).is_dir()):
        return parts[1]
    return "top"


def test_layers_import_downstream_only():
    bad = []
    for mod, targets in graph().items():
        for t in targets:
            src, dst = mod.split(".")[0], t.split(".")[0]
            if LAYER[dst] > LAYER[src]:
                bad.append(f"{mod} -> {t}")
            elif src == dst == "clcrec" and (mod, t) not in (FACADE, RUN_UPDATE):
                if clcrec_part(t) not in CLCREC_ALLOWED[clcrec_part(mod)]:
                    bad.append(f"{mod} ({clcrec_part(mod)}) -> {t} ({clcrec_part(t)})")
    assert not bad, "imports against the layout's rules:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    g = {m: {t for t in ts if (m, t) != FACADE} for m, ts in g.items()}
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checker itself: a serving module importing train/ breaks the rules, a two-module loop
    is a cycle (run on a copy of the graph, so the real tree stays untouched)."""
    assert clcrec_part("clcrec.serving.run") == "serving" and clcrec_part("clcrec.model") == "top"
    assert "train" not in CLCREC_ALLOWED["serving"] and "data" not in CLCREC_ALLOWED["serving"]
    assert clcrec_part("clcrec.train") == "train"  # the package itself belongs to its part
    known = {"common.x": tmp_path / "x.py", "pipeline.y": tmp_path / "y.py"}
    known["common.x"].write_text("def f():\n    from pipeline.y import z  # lazy, still counted\n")
    assert imports("common.x", known["common.x"], known) == {"pipeline.y"}


def test_modules_are_small_and_clcrec_top_is_short():
    long = {str(p.relative_to(REPO)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules past 400 lines (split them along a real seam): {long}"
    flat = sorted(p.name for p in (REPO / "clcrec").glob("*.py") if p.name != "__init__.py")
    assert len(flat) <= 8, f"clcrec/ holds {len(flat)} flat modules: {flat}"
