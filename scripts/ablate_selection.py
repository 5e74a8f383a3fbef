"""Ablation of model selection: raw vs EMA-averaged weights, raw vs smoothed validation curves.

    python scripts/ablate_selection.py data/ref100k --seeds 0 1 2 --out data/ablation

Per seed, one run of `--epochs` epochs (no early stopping) that records, at every epoch end, the
validation and test metrics of the raw weights and of an EMA of the epoch-end weights for each
`--decays` value (averaging at evaluation does not change training, so one run
serves every decay). Every selection rule (select mode and K, `--select-window`, `--patience`)
is then replayed on the recorded validation curves with `clcrec.train.selection.select_epoch`, exactly
as the trainer applies it, and the test metrics of the epoch it picks are tabulated as mean and
sd across seeds. Writes OUT/seed-S/ (run directories with a `curves` entry per epoch in
metrics.jsonl) and OUT/ablation.json; prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clcrec.config import TrainConfig  # noqa: E402
from clcrec.train.selection import EpochAverage, first_selectable, select_epoch  # noqa: E402
from clcrec.train.trainer import Trainer  # noqa: E402


class RecordingTrainer(Trainer):
    """A trainer that also evaluates test and averaged weights at every epoch end (ablation only:
    a real run must never look at test metrics to choose anything)."""

    def __init__(self, cfg: TrainConfig, decays: list[float], **kw):
        super().__init__(cfg, **kw)
        self.averages = {d: EpochAverage(self.model, d) for d in decays}

    def end_epoch(self, epoch, generation, record):
        curves = {"raw": {"val": self.evaluate("val"), "test": self.evaluate("test")}}
        for d, avg in self.averages.items():
            avg.update(self.model)
            with avg.swapped_in(self.model):
                curves[f"ema{d}"] = {"val": self.evaluate("val"), "test": self.evaluate("test")}
        record["curves"] = curves
        return super().end_epoch(epoch, generation, record)


def run_seed(dataset: Path, out: Path, seed: int, epochs: int, decays: list[float], **kw) -> list[dict]:
    from rich.console import Console

    from clcrec.train.flow import ensure_cache

    run = out / f"seed-{seed}"
    if not (run / "results.json").exists():
        cache = Path("caches") / f"{dataset.name}-neg128-seed{seed}"
        console = Console(stderr=True)
        ensure_cache(dataset, cache, 128, seed, console)
        cfg = TrainConfig(dataset=str(dataset), cache=str(cache), run_dir=str(run), epochs=epochs,
                          patience=epochs, seed=seed, threads=1, eval_ema=0, **kw)  # raw curves; decays below
        trainer = RecordingTrainer(cfg, decays, console=console)
        trainer.fit()
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def metric(m: dict, mode: str, name: str) -> float:
    return m[mode][name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--out", type=Path, default=Path("data/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--decays", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--patiences", type=int, nargs="+", default=[5, 10, 40])
    ap.add_argument("--selects", nargs="+", default=["cold@20", "cold@10", "all@10", "mean@20"])
    args = ap.parse_args()

    curves = {s: run_seed(args.dataset, args.out, s, args.epochs, args.decays) for s in args.seeds}
    variants = ["raw"] + [f"ema{d}" for d in args.decays]
    rows = []
    for variant in variants:
        for select in args.selects:
            mode, k = select.split("@")
            for window in args.windows:
                for patience in args.patiences:
                    picks = []
                    for s, recs in curves.items():
                        val = [r["curves"][variant]["val"] for r in recs]
                        if mode == "mean":
                            scores = [(v["warm"][f"recall@{k}"] + v["cold"][f"recall@{k}"]) / 2 for v in val]
                        else:
                            scores = [v[mode][f"recall@{k}"] for v in val]
                        decay = float(variant[3:]) if variant.startswith("ema") else 0.0
                        e, ran = select_epoch(scores, window, patience, first_selectable(decay, len(scores)))
                        test = recs[e]["curves"][variant]["test"]
                        picks.append({"seed": s, "epoch": e, "ran": ran,
                                      "cold_r10": metric(test, "cold", "recall@10"),
                                      "all_r10": metric(test, "all", "recall@10"),
                                      "warm_r10": metric(test, "warm", "recall@10")})
                    rows.append({"variant": variant, "select": select, "window": window,
                                 "patience": patience, "picks": picks})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=1))

    def ms(xs):
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"

    print("| weights | select | window | patience | epochs picked | test cold R@10 | test all R@10 | test warm R@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["picks"]
        print(f"| {r['variant']} | {r['select']} | {r['window']} | {r['patience']} | "
              f"{','.join(str(x['epoch']) for x in p)} | {ms([x['cold_r10'] for x in p])} | "
              f"{ms([x['all_r10'] for x in p])} | {ms([x['warm_r10'] for x in p])} |")


if __name__ == "__main__":
    main()
