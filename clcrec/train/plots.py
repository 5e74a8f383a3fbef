"""PNG plots of a training run from its per-epoch metric records (no display needed).

Reads the records of RUN/metrics.jsonl (one dict per epoch, as the trainer writes them) and writes
into `out_dir`, each file atomically (rendered in memory, then temp file + os.replace):

    loss.png          total and component losses (keys starting with "loss") per epoch,
                      plus throughput (samples_per_s) when recorded; generation changes marked
    val_metrics.png   validation Recall@K and NDCG@K per epoch for modes all / warm / cold
    warm_vs_cold.png  warm vs cold Recall@K and NDCG@K per epoch, best epoch marked if given

    from clcrec.train.plots import plot_run
    plot_run([json.loads(l) for l in open("runs/x/metrics.jsonl")], Path("runs/x/plots"))

Records may lack any key (e.g. `val` on epochs without validation); a missing or non-finite value
is simply not drawn, and a panel with nothing to draw says so. Uses matplotlib's object API with
the Agg canvas, so it touches no global backend state.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.fsutil import atomic_write_bytes

MODE_STYLE = {"all": ("tab:gray", "-"), "warm": ("tab:blue", "-"), "cold": ("tab:red", "-")}


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _by_epoch(metrics: list[dict]) -> list[tuple[float, dict]]:
    """(epoch, record) sorted by epoch; a record without an epoch takes its position; for a
    repeated epoch (a resumed run) the later record wins."""
    out: dict[float, dict] = {}
    for pos, rec in enumerate(metrics):
        if not isinstance(rec, dict):
            continue
        epoch = _number(rec.get("epoch"))
        out[pos if epoch is None else epoch] = rec
    return sorted(out.items())


def _series(rows: list[tuple[float, dict]], *path: str) -> tuple[list[float], list[float]]:
    """Epochs and values of the nested key `path`, skipping records where it is missing."""
    xs, ys = [], []
    for epoch, rec in rows:
        v = rec
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        v = _number(v)
        if v is not None:
            xs.append(epoch)
            ys.append(v)
    return xs, ys


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _finish(ax, title: str, ylabel: str, drawn: bool, empty_text: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        _empty_note(ax, empty_text)


def _mark_generations(ax, rows: list[tuple[float, dict]]) -> None:
    """Dotted vertical lines where the negative-cache generation changes."""
    prev, label = None, "new cache generation"
    for epoch, rec in rows:
        gen = rec.get("generation")
        if prev is not None and gen is not None and gen != prev:
            ax.axvline(epoch - 0.5, color="0.6", ls=":", lw=1, label=label)
            label = None  # one legend entry for all of them
        prev = gen if gen is not None else prev


def plot_loss(rows: list[tuple[float, dict]], path: Path) -> Path:
    loss_keys = {k for _, r in rows for k in r if k.startswith("loss")}
    loss_keys = sorted(loss_keys, key=lambda k: (k != "loss", k))  # total first
    has_speed = bool(_series(rows, "samples_per_s")[0])
    fig = Figure(figsize=(7, 6.5 if has_speed else 4.2), layout="constrained")
    axes = fig.subplots(2 if has_speed else 1, 1, sharex=True, squeeze=False)[:, 0]
    drawn = False
    for key in loss_keys:
        xs, ys = _series(rows, key)
        if xs:
            axes[0].plot(xs, ys, marker=".", lw=2.2 if key == "loss" else 1.3, label=key)
            drawn = True
    if drawn:
        _mark_generations(axes[0], rows)
    _finish(axes[0], "Training loss", "loss", drawn, "no loss recorded")
    if has_speed:
        xs, ys = _series(rows, "samples_per_s")
        axes[1].plot(xs, ys, marker=".", color="tab:green", label="samples/s")
        _finish(axes[1], "Throughput", "samples / s", True, "")
        axes[1].set_ylim(0, 1.15 * max(ys))  # from zero: small jitter should look small
        axes[0].set_xlabel("")
    return _save(fig, path)


def plot_val_metrics(rows: list[tuple[float, dict]], path: Path, k: int) -> Path:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, ("recall", "ndcg"), ("Recall", "NDCG")):
        drawn = False
        for mode, (color, ls) in MODE_STYLE.items():
            xs, ys = _series(rows, "val", mode, f"{metric}@{k}")
            if xs:
                ax.plot(xs, ys, marker=".", color=color, ls=ls, label=mode)
                drawn = True
        _finish(ax, f"Validation {label}@{k}", f"{label}@{k}", drawn, "no validation records")
    return _save(fig, path)


def plot_warm_vs_cold(rows: list[tuple[float, dict]], path: Path, k: int, best_epoch: float | None) -> Path:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, ("recall", "ndcg"), ("Recall", "NDCG")):
        drawn = False
        for mode in ("warm", "cold"):
            xs, ys = _series(rows, "val", mode, f"{metric}@{k}")
            if not xs:
                continue
            color = MODE_STYLE[mode][0]
            ax.plot(xs, ys, marker=".", color=color, label=f"{mode} items")
            drawn = True
            if best_epoch is not None and best_epoch in xs:
                y = ys[xs.index(best_epoch)]
                ax.scatter([best_epoch], [y], s=90, facecolors="none", edgecolors=color, lw=2, zorder=3)
                ax.annotate(
                    f"{y:.4f}", (best_epoch, y), textcoords="offset points", xytext=(6, 6), fontsize=8
                )
        if drawn and best_epoch is not None:
            ax.axvline(best_epoch, color="k", ls="--", lw=1, label=f"best epoch {best_epoch:g}")
        title = f"Warm vs cold {label}@{k} (validation)"
        _finish(ax, title, f"{label}@{k}", drawn, "no warm/cold validation records")
    return _save(fig, path)


def plot_run(metrics: list[dict], out_dir: Path, k: int = 20, best_epoch: float | None = None) -> list[Path]:
    """Write loss.png, val_metrics.png and warm_vs_cold.png into `out_dir`; returns their paths.

    `metrics` are the run's per-epoch records; `k` picks Recall@k / NDCG@k; `best_epoch` (the
    epoch the trainer selected) is marked on the warm-vs-cold plot. All three files are always
    written, so a run's plot set is predictable even before its first validation.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _by_epoch(list(metrics or []))
    return [
        plot_loss(rows, out_dir / "loss.png"),
        plot_val_metrics(rows, out_dir / "val_metrics.png", k),
        plot_warm_vs_cold(rows, out_dir / "warm_vs_cold.png", k, best_epoch),
    ]
