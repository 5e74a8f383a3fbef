"""The README's one-example-per-stage block runs, end to end, on tiny synthetic data.

The code block after `<!-- example: stages -->` in README.md is run line by line, each line a real
`cli.main()` process (tests/clcrec/cli_batch.py: one import, one fork per line) in a scratch
directory, with the sizes of TINY swapped in; then the Python block after
`<!-- example: python -->` runs the same way against the run the stages made. An update needs new
interactions: the test writes `new.csv` (pairs of existing users and items they did not train on)
just before the update line. A failure names the README line and shows the command's output.

Run: python -m pytest tests/test_docs_example.py -n 0   (about 15 s on 2 cores)
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO, cli_tokens, fenced_blocks, joined

STAGES_MARK = "<!-- example: stages -->"
PYTHON_MARK = "<!-- example: python -->"
# (README text, what the test runs instead): each must be in the block, so an edited example can
# never silently run at full size.
TINY = [("--scale default", "--scale tiny"), ("--num-neg 128", "--num-neg 16"), ("--epochs 15", "--epochs 1"),
        ("--k 50", "--k 5")]
NEW_PAIRS = """
import numpy as np, polars as pl
data = {dataset!r}
train = np.load(data + "/train.npy")
items = pl.read_parquet(data + "/items.parquet")["original_id"].to_numpy()
users = pl.read_parquet(data + "/users.parquet")["original_id"].to_numpy()
trained = set(map(tuple, train.tolist()))
rows = [(int(users[u]), int(items[i])) for u in range(10) for i in range(0, len(items), 7) if (u, i) not in trained]
pl.DataFrame(rows, schema=["user", "item"], orient="row").write_csv({out!r})
"""


def block_after(mark: str) -> tuple[int, list[str]]:
    """(first line number, lines) of the first fenced block after `mark` in README.md."""
    text = (REPO / "README.md").read_text()
    assert mark in text, f"README.md has no {mark} before its example"
    at = text[: text.index(mark)].count("\n") + 1
    start, _, body = next(b for b in fenced_blocks(text) if b[0] > at)
    return start, body


def stage_cases() -> list[tuple[int, str, dict]]:
    """(README line, command as run, cli_batch case) per line of the stage example."""
    start, body = block_after(STAGES_MARK)
    text = "\n".join(body)
    missing = [big for big, _ in TINY if big not in text]
    assert not missing, f"README.md:{start}: the stage example no longer has {missing}: update TINY in {__file__}"
    out = []
    for line, command in joined(start, body):
        for big, tiny in TINY:
            command = command.replace(big, tiny)
        args = cli_tokens(command)
        if args[0] == "update":
            dataset = next(case["argv"][1] for _, _, case in out if case["argv"][0] == "synth")
            code = NEW_PAIRS.format(dataset=dataset, out=args[args.index("--interactions") + 1])
            out.append((line, "(the test) write the update's interactions", {"python": code, "name": "new_pairs"}))
        out.append((line, command.split(" # ")[0].strip(), {"argv": args}))
    assert [case["argv"][0] for _, _, case in out[:3]] == ["synth", "build-negatives", "train"], \
        f"README.md:{start}: the stage example should start with synth, build-negatives and train"
    return out


def test_readme_stage_example_runs(tmp_path):
    cases = stage_cases()
    start, body = block_after(PYTHON_MARK)
    cases.append((start, "the README's Python example", {"python": "\n".join(body), "name": f"README.md:{start}"}))
    (tmp_path / "work").mkdir()
    (tmp_path / "cases.json").write_text(json.dumps([case for _, _, case in cases]))
    batch = REPO / "tests" / "clcrec" / "cli_batch.py"
    proc = subprocess.run([sys.executable, str(batch), "cases.json", "results.json", str(tmp_path / "work")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for (line, command, _), result in zip(cases, results):
        assert result["rc"] == 0, f"README.md:{line}: `{command}` exited {result['rc']}:\n{result['out'][-3000:]}"
    work = tmp_path / "work"
    assert (work / "recs.parquet").exists() and (work / "runs" / "synth" / "embeddings").is_dir()
    lineage = json.loads((work / "runs" / "synth-2" / "config.json").read_text())["lineage"]
    assert lineage["parent_run"].endswith("synth")
