"""The CLCRec training loop: streams cached negatives, trains under AMP, evaluates, checkpoints.

    python cli.py train --dataset data/ml-100k --cache caches/ml-100k --run-dir runs/ml100k

Reads a dataset directory and a negative cache; writes a run directory (clcrec/checkpoint.py).
The loop never samples: each epoch reads generation `config.generation_for_epoch(epoch)`, building
it in a background thread during the previous epoch when no refresh job has published it yet.
Distributed runs (torchrun) use DDP; each rank streams a disjoint share of the chunks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cache.store import CacheStore
from clcrec import distributed as dist
from clcrec.averaging import smoothed_score
from clcrec.checkpoint import RunDir, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from clcrec.config import TrainConfig
from clcrec.evaluate import EvalConfig, RankingEvaluator
from clcrec.generations import HELD_OUT_NOTE, GenerationSupply, check_cache
from clcrec.loader import ChunkStream, DevicePrefetcher
from clcrec.model import CLCRec, concat_normalised_features
from pipeline.dataset import load_dataset
from pipeline.errors import DatasetChangedError, TrainingDivergedError, UserError
from pipeline.fsutil import clean_tmp_leftovers


def wants_cuda(cfg: TrainConfig) -> bool:
    """Whether this run trains on CUDA (decides NCCL vs gloo before the device is set up)."""
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())


def wants_dedupe(cfg: TrainConfig, device: torch.device) -> bool:
    """Encode each distinct item of a batch once (the producer dedupes) or every slot: `auto`
    dedupes on CPU, where encoder FLOPs dominate, and not on CUDA, where they are cheap."""
    return cfg.encode == "unique" or (cfg.encode == "auto" and device.type == "cpu")


def resolve_device(cfg: TrainConfig, local_rank: int = 0, distributed: bool = False) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and distributed:
        # Under torchrun each rank owns GPU LOCAL_RANK (NCCL is bound to it); one index for all
        # ranks would put them on one GPU.
        if dev.index is not None and dev.index != local_rank:
            raise UserError(f"--device {cfg.device} under torchrun: each rank uses cuda:LOCAL_RANK; "
                            f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device(f"cuda:{local_rank}")
    return dev


def amp_settings(cfg: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler): one code path for bf16 / fp16 / fp32."""
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if mode == "fp32":
        autocast = nullcontext
    else:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        autocast = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))
    return autocast, scaler, mode


def select_score(val: dict, cfg: TrainConfig) -> float:
    key = f"recall@{cfg.select_k}"
    if cfg.select_mode == "mean":
        return (val["warm"][key] + val["cold"][key]) / 2
    return val[cfg.select_mode][key]


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam as in the reference (dense, no weight decay); the fused kernel where torch has one
    (3x faster on CPU for the 4M-parameter embedding tables of the paper-scale data)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):  # older torch or an unsupported device
        return torch.optim.Adam(model.parameters(), lr=lr)


def train_step(net, model, opt, scaler, autocast, batch, hybrid, reg_weight: float) -> torch.Tensor:
    """One optimisation step; returns (loss, loss_re, loss_ui, reg) detached, on the device."""
    with autocast():
        loss_re, loss_ui, reg = net(batch.users, batch.items, hybrid, batch.uniq, batch.inverse)
        loss = model.combine(loss_re, loss_ui, reg, reg_weight)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return torch.stack([loss, loss_re, loss_ui, reg]).detach().float()  # (4,)


def epoch_generator(cfg: TrainConfig, epoch: int, device: torch.device) -> torch.Generator:
    """RNG for the hybrid-contrast mask, seeded per (seed, epoch) so resume replays it. Every rank
    draws the mask of the whole global batch and keeps its slice, as a 1-process run would."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, 0x4D]).generate_state(1)[0]))
    return g


def hybrid_mask(batch, num_sample: float, rng: torch.Generator, device: torch.device,
                draw: str = "bernoulli") -> torch.Tensor:
    """(B, 1+K) bool: which U-I slots use the content representation. `bernoulli`: each slot with
    probability num_sample; `with-replacement` (the reference's way): int(slots * num_sample) slot
    indices of the flattened global batch drawn with replacement, so repeats leave only about
    1 - exp(-num_sample) of the slots replaced. Neither syncs with the host (shapes are known)."""
    rows = batch.global_size if batch.global_size >= 0 else batch.size
    width = batch.items.shape[1]
    if draw == "with-replacement":
        slots = rows * width
        idx = torch.randint(slots, (int(slots * num_sample),), generator=rng, device=device)
        mask = torch.zeros(slots, dtype=torch.bool, device=device).index_fill_(0, idx, True)
        return mask.view(rows, width)[batch.offset : batch.offset + batch.size]  # (B, 1+K)
    u = torch.rand((rows, width), generator=rng, device=device)  # (B_global, 1+K)
    return u[batch.offset : batch.offset + batch.size] < num_sample


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.ctx = dist.init(wants_cuda(cfg))
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.run = RunDir(cfg.run_dir)
        self.resume = resume
        self.cfg = cfg

        # --- data: dataset, cache, and the check that they belong together ---
        self.dataset = load_dataset(cfg.dataset)
        self.store = CacheStore(cfg.cache)
        check_cache(self.store, Path(cfg.dataset), self.dataset.fingerprint, cfg.num_neg, cfg.exclude)
        if cfg.exclude != "train":
            self.console.print(f"[yellow]note:[/yellow] {HELD_OUT_NOTE}")
        if cfg.batch_size % self.ctx.world:
            raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {self.ctx.world} ranks")

        # --- model, optimizer, AMP ---
        self.device = resolve_device(cfg, self.ctx.local_rank, self.ctx.enabled)
        self.modalities = cfg.select_modalities([m["name"] for m in self.dataset.meta["modalities"]])
        torch.manual_seed(cfg.seed)
        feats = concat_normalised_features([self.dataset.features[m] for m in self.modalities])
        self.model = CLCRec(
            self.dataset.num_users, self.dataset.num_items, feats, cfg.dim_E, cfg.hidden,
            cfg.temp_value, cfg.lr_lambda, cfg.num_sample,
        ).to(self.device)
        self.net = dist.wrap(self.model, self.device, self.ctx)  # DDP when world > 1
        self.opt = make_optimizer(self.model, cfg.l_r)
        self.autocast, self.scaler, self.amp_mode = amp_settings(cfg, self.device)
        self.dedupe = wants_dedupe(cfg, self.device)
        self.item_status = torch.as_tensor(self.dataset.item_status, device=self.device)
        self.eval_cfg = EvalConfig(ks=tuple(cfg.ks), user_block=cfg.eval_block)
        self._evaluators: dict[str, RankingEvaluator] = {}  # index tensors built once per split

        # --- early-stopping state, restored on resume ---
        self.start_epoch, self.best_score, self.best_epoch, self.bad_epochs = 0, -1.0, -1, 0
        self.metrics: list[dict] = []
        self.supply = GenerationSupply(Path(cfg.dataset), self.store, self.ctx, self.console)

    # ------------------------------------------------------------------------------------------
    def run_record(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "dataset_fingerprint": self.dataset.fingerprint,
            "cache_config": self.store.manifest.get("config"),
            "uses_held_out_data": self.cfg.exclude != "train",
            "modalities": self.modalities,
            "amp": self.amp_mode,
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
        }

    def setup_run_dir(self) -> None:
        if self.resume and not self.run.last.exists():
            # Killed during its first epoch: nothing to resume, so start it again in place.
            self.run.read_config()  # still refuse a directory that is not a run
            self.console.print(f"{self.run.root} has no checkpoint yet; starting it from epoch 0")
            self.resume = False
            if self.ctx.is_main:
                self.run.create(self.run_record(), exist_ok=True)
        elif self.resume:
            # CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
            ck = load_checkpoint(self.run.last, map_location="cpu")
            self.cfg.check_resumable(ck["config"])
            if ck["dataset_fingerprint"] != self.dataset.fingerprint:
                raise DatasetChangedError(
                    f"run {self.run.root} was trained on another dataset (fingerprint "
                    f"{ck['dataset_fingerprint'][:12]}); it cannot be resumed on {self.cfg.dataset}"
                )
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            if ck["scaler"]:  # a disabled scaler (fp32/bf16) saved {}: resuming with fp16 starts it fresh
                self.scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"])
            self.start_epoch = ck["epoch"] + 1
            self.best_score, self.best_epoch, self.bad_epochs = ck["best_score"], ck["best_epoch"], ck["bad_epochs"]
            # Epochs logged after the last checkpoint are replayed, so drop their records.
            self.metrics = [r for r in self.run.read_metrics() if r["epoch"] <= ck["epoch"]]
            if self.ctx.is_main:
                self.run.write_metrics(self.metrics)
                for name in ("last.pt", "best.pt"):  # leftovers of a kill during a checkpoint write
                    clean_tmp_leftovers(self.run.ckpt_dir, name)
                self.console.print(f"resuming {self.run.root} at epoch {self.start_epoch}")
        elif self.ctx.is_main:
            self.run.create(self.run_record())
        dist.barrier(self.ctx)

    # ------------------------------------------------------------------------------------------
    # ------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, generation: int, progress) -> dict:
        """One pass over a leased generation; returns the epoch's record (all ranks agree)."""
        cfg, model, net, device = self.cfg, self.model, self.net, self.device
        gen = self.store.open_generation(generation, expect_fingerprint=self.dataset.fingerprint)
        rng = epoch_generator(cfg, epoch, device)
        sums = torch.zeros(4, device=device)  # loss, loss_re, loss_ui, reg: summed on device
        bad_step = torch.full((), -1, dtype=torch.long, device=device)
        steps = samples = 0
        t0 = time.perf_counter()
        net.train()
        task = progress.add_task(f"epoch {epoch} (gen {generation})", total=gen.num_rows // self.ctx.world)
        with ChunkStream(
            gen, num_items=self.dataset.num_items, seed=cfg.seed, epoch=epoch,
            batch_size=cfg.batch_size, rank=self.ctx.rank, world=self.ctx.world,
            dedupe=self.dedupe, pin=device.type == "cuda", prefetch=cfg.prefetch,
        ) as stream:
            for batch in DevicePrefetcher(stream, device):
                hybrid = hybrid_mask(batch, cfg.num_sample, rng, device, cfg.hybrid_draw)
                parts = train_step(net, model, self.opt, self.scaler, self.autocast, batch, hybrid, cfg.reg_weight)
                loss = parts[0]
                sums += parts
                # Remember the first non-finite step on the device: no sync here.
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), steps, bad_step)
                steps += 1
                samples += batch.size
                progress.update(task, advance=batch.size)
                # A rank-local check would hang the other ranks in their next all-reduce, so
                # distributed runs decide at the epoch end, together (check_finite below).
                if steps % cfg.log_every == 0 and not self.ctx.enabled:
                    self.check_finite(bad_step, epoch)  # host sync point (every log_every steps)
        self.check_finite(bad_step, epoch)  # host sync point (end of epoch, all ranks)
        progress.remove_task(task)
        seconds = time.perf_counter() - t0
        sums = dist.all_reduce_sum(sums, self.ctx)
        counts = dist.all_reduce_sum(torch.tensor([steps, samples], device=device, dtype=torch.long), self.ctx)
        steps_all, samples_all = counts.tolist()  # host sync point (epoch end); exact int64 counts
        mean = (sums / max(steps_all, 1)).tolist()
        return {
            "epoch": epoch, "generation": generation,
            "loss": mean[0], "loss_re": mean[1], "loss_ui": mean[2], "reg": mean[3],
            "steps": steps_all, "samples": samples_all, "seconds": round(seconds, 3),
            "samples_per_s": round(samples_all / max(seconds, 1e-9), 1),
            "data_wait_frac": round(stream.wait_s / max(seconds, 1e-9), 4),
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
        if split not in self._evaluators:
            ds = self.dataset
            self._evaluators[split] = RankingEvaluator(ds.train, ds.split(split), ds.item_status, ds.num_users, self.eval_cfg)
        return self._evaluators[split](self.model.user_table(), self.model.ranking_table(self.item_status))

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train with early stopping; returns the final results of the best checkpoint."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg = self.cfg
        self.setup_run_dir()
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.console, transient=True, disable=not self.ctx.is_main,
        )
        stop = self.bad_epochs >= cfg.patience
        with progress:
            for epoch in range(self.start_epoch, cfg.epochs):
                if stop:
                    break
                generation = cfg.generation_for_epoch(epoch)
                with self.supply.lease(generation):
                    next_gen = cfg.generation_for_epoch(epoch + 1)
                    if epoch + 1 < cfg.epochs and next_gen != generation:
                        self.supply.prefetch(next_gen)  # built while this epoch trains
                    record = self.train_epoch(epoch, generation, progress)
                stop = self.end_epoch(epoch, generation, record)
        self.supply.close()
        dist.barrier(self.ctx)
        return self.finish()

    def end_epoch(self, epoch: int, generation: int, record: dict) -> bool:
        """Validate (rank 0), keep the best checkpoint, log, and agree on early stopping."""
        cfg = self.cfg
        stop = False
        if self.ctx.is_main:
            record["val"] = self.evaluate("val")
            score = select_score(record["val"], cfg)
            record["select_score"] = score
            smoothed = smoothed_score([r["select_score"] for r in self.metrics] + [score], cfg.select_window)
            if cfg.select_window > 1:
                record["select_smoothed"] = smoothed
            improved = smoothed > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = smoothed, epoch, 0
            else:
                self.bad_epochs += 1
            record["best_epoch"] = self.best_epoch
            # Order matters for resume: metrics, then best, then last (the resume point).
            self.metrics = self.run.append_metrics(self.metrics, record)
            state = self.state(epoch, generation)
            if improved:
                save_checkpoint(self.run.best, state)
            save_checkpoint(self.run.last, state)
            key = f"recall@{cfg.select_k}"
            self.console.print(
                f"epoch {epoch:3d} gen {generation} loss {record['loss']:.4f} "
                f"({record['samples_per_s']:,.0f} samples/s, wait {record['data_wait_frac']:.1%}) "
                f"val {key} all {record['val']['all'][key]:.4f} warm {record['val']['warm'][key]:.4f} "
                f"cold {record['val']['cold'][key]:.4f}" + ("  *best" if improved else ""),
                highlight=False, soft_wrap=True,  # one line per epoch, also in logs
            )
            stop = self.bad_epochs >= cfg.patience
            if stop:
                self.console.print(f"early stop: no {cfg.select_mode} {key} improvement for {cfg.patience} epochs")
        return dist.broadcast_flag(stop, self.ctx)

    def finish(self) -> dict:
        """Load the best checkpoint and evaluate it on validation and test (rank 0)."""
        if not self.ctx.is_main:
            return {}
        best = load_checkpoint(self.run.best, map_location=self.device)
        self.model.load_state_dict(best["model"])
        results = {
            "best_epoch": best["epoch"],
            "select": f"{self.cfg.select_mode} recall@{self.cfg.select_k}",
            "val": self.evaluate("val"),
            "test": self.evaluate("test"),
        }
        # Reference points on the same test split: content-only cosine, random, planted oracle.
        from clcrec.baselines import baseline_results

        results["baselines"] = {"test": baseline_results(self.dataset, "test", self.eval_cfg, seed=self.cfg.seed)}
        results["negatives_exclude"] = self.cfg.exclude
        results["uses_held_out_data"] = self.cfg.exclude != "train"
        if results["uses_held_out_data"]:
            results["note"] = HELD_OUT_NOTE
        from pipeline.fsutil import atomic_write_json

        atomic_write_json(self.run.results_path, results)
        try:
            from clcrec.plots import plot_run

            plot_run(self.metrics, self.run.root, k=self.cfg.select_k, best_epoch=best["epoch"])
        except Exception as e:  # plots are a convenience; never lose a finished run over them
            self.console.print(f"[yellow]warning:[/yellow] plotting failed: {e}")
        return results


def train(cfg: TrainConfig, *, resume: bool = False, console: Console | None = None) -> dict:
    trainer = Trainer(cfg, resume=resume, console=console)
    try:
        return trainer.fit()
    finally:
        dist.shutdown(trainer.ctx)
