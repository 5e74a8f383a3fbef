"""Derive the bounds of the trajectory tests from runs over several seeds and kernel targets.

    python scripts/derive_bounds.py                  # measure and print; change nothing
    python scripts/derive_bounds.py --write          # ... and write tests/trajectory_bounds.json and
                                                     # the measured block of each test's docstring
                                                     # (= make bounds; after a change of training defaults)
    python scripts/derive_bounds.py --cases quality --seeds 0 1 2 --targets default+generic

A trained model's figures (cold recall over the planted oracle's...) are deterministic on one
machine and move across CPUs: torch's ATen kernels and numba's kernels pick their vector width by
CPU. Every (case, seed, target) runs in a fresh process under the target's environment
(`ATEN_CPU_CAPABILITY` picks torch's kernels and must be set before torch loads;
`NUMBA_CPU_NAME=generic` compiles numba's kernels for a baseline x86-64), calling the test module's
own `measure(tmp_path, seed)`, so the tests and this script train exactly the same thing. Each
figure's bound is its worst run times (1 - margin), rounded down. Targets the CPU cannot run
(AVX-512 on an AVX2 machine) are named as not measured.

Reads: the test modules in CASES. Writes (with --write): tests/trajectory_bounds.json and the block
between "Measured by scripts/derive_bounds.py:" and "(end of measured block)" in each test module.
About 45 s per quality run and 25 s per tags run on 2 idle cores: the defaults (2 cases x 3 seeds
x 4 targets on an AVX2 machine, what the committed bounds were derived from) take about 15 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOUNDS_FILE = REPO / "tests" / "trajectory_bounds.json"

# case -> the test module whose `measure(tmp_path, seed) -> {figure: value}` it runs; every figure
# is a floor (the test asserts figure >= bound)
CASES = {
    "quality": "tests.clcrec.test_quality",
    "tags": "tests.clcrec.test_tag_content",
}
ATEN_LEVELS = ["default", "avx2", "avx512"]  # torch's x86 capabilities, lowest first


def run_worker(case: str, seed: int, out: Path) -> None:
    sys.path.insert(0, str(REPO))
    module = importlib.import_module(CASES[case])
    with tempfile.TemporaryDirectory(prefix=f"bounds-{case}-") as tmp:
        figures = module.measure(Path(tmp), seed)
    import torch

    out.write_text(json.dumps({"figures": figures, "aten": torch.backends.cpu.get_cpu_capability()}))


def native_capability() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "NUMBA_CPU_NAME")}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def available_targets(native: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """-> ({target name: environment}, [notes on targets this CPU cannot run])."""
    top = native.lower()
    if top not in ATEN_LEVELS:  # not x86 (e.g. NEON, SVE): its own capability and the default
        levels, notes = (["default"] if top == "default" else ["default", top]), []
    else:
        levels = ATEN_LEVELS[:ATEN_LEVELS.index(top) + 1]
        notes = [f"aten={lv}: not available on this CPU (torch reports {native}), not measured"
                 for lv in ATEN_LEVELS[ATEN_LEVELS.index(top) + 1:]]
    targets = {}
    for lv in reversed(levels):
        targets[f"aten={lv}"] = {"ATEN_CPU_CAPABILITY": lv}
        targets[f"aten={lv}+numba=generic"] = {"ATEN_CPU_CAPABILITY": lv, "NUMBA_CPU_NAME": "generic"}
    return targets, notes


def measure_all(cases, seeds, targets) -> list[dict]:
    runs = []
    total, n = len(cases) * len(seeds) * len(targets), 0
    for case in cases:
        for seed in seeds:
            for name, extra in targets.items():
                n += 1
                env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "NUMBA_CPU_NAME")}
                env.update(extra)
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    t = time.monotonic()
                    proc = subprocess.run([sys.executable, __file__, "--worker", case, "--seed", str(seed), "--out", f.name],
                                          cwd=REPO, env=env, capture_output=True, text=True)
                    if proc.returncode != 0:
                        sys.exit(f"{case} seed {seed} {name} failed:\n{proc.stderr[-3000:]}")
                    got = json.loads(Path(f.name).read_text())
                figs = got["figures"]
                print(f"[{n}/{total}] {case} seed {seed} {name} (torch ran {got['aten']}): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in figs.items()) + f"  ({time.monotonic() - t:.0f} s)",
                      flush=True)
                runs.append({"case": case, "seed": seed, "target": name, "figures": figs})
    return runs


def floor_to(x: float, digits: int = 3) -> float:
    return math.floor(x * 10**digits) / 10**digits


def summarise(case: str, runs: list[dict], margin: float) -> dict:
    mine = [r for r in runs if r["case"] == case]
    figures = list(mine[0]["figures"])
    worst, where, bounds = {}, {}, {}
    for fig in figures:
        r = min(mine, key=lambda r: r["figures"][fig])
        worst[fig], where[fig] = r["figures"][fig], f"seed {r['seed']}, {r['target']}"
        bounds[fig] = floor_to(worst[fig] * (1 - margin))
    return {"figures": figures, "worst": worst, "worst_at": where, "bounds": bounds}


def table(case: str, runs: list[dict], summary: dict, margin: float) -> str:
    mine = [r for r in runs if r["case"] == case]
    seeds = sorted({r["seed"] for r in mine})
    targets = list(dict.fromkeys(r["target"] for r in mine))
    lines = []
    for fig in summary["figures"]:
        lines.append(f"{fig}: worst {summary['worst'][fig]:.4f} ({summary['worst_at'][fig]}), "
                     f"bound {summary['bounds'][fig]:.3f} (worst - {margin:.0%})")
        lines.append("  " + f"{'target':<28}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds))
        for t in targets:
            vals = {r["seed"]: r["figures"][fig] for r in mine if r["target"] == t}
            lines.append("  " + f"{t:<28}" + "".join(f"{vals[s]:>10.4f}" if s in vals else f"{'-':>10}" for s in seeds))
    return "\n".join(lines)


def rewrite_docstring_block(module: str, text: str) -> None:
    path = REPO / (module.replace(".", "/") + ".py")
    src = path.read_text()
    pattern = re.compile(r"(Measured by scripts/derive_bounds\.py:\n)(.*?)(\(end of measured block\))", re.S)
    if not pattern.search(src):
        sys.exit(f"{path}: no 'Measured by scripts/derive_bounds.py:' ... '(end of measured block)' in its docstring")
    block = "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())
    path.write_text(pattern.sub(lambda m: m.group(1) + block + m.group(3), src, count=1))


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", help="a subset of the targets this CPU can run (default: all of them)")
    ap.add_argument("--margin", type=float, default=0.10, help="bound = worst x (1 - margin) (default 0.10)")
    ap.add_argument("--write", action="store_true", help="write tests/trajectory_bounds.json and the docstrings")
    ap.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args.worker, args.seed, args.out)

    native = native_capability()
    targets, notes = available_targets(native)
    if args.targets:
        unknown = sorted(set(args.targets) - set(targets))
        if unknown:
            sys.exit(f"--targets {unknown} cannot run here; this CPU runs {list(targets)}")
        targets = {t: targets[t] for t in args.targets}
    import numba
    import torch

    sys.path.insert(0, str(REPO))
    from common.machine import cpu_model  # the same description bench --json records

    machine = (f"{cpu_model()} ({os.cpu_count()} cores, torch's native capability {native}), "
               f"torch {torch.__version__}, numba {numba.__version__}, {datetime.date.today()}, commit {git_commit()}")
    print(f"machine: {machine}\ntargets: {', '.join(targets)}")
    for note in notes:
        print(f"         {note}")
    runs = measure_all(args.cases, args.seeds, targets)

    record = json.loads(BOUNDS_FILE.read_text()) if BOUNDS_FILE.exists() else {}
    record.setdefault("cases", {})
    record["about"] = ("Bounds of the trajectory tests (tests/trajectory.py), each the worst run over seeds and "
                       "kernel targets less a margin. Written by: python scripts/derive_bounds.py --write")
    for case in args.cases:
        s = summarise(case, runs, args.margin)
        text = table(case, runs, s, args.margin)
        print(f"\n== {case} ({CASES[case]})\n{text}")
        seeds = sorted({r["seed"] for r in runs if r["case"] == case})
        measured_on = f"{machine}; seeds {seeds}; targets {list(targets)}" + (f"; {'; '.join(notes)}" if notes else "")
        old = record["cases"].get(case, {}).get("bounds", {})
        for fig, b in s["bounds"].items():
            if fig in old and old[fig] != b:
                print(f"  {fig}: bound {old[fig]:.3f} -> {b:.3f}")
        record["cases"][case] = {"bounds": s["bounds"], "worst": s["worst"], "worst_at": s["worst_at"],
                                 "margin": args.margin, "measured_on": measured_on,
                                 "runs": [{k: r[k] for k in ("seed", "target", "figures")} for r in runs if r["case"] == case]}
        if args.write:
            rewrite_docstring_block(CASES[case], textwrap.fill(f"on {measured_on}:", 96) + "\n" + text)
    if args.write:
        BOUNDS_FILE.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {BOUNDS_FILE.relative_to(REPO)} and the measured blocks of {', '.join(CASES[c] for c in args.cases)}")
    else:
        print("\n(nothing written: pass --write to set these bounds)")


if __name__ == "__main__":
    main()
