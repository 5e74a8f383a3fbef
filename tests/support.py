"""Helpers shared by the test modules (test files never import each other): small datasets and
cache checks, real CLI subprocesses, the tiny training config of the clcrec tests, and reading the
Markdown docs (tests/test_docs.py, tests/test_docs_example.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from clcrec.config import TrainConfig
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM, load_dataset, write_dataset

REPO = Path(__file__).resolve().parents[1]
NUM_NEG = 16  # negatives per pair of the clcrec tests' shared cache (tests/clcrec/conftest.py)


def quiet():
    """A rich Console that prints nowhere."""
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def config(dataset, cache, run_dir, **kw) -> TrainConfig:
    """A short training config on the tiny synthetic data; keywords override."""
    base = dict(dataset=str(dataset), cache=str(cache), run_dir=str(run_dir), num_neg=NUM_NEG,
                batch_size=64, epochs=3, patience=10, l_r=0.01, log_every=5,
                select_window=1, select_k=20, eval_ema=0)  # the per-epoch rule on raw weights; test_selection.py the others
    base.update(kw)
    return TrainConfig(**base)



def make_dataset(path: Path, *, num_users: int = 60, num_items: int = 300, pairs: int = 1500,
                 seed: int = 0, cold_frac: float = 0.2) -> Path:
    """A random dataset: a fifth of the items cold (half val, half test), random warm train pairs,
    a few val/test pairs on cold and warm items (which negatives must NOT exclude)."""
    rng = np.random.default_rng(seed)
    status = np.full(num_items, WARM, np.int8)
    cold = rng.choice(num_items, int(num_items * cold_frac), replace=False)
    status[cold[: cold.size // 2]] = COLD_VAL
    status[cold[cold.size // 2:]] = COLD_TEST
    warm = np.flatnonzero(status == WARM)
    users = rng.integers(0, num_users, pairs)
    items = warm[rng.integers(0, warm.size, pairs)]
    train = np.unique(np.stack([users, items], 1), axis=0)
    val = np.stack([rng.integers(0, num_users, 40), rng.choice(np.concatenate([warm, cold]), 40)], 1)
    test = np.stack([rng.integers(0, num_users, 40), rng.choice(np.concatenate([warm, cold]), 40)], 1)
    return write_dataset(
        path, train=train, val=val, test=test, item_status=status,
        features={"v": rng.standard_normal((num_items, 3)).astype(np.float32)},
        user_ids=pl.DataFrame({"original_id": np.arange(num_users)}),
        item_ids=pl.DataFrame({"original_id": np.arange(num_items)}),
        source={"kind": "test"}, split={"seed": seed}, force=True,
    )


def read_generation(store, g: int):
    """All chunks of generation g concatenated: users (N,), pos (N,), neg (N, K)."""
    gen = store.open_generation(g)
    parts = [gen.read_chunk(i) for i in range(gen.num_chunks)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def assert_generation_valid(dataset_dir: Path, users, pos, neg, num_neg: int) -> None:
    """The invariants every row of every generation keeps."""
    ds = load_dataset(dataset_dir)
    train = np.asarray(ds.train)
    assert users.dtype == np.int32 and users.shape == (len(train),)
    assert neg.shape == (len(train), num_neg) and pos.dtype == neg.dtype
    # the pairs are a permutation of the training pairs (each exactly once) ...
    got = np.stack([users, pos.astype(np.int64)], 1)
    np.testing.assert_array_equal(got[np.lexsort((got[:, 1], got[:, 0]))], train)
    # ... in shuffled order
    assert not np.array_equal(got, train)
    indptr, indices = ds.train_csr()
    warm = np.zeros(ds.num_items, bool)
    warm[ds.warm_items] = True
    neg64 = neg.astype(np.int64)
    assert warm[neg64].all(), "a negative is not a warm item"
    for r in range(len(users)):
        row, u = neg64[r], users[r]
        assert len(np.unique(row)) == num_neg, f"row {r} repeats a negative"
        assert not np.isin(row, indices[indptr[u]:indptr[u + 1]]).any(), f"row {r} has a training item of user {u}"
        assert pos[r] not in row


def run_cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=cli_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"cli {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"  # keep rich from wrapping messages the tests look for
    return env


# --- reading the Markdown docs (README.md, docs/*.md) ---------------------------------------------

SHELL_OPS = {"&&", "||", "|", ";", ">", ">>", "<", "2>", "&"}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def fenced_blocks(text: str):
    """(first line number, info string, lines) of every fenced code block."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*(\S*)", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start, body = m.group(1), m.group(2), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        yield start, info, body
        i += 1


def prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    inside = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if m and inside is None:
            inside = m.group(1)
        elif m and line.strip().startswith(inside):
            inside = None
        elif inside is None:
            yield n, line


def joined(start: int, body: list[str]):
    """(line number, command) with backslash continuations joined."""
    pending, first = "", start
    for n, line in enumerate(body, start):
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def cli_tokens(command: str) -> list[str]:
    """The arguments after `cli.py`: optional `[...]` groups opened (their options still checked,
    `a | b` alternatives both kept), a trailing `# comment`, shell redirections and `...` dropped."""
    text = command
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).replace(" | ", " "), text)
    tokens = shlex.split(text, comments=True)
    at = next(i for i, t in enumerate(tokens) if t == "cli.py" or t.endswith("/cli.py"))
    args = []
    for t in tokens[at + 1:]:
        if t in SHELL_OPS or re.match(r"^\d?>", t):
            break
        args.append(t)
    return args


def run_batch(cases: list[dict], tmp: Path) -> list[dict]:
    """Real `cli.main()` processes sharing one import (tests/clcrec/cli_batch.py), in order: each
    case {"argv", "watch"} gives {"code", "out", "err", ...} (cli_batch.py)."""
    import json

    spec, out = tmp / "cases.json", tmp / "results.json"
    spec.write_text(json.dumps([{"argv": [str(a) for a in c["argv"]], "watch": [str(w) for w in c.get("watch", [])]}
                                for c in cases]))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "clcrec" / "cli_batch.py"), str(spec), str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())
