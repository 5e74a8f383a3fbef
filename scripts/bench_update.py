"""From cold to warm, measured like production: `update` against a full retrain on ml-100k in time.

    python scripts/bench_update.py ../shared/datasets/ml-100k [--cutoff 0.5 --feed-share 0.5 --epochs 30]

The temporal protocol: ingest with `--split temporal --cutoff 0.5` and train the parent run on what
came before; of what came after, the first `--feed-share` (in time) is the file fed to `update`, the
rest is the test. Four models ranked on that test, all over the same items, each user's
interactions before the test period masked:
  old run, content   the parent as served today (items first seen after the cutoff by content)
  update, blend      after `update` (ID and content blended by n / (n + k), k chosen on validation)
  update, ID only    the same run, every item with interactions by its ID embedding
  full retrain       ingest with the cutoff at the start of the test period, train from scratch
                     (and served with its cold rows normalised, and scaled as the update serves them)
Recall@10 / NDCG@10 over all items (ranked among all items), and over the new items (first seen
after the cutoff), all of them and grouped by how many interactions the update file held for them
(0, 1, 2-5, 6-20, >20): ranked among the new items (the paper's cold-start ranking), counting the
group's test pairs only; and each group of more than K items ranked among its own items (how well
a model orders items seen n times, apart from how it places them against the other groups).
Wall time of `update` and of the retrain (ingest, negatives, training) are measured one after the
other in this process.

Writes OUT (default out/bench-update/): the datasets, runs, feed.csv and results.json.

    python scripts/bench_update.py --paired out/bench-update out/bench-update-s1 out/bench-update-s2

prints blend minus content-only and minus ID-only per user, pooled over runs of several seeds
(mean ± standard error), for items seen 1 and 2-5 times: the groups are small, so a difference
is only read against its standard error.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clcrec  # noqa: E402,F401,I001 - before torch: sets libgomp's spin count (19x on a shared machine, docs/speed.md)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from clcrec.config import TrainConfig  # noqa: E402
from clcrec.rundir import open_run  # noqa: E402
from clcrec.train.flow import run_training  # noqa: E402
from clcrec.train.update import UpdateConfig, update_run  # noqa: E402
from pipeline.dataset import COLD_TEST, load_dataset  # noqa: E402
from pipeline.ingest_common import IngestConfig  # noqa: E402
from pipeline.ingest_movielens import ingest_movielens  # noqa: E402
from pipeline.split_temporal import TemporalSplitConfig, time_at_fraction  # noqa: E402

GROUPS = (("0 (still cold)", 0, 0), ("1", 1, 1), ("2-5", 2, 5), ("6-20", 6, 20), (">20", 21, 10**9))
K = 10


def per_user(users: torch.Tensor, items: torch.Tensor, seen: np.ndarray, test: np.ndarray, keep: np.ndarray,
             candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, Recall@K, NDCG@K), one entry per user with a test pair on an item where `keep`,
    ranking the `candidates` (default all items), `seen` masked."""
    scores = (users @ items.T).numpy().astype(np.float64)  # (U, I)
    scores[seen[:, 0], seen[:, 1]] = -np.inf
    if candidates is not None:
        scores[:, ~candidates] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]  # (U, K)
    test = test[keep[test[:, 1]]]
    who, rec, ndcg = np.unique(test[:, 0]), [], []
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    for u in who:
        pos = set(test[test[:, 0] == u, 1].tolist())
        hit = np.array([i in pos for i in top[u]])
        rec.append(hit.sum() / len(pos))
        ndcg.append((hit * disc).sum() / disc[: min(len(pos), K)].sum())
    return who, np.array(rec), np.array(ndcg)


def metrics(users, items, seen, test, keep, candidates=None) -> dict:
    """Mean Recall@K / NDCG@K of `per_user`, with the users' and test pairs' counts."""
    who, rec, ndcg = per_user(users, items, seen, test, keep, candidates)
    return {"recall": float(rec.mean()) if len(rec) else float("nan"), "ndcg": float(ndcg.mean()) if len(ndcg) else float("nan"),
            "users": len(who), "pairs": int(keep[test[:, 1]].sum())}


def protocol(out: Path, feed_share: float):
    """(parent dataset, feed pairs, test pairs, pairs masked at test, feed count per item, new-item mask)."""
    ds = load_dataset(out / "parent-data")
    t = ds.times("test")
    t2 = time_at_fraction(t, feed_share)
    test = np.asarray(ds.test, dtype=np.int64)
    feed, rest = test[t < t2], test[t >= t2]
    seen = np.concatenate([np.asarray(ds.train), np.asarray(ds.val), feed]).astype(np.int64)
    n_feed = np.bincount(feed[:, 1], minlength=ds.num_items)
    return ds, feed, rest, seen, n_feed, ds.item_status == COLD_TEST  # new: first seen after the cutoff


def paired(dirs: list[Path]) -> None:
    """Blend minus content-only and minus ID-only, per user, pooled over the benchmark directories
    `dirs` (one per seed): mean and standard error for items seen 1 and 2-5 times, ranked within
    their group and among the new items."""
    diffs: dict[tuple, list] = {}
    for out in dirs:
        feed_share = float(json.loads((out / "results.json").read_text())["args"]["feed_share"])
        ds, _, rest, seen, n_feed, new = protocol(out, feed_share)
        parent, updated = open_run(out / "parent"), open_run(out / "updated")
        models = {"content": parent.tables(), "blend": updated.tables(), "ID only": updated.tables(blend_k=0.0)}
        for name, lo, hi in GROUPS[1:3]:
            keep = new & (n_feed >= lo) & (n_feed <= hi)
            for where, cand in (("within the group", keep), ("among the new items", new)):
                rec = {m: per_user(*tabs, seen, rest, keep, cand)[1] for m, tabs in models.items()}
                for other in ("content", "ID only"):
                    diffs.setdefault((other, f"{name}, {where}"), []).extend(rec["blend"] - rec[other])
    print(f"blend minus, Recall@{K} per user over {len(dirs)} run(s): mean ± standard error (users)")
    print_paired(diffs, ("content", "ID only"), digits=3)


def print_paired(diffs: dict, rows, digits: int) -> None:
    """A markdown table of per-user differences {(row, column): [values]}: mean ± standard error (n)."""
    cols = list(dict.fromkeys(c for _, c in diffs))
    print("| blend minus | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [np.array(diffs[(r, c)]) for c in cols]
        print(f"| {r} | " + " | ".join(f"{d.mean():+.{digits}f} ± {d.std(ddof=1) / np.sqrt(len(d)):.{digits}f} ({len(d)})"
                                       for d in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, nargs="?", help="the MovieLens release (not with --paired)")
    ap.add_argument("--paired", type=Path, nargs="+", metavar="OUT", help="instead: the paired per-user differences "
                    "for items seen 1 and 2-5 times over these benchmark directories (one per seed)")
    ap.add_argument("--out", type=Path, default=Path("out/bench-update"))
    ap.add_argument("--cutoff", default="0.5", help="0.5: 216 items first seen after it, 121 of them seen 1-5 times in the feed")
    ap.add_argument("--feed-share", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=30, help="parent and retrain (early stopping as train's defaults)")
    ap.add_argument("--select-mode", default="all", help="parent and retrain: the test ranks all items, and "
                    "train's default (cold) reads a validation of a few users with cold items in time")
    ap.add_argument("--update-epochs", type=int, default=3)
    ap.add_argument("--update-l-r", type=float, default=None, help="update's learning rate (default: the parent's)")
    ap.add_argument("--update-replay", default=None, help="update's --replay: a number or 'all' (default: update's)")
    ap.add_argument("--update-item-init", default=None, help="update's --item-init (default: update's)")
    ap.add_argument("--update-cold-vectors", default=None, help="update's --cold-vectors (default: update's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="keep OUT's parent and retrain runs (and the retrain's "
                    "recorded wall time); only update again, e.g. with other --update-epochs")
    a = ap.parse_args()
    if a.paired:
        return paired(a.paired)
    if a.source is None:
        ap.error("give the MovieLens release (or --paired OUT...)")
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    base = dict(epochs=a.epochs, seed=a.seed, device="cpu", select_mode=a.select_mode)

    # --- the parent: everything before the cutoff ---
    ingest_movielens(a.source, out / "parent-data", IngestConfig(split=TemporalSplitConfig(a.cutoff)), force=True)
    ds, feed, rest, seen, n_feed, new = protocol(out, a.feed_share)
    t = ds.times("test")
    t2 = time_at_fraction(t, a.feed_share)
    uid, iid = ds.user_ids()["original_id"].to_numpy(), ds.item_ids()["original_id"].to_numpy()
    pl.DataFrame({"user": uid[feed[:, 0]], "item": iid[feed[:, 1]], "timestamp": t[t < t2]}).write_csv(out / "feed.csv")
    import shutil

    reuse = a.reuse and (out / "results.json").exists()
    for p in ("updated",) if reuse else ("parent", "updated", "retrain", "parent-cache", "retrain-cache"):
        shutil.rmtree(out / p, ignore_errors=True)  # a fresh start: nothing reused by accident
    if not reuse:
        run_training(TrainConfig(dataset=str(out / "parent-data"), cache=str(out / "parent-cache"),
                                 run_dir=str(out / "parent"), **base))

    # --- update vs full retrain, one after the other ---
    given = {} if a.update_replay is None else {"replay": None if a.update_replay == "all" else float(a.update_replay)}
    given |= {k: v for k, v in (("item_init", a.update_item_init), ("cold_vectors", a.update_cold_vectors)) if v}
    t0 = time.perf_counter()
    update_run(out / "parent", out / "feed.csv", out / "updated",
               config=UpdateConfig(epochs=a.update_epochs, seed=a.seed, device="cpu", l_r=a.update_l_r,
                                                   **given), force=True)
    update_s = time.perf_counter() - t0
    cut2 = datetime.fromtimestamp(t2, timezone.utc).replace(tzinfo=None).isoformat()
    if reuse:
        retrain_s = json.loads((out / "results.json").read_text())["retrain_s"]
    else:
        t0 = time.perf_counter()
        ingest_movielens(a.source, out / "retrain-data", IngestConfig(split=TemporalSplitConfig(cut2)), force=True)
        run_training(TrainConfig(dataset=str(out / "retrain-data"), cache=str(out / "retrain-cache"),
                                 run_dir=str(out / "retrain"), **base))
        retrain_s = time.perf_counter() - t0

    # --- one test, one item index ---
    re = load_dataset(out / "retrain-data")
    assert (re.item_ids()["original_id"].to_numpy() == iid).all() and (re.user_ids()["original_id"].to_numpy() == uid).all()
    assert len(np.asarray(re.test)) == len(rest)
    parent, updated, retrain = open_run(out / "parent"), open_run(out / "updated"), open_run(out / "retrain")
    assert updated.dataset.num_items == ds.num_items  # every item of the file was in the parent already
    models = {"old run, content": parent.tables(), "update, blend": updated.tables(),
              "update, ID only": updated.tables(blend_k=0.0), "full retrain": retrain.tables()}
    # the retrain served as the update serves (cold rows at the ID scale), for a like-for-like comparison
    retrain.model.cold_vectors = "normalised"
    models["full retrain, cold rows normalised"] = retrain.tables()
    retrain.model.cold_vectors = "scaled"
    models["full retrain, cold rows scaled"] = retrain.tables()
    cols = {"all items": np.ones(ds.num_items, bool), "new items": new,
            **{f"new, {name}": new & (n_feed >= lo) & (n_feed <= hi) for name, lo, hi in GROUPS}}
    table = {m: {c: metrics(*tabs, seen, rest, keep, None if c == "all items" else new) for c, keep in cols.items()}
             for m, tabs in models.items()}
    # each group ranked among its own items: how well a model orders items with n interactions,
    # apart from how it places them against items with more or fewer (groups of more than K items)
    groups = {c: keep for c, keep in cols.items() if c.startswith("new, ") and keep.sum() > K}
    within = {m: {c: metrics(*tabs, seen, rest, keep, keep) for c, keep in groups.items()} for m, tabs in models.items()}
    results = {"table": table, "within_group": within, "update_s": update_s, "retrain_s": retrain_s, "blend_k": updated.blend_k,
               "items_per_group": {c: int(k.sum()) for c, k in cols.items()}, "feed_pairs": int(len(feed)),
               "test_pairs": int(len(rest)), "args": {k: str(v) for k, v in vars(a).items()}}
    name = "results.json" if not reuse else (f"results-update-epochs{a.update_epochs}-lr{a.update_l_r}-replay{a.update_replay or 'default'}"
                                                  f"-init{a.update_item_init or 'default'}"
                                                  + (f"-{a.update_cold_vectors}" if a.update_cold_vectors else "") + ".json")
    (out / name).write_text(json.dumps(results, indent=1))

    head = "| model | " + " | ".join(f"{c} ({results['items_per_group'][c]} items)" for c in cols) + " |"
    print(head + "\n|" + "---|" * (len(cols) + 1))
    for m, row in table.items():
        print(f"| {m} | " + " | ".join(f"{row[c]['recall']:.4f} / {row[c]['ndcg']:.4f}" for c in cols) + " |")
    print("\neach group ranked among its own items:\n| model | " + " | ".join(groups) + " |\n|" + "---|" * (len(groups) + 1))
    for m, row in within.items():
        print(f"| {m} | " + " | ".join(f"{row[c]['recall']:.4f} / {row[c]['ndcg']:.4f}" for c in groups) + " |")
    print(f"\nRecall@{K} / NDCG@{K}; blend k = {updated.blend_k:g}; feed {len(feed):,} pairs, test {len(rest):,} pairs")
    print(f"wall time: update {update_s:.1f} s, full retrain {retrain_s:.1f} s ({retrain_s / update_s:.1f}x)")


if __name__ == "__main__":
    main()
