"""The quality matrix: CLCRec's defaults across data regimes, not one dataset.

    python scripts/quality_matrix.py                              # every regime whose data is present
    python scripts/quality_matrix.py --regimes ml100k-ref citeulike --seeds 0 1 2 --out out/quality

Per regime and seed, two training runs of `--epochs` epochs (no early stopping): the honest
default configuration (negatives avoid training items, Bernoulli hybrid slots) and reproduction
mode (`--exclude all-known --hybrid-draw with-replacement`). At every epoch end a recording
trainer evaluates validation and test (all / warm / cold, @10 and @20) and the cold top-10
personalisation (clcrec/personalisation.py) of the raw weights and of their EMA, each with cold
items ranked both ways (`--cold-vectors raw | normalised`). Averaging and cold-row scaling are
evaluation-only (they never enter a training step), so one run serves every variant; each
selection rule is then replayed on the validation curves with `clcrec.train.selection.select_epoch`,
exactly as the trainer applies it (early stopping included), and the test metrics of the epoch it
picks are tabulated as mean ± sd over seeds. The rows:
    default        TrainConfig's defaults (selection, averaging, cold vectors), honest negatives
    variants       the ablation: one default changed at a time (see VARIANTS)
    reproduction   the reproduction flags (`--select-mode all --select-k 10 --select-window 1
                   --eval-ema 0`, patience = epochs), with the default cold vectors
    content, random  clcrec/evaluation/baselines.py on the same split
Regimes (data prepared under data/ on first use; a regime whose source is absent is skipped with
the reason):
    ml100k        ml-100k, this project's split            ../shared/datasets/ml-100k
    ml100k-ref    ml-100k, the reference code's layout     ../shared/reference/make_layout.py
    citeulike     CiteULike-a, a seeded `--citeulike-users` users (tags + citations content)
    ml100k-thin   ml-100k with a seeded fifth of the users (items outnumber users ~7x after the drop)
    synth-longtail  synthetic: weak, noisy content (noise 2.5), 10x more items than users, long-tail
                  popularity (median item ~3 interactions)
    synth-default   the built-in synthetic default (the demo's data)
MovieLens trains with the reference hyperparameters; synthetic data and the CiteULike sample with
the demo's preset (l_r 0.005: they have ~35-130 steps per epoch, and at 0.001 the loss stays on its
initial plateau for ~1,000 steps; measured on the CiteULike sample: test cold Recall@10 0.0136 at
0.001 after 15 epochs, against 0.1153 for content-only); 20 epochs on MovieLens, 15 on CiteULike and synthetic data (`--epochs`). CiteULike
keeps 400 users by default: its ~5,000 articles make every step encode ~5,000 items, and on 2
shared cores 1,500 users (15,000 articles) trained at ~400 samples/s. Writes OUT/<regime>/<mode>-s<seed>/ (run directories, per-epoch `curves` in
metrics.jsonl), OUT/matrix.json and OUT/matrix.md; prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

import clcrec  # noqa: E402,F401 - first: sets the OpenMP spin default before torch loads (clcrec/__init__.py)
from clcrec.config import TrainConfig  # noqa: E402
from clcrec.evaluation.personalisation import cold_list_stats, held_out_popularity  # noqa: E402
from clcrec.model import NO_PRIOR, Prior  # noqa: E402
from clcrec.train.prior import choose_prior  # noqa: E402
from clcrec.train.selection import EpochAverage, first_selectable, select_epoch  # noqa: E402
from clcrec.train.trainer import Trainer  # noqa: E402

SHARED = ROOT.parent / "shared"
REGIMES = ("ml100k", "ml100k-ref", "citeulike", "ml100k-thin", "synth-longtail", "synth-default")
MODES = {"honest": {}, "repro": {"exclude": "all-known", "hybrid_draw": "with-replacement"}}
SCORINGS = ("raw", "normalised")
KEYS = ("recall@10", "ndcg@10", "recall@20")
SYNTH_PRESET = {"l_r": 0.005}  # clcrec/train/flow.py DEMO_PRESET's step size


# ---------------------------------------------------------------------------------------------
# Data: one canonical dataset directory per regime, built on first use
# ---------------------------------------------------------------------------------------------


def _cli(*args) -> None:
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def prepare(regime: str, data: Path, citeulike_users: int) -> tuple[Path | None, str]:
    """(dataset dir, note) of a regime, or (None, reason it is skipped)."""
    ml = SHARED / "datasets" / "ml-100k"
    target = data / f"qm-{regime}"
    if (target / "meta.json").exists():
        return target, ""
    if regime in ("ml100k", "ml100k-ref", "ml100k-thin") and not (ml / "u.data").exists():
        return None, f"{ml} is absent"
    if regime == "ml100k":
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
    """Evaluates, at every epoch end, validation and test of the raw weights and of their EMA, with
    cold items ranked raw and normalised, plus each variant's cold personalisation (recording
    only: a real run never looks at test metrics to choose anything)."""

    def __init__(self, cfg: TrainConfig, decay: float, **kw):
        super().__init__(cfg, **kw)
        self.ema = EpochAverage(self.model, decay)
        self.decay = decay
        ds = self.dataset
        self.popularity = held_out_popularity(ds.num_items, ds.val, ds.test)

    def _record(self) -> dict:
        out = {}
        for scoring in SCORINGS:
            self.model.cold_vectors = scoring
            out[scoring] = self._measure()
        self.model.cold_vectors = self.cfg.cold_vectors
        # the content prior as the trainer chooses it when a run ends (clcrec/train/prior.py), here
        # at every epoch: the replay reports it at the epoch the pure model's curves select
        prior = choose_prior(self.model, self.dataset, self.cfg.replace(content_prior="auto"))
        self.prior = Prior.of(prior)
        out["prior"] = {**self._measure(), "weight": prior["weight"]}
        self.prior = NO_PRIOR
        return out

    def _measure(self) -> dict:
        users, items = self.model.tables(self.dataset.train, self.item_status, self.prior)
        return {"val": _slim(self.evaluate("val")), "test": _slim(self.evaluate("test")),
                "pers": cold_list_stats(users, items, self.dataset.item_status, self.popularity)}

    def end_epoch(self, epoch, generation, record):
        self.model.eval()
        curves = {"raw": self._record()}
        self.ema.update(self.model)
        with self.ema.swapped_in(self.model):
            curves[f"ema{self.decay}"] = self._record()
        record["curves"] = curves
        return super().end_epoch(epoch, generation, record)


def train_recorded(dataset: Path, run: Path, seed: int, mode: str, epochs: int, decay: float, preset: bool) -> list[dict]:
    from clcrec.train.flow import ensure_cache

    done = run / "done.json"
    if not done.exists():
        if run.exists():
            shutil.rmtree(run)
        extra = MODES[mode]
        suffix = "" if mode == "honest" else "-all-known"
        from pipeline.dataset import read_fingerprint

        # named by the dataset's fingerprint: a regime re-prepared differently never meets a stale cache
        cache = ROOT / "caches" / f"{dataset.name}-{read_fingerprint(dataset)[:12]}-neg128-seed{seed}{suffix}"
        console = Console(stderr=True, quiet=True)
        ensure_cache(dataset, cache, 128, seed, console, extra.get("exclude", "train"))
        cfg = TrainConfig(dataset=str(dataset), cache=str(cache), run_dir=str(run), epochs=epochs, patience=epochs,
                          seed=seed, eval_ema=0, select_window=1, **extra, **(SYNTH_PRESET if preset else {}))
        t0 = time.perf_counter()
        RecordingTrainer(cfg, decay, console=console).fit()
        done.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Selection rules, replayed
# ---------------------------------------------------------------------------------------------


def rule(weights: str, select: str, window: int, patience: int | None, scoring: str, mode: str = "honest",
         personal: float = 0.0, prior: bool = False) -> dict:
    """A selection rule: which weights and cold scoring, which validation recall (mode@K), the
    window, the patience (None: all epochs), optionally a floor on the distinct-list share, and
    whether the selected epoch is reported with the content prior chosen on its validation."""
    return {"weights": weights, "select": select, "window": window, "patience": patience, "scoring": scoring,
            "mode": mode, "personal": personal, "prior": prior}


def default_rule(mode: str = "honest") -> dict:
    d = TrainConfig()
    weights = f"ema{d.eval_ema}" if d.eval_ema > 0 else "raw"
    return rule(weights, f"{d.select_mode}@{d.select_k}", d.select_window, d.patience, d.cold_vectors, mode,
                prior=d.content_prior != "off")


def variants(decay: float) -> dict[str, dict]:
    """The ablation: the default, then one thing changed at a time, then reproduction mode."""
    d = default_rule()
    other = "raw" if d["scoring"] == "normalised" else "normalised"
    ema = f"ema{decay}"
    rows = {
        "default": d,
        "no content prior": {**d, "prior": False},
        f"cold vectors {other}": {**d, "scoring": other, "prior": False},
        "raw weights": {**d, "weights": "raw" if d["weights"] != "raw" else ema},
        "window 1": {**d, "window": 1 if d["window"] != 1 else 3},
        "select cold@20": {**d, "select": "cold@20"},
        "reproduction": rule("raw", "all@10", 1, None, d["scoring"], "repro"),
        f"reproduction, cold vectors {other}": rule("raw", "all@10", 1, None, other, "repro"),
    }
    return rows


def replay(recs: list[dict], r: dict, decay: float) -> dict:
    curves = [x["curves"][r["weights"]][r["scoring"]] for x in recs]
    mode, k = r["select"].split("@")
    key = f"recall@{k}"
    scores = [(c["val"]["warm"][key] + c["val"]["cold"][key]) / 2 if mode == "mean" else c["val"][mode][key]
              for c in curves]
    if r["personal"] > 0:  # epochs whose cold lists are not personal cannot be selected (unless none is)
        ok = [c["pers"]["distinct_share"] >= r["personal"] for c in curves]
        if any(ok):
            scores = [s if good else -0.5 for s, good in zip(scores, ok)]
    first = first_selectable(decay if r["weights"] != "raw" else 0.0, len(scores))
    e, _ = select_epoch(scores, r["window"], r["patience"] or len(scores), first)
    c = recs[e]["curves"][r["weights"]]["prior"] if r.get("prior") else curves[e]
    return {"epoch": e, "test": c["test"], "val_cold_r10": c["val"]["cold"]["recall@10"], "pers": c["pers"],
            "prior_weight": c.get("weight")}


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
    for k in ("distinct_share", "coverage@10", "pop_share@10"):
        out[k] = statistics.mean(p["pers"][k] for p in picks)
    out["distinct_lists"] = statistics.mean(p["pers"]["distinct_lists"] for p in picks)
    out["users"] = picks[0]["pers"]["users"]
    out["epochs"] = [p.get("epoch") for p in picks]
    out["prior_weights"] = [p.get("prior_weight") for p in picks]
    out["below_content"] = sum(bool(p.get("below")) for p in picks)
    return out


def markdown(regime: str, note: str, rows: dict[str, dict]) -> str:
    head = (f"**{regime}** {note}\n\n| | cold R@10 | cold N@10 | warm R@10 | all R@10 | all N@10 | "
            "distinct cold lists | coverage@10 | pop share@10 | epochs | prior W | val below content |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, s in rows.items():
        f = lambda k, s=s: f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}"  # noqa: E731
        ep = ",".join("-" if e is None else str(e) for e in s["epochs"])
        ws = ",".join("-" if w is None else f"{w:g}" for w in s.get("prior_weights", []))
        lines.append(f"| {name} | {f('cold recall@10')} | {f('cold ndcg@10')} | {f('warm recall@10')} | "
                     f"{f('all recall@10')} | {f('all ndcg@10')} | {s['distinct_lists']:.0f}/{s['users']} "
                     f"({s['distinct_share']:.0%}) | {s['coverage@10']:.2f} | {s['pop_share@10']:.2f} | {ep} | {ws} | "
                     f"{s['below_content']}/{len(s['epochs'])} |")
    return head + "\n".join(lines) + "\n"


def overview(summary: dict) -> str:
    """Two tables across regimes: the defaults against the reference points, and the ablation
    (test cold Recall@10 and the share of distinct cold lists of each variant)."""
    f = lambda s, k: f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}"  # noqa: E731
    out = ["| regime | model | cold R@10 | cold N@10 | warm R@10 | all R@10 | distinct cold lists | coverage@10 | pop share@10 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for regime, res in summary.items():
        for name in ("default", "reproduction", "content", "random"):
            if name not in res["rows"]:
                continue
            r = res["rows"][name]
            out.append(f"| {regime} | {name} | {f(r, 'cold recall@10')} | {f(r, 'cold ndcg@10')} | "
                       f"{f(r, 'warm recall@10')} | {f(r, 'all recall@10')} | {r['distinct_share']:.0%} | "
                       f"{r['coverage@10']:.2f} | {r['pop_share@10']:.2f} |")
    names = [n for n in next(iter(summary.values()))["rows"] if n not in ("content", "random")] if summary else []
    out += ["", "| test cold R@10 (distinct lists) | " + " | ".join(summary) + " |",
            "|---|" + "---|" * len(summary)]
    for n in names + ["content"]:
        out.append(f"| {n} | " + " | ".join(f"{res['rows'][n]['cold recall@10']['mean']:.4f} "
                                           f"({res['rows'][n]['distinct_share']:.0%})" for res in summary.values()) + " |")
    return "\n".join(out) + "\n"


def run_regime(regime: str, args, decay: float) -> tuple[dict | None, str]:
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
    synthetic = regime.startswith("synth")
    preset = synthetic or regime == "citeulike"  # few steps per epoch: the demo's step size (SYNTH_PRESET)
    epochs = args.epochs or (15 if synthetic or regime == "citeulike" else 20)
    ds = load_dataset(dataset)
    recs = {(mode, s): train_recorded(dataset, args.out / regime / f"{mode}-s{s}", s, mode, epochs, decay, preset)
            for s in args.seeds for mode in args.modes}
    pop = held_out_popularity(ds.num_items, ds.val, ds.test)
    base: dict[str, list[dict]] = {"content": [], "random": []}
    content_val = {}
    for s in args.seeds:
        b = baseline_results(ds, "test", EvalConfig(ks=(10, 20)), seed=s)
        vb = baseline_results(ds, "val", EvalConfig(ks=(10, 20)), seed=s)
        content_val[s] = vb["content"]["cold"]["recall@10"]
        for name, vecs in (("content", content_baseline(ds)), ("random", random_baseline(ds.num_users, ds.num_items, s))):
            base[name].append({"test": b[name], "pers": cold_list_stats(*vecs, ds.item_status, pop), "epoch": None})
    rows, picks_all = {}, {}
    for name, r in variants(decay).items():
        if r["mode"] not in args.modes:
            continue
        picks = []
        for s in args.seeds:
            p = replay(recs[(r["mode"], s)], r, decay)
            p["below"] = p["val_cold_r10"] < content_val[s]
            p["seed"] = s
            picks.append(p)
        picks_all[name] = [{k: v for k, v in p.items()} for p in picks]
        rows[name] = summarise(picks)
    rows["content"], rows["random"] = summarise(base["content"]), summarise(base["random"])
    secs = [json.loads((args.out / regime / f"{m}-s{s}" / "done.json").read_text())["seconds"]
            for s in args.seeds for m in args.modes]
    note = (f"({ds.num_users:,} users x {ds.num_items:,} items, {len(ds.train):,} train pairs, "
            f"{int((ds.item_status != 0).sum()):,} cold items; {epochs} epochs, seeds "
            f"{','.join(map(str, args.seeds))}; {sum(secs):.0f} s of training)")
    return {"note": note, "rows": rows, "picks": picks_all, "rules": variants(decay)}, markdown(regime, note, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                    help="honest: the defaults and their ablation; repro: reproduction mode's rows")
    ap.add_argument("--epochs", type=int, default=0, help="0: 20 on MovieLens, 15 on CiteULike and synthetic data")
    ap.add_argument("--citeulike-users", type=int, default=400)
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "quality")
    args = ap.parse_args()
    decay = TrainConfig().eval_ema or 0.9
    args.out.mkdir(parents=True, exist_ok=True)
    summary, text = {}, []
    for regime in args.regimes:
        res, md = run_regime(regime, args, decay)
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
