#!/usr/bin/env bash
# Refresh constraints.txt (one command: `make constraints`): resolve the project's dependencies
# afresh, as scripts/setup.sh installs them (torch==${TORCH_VERSION:-2.13.0}, then -e ".[dev]"),
# and pin every package pip chose, except torch and the packages only torch needs (those stay as
# setup.sh chooses them: the CPU wheel, or the CUDA build and what it brings).
#
# Nothing is installed: `pip install --dry-run --ignore-installed --report` resolves in a throwaway
# venv, ignoring the current pins, so a refresh takes the newest versions pyproject.toml's ranges
# allow (after a dependency is added to pyproject.toml, this is all there is to do). Review the
# diff, run `make test`, commit constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --dry-run --ignore-installed --report "$tmp/report.json" \
    "torch==${TORCH_VERSION:-2.13.0}" -e ".[dev]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$tmp/venv/bin/python" - "$tmp/report.json" > constraints.txt <<'PYEOF'
import json, platform, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name as canon

report = json.load(open(sys.argv[1]))
pkgs = {canon(i["metadata"]["name"]): i for i in report["install"]}
env = report.get("environment", {})

def deps(name, extras=()):
    out = set()
    for spec in pkgs[name]["metadata"].get("requires_dist") or []:
        req = Requirement(spec)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or ("",))):
            continue
        if canon(req.name) in pkgs:
            out.add(canon(req.name))
    return out

def closure(roots, extras=(), stop=()):
    seen, todo = set(), [(r, extras) for r in roots]
    while todo:
        name, ex = todo.pop()
        for d in deps(name, ex):
            if d not in seen and d not in stop:
                seen.add(d)
                todo.append((d, ()))
    return seen

project = next(n for n, i in pkgs.items() if i.get("is_direct") and n != "torch")
ours = closure([project], ("dev",), stop={"torch"})  # what the project needs besides torch
torch_only = (closure(["torch"]) | {"torch"}) - ours
pinned = sorted(ours - {project, "torch"})
print("# Exact versions of everything scripts/setup.sh installs besides torch, as resolved by")
print("# scripts/lock_deps.sh (refresh: `make constraints`). setup.sh installs with `-c constraints.txt`;")
print("# pyproject.toml keeps its ranges for installs into other environments.")
print(f"# Resolved for Python {platform.python_version()} on {platform.machine()} Linux. Not pinned here: torch and")
print("# what only torch needs, as setup.sh's torch install chooses them:")
print(f"#   {', '.join(sorted(torch_only - {'torch'}))}")
for name in pinned:
    print(f"{pkgs[name]['metadata']['name']}=={pkgs[name]['metadata']['version']}")
PYEOF
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
