"""Items between cold and warm, with groups large enough to read: reveal each cold item's first n
interactions to `update`, test on the rest.

    python scripts/bench_warmup.py data/qm-ml100k --seed 0 --out out/warmup/ml100k-s0 [--bands 1 2 3 5]
    python scripts/bench_warmup.py --paired out/warmup/ml100k-s0 out/warmup/ml100k-s1 ...

`scripts/bench_update.py` measures `update` in time, as production sees it, but there the items
seen once or 2-5 times are few (38 users hold the 1-interaction group's test pairs on ml-100k). This
bench controls the count instead. On a dataset with the paper's random cold items (any ingested
directory): train the parent on it; of the test-cold items with more than max(--bands)
interactions, a seeded permutation gives each a band n in turn; the feed holds each such item's
first n interactions (in time where the dataset has times, else a seeded order) and goes to
`update`; the test is every other interaction of the test-cold items. So each band holds an equal
share of the eligible items (a quarter with the default bands) and, on ml-100k, thousands of test
pairs.

Four models, each user's training, validation and fed pairs masked:
  old run, content      the parent as served today (every cold item by content)
  update, blend         after `update`, w = n / (n + k) on the ID embedding (the run's k)
  update, ID only       the same run, every item with interactions by its ID embedding
  update, content only  the same run, every item by its content vector (the new encoder)
Recall@10 / NDCG@10 of every test pair not fed (warm ones too) ranked among all items, of every
test-cold pair ranked among the test-cold items (the paper's cold-start ranking) and among all
items, and of each band's pairs ranked among the band's items
(how well a model orders items seen n times, apart from how it places them against the others).
`--paired` pools runs of several seeds and prints blend minus each other model per user, mean ±
standard error, band by band and over the bands of 2-5 interactions.

Writes OUT: parent/, parent-cache/, feed.csv, updated/, results.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clcrec  # noqa: E402,F401,I001 - before torch: sets libgomp's spin count (docs/speed.md)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench_update import per_user, print_paired  # noqa: E402 - this folder: per-user Recall/NDCG, the paired table
from clcrec.config import TrainConfig  # noqa: E402
from clcrec.rundir import open_run  # noqa: E402
from clcrec.train.flow import run_training  # noqa: E402
from clcrec.train.update import UpdateConfig, update_run  # noqa: E402
from pipeline.dataset import COLD_TEST, load_dataset  # noqa: E402

CONTENT_K = 1e12  # w = n / (n + k) ~ 0: every item by its content vector
MODELS = ("old run, content", "update, blend", "update, ID only", "update, content only")


def reveal(ds, bands: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None,
                                                           np.ndarray]:
    """(feed pairs, their times or None, test pairs, band of each item: -1 not revealed, every test
    pair not fed: warm ones included)."""
    test = np.asarray(ds.test, dtype=np.int64)
    t = ds.times("test")
    rng = np.random.default_rng([seed, 7])
    order = np.lexsort((rng.permutation(len(test)) if t is None else t, test[:, 1]))  # by item, then first seen
    test = test[order]
    t = None if t is None else t[order]
    cold = ds.item_status == COLD_TEST
    count = np.bincount(test[:, 1], minlength=ds.num_items)
    eligible = np.flatnonzero(cold & (count > max(bands)))
    band = np.full(ds.num_items, -1)
    band[rng.permutation(eligible)] = np.resize(np.array(bands), len(eligible))
    start = np.searchsorted(test[:, 1], np.arange(ds.num_items))
    rank = np.arange(len(test)) - start[test[:, 1]]  # 0 for an item's first interaction
    fed = (band[test[:, 1]] >= 0) & (rank < band[test[:, 1]])
    keep = cold[test[:, 1]] & ~fed  # the test: every other interaction of a test-cold item
    return test[fed], (None if t is None else t[fed]), test[keep], band, test[~fed]


def tables(out: Path) -> dict:
    parent, updated = open_run(out / "parent"), open_run(out / "updated")
    return {"old run, content": parent.tables(), "update, blend": updated.tables(),
            "update, ID only": updated.tables(blend_k=0.0), "update, content only": updated.tables(blend_k=CONTENT_K)}


def evaluate(out: Path, bands: tuple[int, ...], seed: int) -> tuple[dict, dict]:
    """({model: {column: {recall, ndcg, users, pairs}}}, {(model, band): per-user recall among the
    test-cold items}) of the benchmark directory `out`."""
    ds = load_dataset(Path(json.loads((out / "results.json").read_text())["dataset"]))
    feed, _, test, band, every = reveal(ds, bands, seed)
    seen = np.concatenate([np.asarray(ds.train), np.asarray(ds.val), feed]).astype(np.int64)
    cold = ds.item_status == COLD_TEST
    # (pairs counted, items ranked, test): every test pair not fed among all items (warm ones too),
    # every test-cold pair among the test-cold items and among all items, then each band ranked
    # within itself (how well a model orders items seen n times)
    every_item = np.ones(ds.num_items, bool)
    cols = {"all test pairs, among all": (every_item, None, every), "test-cold, among cold": (cold, cold, test),
            "test-cold, among all": (cold, None, test),
            "not revealed, within": (cold & (band == -1),) * 2 + (test,) if (cold & (band == -1)).any() else None,
            **{f"n = {b}, within": (band == b, band == b, test) for b in bands}}
    table, users = {}, {}
    for m, (u, i) in tables(out).items():
        table[m] = {}
        for c, (keep, cand, pairs) in ((c, v) for c, v in cols.items() if v is not None):
            who, rec, ndcg = per_user(u, i, seen, pairs, keep, cand)
            table[m][c] = {"recall": float(rec.mean()), "ndcg": float(ndcg.mean()), "users": len(who),
                           "pairs": int(keep[pairs[:, 1]].sum())}
            if "among all" not in c:
                users[(m, c)] = (who, rec)
    return table, users


def paired(dirs: list[Path]) -> None:
    """Blend minus each other model, per user, pooled over `dirs` (one per seed); "n = 2-5" takes
    each user's mean difference over the bands of 2-5 interactions they have test pairs in (the
    issue's grouping)."""
    diffs: dict = {}
    for out in dirs:
        r = json.loads((out / "results.json").read_text())
        _, users = evaluate(out, tuple(r["bands"]), r["seed"])
        pooled: dict = {}
        for (m, c), (who, rec) in users.items():
            if m != "update, blend":
                ref_who, ref = users[("update, blend", c)]
                assert (who == ref_who).all()
                diffs.setdefault((m, c), []).extend(ref - rec)
                if c.startswith("n = ") and 2 <= int(c.split()[2].rstrip(",")) <= 5:
                    for u, d in zip(who.tolist(), ref - rec):
                        pooled.setdefault(m, {}).setdefault(u, []).append(d)
        for m, per_user_diffs in pooled.items():
            diffs.setdefault((m, "n = 2-5, within, per user"), []).extend(np.mean(v) for v in per_user_diffs.values())
    print(f"blend minus, Recall@10 per user, {len(dirs)} run(s): mean ± SE (users)")
    print_paired(diffs, (MODELS[0], *MODELS[2:]), digits=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, nargs="?", help="an ingested dataset directory (random cold items)")
    ap.add_argument("--paired", type=Path, nargs="+", metavar="OUT", help="instead: blend minus each other "
                    "model per user, over these benchmark directories (one per seed)")
    ap.add_argument("--out", type=Path, default=Path("out/warmup"))
    ap.add_argument("--bands", type=int, nargs="+", default=[1, 2, 3, 5], help="interactions revealed per item")
    ap.add_argument("--epochs", type=int, default=20, help="the parent's epochs (train's early stopping)")
    ap.add_argument("--l-r", type=float, default=None, help="the parent's rate (default: train's)")
    ap.add_argument("--seed", type=int, default=0, help="the parent's training, the bands and the update")
    ap.add_argument("--item-init", default=None, help="update's --item-init (default: update's)")
    ap.add_argument("--cold-vectors", default=None, help="update's --cold-vectors (default: update's)")
    ap.add_argument("--reuse", action="store_true", help="keep OUT's parent run; only update again")
    a = ap.parse_args()
    if a.paired:
        return paired(a.paired)
    if a.dataset is None or not (a.dataset / "meta.json").exists():
        ap.error("give an ingested dataset directory (cli.py ingest ...), or --paired OUT...")
    if any(b < 1 for b in a.bands):
        ap.error("--bands: each at least 1")
    out, bands = a.out, tuple(sorted(set(a.bands)))
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(a.dataset)
    if not (a.reuse and (out / "parent" / "checkpoints").exists()):
        for p in ("parent", "parent-cache"):
            shutil.rmtree(out / p, ignore_errors=True)
        lr = {} if a.l_r is None else {"l_r": a.l_r}
        run_training(TrainConfig(dataset=str(a.dataset.resolve()), cache=str(out / "parent-cache"),
                                 run_dir=str(out / "parent"), epochs=a.epochs, seed=a.seed, device="cpu", **lr))
    feed, t, _, band, _ = reveal(ds, bands, a.seed)
    uid, iid = ds.user_ids()["original_id"].to_numpy(), ds.item_ids()["original_id"].to_numpy()
    cols = {"user": uid[feed[:, 0]], "item": iid[feed[:, 1]]} | ({} if t is None else {"timestamp": t})
    pl.DataFrame(cols).write_csv(out / "feed.csv")
    init = {k: v for k, v in (("item_init", a.item_init), ("cold_vectors", a.cold_vectors)) if v is not None}
    update_run(out / "parent", out / "feed.csv", out / "updated", config=UpdateConfig(seed=a.seed, device="cpu", **init),
               force=True)
    (out / "results.json").write_text(json.dumps({"dataset": str(a.dataset.resolve()), "bands": bands, "seed": a.seed}))
    table, _ = evaluate(out, bands, a.seed)
    k = open_run(out / "updated").blend_k
    result = {"dataset": str(a.dataset.resolve()), "bands": bands, "seed": a.seed, "blend_k": k,
              "item_init": UpdateConfig(**init).item_init, "cold_vectors": UpdateConfig(**init).cold_vectors,
              "items_per_band": {str(b): int((band == b).sum()) for b in bands}, "feed_pairs": len(feed), "table": table}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    cols = list(next(iter(table.values())))
    print("| model | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for m, row in table.items():
        print(f"| {m} | " + " | ".join(f"{row[c]['recall']:.4f}" for c in cols) + " |")
    print(f"Recall@10; blend k = {k:g}; items per band {result['items_per_band']}; feed {len(feed)} pairs")


if __name__ == "__main__":
    main()
