"""Fold interactions that arrived after training into a run, without retraining: `cli.py update`.

    python cli.py update runs/ml --interactions new.csv --out runs/ml-upd [--new-items new/ | --movielens movies.csv]

Reads the parent run (its best checkpoint, config and dataset), the new interactions (user,item
[,timestamp] in original ids) and the content of items the run lacks. Writes NEW_RUN atomically
(built in `.tmp-NEW_RUN.*` beside it, renamed when complete; a kill leaves no NEW_RUN):

    NEW_RUN/dataset/     the parent's dataset extended (pipeline/extend_dataset.py), opened by load_run
    NEW_RUN/config.json  the parent's config with this update's schedule, plus "lineage" (parent run,
                         the SHA-256 of its best.pt, the interactions file's SHA-256, the new items'
                         source), "blend" (k, how it was chosen, the validation recall of every k
                         of the grid on all items and on the new ones), "update"
    NEW_RUN/checkpoints, metrics.jsonl, results.json (test with the blend and ID-only), plots

Steps: extend the tables (a new or formerly cold item's ID embedding starts from its fold-in, the
direction of the sum of its known users' embeddings, or with --item-init content from its content
vector, the parent encoder's output, which the R-E loss trained to point where its ID embedding
would; either at the ID embeddings' scale; a user without training pairs starts from the mean of
their new items' vectors), build negative generation 0 through the cache machinery (of every
training pair, or with --replay R of the new pairs and R times as many old ones; in the temporary
directory, removed before publishing), fine-tune with the same trainer, step and selection for a
few epochs (fresh Adam at the parent's rate unless --l-r, every epoch selectable on validation
"all"), then rank by the blend n / (n + k) of ID and content (k = 2, or --blend-k; every k of the
grid is tried on the held-out share of the new pairs and recorded, and --blend-k auto picks from
it). The new run ranks every item on one scale (cold_vectors "scaled" unless --cold-vectors), so
the blend mixes like with like. The parent run is only read.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from clcrec.config import COLD_VECTORS
from clcrec.evaluation.ranking import EvalConfig, evaluate_ranking
from clcrec.model import concat_normalised_features
from clcrec.rundir import RUN_LOCK, RunDir, TrainedRun, open_run
from common.errors import UserError
from common.fsutil import atomic_write_json, building_dir, check_new_target
from common.integrity import file_sha256
from common.lock import is_locked
from pipeline.dataset import COLD_VAL, Dataset, load_dataset
from pipeline.extend_dataset import Extension, NewItemRows, extend_dataset
from pipeline.new_interactions import read_new_interactions

# k of the blend n / (n + k): 0 ranks every item with interactions by its ID embedding alone.
# 2 by default: with items' ID embeddings starting from their users (fold-in), k = 1-2 ranked items
# seen 1-5 times best over the regimes measured (ml-100k in time, and items revealed 1-5 times on
# ml-100k, a fifth of its users and weak-content synthetic data; CiteULike confirmed it after:
# scripts/bench_update.py and bench_warmup.py, docs/results.md), 2 the better where users are few. A k chosen per file on the
# held-out new pairs ("auto") followed their noise: a file of a few hundred pairs holds a few dozen,
# and all-item Recall was flat in k.
BLEND_K = 2.0
BLEND_GRID = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # tried on validation (recorded; "auto" picks)
ITEM_INIT = ("fold-in", "content")


@dataclass(frozen=True)
class UpdateConfig:
    epochs: int = 3  # fine-tuning epochs over the combined data (each one selectable)
    val_fraction: float = 0.1  # latest share of the new pairs held out to select the epoch and k
    blend_k: float | str = BLEND_K  # or "auto": chosen on validation among BLEND_GRID
    l_r: float | None = None  # None: the parent's rate (a fresh Adam either way)
    # r: each epoch over the new training pairs and r times as many old ones (a seeded sample, against
    # forgetting), so an epoch costs the delta, not the history. None: over every pair. 1 and None
    # were level on ml-100k's temporal bench (docs/results.md), 1 at 2/3 of the rows there.
    replay: float | None = 1.0
    # where a formerly cold or new item's ID embedding starts: "fold-in" (its users' mean direction,
    # content where none of its users is known) or "content" (its content vector)
    item_init: str = "fold-in"
    # how the new run ranks content rows (clcrec/model.py): "scaled" puts them on the ID scale, so
    # the blend mixes like with like; "raw" keeps a parent trained on the paper's random split
    # filling all-item lists with cold items as it did (docs/results.md)
    cold_vectors: str = "scaled"
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise UserError(f"--epochs must be an integer >= 1, got {self.epochs!r}")
        if self.replay is not None and (isinstance(self.replay, bool) or not isinstance(self.replay, (int, float))
                                        or not np.isfinite(self.replay) or self.replay < 0):
            raise UserError(f"--replay must be a finite number >= 0, got {self.replay!r}")
        if self.cold_vectors not in COLD_VECTORS:
            raise UserError(f"--cold-vectors must be one of {', '.join(COLD_VECTORS)}, got {self.cold_vectors!r}")
        if self.item_init not in ITEM_INIT:
            raise UserError(f"--item-init must be one of {', '.join(ITEM_INIT)}, got {self.item_init!r}")
        if self.blend_k != "auto" and (isinstance(self.blend_k, (bool, str)) or not isinstance(self.blend_k, (int, float))
                                       or not np.isfinite(self.blend_k) or self.blend_k < 0):
            raise UserError(f"--blend-k must be 'auto' or a finite number >= 0, got {self.blend_k!r}")


def update_run(parent_dir: Path, interactions: Path, out: Path, *, new_items: NewItemRows | None = None,
               new_items_source: dict | None = None, config: UpdateConfig = UpdateConfig(), force: bool = False,
               console: Console | None = None, parent: TrainedRun | None = None) -> dict:
    """Write NEW_RUN `out` from `parent_dir` and the interactions file; returns its results."""
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    parent_dir, out, interactions = Path(parent_dir), Path(out), Path(interactions)
    check_new_target(out, force, "--out", kind="run")  # a run is never replaced, --force or not
    if out.resolve() == parent_dir.resolve():
        raise UserError("--out must differ from the parent run: the parent run is never modified")
    if parent_dir.resolve() in out.resolve().parents:  # a child inside its parent would be lost with it
        raise UserError(f"--out {out} is inside the parent run {parent_dir}, which is never modified; "
                        "choose a path outside it")
    busy = parent_dir / RUN_LOCK  # probed only if present: the parent is never written, not even a lock file
    if busy.is_file() and not busy.is_symlink() and is_locked(busy):
        raise UserError(f"a trainer is still running on {parent_dir} (it holds {RUN_LOCK}) and may replace its "
                        "best.pt while the update reads it; wait for it to finish, then update")
    parent = parent or open_run(parent_dir)
    delta = read_new_interactions(interactions)  # before anything is written
    modalities = list(parent.checkpoint["modalities"])
    lineage = {"parent_run": str(parent_dir.resolve()),
               "parent_checkpoint_sha256": file_sha256(RunDir(parent_dir).best),
               "interactions_file": str(interactions.resolve()), "interactions_sha256": file_sha256(interactions),
               "new_items": new_items_source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    with building_dir(out, "run") as tmp:  # a writer racing us to `out`: FileExistsError, exit 1
        ext = extend_dataset(parent.dataset, modalities, delta, new_items, tmp / "dataset",
                             val_fraction=config.val_fraction, seed=config.seed, label=str(interactions),
                             source={**parent.dataset.meta.get("source", {}),  # kind kept: --movielens again
                                     "updated_from": {"run": lineage["parent_run"],
                                                      "dataset": str(parent.dataset.root)}})
        if (warning := outgrown(ext.summary["training_pairs"], len(parent.dataset.train))) is not None:
            console.print(f"warning: {warning}", style="yellow", highlight=False)
        results = _fine_tune(parent, ext, tmp, modalities, config, console)
        record = json.loads((tmp / "config.json").read_text())
        record["config"].update(dataset=str(out / "dataset"), cache="", run_dir=str(out))
        seconds = round(time.perf_counter() - t0, 3)
        record.update(dataset_dir="dataset", lineage=lineage, blend=results["blend"],
                      update={**ext.summary, **asdict(config), "seconds": seconds,
                              **({"warning": warning} if warning else {})})
        results["update_seconds"] = seconds
        atomic_write_json(tmp / "config.json", record)
        atomic_write_json(tmp / "results.json", results)
    console.print(f"updated {parent_dir} -> {out} in {seconds:.1f} s: {ext.summary['training_pairs']:,} new training "
                  f"pairs, {ext.summary['new_items']} new items, {ext.summary['new_users']} new users, blend k "
                  f"{results['blend']['k']:g}", highlight=False)
    return results


def outgrown(new_pairs: int, history: int) -> str | None:
    """What to tell a user whose file holds more new training pairs than the run was trained on
    (None otherwise): there a 3-epoch update fell 17-23% short of a retrain (docs/results.md)."""
    if new_pairs <= history:
        return None
    return (f"the file holds more new training pairs ({new_pairs:,}) than the run was trained on ({history:,}); "
            "an update falls short of a full retrain there (docs/results.md): retrain, or raise --epochs")


@torch.no_grad()
def initial_state(parent: TrainedRun, ds: Dataset, modalities: list[str], ext: Extension,
                  item_init: str = "fold-in") -> dict:
    """The parent's weights with the user and item tables extended to the new dataset, formerly cold
    and new items starting from their fold-in or content (`item_init`)."""
    state = {k: v.detach().clone().cpu() for k, v in parent.model.state_dict().items()}
    old_items, old_users = state["item_emb.weight"], state["user_emb.weight"]
    dim = old_items.shape[1]
    items = torch.zeros(ds.num_items, dim)
    items[: ext.parent_items] = old_items
    if len(ext.init_items):
        idx = torch.as_tensor(ext.init_items)
        feats = concat_normalised_features([np.asarray(ds.features[m])[ext.init_items] for m in modalities])
        model = parent.model
        enc = model.encoder(feats.to(model.item_emb.weight.device)).float().cpu()  # (N, D) the content vector...
        # ...its direction at the ID embeddings' mean norm (the new run serves content at that scale on average)
        scale = model.cold_scale(parent.dataset.item_status)
        items[idx] = torch.nn.functional.normalize(enc, dim=1) * scale
        if item_init == "fold-in":
            items[idx] = fold_in(items[idx], ds, ext, old_users, scale)
    users = old_users.mean(0, keepdim=True).repeat(ds.num_users, 1)  # users without any item: the mean user
    users[: ext.parent_users] = old_users
    if len(ext.init_users):
        train = torch.as_tensor(np.asarray(ds.train, dtype=np.int64))
        sel = torch.as_tensor(np.isin(np.asarray(ds.train)[:, 0], ext.init_users))
        u, i = train[sel, 0], train[sel, 1]
        sums = torch.zeros(ds.num_users, dim).index_add_(0, u, items[i])  # (U, D)
        n = torch.bincount(u, minlength=ds.num_users).clamp(min=1)[:, None]
        idx = torch.as_tensor(ext.init_users)
        users[idx] = sums[idx] / n[idx]
    state["item_emb.weight"], state["user_emb.weight"] = items, users
    return state


def fold_in(content: torch.Tensor, ds: Dataset, ext: Extension, parent_users: torch.Tensor,
            scale: float) -> torch.Tensor:
    """(N, D) starting ID embeddings of the items `ext.init_items`: the direction of the sum of their
    training users' parent embeddings, at `scale`; `content` (N, D) where no such user is known.

    In a dot-product model the unit vector that scores an item's users highest is the direction of
    their sum: what the item's ID embedding says after its first interactions, before any step. The
    few steps an update gives an item seen 1-5 times barely move it from where it starts."""
    pairs = np.asarray(ds.train, dtype=np.int64)
    pairs = pairs[np.isin(pairs[:, 1], ext.init_items) & (pairs[:, 0] < ext.parent_users)]
    row = np.searchsorted(ext.init_items, pairs[:, 1])  # init_items is sorted: a row per item
    sums = torch.zeros_like(content).index_add_(0, torch.as_tensor(row), parent_users[torch.as_tensor(pairs[:, 0])])
    known = torch.as_tensor(np.bincount(row, minlength=len(content)) > 0)
    out = content.clone()
    out[known] = torch.nn.functional.normalize(sums[known], dim=1) * scale
    return out


def _fine_tune(parent: TrainedRun, ext: Extension, tmp: Path, modalities, config: UpdateConfig, console) -> dict:
    from clcrec.train.flow import ensure_cache
    from clcrec.train.trainer import train

    ds = load_dataset(tmp / "dataset")
    cfg = parent.cfg.replace(
        dataset=str(tmp / "dataset"), cache=str(tmp / "cache"), run_dir=str(tmp), modalities=tuple(modalities),
        epochs=config.epochs, patience=config.epochs, eval_ema=0.0, select_window=1, select_mode="all",
        val_confirm=0.0,  # the update's held-out new pairs pick the epoch and the blend, as they are (below)
        refresh_every=0, seed=config.seed, device=config.device, threads=config.threads,
        # by default one scale for every ranking row: the blend interpolates an item's ID embedding and
        # its content vector, so the content is taken at the ID embeddings' scale (times the factor that
        # brings the warm items' outputs to their ID embeddings' mean norm); raw encoder outputs are ~3x
        # longer (no L2 term) and would lift every item with few interactions over the popular ones in
        # all-item lists. "scaled" rather than "normalised" keeps each output's relative length, which
        # ranks cold items among themselves: +16% over the new items in time and over ml-100k's
        # test-cold items revealed 1-5 times, level on all items (docs/results.md)
        cold_vectors=config.cold_vectors,
        l_r=config.l_r if config.l_r is not None else parent.cfg.l_r)
    ensure_cache(Path(cfg.dataset), Path(cfg.cache), cfg.num_neg, cfg.seed, console, cfg.exclude, config.replay)
    # no test, baselines or plots: the new run's results.json is written below, with the blend
    train(cfg, console=console, init=initial_state(parent, ds, modalities, ext, config.item_init), report=False)
    shutil.rmtree(tmp / "cache")  # serving never reads negatives; NEW_RUN stays small
    run = open_run(tmp)
    ecfg = EvalConfig(ks=tuple(cfg.ks), user_block=cfg.eval_block)
    key = f"recall@{cfg.select_k}"

    def metrics(split: str, k: float, pairs=None, status=ds.item_status) -> dict:
        users, items = run.tables(blend_k=k)
        pairs = ds.split(split) if pairs is None else pairs
        return evaluate_ranking(users, items, ds.train, pairs, status, ecfg)

    # Every k of the grid is tried on the held-out new pairs (the last rows of val: the future the
    # blend must rank, where the items with few interactions are; the parent's validation pairs
    # predate them), ranked among all items and among the items the parent had no ID embedding for
    # (its cold items and the new ones: where k matters). Recorded; --blend-k auto picks from it.
    n_new = ext.summary["validation_pairs"]
    held = np.asarray(ds.val)[len(ds.val) - n_new:] if n_new else None
    fresh = ds.item_status.copy()
    fresh[ext.init_items] = COLD_VAL  # "cold" below: the items without a parent ID embedding
    grid = {}
    for k in BLEND_GRID if held is not None else ():  # recorded either way: what each k did
        m = metrics("val", k, held, fresh)
        grid[k] = (m["all"][key], m["cold"][key])
    auto = config.blend_k == "auto"
    best = (choose_blend_k(grid) if grid else BLEND_K) if auto else float(config.blend_k)
    results = json.loads((tmp / "results.json").read_text())
    results.update(val=metrics("val", best), test=metrics("test", best), test_id_only=metrics("test", 0.0))
    tied = bool(grid) and len(set(grid.values())) == 1
    if not auto:
        how = "given (--blend-k)" if float(config.blend_k) != BLEND_K else "the default (docs/results.md)"
    elif grid:
        how = (f"validation {key} of the {n_new:,} held-out new pairs, among the new items, then all items"
               + ("; every k tied there: the largest, content-leaning" if tied else ""))
    else:
        how = "the default: no held-out new pairs to choose on"
    results["blend"] = {"k": float(best), "rule": "w = n / (n + k) on the ID embedding, 1 - w on content",
                        "chosen_on": how, "val": {f"{k:g}": round(v[0], 6) for k, v in grid.items()},
                        "val_new_items": {f"{k:g}": round(v[1], 6) for k, v in grid.items()}}
    return results


def choose_blend_k(grid: dict[float, tuple[float, float]]) -> float:
    """--blend-k auto: the k of `grid` ({k: (all-item, new-item validation recall)}) best on the new
    items, where k decides how an item seen a few times ranks, then on all items; on a tie the largest
    (no evidence for the ID embeddings: content, which the parent served those items by)."""
    return max(grid, key=lambda k: (grid[k][1], grid[k][0], k))
