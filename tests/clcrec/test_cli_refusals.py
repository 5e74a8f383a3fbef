"""Every user mistake of issue 9, against the real CLI: exit 1, one line naming the path or option,
no traceback, and nothing on disk changed (the watched paths hash the same before and after).

The cases run through cli_batch.py: one process imports the CLI once and forks a real `cli.main()`
process per case (a `python cli.py` start costs ~2 s of imports; the table has ~40 cases).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.lock import OwnedLock
from tests.support import NUM_NEG

REPO = Path(__file__).resolve().parents[2]


def run_batch(cases: list[dict], tmp: Path) -> list[dict]:
    spec, out = tmp / "cases.json", tmp / "results.json"
    spec.write_text(json.dumps([{"argv": [str(a) for a in c["argv"]], "env": c.get("env", {}),
                                 "watch": [str(w) for w in c.get("watch", [])]} for c in cases]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_batch.py")), str(spec), str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_refused(case: dict, res: dict) -> None:
    out = res["out"]
    assert res["rc"] == 1, (case["argv"], res)
    assert "Traceback" not in out, (case["argv"], out)
    flat = " ".join(out.split())
    for frag in case["says"]:
        assert frag in flat, (case["argv"], frag, out)
    assert res["changed"] == [], (case["argv"], res["changed"])


@pytest.fixture(scope="module")
def world(tiny_dataset, tiny_cache, tmp_path_factory) -> dict:
    """A dataset copy, its cache, a one-epoch run, and the bad inputs the cases need."""
    from clcrec.config import TrainConfig
    from clcrec.train.trainer import train
    from pipeline.ingest_common import IngestConfig
    from pipeline.ingest_table import ingest_table, parse_feature_spec
    from pipeline.split import SplitConfig

    root = tmp_path_factory.mktemp("refusals")
    w = {"root": root, "ds": root / "ds", "cache": root / "cache", "run": root / "run"}
    shutil.copytree(tiny_dataset, w["ds"])
    shutil.copytree(tiny_cache, w["cache"])
    train(TrainConfig(dataset=str(w["ds"]), cache=str(w["cache"]), run_dir=str(w["run"]), num_neg=NUM_NEG,
                      epochs=1, batch_size=512, l_r=0.005))
    (root / "afile").write_text("not a directory\n")
    os.symlink(root / "nowhere", root / "dangling")

    ml = root / "ml"  # a MovieLens csv release, and two with a header lacking a column
    ml.mkdir()
    rows = [(u, i) for u in range(1, 21) for i in range(1, 31) if (u * 7 + i * 3) % 4 == 0]
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},4,1\n" for u, i in rows))
    (ml / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{i},M{i} (1990),Drama\n" for i in range(1, 31)))
    for name, bad in (("ml-bad-ratings", "ratings.csv"), ("ml-bad-movies", "movies.csv")):
        shutil.copytree(ml, root / name)
        text = (root / name / bad).read_text().split("\n", 1)
        (root / name / bad).write_text((text[0].replace("movieId", "item") if bad == "ratings.csv" else text[0].replace("title", "name")) + "\n" + text[1])

    (root / "one.csv").write_text("user,item\n1,10\n")  # a 1-row table
    np.save(root / "one.npy", np.ones((1, 2)))
    (root / "one_ids.txt").write_text("10\n")
    (root / "t.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(12) for i in range(8) if (u + i) % 3))
    (root / "ids8.txt").write_text("".join(f"{i}\n" for i in range(8)))
    np.save(root / "flat.npy", np.ones(8))  # 1-D
    huge = np.ones((8, 2))
    huge[5, 1] = 1e300  # finite in float64, inf in float32
    np.save(root / "huge.npy", huge)
    np.save(root / "f8.npy", np.arange(16, dtype=np.float64).reshape(8, 2))
    # a dataset without validation cold items (cold fraction 0), for --select-mode cold
    cfg = IngestConfig(split=SplitConfig(cold_fraction=0.0), features=(parse_feature_spec(f"f={root / 'f8.npy'}:{root / 'ids8.txt'}"),))
    ingest_table(root / "t.csv", root / "nocold", cfg)

    # damaged copies
    def copy(src, name):
        shutil.copytree(src, root / name)
        return root / name

    for name in ("trunc_best", "trunc_last", "empty_best", "trunc_config", "pickled"):
        copy(w["run"], name)
    raw = (w["run"] / "checkpoints" / "best.pt").read_bytes()
    (root / "trunc_best" / "checkpoints" / "best.pt").write_bytes(raw[: len(raw) // 3])
    (root / "empty_best" / "checkpoints" / "best.pt").write_bytes(b"")
    last = (w["run"] / "checkpoints" / "last.pt").read_bytes()
    (root / "trunc_last" / "checkpoints" / "last.pt").write_bytes(last[: len(last) // 2])
    cfg_text = (w["run"] / "config.json").read_text()
    (root / "trunc_config" / "config.json").write_text(cfg_text[: len(cfg_text) // 2])
    meta_text = (w["ds"] / "meta.json").read_text()
    copy(w["ds"], "trunc_meta")
    (root / "trunc_meta" / "meta.json").write_text(meta_text[:40])
    copy(w["ds"], "nokey_meta")
    meta = json.loads(meta_text)
    del meta["num_items"], meta["digest"]  # without the digest, which would refuse it first
    (root / "nokey_meta" / "meta.json").write_text(json.dumps(meta))
    train_arr = np.load(w["ds"] / "train.npy")
    copy(w["ds"], "float_train")
    np.save(root / "float_train" / "train.npy", train_arr.astype(np.float32))
    copy(w["ds"], "bad_id")
    bad = train_arr.copy()
    bad[3, 1] = 9999
    np.save(root / "bad_id" / "train.npy", bad)
    copy(w["ds"], "nan_feat")
    v = np.load(w["ds"] / "features" / "v.npy")
    v[4, 0] = np.nan
    np.save(root / "nan_feat" / "features" / "v.npy", v)
    copy(w["ds"], "flipped")
    flip_byte(root / "flipped" / "train.npy", random.Random(1))
    legacy = copy(w["ds"], "legacy")  # written before per-file hashes: no "files", no "digest"
    meta = json.loads(meta_text)
    del meta["files"], meta["digest"]
    (legacy / "meta.json").write_text(json.dumps(meta))
    copy(legacy, "legacy_flipped")  # an edit the structural checks cannot see: another warm item
    edited = train_arr.copy()
    edited[0, 1] = next(i for i in train_arr[:, 1] if i != train_arr[0, 1])
    np.save(root / "legacy_flipped" / "train.npy", edited)
    copy(w["run"], "exported")
    return w


def flip_byte(path: Path, rng: random.Random, header_too: bool = True) -> int:
    """Flip one random bit of one random byte of `path` in place; returns the offset."""
    raw = bytearray(path.read_bytes())
    at = rng.randrange(len(raw))
    raw[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))
    return at


def cases(w: dict) -> list[dict]:
    r, ds, cache, run = w["root"], w["ds"], w["cache"], w["run"]
    trn = ["train", "--dataset", ds, "--cache", cache, "--num-neg", NUM_NEG]
    new = r / "new"
    ml = ["ingest", "movielens", r / "ml", new]
    tab = ["ingest", "table", r / "t.csv", new]
    return [
        # output paths
        dict(argv=["synth", r / "afile" / "x", "--scale", "tiny"], says=["afile is a file"], watch=[r / "afile"]),
        dict(argv=["synth", r / "dangling", "--scale", "tiny"], says=["dangling is a dangling symbolic link"], watch=[r / "dangling", r / "nowhere"]),
        dict(argv=["synth", "/proc/clcrec-x", "--scale", "tiny"], says=["/proc/clcrec-x", "cannot write in /proc"], watch=["/proc/clcrec-x"]),
        dict(argv=[*ml[:3], r / "afile"], says=["target", "afile is a file"], watch=[r / "afile"]),
        dict(argv=[*trn, "--run-dir", r / "afile"], says=["--run-dir", "afile is a file"], watch=[r / "afile", cache]),
        dict(argv=["train", "--dataset", ds, "--cache", r / "afile", "--run-dir", new], says=["cache directory", "afile is a file"], watch=[r / "afile", new]),
        dict(argv=["build-negatives", ds, r / "afile" / "c"], says=["afile is a file"], watch=[r / "afile"]),
        dict(argv=["build-negatives", ds, ds], says=["cache directory", "is a dataset directory"], watch=[ds]),
        dict(argv=["export", run, "--out", r / "afile"], says=["--out", "afile is a file"], watch=[r / "afile"]),
        dict(argv=["export", r / "exported"], says=["--force"], watch=[r / "exported"], first=["export", r / "exported"]),
        # numeric options at the boundary
        dict(argv=["synth", new, "--scale", "tiny", "--seed", "-1"], says=["--seed", "-1"], watch=[new]),
        dict(argv=[*ml, "--seed", "-1"], says=["--seed", "-1"], watch=[new]),
        dict(argv=[*ml, "--val-fraction", "nan"], says=["--val-fraction", "nan"], watch=[new]),
        dict(argv=[*ml, "--title-dim", "0"], says=["--title-dim", "0"], watch=[new]),
        dict(argv=[*trn, "--run-dir", new, "--l-r", "-1"], says=["--l-r", "-1"], watch=[new, cache]),
        dict(argv=[*trn, "--run-dir", new, "--seed", "-1"], says=["--seed", "-1"], watch=[new, cache]),
        dict(argv=[*trn, "--run-dir", new, "--reg-weight", "nan"], says=["--reg-weight", "nan"], watch=[new, cache]),
        dict(argv=[*trn, "--run-dir", new, "--epochs", "0"], says=["--epochs", "0"], watch=[new, cache]),
        dict(argv=["train", "--resume", run, "--epochs", "0"], says=["--epochs", "0"], watch=[run]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--replay", "lots"],
             says=["--replay must be 'all' or a number >= 0, got 'lots'"], watch=[run, new]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--replay", "-1"],
             says=["--replay must be a finite number >= 0, got -1.0"], watch=[run, new]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--blend-k", "lots"],
             says=["--blend-k must be 'auto' or a number >= 0, got 'lots'"], watch=[run, new]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--blend-k", "-2"],
             says=["--blend-k must be 'auto' or a finite number >= 0, got -2.0"], watch=[run, new]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--item-init", "users"],
             says=["--item-init must be one of fold-in, content, got 'users'"], watch=[run, new]),
        dict(argv=["update", run, "--interactions", r / "t.csv", "--out", new, "--cold-vectors", "cosine"],
             says=["--cold-vectors must be one of raw, normalised, scaled, centred, got 'cosine'"], watch=[run, new]),
        dict(argv=["train", "--resume", run, "--run-dir", new], says=["--resume", "--run-dir"], watch=[run, new]),
        dict(argv=[*trn, "--run-dir", new, "--compile", "yes"], says=["--compile must be one of", "'yes'"], watch=[new, cache]),
        dict(argv=[*trn, "--run-dir", new, "--device", "cpu", "--compile", "on"],
             says=["--compile on cannot be used", "--scoring dense", "--compile off"], watch=[new, cache]),
        # broken run files
        dict(argv=["evaluate", r / "trunc_best"], says=["trunc_best/checkpoints/best.pt is truncated or corrupt"], watch=[r / "trunc_best"]),
        dict(argv=["recommend", r / "empty_best", "--user", "0"], says=["empty_best/checkpoints/best.pt is truncated or corrupt"], watch=[r / "empty_best"]),
        dict(argv=["train", "--resume", r / "trunc_last"], says=["trunc_last/checkpoints/last.pt"], watch=[r / "trunc_last"]),
        dict(argv=["train", "--resume", r / "trunc_best"], says=["trunc_best/checkpoints/best.pt"], watch=[r / "trunc_best"]),
        dict(argv=["evaluate", r / "trunc_config"], says=["trunc_config/config.json is unreadable or truncated"], watch=[r / "trunc_config"]),
        dict(argv=["evaluate", run, "--k", "7"], says=["--k 7", "[10, 20, 50]"], watch=[run]),
        # broken dataset files: named by hash, or (hashing skipped) by the structural checks
        dict(argv=["build-negatives", r / "trunc_meta", new], says=["trunc_meta/meta.json is unreadable or truncated"], watch=[new]),
        dict(argv=["build-negatives", r / "nokey_meta", new], says=["nokey_meta/meta.json lacks the key 'num_items'"], watch=[new]),
        dict(argv=["build-negatives", r / "flipped", new], says=["flipped/train.npy changed since ingest"], watch=[new]),
        dict(argv=["--skip-hash", "build-negatives", r / "float_train", new], says=["float_train/train.npy must hold integer ids", "not hashed"], watch=[new]),
        dict(argv=["build-negatives", r / "bad_id", new], says=["bad_id/train.npy", "changed since ingest"], watch=[new]),
        dict(argv=["build-negatives", r / "bad_id", new], env={"CLCREC_SKIP_HASH": "1"}, says=["bad_id/train.npy row 3 has item id 9999, outside 0..199"], watch=[new]),
        dict(argv=["--skip-hash", *trn[:2], r / "nan_feat", "--run-dir", new], says=["nan_feat/features/v.npy has 1 NaN/inf values (first at item row 4)"], watch=[new, cache]),
        dict(argv=["build-negatives", r / "legacy_flipped", new], says=["legacy_flipped changed since ingest", "fingerprint"], watch=[new]),
        # MovieLens headers, small tables, feature shapes and ranges
        dict(argv=["ingest", "movielens", r / "ml-bad-ratings", new], says=["ratings.csv lacks the column(s) movieId; its header has userId, item, rating, timestamp"], watch=[new]),
        dict(argv=["ingest", "movielens", r / "ml-bad-movies", new], says=["movies.csv lacks the column(s) title; its header has movieId, name, genres"], watch=[new]),
        dict(argv=["ingest", "table", r / "one.csv", new, "--feature", f"f={r / 'one.npy'}:{r / 'one_ids.txt'}"], says=["no validation interactions", "--val-fraction 0"], watch=[new]),
        dict(argv=[*tab, "--feature", f"f={r / 'flat.npy'}:{r / 'ids8.txt'}"], says=["flat.npy is a 1-D array of shape (8,)"], watch=[new]),
        dict(argv=[*tab, "--feature", f"f={r / 'huge.npy'}:{r / 'ids8.txt'}"], says=["huge.npy", "beyond float32's range", "overflow"], watch=[new]),
        dict(argv=["train", "--dataset", r / "nocold", "--cache", new, "--run-dir", r / "newrun", "--num-neg", "2"], says=["no validation cold items", "--select-mode warm"], watch=[new, r / "newrun", r / "nocold"]),
    ]


def test_every_mistake_is_one_line_and_changes_nothing(world, tmp_path):
    table = cases(world)
    runs = []
    for c in table:  # a case with `first` runs that command once before (e.g. the first export)
        if "first" in c:
            runs.append(dict(argv=c["first"]))
        runs.append(c)
    # a second trainer on a run directory exits naming the holder (we hold the lock here)
    lock_case = dict(argv=["train", "--resume", world["run"], "--epochs", "3"], says=["another trainer is running on", "pytest holder"], watch=[world["run"]])
    runs.append(lock_case)
    ok_cases = [dict(argv=["build-negatives", world["root"] / "legacy", tmp_path / "legacy-cache", "--num-neg", "4"])]
    runs.extend(ok_cases)
    lock = OwnedLock(world["run"] / "run.lock", "pytest holder", busy="busy {path} {holder}")
    lock.acquire(wait=False)
    try:
        results = run_batch(runs, tmp_path)
    finally:
        lock.release()
    by_case = iter(results)
    for c in runs:
        res = next(by_case)
        if "says" in c:
            assert_refused(c, res)
        elif c in ok_cases:  # a dataset from before per-file hashes still opens
            assert res["rc"] == 0, res["out"]
        else:
            assert res["rc"] == 0, res["out"]


def test_flipped_bytes_are_refused_by_name(world, tmp_path):
    """Seeded fuzz: one flipped bit in each dataset file, a checkpoint and a cache manifest."""
    rng = random.Random(9)
    runs = []
    ds_files = sorted(p.relative_to(world["ds"]) for p in world["ds"].rglob("*")  # the marker is not data
                      if p.is_file() and p.name != ".clcrec-output.json")
    assert len(ds_files) >= 10
    for k, rel in enumerate(ds_files):
        copy = tmp_path / f"ds{k}"
        shutil.copytree(world["ds"], copy)
        flip_byte(copy / rel, rng)
        runs.append(dict(argv=["build-negatives", copy, tmp_path / f"c{k}", "--num-neg", "4"], says=[str(rel.name)], watch=[copy, tmp_path / f"c{k}"]))
    for k in range(3):
        run = tmp_path / f"run{k}"
        shutil.copytree(world["run"], run)
        flip_byte(run / "checkpoints" / "best.pt", rng)
        runs.append(dict(argv=["evaluate", run], says=[f"run{k}/checkpoints/best.pt"], watch=[run]))
        cache = tmp_path / f"cache{k}"
        shutil.copytree(world["cache"], cache, ignore=shutil.ignore_patterns("*.lock"))
        flip_byte(cache / "manifest.json", rng)
        runs.append(dict(argv=["cache-verify", cache], says=[f"cache{k}/manifest.json"], watch=[cache]))
    for c, res in zip(runs, run_batch(runs, tmp_path)):
        assert_refused(c, res)


def test_a_planted_pickle_checkpoint_does_not_run(world, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Planted()}, run / "checkpoints" / "best.pt")
    proc = subprocess.run([sys.executable, "cli.py", "evaluate", str(run)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "refusing to load" in proc.stderr and "could run code" in " ".join(proc.stderr.split())
    assert not marker.exists()


# --- issue 21: the hostile probe. --force replaces only its own kind of output; planted lock links;
# size options bounded; checkpoints bound to their run; --device in every command; output paths.

def probe_world(w: dict, tmp: Path) -> dict:
    """What the probe's cases need, beside the module's world: copies to damage, foreign files."""
    import torch

    from clcrec.rundir import RUN_LOCK

    run = w["run"]
    p = {"tmp": tmp, "victim": tmp / "victim.txt", "keep": tmp / "keep", "newc": tmp / "newc", "new": tmp / "new"}
    p["victim"].write_text("the user's file\n")
    p["keep"].mkdir()
    (p["keep"] / "notes.txt").write_text("mine\n")
    for name in ("linked_run", "foreign", "legacy_run"):
        shutil.copytree(run, tmp / name, ignore=shutil.ignore_patterns("*.lock"))
    os.symlink(p["victim"], tmp / "linked_run" / RUN_LOCK)
    shutil.copytree(w["cache"], tmp / "linked_cache", ignore=shutil.ignore_patterns("*.lock"))
    os.symlink(p["victim"], tmp / "linked_cache" / "writer.lock")
    record = json.loads((run / "config.json").read_text())
    (tmp / "foreign" / "config.json").write_text(json.dumps({**record, "run_id": "0" * 32}))  # its checkpoints: another id
    legacy = {k: v for k, v in record.items() if k != "run_id"}
    legacy["config"] = {**legacy["config"], "seed": 7}
    (tmp / "legacy_run" / "config.json").write_text(json.dumps(legacy))
    # embed-items inputs: strings and complex numbers where features go
    (tmp / "ids3.txt").write_text("9001\n9002\n9003\n")
    np.save(tmp / "str.npy", np.array([["a"] * 24] * 3))
    np.save(tmp / "cplx.npy", np.ones((3, 24), dtype=np.complex128))
    np.save(tmp / "t3.npy", np.ones((3, 12), dtype=np.float32))
    # an ml-100k-like release with one bad u.item row each
    for name, row2 in (("ml-x", "2|B (1995)|01-Jan-1995||u" + "|0" * 18 + "|x"),
                       ("ml-short", "2|B (1995)|01-Jan-1995||u|0|1"),
                       ("ml-dup", "1|B (1995)|01-Jan-1995||u" + "|0" * 18 + "|1")):
        d = tmp / name
        d.mkdir()
        (d / "u.data").write_text("".join(f"{u}\t{i}\t4\t1\n" for u in range(1, 9) for i in (1, 2)))
        (d / "u.item").write_text("1|A (1990)|01-Jan-1990||u" + "|0" * 18 + "|1\n" + row2 + "\n")
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["run_id"] == record["run_id"]
    return p


def probe_cases(w: dict, p: dict) -> list[dict]:
    import torch

    r, ds, cache, run, t = w["root"], w["ds"], w["cache"], w["run"], p["tmp"]
    new, newc, victim, keep = p["new"], p["newc"], p["victim"], p["keep"]
    trn = ["train", "--dataset", ds, "--cache", cache, "--num-neg", NUM_NEG, "--run-dir", new]
    emb = ["embed-items", run, f"v={t / 'str.npy'}:{t / 'ids3.txt'}", f"t={t / 't3.npy'}:{t / 'ids3.txt'}"]
    ml_rows = ["--movielens", r / "ml" / "movies.csv"]
    forced = [  # --force on an output of another kind: refused by name, nothing touched
        dict(argv=["export", run, "--out", run, "--force"], says=["--out", "is a run directory", "not an export directory"], watch=[run]),
        dict(argv=["export", run, "--out", cache, "--force"], says=["is a negative cache"], watch=[cache, run]),
        dict(argv=["export", run, "--out", keep, "--force"], says=["no command of this program wrote", "notes.txt"], watch=[keep, run]),
        dict(argv=["export", run, "--out", victim, "--force"], says=["victim.txt is a file"], watch=[victim, run]),
        dict(argv=["embed-items", run, *ml_rows, "--out", ds, "--force"], says=["is a dataset directory", "not a new-items directory"], watch=[ds]),
        dict(argv=["embed-items", run, *ml_rows, "--out", victim, "--force"], says=["victim.txt is a file"], watch=[victim]),
        dict(argv=["ingest", "movielens", r / "ml", run, "--force"], says=["is a run directory", "not a dataset directory"], watch=[run]),
        dict(argv=["synth", run, "--scale", "tiny", "--force"], says=["is a run directory"], watch=[run]),
        dict(argv=["synth", cache, "--scale", "tiny", "--force"], says=["is a negative cache"], watch=[cache]),
        dict(argv=["recommend-all", run, "--out", keep, "--force"], says=["is a directory", "recs.parquet"], watch=[keep]),
        dict(argv=["recommend-all", run, "--out", victim, "--force"], says=["is a file, not a recommend-all Parquet file"], watch=[victim]),
        dict(argv=["recommend-all", run, "--out", r / "dangling"], says=["dangling is a", "symbolic link"], watch=[r / "dangling", r / "nowhere"]),
        dict(argv=[*trn[:-1], ds], says=["--run-dir", "is a dataset directory", "not a run directory"], watch=[ds]),
        dict(argv=[*trn[:-1], run], says=["--run-dir", "--resume"], watch=[run]),
        # planted lock links: refused, the file they point to untouched
        dict(argv=["train", "--resume", t / "linked_run"], says=["linked_run/run.lock is a symbolic link"], watch=[victim, t / "linked_run"]),
        dict(argv=["refresh", t / "linked_cache"], says=["linked_cache/writer.lock is a symbolic link"], watch=[victim, t / "linked_cache"]),
        # size options, bounded before anything is written
        dict(argv=["build-negatives", ds, newc, "--num-neg", 4, "--chunk-rows", 99999999999999], says=["--chunk-rows", "or less"], watch=[newc, ds]),
        dict(argv=["build-negatives", ds, newc, "--num-neg", 4, "--generation", 0, "--shard", "0/99999999999"], says=["--shard", "n can be at most"], watch=[newc]),
        dict(argv=[*trn, "--dim-e", 10000000000], says=["--dim-e", "<= 8192"], watch=[new]),
        dict(argv=[*trn, "--batch-size", 2**64], says=["--batch-size", "<= 1048576"], watch=[new]),
        dict(argv=[*trn, "--epochs", 1000000000000], says=["--epochs", "<= 100000"], watch=[new]),
        dict(argv=["bench", "train", "--dataset", ds, "--workers", -1], says=["--workers must be >= 0"], watch=[ds]),
        dict(argv=["bench", "negatives", "--dataset", ds, "--ref-rows", 0], says=["--ref-rows must be >= 1"], watch=[ds]),
        dict(argv=["bench", "negatives", "--dataset", ds, "--ref-rows", -1], says=["--ref-rows must be >= 1"], watch=[ds]),
        dict(argv=["bench", "recommend", "--dataset", ds, "--user-block", -1], says=["--user-block must be >= 0"], watch=[ds]),
        # --device in every command that takes it, before anything is made
        dict(argv=["train", "--dataset", ds, "--cache", newc, "--run-dir", new, "--device", "bogus"], says=["--device 'bogus' is not a device"], watch=[newc, new]),
        dict(argv=["recommend-all", run, "--out", t / "r.parquet", "--device", "bogus"], says=["--device 'bogus'"], watch=[t / "r.parquet"]),
        dict(argv=["bench", "train", "--dataset", ds, "--device", "bogus"], says=["--device 'bogus'"], watch=[ds]),
        dict(argv=["bench", "recommend", "--dataset", ds, "--device", "bogus"], says=["--device 'bogus'"], watch=[ds]),
        # checkpoints bound to their run
        dict(argv=["evaluate", t / "foreign"], says=["foreign/checkpoints/best.pt belongs to another run"], watch=[t / "foreign"]),
        dict(argv=["recommend", t / "foreign", "--user", "0"], says=["belongs to another run"], watch=[t / "foreign"]),
        dict(argv=["export", t / "foreign", "--out", new], says=["belongs to another run"], watch=[t / "foreign", new]),
        dict(argv=["evaluate", t / "legacy_run"], says=["was not written by run", "seed"], watch=[t / "legacy_run"]),
        # output paths under a file, /proc, /sys
        dict(argv=["recommend-all", run, "--out", victim / "x.parquet"], says=["victim.txt is a file"], watch=[victim]),
        dict(argv=["recommend-all", run, "--out", "/proc/clcrec-x.parquet"], says=["cannot write in /proc"], watch=[]),
        dict(argv=["recommend-all", run, "--out", "/sys/clcrec-x.parquet"], says=["cannot write in /sys"], watch=[]),
        dict(argv=["embed-items", run, *ml_rows, "--out", "/proc/clcrec-x"], says=["cannot write in /proc"], watch=[]),
        dict(argv=["embed-items", run, *ml_rows, "--out", victim / "x"], says=["victim.txt is a file"], watch=[victim]),
        # low: bad arrays and rows, misleading messages
        dict(argv=[*emb, "--out", new], says=["str.npy", "<U1 values", "real numbers"], watch=[new]),
        dict(argv=[*emb[:2], f"v={t / 'cplx.npy'}:{t / 'ids3.txt'}", emb[3], "--out", new], says=["cplx.npy", "complex128"], watch=[new]),
        dict(argv=["ingest", "movielens", t / "ml-x", new], says=["u.item line 2", "genre flag 19", "'x'"], watch=[new]),
        dict(argv=["ingest", "movielens", t / "ml-short", new], says=["u.item line 2", "missing"], watch=[new]),
        dict(argv=["ingest", "movielens", t / "ml-dup", new], says=["u.item: item id 1 is listed more than once"], watch=[new]),
        dict(argv=["ingest", "movielens", t / "ml-x" / "u.data", new], says=["u.data is a file", "directory"], watch=[new]),
        dict(argv=["train", "--dataset", ds, "--cache", r / "afile", "--run-dir", new, "--num-neg", NUM_NEG], says=["afile is a file"],
             not_says=["building"], watch=[r / "afile", new]),
        dict(argv=["cache-verify", t / "staged"], says=["has no published generation", "build-negatives"], watch=[t / "staged"],
             first=["build-negatives", ds, t / "staged", "--num-neg", 4, "--generation", 0, "--shard", "0/1"]),
    ]
    if not torch.cuda.is_available():
        forced += [dict(argv=[*trn, "--device", "cuda"], says=["--device cuda", "no CUDA device"], watch=[new]),
                   dict(argv=["recommend-all", run, "--out", t / "r.parquet", "--device", "cuda"], says=["no CUDA device"], watch=[t / "r.parquet"])]
    return forced


def test_the_hostile_probe_changes_nothing(world, tmp_path):
    """Issue 21's cases: one line naming the path or option and the fix, exit 1, nothing written,
    nothing of the user's changed; then --force on the same kind of output still works."""
    p = probe_world(world, tmp_path)
    run, ds = world["run"], world["ds"]
    table = probe_cases(world, p)
    runs = []
    for c in table:
        if "first" in c:
            runs.append(dict(argv=c["first"]))
        runs.append(c)
    exp, emb, recs = tmp_path / "exp", tmp_path / "emb", tmp_path / "recs.parquet"
    ok = [  # an output of the command's own kind: refused without --force, replaced with it
        dict(argv=["export", run, "--out", exp]), dict(argv=["export", run, "--out", exp], says=["already exists; pass --force"], watch=[exp]),
        dict(argv=["export", run, "--out", exp, "--force"]),
        dict(argv=["recommend-all", run, "--out", recs, "-q", "--k", 3]),
        dict(argv=["recommend-all", run, "--out", recs, "-q", "--k", 3], says=["already exists; pass --force"], watch=[recs]),
        dict(argv=["recommend-all", run, "--out", recs, "-q", "--k", 3, "--force"]),
        dict(argv=["recommend", run, "--user", "0", "--k", 100000], says_ok=["note: --k 100000 is more than the", "showing all"]),
        dict(argv=["embed-items", run, f"v={tmp_path / 'v3.npy'}:{tmp_path / 'ids3.txt'}", f"t={tmp_path / 't3.npy'}:{tmp_path / 'ids3.txt'}", "--out", emb]),
        dict(argv=["embed-items", run, f"v={tmp_path / 'v3.npy'}:{tmp_path / 'ids3.txt'}", f"t={tmp_path / 't3.npy'}:{tmp_path / 'ids3.txt'}", "--out", emb, "--force"]),
    ]
    np.save(tmp_path / "v3.npy", np.ones((3, 24), dtype=np.float32))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".tmp-recs.parquet.{dead.pid}").write_bytes(b"left by a killed recommend-all")
    failed = []
    for c, res in zip(runs + ok, run_batch(runs + ok, tmp_path)):
        flat = " ".join(res["out"].split())
        try:
            if "says" in c:
                assert_refused(c, res)
                assert len(res["out"].strip().splitlines()) == 1, "more than one line"
                assert not any(frag in flat for frag in c.get("not_says", [])), "says what it must not"
            else:
                assert res["rc"] == 0, "failed"
                assert all(frag in flat for frag in c.get("says_ok", [])), "lacks a note"
        except AssertionError as e:  # all cases run; the failures are listed together
            failed.append(f"{' '.join(map(str, c['argv']))}: {e!s:.200} -> rc {res['rc']}: {res['out'][-400:]}")
    assert not failed, "\n".join(failed)
    assert p["victim"].read_text() == "the user's file\n"
    assert sorted(os.listdir(exp)) == [".clcrec-output.json", "export.json", "item_ids.parquet", "items.npy", "user_ids.parquet", "users.npy"]
    import polars as pl

    assert pl.read_parquet(recs).columns == ["user", "rank", "item", "score", "status"]
    assert not list(tmp_path.glob(".tmp-*")) and (ds / "meta.json").exists()  # no leftovers, a dead writer's removed
    assert len(np.load(emb / "vectors.npy")) == 3


# --- issue 28: nothing lost, second pass. --force replaces only what carries this program's verified
# marker (common/provenance.py); runs and studies are never replaced; bounds where numbers enter.

def second_pass_world(w: dict, tmp: Path) -> dict:
    """A user's folder that looks like a run, copies of the run and dataset to aim at, bad inputs."""
    import polars as pl

    from common.provenance import MARKER

    run, ds = w["run"], w["ds"]
    p = {"thesis": tmp / "thesis", "keep": tmp / "keep", "mine": tmp / "mine.parquet", "st": tmp / "st"}
    p["thesis"].mkdir()
    (p["thesis"] / "config.json").write_text("{}")
    (p["thesis"] / "thesis.tex").write_text("\\section{mine}\n")
    p["keep"].mkdir()
    (p["keep"] / "summary.json").write_text('{"mine": 1}\n')
    (p["keep"] / "best.toml").write_text("mine = 1\n")
    pl.DataFrame({"user": [1], "rank": [1], "item": [2], "score": [0.5]}).write_parquet(p["mine"])
    for name in ("runcopy", "upd", "nolast", "badprior", "nanprior", "garbage", "stripped", "busy", "badfield"):
        shutil.copytree(run, tmp / name)
    (tmp / "garbage" / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint at all " * 20)
    import torch

    ck = torch.load(tmp / "stripped" / "checkpoints" / "best.pt", weights_only=True)
    del ck["digest"]
    first = next(iter(ck["model"]))
    ck["model"][first] = ck["model"][first] + 1  # altered weights, the digest that would tell stripped
    torch.save(ck, tmp / "stripped" / "checkpoints" / "best.pt")
    shutil.copytree(w["cache"], tmp / "leasecache", ignore=shutil.ignore_patterns("*.lock", "leases"))
    (tmp / "elsewhere").mkdir()
    os.symlink(tmp / "elsewhere", tmp / "leasecache" / "leases")
    shutil.copytree(ds, tmp / "upd" / "dataset")  # an update run's own dataset
    (tmp / "nolast" / "checkpoints" / "last.pt").unlink()  # a finished run that lost its last.pt
    record = json.loads((run / "config.json").read_text())
    for name, w_ in (("badprior", "x"), ("nanprior", float("nan"))):
        prior = {**(record.get("content_prior") or {}), "weight": w_}
        (tmp / name / "config.json").write_text(json.dumps({**record, "content_prior": prior}))
    (tmp / "badfield" / "config.json").write_text(json.dumps({**record, "config": {**record["config"], "l_r": -1}}))
    for name in ("legacyds", "forgedds"):
        shutil.copytree(ds, tmp / name)
    (tmp / "legacyds" / MARKER).unlink()  # a dataset written before markers existed
    forged = json.loads((tmp / "forgedds" / MARKER).read_text())
    (tmp / "forgedds" / MARKER).write_text(json.dumps({**forged, "id": "f" * 32}))  # its digest no longer holds
    big = 10**400
    (tmp / "ks0.toml").write_text("ks = [10, 0]\n")
    (tmp / "kbig.toml").write_text("ks = [10, 1000000000]\n")
    (tmp / "selbig.toml").write_text("select_k = 1000000000\n")
    (tmp / "lrbig.toml").write_text(f"l_r = {big}\nepochs = {big}\n")
    (tmp / "space.toml").write_text(f"[epochs]\nlow = 1\nhigh = {big}\n")
    (tmp / "u0.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(12) for i in range(8) if (u + i) % 3))
    np.save(tmp / "zero.npy", np.ones((8, 0)))
    shutil.copytree(w["root"] / "ml", tmp / "ml-badtags")
    (tmp / "ml-badtags" / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,good,1\n1,one,bad,1\n")
    d = tmp / "ml-garbled"  # an ml-100k release whose u.item rows are not '|'-separated rows of one width
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{i}\t4\t1\n" for u in range(1, 9) for i in (1, 2)))
    (d / "u.item").write_text("1|A (1990)|01-Jan-1990||u" + "|0" * 18 + "|1\n" + "2|B|" + "|0" * 40 + "\n\x00\x01garbage\n")
    return p


def second_pass_cases(w: dict, p: dict, tmp: Path) -> list[dict]:
    r, ds, cache, run = w["root"], w["ds"], w["cache"], w["run"]
    thesis, keep, st = p["thesis"], p["keep"], p["st"]
    upd = ["update", run, "--interactions", r / "t.csv"]
    trn = ["train", "--dataset", ds, "--cache", cache, "--num-neg", NUM_NEG, "--run-dir", tmp / "newrun"]
    tune = ["tune", st, "--dataset", ds, "--cache", cache]
    big = str(10**400)
    long = tmp / ("a" * 300)
    return [
        # 1. a folder that only holds a config.json is not a run, and not the program's to call worthless
        dict(argv=[*upd, "--out", thesis, "--force"], says=["--out", "runs are never replaced"], watch=[thesis]),
        dict(argv=[*trn[:-1], thesis], says=["--run-dir", "already exists"], not_says=["remove it"], watch=[thesis]),
        # 2. update --force never replaces a run: another run, or its own parent
        dict(argv=[*upd, "--out", tmp / "runcopy", "--force"], says=["runs are never replaced"], watch=[tmp / "runcopy"]),
        dict(argv=[*upd, "--out", run, "--force"], says=["runs are never replaced"], watch=[run]),
        dict(argv=[*upd, "--out", run / "child"], says=["is inside the parent run"], watch=[run]),
        # 3. tune writes only into a new or empty folder, or its own study
        dict(argv=["tune", keep, "--dataset", ds], says=["is a directory that no command of this program wrote", "not a tune study folder"], watch=[keep]),
        dict(argv=["tune", tmp / "runcopy", "--dataset", ds], says=["is a run directory", "not a tune study folder"], watch=[tmp / "runcopy"]),
        dict(argv=["tune", ds, "--dataset", ds], says=["is a dataset directory", "not a tune study folder"], watch=[ds]),
        # 4. a user's Parquet file with recommend-all's columns carries no marker
        dict(argv=["recommend-all", run, "--out", p["mine"], "--force"], says=["no valid .clcrec-output.json marker", "move it aside"], watch=[p["mine"]]),
        # 5. a run's dataset is part of the run
        dict(argv=["synth", tmp / "upd" / "dataset", "--scale", "tiny", "--force"], says=["is part of the run", "never replaced"], watch=[tmp / "upd"]),
        dict(argv=["ingest", "movielens", r / "ml", tmp / "upd" / "dataset", "--force"], says=["is part of the run"], watch=[tmp / "upd"]),
        # 6. --resume of a run that trained but lost its last.pt does not start it over
        dict(argv=["train", "--resume", tmp / "nolast"], says=["last.pt is missing", "has trained", "best.pt"], watch=[tmp / "nolast"]),
        # outputs from before markers, or with a marker that does not verify: never replaced
        dict(argv=["synth", tmp / "legacyds", "--scale", "tiny", "--force"], says=["by its looks only", "move it aside"], watch=[tmp / "legacyds"]),
        dict(argv=["synth", tmp / "forgedds", "--scale", "tiny", "--force"], says=["by its looks only"], watch=[tmp / "forgedds"]),
        # tracebacks: OS errors, huge numbers, sizes, bad values where they enter
        dict(argv=["synth", long, "--scale", "tiny"], says=["File name too long", "shorter"], watch=[long]),
        dict(argv=["export", run, "--out", long], says=["File name too long"], watch=[long]),
        dict(argv=[*trn, "--epochs", big], says=["--epochs must be an integer <= 100000"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--seed", big], says=["--seed must be an integer"], watch=[tmp / "newrun"]),
        dict(argv=["train", "--dataset", ds, "--cache", cache, "--run-dir", tmp / "newrun", "--num-neg", big], says=["--num-neg must be an integer"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--config", tmp / "ks0.toml"], says=["ks must be integers from 1 to 10000", "[10, 0]"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--config", tmp / "kbig.toml"], says=["ks must be integers from 1 to 10000"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--config", tmp / "selbig.toml"], says=["--select-k must be an integer <= 10000"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--config", tmp / "lrbig.toml"], says=["lrbig.toml", "l_r"], watch=[tmp / "newrun"]),
        dict(argv=[*trn, "--device", "cpu:3"], says=["--device cpu:3", "one CPU device"], watch=[tmp / "newrun"]),
        dict(argv=["build-negatives", ds, tmp / "newc", "--generation", big], says=["--generation must be from 0 to 1,000,000"], watch=[tmp / "newc"]),
        dict(argv=["build-negatives", ds, tmp / "newc", "--generations", 1000000], says=["--generations must be from 1 to 1000"], watch=[tmp / "newc"]),
        dict(argv=["cache-verify", cache, "--generation", 99], says=["has no published generation 99"], watch=[cache]),
        dict(argv=["cache-verify", cache, "--generation", -1], says=["--generation must be from 0"], watch=[cache]),
        dict(argv=["ingest", "movielens", r / "ml", tmp / "newds", "--title-dim", 10**12], says=["--title-dim must be an integer from 1 to 65536"], watch=[tmp / "newds"]),
        dict(argv=["ingest", "movielens", tmp / "ml-garbled", tmp / "newds"], says=["u.item"], not_says=["ignore_errors"], watch=[tmp / "newds"]),
        dict(argv=["ingest", "movielens", tmp / "ml-badtags", tmp / "newds"], says=["tags.csv could not be parsed"], not_says=["ignore_errors"], watch=[tmp / "newds"]),
        dict(argv=["ingest", "citeulike", r, tmp / "newds", "--citation-dim", 10**11], says=["--citation-dim must be an integer from 0 to 65536"], watch=[tmp / "newds"]),
        dict(argv=["ingest", "table", tmp / "u0.csv", tmp / "newds", "--feature", f"f={tmp / 'zero.npy'}:{r / 'ids8.txt'}"], says=["zero.npy", "0 feature columns"], watch=[tmp / "newds"]),
        dict(argv=[*tune, "--sampler-seed", -1], says=["--sampler-seed must be an integer from 0"], watch=[st]),
        dict(argv=[*tune, "--device", "tpu"], says=["--device 'tpu'"], watch=[st]),
        dict(argv=["tune", st, "--dataset", ds, "--cache", cache], says=[f"set num_neg = {NUM_NEG} in the file given to tune --config"], watch=[st]),
        dict(argv=[*tune, "--space", tmp / "space.toml"], says=["needs numbers low and high"], watch=[st]),
        # low: a train that fails in its first epoch leaves no stub run directory behind
        dict(argv=[*trn[:-1], tmp / "diverged", "--l-r", "1e30", "--temp-value", "1e-30", "--log-every", 1], says=["non-finite loss at epoch 0"], watch=[tmp / "diverged"], trains=True),
        # low: checkpoints that are garbage or altered, a planted leases link, a parent being trained
        dict(argv=["evaluate", tmp / "garbage"], says=["garbage/checkpoints/best.pt is corrupt"], not_says=["could run code"], watch=[tmp / "garbage"]),
        dict(argv=["evaluate", tmp / "stripped"], says=["stripped/checkpoints/best.pt has a run id but no digest"], watch=[tmp / "stripped"]),
        dict(argv=["cache-verify", tmp / "leasecache"], says=["leases is a symbolic link"], watch=[tmp / "elsewhere", tmp / "leasecache"]),
        dict(argv=["update", tmp / "busy", "--interactions", r / "t.csv", "--out", tmp / "newupd"], says=["a trainer is still running on", "run.lock"], watch=[tmp / "busy", tmp / "newupd"]),
        dict(argv=["evaluate", tmp / "badfield"], says=["badfield/config.json holds an invalid config", "l_r", "-1"], watch=[tmp / "badfield"]),
        dict(argv=["train", "--resume", tmp / "badfield"], says=["badfield/config.json holds an invalid config"], watch=[tmp / "badfield"]),
        dict(argv=["recommend", tmp / "badprior", "--user", "0"], says=["content_prior", "weight", "'x'"], watch=[tmp / "badprior"]),
        dict(argv=["recommend", tmp / "nanprior", "--user", "0"], says=["content_prior", "weight", "nan"], watch=[tmp / "nanprior"]),
    ]


def test_second_pass_nothing_lost(world, tmp_path):
    """Issue 28's cases: each refused with one line (exit 1, no traceback), nothing watched changed;
    the user's files survive."""
    p = second_pass_world(world, tmp_path)
    table = second_pass_cases(world, p, tmp_path)
    failed = []
    lock = OwnedLock(tmp_path / "busy" / "run.lock", "pytest trainer", busy="busy {path} {holder}")
    lock.acquire(wait=False)
    try:
        results = run_batch(table, tmp_path)
    finally:
        lock.release()
    for c, res in zip(table, results):
        try:
            assert_refused(c, res)
            assert c.get("trains") or len(res["out"].strip().splitlines()) == 1, "more than one line"
            assert res["out"].strip().splitlines()[-1].startswith("error: "), "does not end in one error line"
            assert not any(frag in " ".join(res["out"].split()) for frag in c.get("not_says", [])), "says what it must not"
        except AssertionError as e:  # all cases run; the failures are listed together
            failed.append(f"{' '.join(map(str, c['argv']))[:300]}: {e!s:.300} -> rc {res['rc']}: {res['out'][-400:]}")
    assert not failed, "\n".join(failed)
    assert (p["thesis"] / "thesis.tex").read_text() == "\\section{mine}\n"
    assert (p["keep"] / "summary.json").read_text() == '{"mine": 1}\n' and not (p["keep"] / "study.db").exists()
    assert not os.path.lexists(p["st"]) or not any(p["st"].iterdir())
