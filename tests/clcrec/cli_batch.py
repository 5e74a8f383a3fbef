"""Run many `cli.py` command lines as separate processes that share one import of the CLI.

    python tests/clcrec/cli_batch.py CASES.json RESULTS.json [WORKDIR]

Each case is {"argv": [...], "env": {...}, "watch": [paths]}, or {"python": CODE, "name": ...}: a
snippet run the same way (the README's Python example, say). Cases run in WORKDIR (default: the
repository root); CASES.json and RESULTS.json are taken from where the command started. The
parent imports cli.py and the libraries its commands import lazily (torch, polars, zarr, numba:
about 2 s), then forks one child per case, which runs the real `cli.main()` with that argv, its
stdout and stderr sent to a file; an exception that escapes main() prints its traceback and exits 1, as `python cli.py` would.
The parent hashes each watched path (a file or a whole tree, or its absence) before and after;
lock files count by name only, since taking a lock rewrites the holder recorded in it.
So every case is a real CLI process, and the test pays the import cost once, not per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_hash(path: str) -> str:
    """Names, file bytes and link targets under `path` ("absent" if nothing is there)."""
    p = Path(path)
    if not os.path.lexists(p):
        return "absent"
    h = hashlib.sha256()
    items = [p] if not p.is_dir() or p.is_symlink() else [p, *sorted(p.rglob("*"))]
    for q in items:
        h.update(str(q.relative_to(p)).encode() + b"\0")
        if q.is_symlink():
            h.update(b"link:" + os.readlink(q).encode())
        elif q.is_file() and q.suffix != ".lock":  # a lock file's text names its last holder
            h.update(q.read_bytes())
    return h.hexdigest()


def run_case(case: dict, log: str) -> int:
    import cli

    pid = os.fork()
    if pid == 0:  # the child: one CLI invocation
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(case.get("env", {}))
            sys.argv = ["cli.py", *case.get("argv", [])]
            try:
                if "python" in case:
                    exec(compile(case["python"], case.get("name", "<case>"), "exec"), {"__name__": "__main__"})
                else:
                    cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main(spec: str, out: str, workdir: str | None = None) -> None:
    spec, out = os.path.abspath(spec), os.path.abspath(out)
    os.environ["COLUMNS"] = "400"  # rich must not wrap messages
    os.chdir(workdir or REPO)
    sys.path.insert(0, str(REPO))
    import cache.build  # noqa: F401  (what the commands import lazily, imported once here)
    import clcrec.evaluation.report  # noqa: F401
    import clcrec.serving.export  # noqa: F401
    import clcrec.train.flow  # noqa: F401
    import clcrec.train.trainer  # noqa: F401
    import cli  # noqa: F401
    import pipeline.ingest_movielens  # noqa: F401
    import pipeline.ingest_table  # noqa: F401
    import pipeline.synthetic  # noqa: F401

    results = []
    for i, case in enumerate(json.loads(Path(spec).read_text())):
        before = {w: tree_hash(w) for w in case.get("watch", [])}
        log = f"{out}.{i}.log"
        rc = run_case(case, log)
        after = {w: tree_hash(w) for w in case.get("watch", [])}
        results.append({"rc": rc, "out": Path(log).read_text(errors="replace"),
                        "changed": sorted(w for w in before if before[w] != after[w])})
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
