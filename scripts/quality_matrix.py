"""The quality matrix: CLCRec's defaults across data regimes, not one dataset.

    python scripts/quality_matrix.py                              # every regime whose data is present
    python scripts/quality_matrix.py --regimes ml100k-ref citeulike --seeds 0 1 2 --modes honest --threads 1
    python scripts/quality_matrix.py --modes honest --reconfirm   # the runs' ends again with today's code
    python scripts/quality_matrix.py --regimes citeulike --set batch_size=32 --out out/pilot   # a pilot

Per regime and seed, a training run as `train` runs it (its defaults, early stopping, the prior
and the confirmation when it ends; mode "honest") and, with `--modes repro`, one in reproduction
mode (REPRO: the reference's negatives, hybrid draw, step, selection; no early stopping). At every
epoch end a recording trainer also evaluates, for the raw weights and their EMA and for raw and
centred cold rows, the model alone's validation (all of it, the choosing share, the held-back
items) and test Recall@10; selection rules are replayed on those curves exactly as the trainer
applies them (`clcrec.train.selection.select_epoch`). At the end it records the test figures of
what the run serves, of the model alone, and of the other cold-row form (served and alone).
Test figures are recorded only: nothing is chosen on them.

`--reconfirm` runs the end of every recorded honest run again (the selected weights, today's
`choose_and_confirm`), so that a change to the decisions made when training ends is measured on
every run without training again; `--set KEY=VALUE` changes TrainConfig fields of the honest runs
(a pilot of a new default: give it its own `--out`).

Regimes (data prepared under data/ on first use; a regime whose source is absent is skipped with
the reason): see REGIMES and `prepare`; docs/results.md describes each. CiteULike keeps 400 users
by default (`--citeulike-users`): its articles make every step encode thousands of items. Writes
OUT/<regime>/<mode>-s<seed>/ (run directories, recorded.json), OUT/matrix.json and OUT/matrix.md;
prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

import clcrec  # noqa: E402,F401 - first: sets the OpenMP spin default before torch loads (clcrec/__init__.py)
from clcrec.config import TrainConfig  # noqa: E402
from clcrec.evaluation.personalisation import cold_list_stats, held_out_popularity  # noqa: E402
from clcrec.model import NO_PRIOR, Prior  # noqa: E402
from clcrec.train.confirm import ALTERNATIVE_FORMS, choose_and_confirm, decide, prefer  # noqa: E402
from clcrec.train.selection import EpochAverage, first_selectable, select_epoch  # noqa: E402
from clcrec.train.trainer import Trainer  # noqa: E402

SHARED = ROOT.parent / "shared"
REGIMES = ("mllatest-ref", "mllatest", "ml100k", "ml100k-ref", "citeulike", "ml100k-thin", "text-ml100k",
           "synth-longtail", "synth-default")
# reproduction mode: the reference's negatives, hybrid draw, step and regulariser, nothing held back
REPRO = {"exclude": "all-known", "hybrid_draw": "with-replacement", "l_r": 0.001, "reg_content": 0.0, "val_confirm": 0.0,
         "select_mode": "all", "select_window": 1, "eval_ema": 0.0, "content_prior": "off", "select_rank": "served",
         "cold_vectors": "raw",
         "patience": 100_000}
MODES = {"honest": {}, "repro": REPRO}
SCORINGS = ("raw", "centred")
DECAY = 0.9  # the average recorded beside the raw weights
KEYS = ("recall@10", "ndcg@10", "recall@20")
THREADS = 0  # torch threads per run (--threads; 0: torch's default)
RECONFIRM = False  # --reconfirm: the end of every recorded honest run again, with today's code
OVERRIDES: dict = {}  # --set KEY=VALUE: TrainConfig fields changed in honest runs (a pilot of a default)


# ---------------------------------------------------------------------------------------------
# Data: one canonical dataset directory per regime, built on first use
# ---------------------------------------------------------------------------------------------


def _cli(*args) -> None:
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def prepare(regime: str, data: Path, citeulike_users: int) -> tuple[Path | None, str]:
    """(dataset dir, note) of a regime, or (None, reason it is skipped)."""
    ml = SHARED / "datasets" / "ml-100k"
    mll = SHARED / "datasets" / "ml-latest-small"
    target = data / f"qm-{regime}"
    if regime == "text-ml100k":
        target = data / "qm-text-ml100k" / "dataset"
    if (target / "meta.json").exists():
        return target, ""
    if regime in ("ml100k", "ml100k-ref", "ml100k-thin", "text-ml100k") and not (ml / "u.data").exists():
        return None, f"{ml} is absent"
    if regime.startswith("mllatest") and not (mll / "ratings.csv").exists():
        return None, f"{mll} is absent"
    if regime == "mllatest":
        _cli("ingest", "movielens", mll, target)
    elif regime == "mllatest-ref":
        layout = data / "qm-layout-mllatest"
        if not (layout / "train.npy").exists():
            subprocess.run([sys.executable, str(SHARED / "reference" / "make_layout.py"), "--source", "ml-latest",
                            str(mll), str(layout)], check=True, stdout=subprocess.DEVNULL)
        _cli("ingest", "refnpy", layout, target, "--allow-pickle")
    elif regime == "text-ml100k":  # titles as text, genres as categories, the year as a number
        sys.path.insert(0, str(ROOT / "scripts"))
        from text_regime import build

        build(target.parent, ml, seed=0)
    elif regime == "ml100k":
        _cli("ingest", "movielens", ml, target)
    elif regime == "ml100k-ref":
        make = SHARED / "reference" / "make_layout.py"
        if not make.exists():
            return None, f"{make} is absent"
        layout = data / "qm-layout-ml100k"
        if not (layout / "train.npy").exists():
            subprocess.run([sys.executable, str(make), "--source", "ml-100k", str(ml), str(layout)], check=True,
                           stdout=subprocess.DEVNULL)
        _cli("ingest", "refnpy", layout, target, "--allow-pickle")
    elif regime == "ml100k-thin":
        src = data / "qm-ml100k-thin-src"
        src.mkdir(parents=True, exist_ok=True)
        rows = [line for line in (ml / "u.data").read_text().splitlines() if line.strip()]
        users = sorted({int(r.split("\t")[0]) for r in rows})
        keep = set(np.random.default_rng(0).choice(users, size=len(users) // 5, replace=False).tolist())
        (src / "u.data").write_text("".join(r + "\n" for r in rows if int(r.split("\t")[0]) in keep))
        for name in ("u.item", "u.genre"):
            shutil.copy(ml / name, src / name)
        _cli("ingest", "movielens", src, target)
    elif regime == "citeulike":
        cu = SHARED / "datasets" / "citeulike-a"
        if not (cu / "users.dat").exists():
            return None, f"{cu} is absent"
        _cli("ingest", "citeulike", cu, target, "--max-users", citeulike_users)
    elif regime.startswith("synth"):
        from pipeline.synthetic import SynthConfig, write_synthetic

        cfg = SynthConfig(scale="default", seed=0)
        if regime == "synth-longtail":
            cfg = SynthConfig(scale="default", seed=0, num_users=300, num_items=3600, interactions=14_000,
                              popularity_exponent=1.0, feature_noise=2.5, exact_max_items=3600)
        write_synthetic(target, cfg)
    else:
        raise ValueError(regime)
    return target, ""


# ---------------------------------------------------------------------------------------------
# Training with recorded curves
# ---------------------------------------------------------------------------------------------


def _slim(res: dict) -> dict:
    return {m: {k: res[m][k] for k in KEYS} | {"users": res[m]["users"]} for m in ("all", "warm", "cold")}


class RecordingTrainer(Trainer):
    """The trainer as a user runs it (its defaults, its selection and early stopping, the prior and
    its confirmation when the run ends), recording besides, at every epoch end, the model alone's
    validation (all of it, the choosing share, the held-back items) and test cold and all-item
    Recall@10 of the raw weights and of the averaged ones, so that other selection rules can be
    replayed; and at the end, the selected weights' model alone and centred cold rows (recording
    only: a real run never looks at test metrics to choose anything)."""

    def __init__(self, cfg: TrainConfig, **kw):
        super().__init__(cfg, **kw)
        self.shadow = EpochAverage(self.model, DECAY)  # the average, also when the run evaluates raw weights
        ds = self.dataset
        self.popularity = held_out_popularity(ds.num_items, ds.val, ds.test)
        self.quiet = Console(file=open(os.devnull, "w"))
        self.curves: list[dict] = []

    def _point(self) -> dict:
        val, test = self.evaluate("val"), self.evaluate("test")
        held = len(self.val_pairs["confirm"]) > 0
        return {"val_cold": val["cold"]["recall@10"], "test": _slim(test),
                "choose": self.evaluate("choose")["cold"]["recall@10"] if held else val["cold"]["recall@10"],
                "confirm": self.evaluate("confirm")["cold"]["recall@10"] if held else None}

    def _points(self) -> dict:
        out = {}
        for scoring in SCORINGS:  # the model alone, cold rows ranked each way
            self.model.cold_vectors = scoring
            out[scoring] = self._point()
        self.model.cold_vectors = self.cfg.cold_vectors
        return out

    def end_epoch(self, epoch, generation, record):
        stop = super().end_epoch(epoch, generation, record)
        self.model.eval()
        self.shadow.update(self.model)
        point = {"raw": self._points()}
        with self.shadow.swapped_in(self.model):
            point[f"ema{DECAY}"] = self._points()
        self.curves.append(point)
        return stop

    def _served(self, scoring: str, prior: bool) -> dict:
        self.model.cold_vectors, self.prior = scoring, NO_PRIOR
        extra = {}
        if prior:
            chosen, confirmation = choose_and_confirm(self.model, self.dataset, self.cfg, self.val_pairs, self.quiet)
            self.prior, extra = Prior.of(chosen), {"weight": chosen["weight"], "confirmation": confirmation}
        users, items = self.model.tables(self.dataset.train, self.item_status, self.prior)
        out = {"test": _slim(self.evaluate("test")), **extra,
               "pers": cold_list_stats(users, items, self.dataset.item_status, self.popularity)}
        self.prior, self.model.cold_vectors = NO_PRIOR, self.cfg.cold_vectors
        return out

    def finish(self) -> dict:
        results = super().finish()
        # the selected weights (best.pt, loaded by finish) as served and without their prior, and centred
        served = {"test": {m: results["test"][m] for m in ("all", "warm", "cold")},
                  "pers": results["personalisation"]["CLCRec"], "weight": results["content_prior"]["weight"],
                  "confirmation": results.get("confirmation") or {}}
        other = "centred" if self.cfg.cold_vectors != "centred" else "raw"
        ends = {"served": served, "alone": self._served(self.cfg.cold_vectors, False),
                f"{other}+served": self._served(other, True), f"{other}+alone": self._served(other, False)}
        ran = len(self.metrics)
        (self.run.root / "recorded.json").write_text(json.dumps(
            {"curves": self.curves, "ends": ends, "best_epoch": results["best_epoch"], "epochs_run": ran,
             "max_epochs": self.cfg.epochs}, default=float))
        return results


def reconfirm(run: Path) -> None:
    """Run the end of a recorded run again with today's code (choose_and_confirm and the recorded
    ends) on its selected weights: a change to the decisions made when training ends is measured on
    every run without training again (the configured cold-row form is today's default: it is used
    only when cold items are ranked, never in a step or in selecting the epoch). The run's earlier results.json and recorded.json are kept
    beside as *.before.json (once)."""
    import torch

    # cold_vectors: today's configured form (evaluation only: the weights trained and selected are the same)
    cfg = TrainConfig.from_dict({**json.loads((run / "config.json").read_text())["config"], "run_dir": str(run),
                                 "cold_vectors": TrainConfig().cold_vectors})
    for name in ("results.json", "recorded.json"):
        if not (run / name.replace(".json", ".before.json")).exists():
            shutil.copy(run / name, run / name.replace(".json", ".before.json"))
    rec = json.loads((run / "recorded.json").read_text())
    trainer = RecordingTrainer(cfg, console=Console(stderr=True, quiet=True))
    trainer.curves = rec["curves"]
    trainer.metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    with torch.no_grad():
        trainer.finish()


def train_recorded(dataset: Path, run: Path, seed: int, mode: str, epochs: int) -> dict:
    from clcrec.train.flow import ensure_cache

    done = run / "done.json"
    if not done.exists():
        if run.exists():
            shutil.rmtree(run)
        extra = {**MODES[mode], **(OVERRIDES if mode == "honest" else {})}
        suffix = "" if mode == "honest" else "-all-known"
        from pipeline.dataset import read_fingerprint

        # named by the dataset's fingerprint: a regime re-prepared differently never meets a stale cache
        cache = ROOT / "caches" / f"{dataset.name}-{read_fingerprint(dataset)[:12]}-neg128-seed{seed}{suffix}"
        console = Console(stderr=True, quiet=True)
        ensure_cache(dataset, cache, 128, seed, console, extra.get("exclude", "train"))
        cfg = TrainConfig(dataset=str(dataset), cache=str(cache), run_dir=str(run), seed=seed, threads=THREADS,
                          tensorboard=False, **({"epochs": epochs} if epochs else {}), **extra)
        t0 = time.perf_counter()
        RecordingTrainer(cfg, console=console).fit()
        done.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    elif RECONFIRM and mode == "honest":
        reconfirm(run)
    return json.loads((run / "recorded.json").read_text())


# ---------------------------------------------------------------------------------------------
# Rows: the run as trained, and selection rules replayed on its curves
# ---------------------------------------------------------------------------------------------


def as_decided(ends: dict, name: str, content: dict) -> dict:
    """The served end `name` as the trainer serves it after confirmation (clcrec.train.confirm.decide):
    runs recorded before the prior's weight was confirmed against the model alone are replayed with
    the scores they recorded on the held-back items (exact: the model alone's test figures are
    recorded too, and the content-only cosine's are the baseline's)."""
    end = ends[name]
    c = end.get("confirmation") or {}
    if not c or "decision" in c:
        return end
    decision = decide(c, weight_given=False)
    c = {**c, "decision": decision}
    alone = name.replace("served", "alone")
    return {"served": {**end, "confirmation": c}, "alone": {**ends[alone], "weight": 0.0, "confirmation": c},
            "content": {**content, "weight": 1.0, "confirmation": {**c, "fell_back_to_content": True}}}[decision]


def variants(rec: dict, cfg_mode: str, content: dict | None = None) -> dict[str, dict]:
    """name -> pick {"epoch", "last", "test", "pers", "prior_weight", "confirmation"} of one run;
    `content`: the content-only cosine's {"test", "pers"} (what a run that falls back serves)."""
    # ends by form: "served"/"alone" are the run's (what its trainer served, of the form it chose, and
    # its configured form alone); "<form>+served"/"<form>+alone" the other form's
    e = rec["ends"]
    base = "raw" if "centred+served" in e else "centred"
    other = ALTERNATIVE_FORMS[base]
    forms = (e["served"].get("confirmation") or {}).get("forms")
    served = {other: e[f"{other}+served"], (forms["served"] if forms else base): e["served"]}
    alone = {base: e["alone"], other: e[f"{other}+alone"]}
    if content is not None:
        served = {f: as_decided({"served": v, "alone": alone[f]}, "served", content) for f, v in served.items()}
    best = rec["best_epoch"]
    last = best == rec["epochs_run"] - 1 and rec["epochs_run"] == rec["max_epochs"]
    pick = lambda e, epoch=best: {"epoch": epoch, "last": last if epoch == best else False, "test": e["test"],  # noqa: E731
                                  "pers": e.get("pers"), "prior_weight": e.get("weight"),
                                  "confirmation": e.get("confirmation") or {}}
    if cfg_mode == "repro":
        return {"reproduction": pick(alone[base])}
    d = TrainConfig().cold_vectors
    alt = ALTERNATIVE_FORMS.get(d)
    # the form the trainer serves today: the default's, unless the other wins on both halves (replayed
    # on the kept scores the run recorded for both)
    take = bool(forms) and alt in forms and prefer(tuple(forms[d]), tuple(forms[alt]))
    rows = {"default": pick(served[alt if take else d]), "model alone (no prior, no fallback)": pick(alone[d])}
    if alt in served:
        rows[f"cold vectors {alt}, served"] = pick(served[alt])
    rows[f"cold vectors {alt}, model alone"] = pick(alone[alt])
    for name, weights, ranking, key, serve in replayed_rules():
        e = replay(rec["curves"], weights, ranking, key)
        rows[name] = {"epoch": e, "last": False, "test": rec["curves"][e][weights][serve]["test"], "pers": None,
                      "prior_weight": None, "confirmation": {}}
    return rows


def replayed_rules() -> list[tuple[str, str, str, str, str]]:
    """(row, weights, ranking selected on, validation curve, ranking reported) of the selection
    rules replayed on the model alone: the trainer's rule with one thing changed."""
    d = TrainConfig()
    weights = f"ema{DECAY}" if d.eval_ema > 0 else "raw"
    other = "raw" if weights != "raw" else f"ema{DECAY}"
    sel = "centred" if d.select_rank == "centred" else d.cold_vectors
    sel_other = "raw" if sel == "centred" else "centred"
    serve = d.cold_vectors
    return [("model alone, replayed", weights, sel, "choose", serve),
            (f"model alone, epoch selected on {sel_other} ranks", weights, sel_other, "choose", serve),
            ("model alone, epoch chosen on all of validation", weights, sel, "val_cold", serve),
            (f"model alone, {'raw' if other == 'raw' else 'averaged'} weights", other, sel, "choose", serve)]


def replay(curves: list[dict], weights: str, ranking: str, key: str) -> int:
    """The epoch the trainer's rule (window, patience, first selectable epoch) picks on a curve."""
    d = TrainConfig()
    scores = [c[weights][ranking][key] for c in curves]
    first = first_selectable(DECAY if weights != "raw" else 0.0, len(scores))
    return select_epoch(scores, d.select_window, d.patience, first)[0]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def summarise(picks: list[dict]) -> dict:
    out = {}
    for m in ("cold", "warm", "all"):
        for k in ("recall@10", "ndcg@10"):
            xs = [p["test"][m][k] for p in picks]
            out[f"{m} {k}"] = {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}
    pers = [p["pers"] for p in picks if p.get("pers")]
    for k in ("distinct_share", "coverage@10", "pop_share@10", "common_share", "distinct_lists"):
        out[k] = statistics.mean(p.get(k, 0.0) for p in pers) if pers else None
    out["users"] = pers[0]["users"] if pers else None
    out["epochs"] = [p.get("epoch") for p in picks]
    out["last_epoch"] = sum(bool(p.get("last")) for p in picks)
    out["prior_weights"] = [p.get("prior_weight") for p in picks]
    out["fell_back"] = sum(bool(p.get("confirmation", {}).get("fell_back_to_content")) for p in picks)
    # the run says it is at least content-only (on the held-back items) where test says it is below
    out["false_claims"] = sum(bool(p.get("false_claim")) for p in picks)
    return out


def markdown(regime: str, note: str, rows: dict[str, dict]) -> str:
    head = (f"**{regime}** {note}\n\n| | cold R@10 | cold N@10 | warm R@10 | all R@10 | all N@10 | "
            "distinct cold lists | common share | pop share@10 | epochs | prior W | fell back | claims contradicted by test |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, s in rows.items():
        f = lambda k, s=s: f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}"  # noqa: E731
        ep = ",".join("-" if e is None else str(e) for e in s["epochs"])
        ws = ",".join("-" if w is None else f"{w:g}" for w in s.get("prior_weights", []))
        n = len(s["epochs"])
        lists = "-" if s["users"] is None else f"{s['distinct_lists']:.0f}/{s['users']} ({s['distinct_share']:.0%})"
        share = lambda k, s=s: "-" if s[k] is None else f"{s[k]:.2f}"  # noqa: E731
        lines.append(f"| {name} | {f('cold recall@10')} | {f('cold ndcg@10')} | {f('warm recall@10')} | "
                     f"{f('all recall@10')} | {f('all ndcg@10')} | {lists} | {share('common_share')} | "
                     f"{share('pop_share@10')} | {ep} | {ws} | {s['fell_back']}/{n} | {s['false_claims']}/{n} |")
    return head + "\n".join(lines) + "\n"


def overview(summary: dict) -> str:
    """Two tables across regimes: the defaults against the reference points, and the ablation
    (test cold Recall@10 and the share of distinct cold lists of each variant)."""
    f = lambda s, k: f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}"  # noqa: E731
    out = ["| regime | model | cold R@10 | cold N@10 | warm R@10 | all R@10 | distinct cold lists | common share | pop share@10 |",
           "|---|---|---|---|---|---|---|---|---|"]
    alone = "model alone (no prior, no fallback)"
    for regime, res in summary.items():
        for name in ("default", alone, "reproduction", "content", "random"):
            if name not in res["rows"]:
                continue
            r = res["rows"][name]
            pct = lambda k, r=r, fmt=".2f": "-" if r[k] is None else format(r[k], fmt)  # noqa: E731
            out.append(f"| {regime} | {name} | {f(r, 'cold recall@10')} | {f(r, 'cold ndcg@10')} | "
                       f"{f(r, 'warm recall@10')} | {f(r, 'all recall@10')} | {pct('distinct_share', fmt='.0%')} | "
                       f"{pct('common_share')} | {pct('pop_share@10')} |")
    names = list(dict.fromkeys(n for res in summary.values() for n in res["rows"] if n not in ("content", "random")))
    out += ["", "| test cold R@10 (distinct lists) | " + " | ".join(summary) + " |",
            "|---|" + "---|" * len(summary)]
    cell = lambda r: "-" if r is None else (f"{r['cold recall@10']['mean']:.4f}"  # noqa: E731
                                            + ("" if r["distinct_share"] is None else f" ({r['distinct_share']:.0%})"))
    for n in names + ["content"]:
        out.append(f"| {n} | " + " | ".join(cell(res["rows"].get(n)) for res in summary.values()) + " |")
    return "\n".join(out) + "\n"


def claims_content_level(c: dict) -> bool:
    """Whether a run's confirmation `c` reports what it serves as at least the content-only cosine
    on its held-back items: it kept its own ranking (no fallback, which serves the cosine itself)
    and that ranking is not below the cosine there (a ranking kept below it, by noise, says so)."""
    if not c or c.get("decision") == "content":
        return False
    return not c.get("below_content", c["served"] < c["content"])


def run_regime(regime: str, args) -> tuple[dict | None, str]:
    from clcrec.evaluation.baselines import (
        baseline_results,
        content_baseline,
        random_baseline,
    )
    from clcrec.evaluation.ranking import EvalConfig
    from pipeline.dataset import load_dataset

    dataset, reason = prepare(regime, args.data, args.citeulike_users)
    if dataset is None:
        return None, f"**{regime}**: skipped ({reason})\n"
    epochs = args.epochs or TrainConfig().epochs
    ds = load_dataset(dataset)
    recs = {(mode, s): train_recorded(dataset, args.out / regime / f"{mode}-s{s}", s, mode, args.epochs)
            for s in args.seeds for mode in args.modes
            if not args.no_train or (args.out / regime / f"{mode}-s{s}" / "done.json").exists()}
    pop = held_out_popularity(ds.num_items, ds.val, ds.test)
    base: dict[str, list[dict]] = {"content": [], "random": []}
    for s in args.seeds:
        b = baseline_results(ds, "test", EvalConfig(ks=(10, 20)), seed=s)
        for name, vecs in (("content", content_baseline(ds)), ("random", random_baseline(ds.num_users, ds.num_items, s))):
            base[name].append({"test": b[name], "pers": cold_list_stats(*vecs, ds.item_status, pop), "epoch": None})
    content_test = b["content"]["cold"]["recall@10"]
    by_row: dict[str, list[dict]] = {}
    for (mode, s), rec in recs.items():
        for name, p in variants(rec, mode, base["content"][args.seeds.index(s)]).items():
            c = p["confirmation"]
            p["false_claim"] = claims_content_level(c) and p["test"]["cold"]["recall@10"] < content_test
            p["seed"] = s
            by_row.setdefault(name, []).append(p)
    rows = {name: summarise(picks) for name, picks in by_row.items()}
    picks_all = by_row
    rows["content"], rows["random"] = summarise(base["content"]), summarise(base["random"])
    secs = [json.loads((args.out / regime / f"{m}-s{s}" / "done.json").read_text())["seconds"] for m, s in recs]
    note = (f"({ds.num_users:,} users x {ds.num_items:,} items, {len(ds.train):,} train pairs, "
            f"{int((ds.item_status != 0).sum()):,} cold items; {epochs} epochs, seeds "
            f"{','.join(map(str, args.seeds))}; {sum(secs):.0f} s of training)")
    return {"note": note, "rows": rows, "picks": picks_all}, markdown(regime, note, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                    help="honest: the defaults and their ablation; repro: reproduction mode's rows")
    ap.add_argument("--epochs", type=int, default=0, help="maximum epochs (0: train's default; early stopping as train's)")
    ap.add_argument("--citeulike-users", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "quality")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="TrainConfig fields for the honest runs (a pilot of a new default; use another --out)")
    ap.add_argument("--no-train", action="store_true",
                    help="tabulate the runs already recorded under --out; train none (a missing run is left out)")
    ap.add_argument("--reconfirm", action="store_true",
                    help="run the end of every recorded honest run again with today's code (no training)")
    args = ap.parse_args()
    global THREADS, RECONFIRM
    THREADS, RECONFIRM = args.threads, args.reconfirm
    types = {f.name: f.type for f in fields(TrainConfig)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types:
            ap.error(f"--set {item}: TrainConfig has no field {key!r}")
        kind = {"int": int, "float": float, "str": str}.get(str(types[key]), str)
        OVERRIDES[key] = kind(value)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, text = {}, []
    for regime in args.regimes:
        res, md = run_regime(regime, args)
        print(md, flush=True)
        text.append(md)
        if res is not None:
            summary[regime] = res
    if summary:
        text.append(overview(summary))
        print(text[-1])
    (args.out / "matrix.json").write_text(json.dumps(summary, indent=1, default=float))
    (args.out / "matrix.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
