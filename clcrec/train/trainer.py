"""The CLCRec training loop: streams cached negatives, trains under AMP, evaluates, checkpoints.

    python cli.py train --dataset data/ml-100k --cache caches/ml-100k --run-dir runs/ml100k

Reads a dataset directory and a negative cache; writes a run directory (clcrec/rundir.py).
The loop never samples: each epoch reads generation `config.generation_for_epoch(epoch)`, building
it in a background thread during the previous epoch when no refresh job has published it yet.
Distributed runs (torchrun) use DDP; each rank streams a disjoint share of the chunks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console

from cache.store import CacheStore
from clcrec.config import TrainConfig
from clcrec.data.batches import check_batch_split
from clcrec.data.hybrid import epoch_key
from clcrec.data.stream import ChunkStream, batches_on_device
from clcrec.device import bind_device, resolve_device, wants_cuda
from clcrec.evaluation.ranking import EvalConfig, RankingEvaluator
from clcrec.model import NO_PRIOR, CLCRec, Prior
from clcrec.rundir import (RunDir, check_model_state, check_own_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                           set_rng_state)
from clcrec.train import distributed as dist
from clcrec.train.board import open_board
from clcrec.train.generations import (
    AHEAD,
    HELD_OUT_NOTE,
    GenerationSupply,
    check_cache,
    upcoming_generations,
)
from clcrec.train.plan import hybrid_rate, plan_execution, step_config
from clcrec.train.confirm import choose_and_confirm
from clcrec.train.results import write_results
from clcrec.train.selection import (EpochAverage, check_selectable, first_selectable, ranked_for_selection,
                                    select_score, smoothed_score, split_validation)
from clcrec.train.step import (
    SUM_NAMES,
    StepRunner,
    load_optimizer_state,
    make_optimizer,
)
from common.errors import DatasetChangedError, TrainingDivergedError
from common.fsutil import clean_tmp_leftovers
from pipeline.dataset import load_dataset


class Trainer:
    """`on_epoch(epoch, record, best_score)` runs on rank 0 after each epoch's checkpoint (a tuning
    trial reports there, and may raise to stop); `test=False`: never evaluate on the test split;
    `init`: starting weights (cli.py update: the parent's, extended; clcrec/train/update.py);
    `report=False`: results.json without test, baselines and plots (update reports its own)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, console: Console | None = None,
                 on_epoch=None, test: bool = True, init: dict | None = None, report: bool = True):
        self.console = console or Console(stderr=True)
        self.on_epoch, self.test, self.report, self.board = on_epoch, test and report, report, None
        self.ctx = dist.init(wants_cuda(cfg.device))
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.run = RunDir(cfg.run_dir)
        self.run_lock = None  # rank 0's lock on the run directory, taken in claim_run_dir
        self.resume = resume
        self.cfg = cfg

        # --- data: dataset, cache, and the check that they belong together ---
        self.dataset = load_dataset(cfg.dataset)
        check_selectable(self.dataset, cfg)
        # Choices are made on `choose`, confirmed on the held-back validation-cold items' pairs
        self.val_pairs = dict(zip(("choose", "confirm"), split_validation(
            self.dataset.item_status, self.dataset.val, cfg.val_confirm, cfg.seed)))
        self.store = CacheStore(cfg.cache)
        check_cache(self.store, Path(cfg.dataset), self.dataset.fingerprint, cfg.num_neg, cfg.exclude)
        if cfg.exclude != "train":
            self.console.print(f"[yellow]note:[/yellow] {HELD_OUT_NOTE}")
        check_batch_split(cfg.batch_size, self.ctx.world)

        # --- model, optimizer, AMP ---
        self.device = resolve_device(cfg.device, self.ctx.local_rank, self.ctx.enabled)
        bind_device(self.device)  # before any stream or graph is made on it
        self.modalities = cfg.select_modalities([m["name"] for m in self.dataset.meta["modalities"]])
        torch.manual_seed(cfg.seed)
        self.model = CLCRec.from_config(cfg, self.dataset, self.modalities)
        if init is not None and not resume:  # cli.py update: the parent's weights, extended (train/update.py)
            self.model.load_state_dict(init)
        self.model = self.model.to(self.device)
        self.net = dist.wrap(self.model, self.device, self.ctx)  # DDP when world > 1
        self.plan = plan_execution(cfg, self.device, self.dataset.num_items, self.ctx.world)
        self.opt = make_optimizer(self.model, cfg.l_r, capturable=self.plan.graph)
        self.steps = StepRunner(self.net, self.model, self.opt,
                                step_config(cfg, self.plan.dense, self.plan.encode_all), self.device,
                                graph=self.plan.graph, full_rows=cfg.batch_size // self.ctx.world)
        self.scaler, self.amp_mode = self.steps.scaler, self.steps.amp_mode
        self._graph_noted = False
        self.item_status = torch.as_tensor(self.dataset.item_status, device=self.device)
        self.prior = NO_PRIOR  # the content prior: none while epochs are selected, chosen in finish()
        self.eval_cfg = EvalConfig(ks=tuple(cfg.ks), user_block=cfg.eval_block)
        self._evaluators: dict[str, RankingEvaluator] = {}  # index tensors built once per split

        # --- early-stopping state, restored on resume ---
        self.start_epoch, self.best_score, self.best_epoch, self.bad_epochs = 0, -1.0, -1, 0
        self.metrics: list[dict] = []
        # Averaged epoch-end weights are what is evaluated, selected and kept (clcrec/train/selection.py);
        # training continues on the raw weights. Epoch ends only: the step (a CUDA graph) never sees it.
        self.average = EpochAverage(self.model, cfg.eval_ema) if cfg.eval_ema > 0 and self.ctx.is_main else None
        self.supply = GenerationSupply(Path(cfg.dataset), self.store, self.ctx, self.console)

    # ------------------------------------------------------------------------------------------
    def run_record(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "dataset_fingerprint": self.dataset.fingerprint,  # includes the raw-content featurizer's digest
            "featurizer_sha256": (self.dataset.meta.get("featurizer") or {}).get("sha256"),  # None: features given
            "cache_config": self.store.manifest.get("config"),
            "uses_held_out_data": self.cfg.exclude != "train",
            "modalities": self.modalities,
            "amp": self.amp_mode,
            "execution": self.plan.describe(),
            "world_size": self.ctx.world,
        }

    def state(self, epoch: int, generation: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "generation": generation,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "config": self.cfg.to_dict(),
            "dataset_fingerprint": self.dataset.fingerprint,
            "modalities": self.modalities,
            "ema": self.average.state_dict() if self.average is not None else None,
            "run_id": self.run.run_id(),  # binds the checkpoint to config.json (rundir.check_own_checkpoint)
        }

    def claim_run_dir(self) -> None:
        """Rank 0, before anything is written: lock the run directory (a second trainer exits
        naming the holder) and, on resume, verify both checkpoints, not only the one read first."""
        self.run_lock = self.run.lock()
        if self.resume and not self.run.last.exists():
            self.run.check_restartable()  # no last.pt: only a run that never finished an epoch restarts
        if self.resume and self.run.last.exists():
            for path in (self.run.last, self.run.best):
                if path == self.run.best and not path.exists():
                    continue  # killed before the first selectable epoch (an average's memory)
                ck = load_checkpoint(path, map_location="cpu")
                check_own_checkpoint(ck, self.run.read_config(), path, self.run.root)
                self.cfg.check_resumable(ck["config"])
                if ck["dataset_fingerprint"] != self.dataset.fingerprint:
                    raise DatasetChangedError(
                        f"run {self.run.root} was trained on another dataset (fingerprint "
                        f"{ck['dataset_fingerprint'][:12]}); it cannot be resumed on {self.cfg.dataset}"
                    )
                check_model_state(ck, self.model, path)
        elif not self.resume:
            self.run.create(self.run_record())

    def setup_run_dir(self) -> None:
        dist.main_first(self.ctx, self.claim_run_dir)  # a refusal on rank 0 reaches every rank
        if self.resume and not self.run.last.exists():
            # Killed during its first epoch: nothing to resume, so start it again in place.
            self.run.read_config()  # still refuse a directory that is not a run
            self.console.print(f"{self.run.root} has no checkpoint yet; starting it from epoch 0")
            self.resume = False
            if self.ctx.is_main:
                self.run.create(self.run_record(), exist_ok=True)
        elif self.resume:
            # CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
            ck = load_checkpoint(self.run.last, map_location="cpu")  # checked by rank 0 above
            self.cfg.check_resumable(ck["config"])
            self.model.load_state_dict(ck["model"])
            load_optimizer_state(self.opt, ck["optimizer"])  # this run's capturable/fused flags kept
            if ck["scaler"]:  # a disabled scaler (fp32/bf16) saved {}: resuming with fp16 starts it fresh
                self.scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"])
            if self.average is not None and ck.get("ema"):
                ema = ck["ema"]
                self.average.load_state_dict({"decay": ema["decay"],
                                              "shadow": {k: v.to(self.device) for k, v in ema["shadow"].items()}})
            self.start_epoch = ck["epoch"] + 1
            self.best_score, self.best_epoch, self.bad_epochs = ck["best_score"], ck["best_epoch"], ck["bad_epochs"]
            # Epochs logged after the last checkpoint are replayed, so drop their records.
            self.metrics = [r for r in self.run.read_metrics() if r["epoch"] <= ck["epoch"]]
            if self.ctx.is_main:
                self.run.write_metrics(self.metrics)
                for name in ("last.pt", "best.pt"):  # leftovers of a kill during a checkpoint write
                    clean_tmp_leftovers(self.run.ckpt_dir, name)
                self.console.print(f"resuming {self.run.root} at epoch {self.start_epoch}")
        if self.cfg.tensorboard and self.ctx.is_main:  # rank 0 only; after a resume, no duplicate points
            self.board = open_board(self.run.root, self.start_epoch, self.console)
        dist.barrier(self.ctx)

    # ------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, generation: int, progress) -> dict:
        """One pass over a leased generation; returns the epoch's record (all ranks agree)."""
        cfg, device, plan = self.cfg, self.device, self.plan
        gen = self.store.open_generation(generation, expect_fingerprint=self.dataset.fingerprint)
        self.steps.start_epoch(epoch_key(cfg.seed, epoch))  # loss sums and divergence flag on the device
        steps = samples = 0
        t0 = time.perf_counter()
        self.net.train()
        task = progress.add_task(f"epoch {epoch} (gen {generation})", total=gen.num_rows // self.ctx.world)
        with ChunkStream(
            gen, num_items=self.dataset.num_items, seed=cfg.seed, epoch=epoch,
            batch_size=cfg.batch_size, rank=self.ctx.rank, world=self.ctx.world,
            dedupe=plan.dedupe, pin=device.type == "cuda", prefetch=cfg.prefetch,
            assemble=plan.assemble, device=device, readers=plan.readers,
            hybrid=(epoch_key(cfg.seed, epoch), hybrid_rate(cfg)),  # masks drawn per chunk, not per step
        ) as stream:
            for batch in batches_on_device(stream, device):
                self.steps.step(batch)
                steps += 1
                samples += batch.size
                if steps % 32 == 0:  # the bar is host work too: update it now and then
                    progress.update(task, completed=samples)
                # A rank-local check would hang the other ranks in their next all-reduce, so
                # distributed runs decide at the epoch end, together (check_finite below).
                if steps % cfg.log_every == 0 and not self.ctx.enabled:
                    self.check_finite(self.steps.bad_step, epoch)  # host sync point (every log_every steps)
        self.check_finite(self.steps.bad_step, epoch)  # host sync point (end of epoch, all ranks)
        progress.remove_task(task)
        if self.steps.graph_failed and not self._graph_noted:
            self._graph_noted = True
            self.console.print(f"[yellow]note:[/yellow] the training step could not be captured as a CUDA graph "
                               f"({self.steps.graph_failed}); training goes on with eager steps (--cuda-graph off "
                               "skips the attempt)", highlight=False)
        seconds = time.perf_counter() - t0
        sums = dist.all_reduce_sum(self.steps.sums, self.ctx)
        counts = dist.all_reduce_sum(torch.tensor([steps, samples], device=device, dtype=torch.long), self.ctx)
        steps_all, samples_all = counts.tolist()  # host sync point (epoch end); exact int64 counts
        mean = (sums / max(steps_all, 1)).tolist()
        return {
            "epoch": epoch, "generation": generation,
            **dict(zip(SUM_NAMES, mean)),  # loss and each Losses term
            "steps": steps_all, "samples": samples_all, "seconds": round(seconds, 3),
            "samples_per_s": round(samples_all / max(seconds, 1e-9), 1),
            "data_wait_frac": round(stream.wait_s / max(seconds, 1e-9), 4),
            **({"graph_failed": self.steps.graph_failed} if self.steps.graph_failed else {}),
        }

    def check_finite(self, bad_step: torch.Tensor, epoch: int) -> None:
        if self.ctx.enabled:  # every rank learns whether any rank diverged (first bad step, any rank)
            big = torch.iinfo(torch.long).max
            local = torch.where(bad_step >= 0, bad_step, torch.full_like(bad_step, big)).reshape(1)
            first = dist.all_reduce_min(local, self.ctx)
            bad_step = torch.where(first < big, first, torch.full_like(first, -1))[0]
        step = int(bad_step)  # host sync
        if step >= 0:
            best = f"the best checkpoint {self.run.best} (epoch {self.best_epoch}) is intact" if self.best_epoch >= 0 else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"non-finite loss at epoch {epoch}, step {step}; training stopped and {best}. "
                "Lower --l-r or --temp-value's sharpness, or train with --amp fp32"
            )

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        self.model.eval()
        if split not in self._evaluators:  # val, test, or validation's choose / confirm pairs
            ds = self.dataset
            pairs = self.val_pairs[split] if split in self.val_pairs else ds.split(split)
            self._evaluators[split] = RankingEvaluator(ds.train, pairs, ds.item_status, ds.num_users, self.eval_cfg)
        return self._evaluators[split](*self.model.tables(self.dataset.train, self.item_status, self.prior))

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train with early stopping; returns the final results of the best checkpoint. The run
        directory's lock is released however this ends (the kernel drops it if we die)."""
        try:
            return self._fit()
        finally:
            self.supply.close()  # after an exception too; a second call does nothing
            if self.board is not None:
                self.board.close()
            if self.run_lock is not None:
                self.run_lock.release()
                self.run_lock = None

    def _fit(self) -> dict:
        from rich import progress as rp

        cfg = self.cfg
        self.setup_run_dir()
        progress = rp.Progress(
            rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeRemainingColumn(),
            console=self.console, transient=True, disable=not self.ctx.is_main,
        )
        stop = self.bad_epochs >= cfg.patience
        if self.ctx.is_main:
            self.console.print(f"training: {self.plan.describe()}, amp {self.amp_mode}", highlight=False)
        with progress:
            for epoch in range(self.start_epoch, cfg.epochs):
                if stop:
                    break
                generation = cfg.generation_for_epoch(epoch)
                with self.supply.lease(generation):
                    self.supply.prefetch(upcoming_generations(cfg, epoch, AHEAD))  # built while this epoch trains
                    record = self.train_epoch(epoch, generation, progress)
                record["generation_wait_s"] = round(self.supply.wait_s, 3)
                stop = self.end_epoch(epoch, generation, record)
        self.supply.close()
        dist.barrier(self.ctx)
        return self.finish()

    def end_epoch(self, epoch: int, generation: int, record: dict) -> bool:
        """Validate (rank 0), keep the best checkpoint, log, and agree on early stopping."""
        cfg = self.cfg
        stop = False
        if self.ctx.is_main:
            held = len(self.val_pairs["confirm"]) > 0  # the epoch is chosen without them; they are only logged
            if self.average is not None:
                self.average.update(self.model)
            with self.average.swapped_in(self.model) if self.average is not None else nullcontext():
                record["val"] = self.evaluate("val")
                record.update({"val_confirm": self.evaluate("confirm")["cold"]} if held else {})
                with ranked_for_selection(self.model, cfg.select_rank):
                    record["val_choose"] = self.evaluate("choose" if held else "val")
            score = select_score(record["val_choose"], cfg)
            record["select_score"] = score
            smoothed = smoothed_score([r["select_score"] for r in self.metrics] + [score], cfg.select_window)
            if cfg.select_window > 1:
                record["select_smoothed"] = smoothed
            selectable = epoch >= first_selectable(cfg.eval_ema, cfg.epochs)  # an average needs its memory
            improved = selectable and smoothed > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = smoothed, epoch, 0
            elif selectable:
                self.bad_epochs += 1
            record["best_epoch"] = self.best_epoch
            # Order matters for resume: metrics, then best, then last (the resume point).
            self.metrics = self.run.append_metrics(self.metrics, record)
            if self.board is not None:  # with metrics.jsonl, so a resume purges what it replays
                self.board.write(record, lr=float(self.opt.param_groups[0]["lr"]))
            state = self.state(epoch, generation)
            # Before the first selectable epoch best.pt is provisional (not selected, only so that a
            # run killed early can be evaluated); the first selectable epoch always replaces it.
            provisional = not selectable and self.best_epoch < 0
            if improved or provisional:  # best.pt's model is the one evaluated: the averaged weights, if any
                best = state if self.average is None else {**state, "model": self.average.averaged_state(self.model)}
                save_checkpoint(self.run.best, {**best, "provisional": True} if provisional else best)
            save_checkpoint(self.run.last, state)
            key = f"recall@{cfg.select_k}"
            self.console.print(
                f"epoch {epoch:3d} gen {generation} loss {record['loss']:.4f} "
                f"({record['samples_per_s']:,.0f} samples/s, wait {record['data_wait_frac']:.1%}) "
                f"val {key} all {record['val']['all'][key]:.4f} warm {record['val']['warm'][key]:.4f} "
                f"cold {record['val']['cold'][key]:.4f}" + (f" (choose {record['val_choose']['cold'][key]:.4f}, "
                                                             f"confirm {record['val_confirm'][key]:.4f})" if held else "")
                + ("  *best" if improved else ""),
                highlight=False, soft_wrap=True,  # one line per epoch, also in logs
            )
            stop = self.bad_epochs >= cfg.patience
            if stop:
                self.console.print(f"early stop: no {cfg.select_mode} {key} improvement for {cfg.patience} epochs")
            if self.on_epoch is not None:
                self.on_epoch(epoch, record, self.best_score)
        return dist.broadcast_flag(stop, self.ctx)

    def finish(self) -> dict:
        """Load the best checkpoint, evaluate it and write results.json and the plots (rank 0)."""
        if not self.ctx.is_main:
            return {}
        best = load_checkpoint(self.run.best, map_location=self.device)
        self.model.load_state_dict(best["model"])
        # before results: they rank as served (W chosen without the held-back items, which confirm it)
        prior, confirmation = choose_and_confirm(self.model, self.dataset, self.cfg, self.val_pairs, self.console)
        self.run.record_update(content_prior=prior)
        self.prior = Prior.of(prior)
        tables = lambda: self.model.tables(self.dataset.train, self.item_status, self.prior)  # noqa: E731
        return write_results(self.run, self.cfg, self.dataset, self.evaluate, tables, self.eval_cfg, self.metrics,
                             best["epoch"], self.console, test=self.test, plots=self.report,
                             extra={"content_prior": prior, "confirmation": confirmation})


def train(cfg: TrainConfig, *, resume: bool = False, console: Console | None = None, **hooks) -> dict:
    """Train one run; `hooks` are Trainer's on_epoch, test, init and report."""
    trainer = Trainer(cfg, resume=resume, console=console, **hooks)
    try:
        results = trainer.fit()
        # Every rank leaves together: a rank that tore its process group down while rank 0 still
        # evaluated once died in gloo's teardown ("terminate called ...", SIGABRT) in CI.
        dist.barrier(trainer.ctx)
        return results
    finally:
        dist.shutdown(trainer.ctx)
