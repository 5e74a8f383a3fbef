"""`cli.py bench train`: training samples/s of the streaming trainer vs a reference-style loop.

    python cli.py bench train                          # synthetic paper scale
    python cli.py bench train --dataset data/ml-100k

Both loops run side by side in one process on the same data, model, batch size and step function;
they differ only in where negatives come from:
  (a) streaming: cached generation -> producer thread -> bounded queue -> device prefetch;
  (b) reference: a torch DataLoader whose __getitem__ does what the reference code does per pair,
      `random.sample` over (warm items - the user's items), with `workers` worker processes.
The two loops alternate in `rounds` rounds of steps, so drifts in the load of a shared machine
hit both alike. A sample is one positive pair with its num_neg negatives. "data wait" is host time spent
waiting for the next batch; on CUDA the host runs ahead of the GPU (no per-step sync), so it is an
upper bound on the time the GPU starved for data. Reads the dataset and its cache (built
if missing); writes nothing else.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track as progress_track
from rich.table import Table

from clcrec.config import TrainConfig
from clcrec.loader import Batch, ChunkStream, DevicePrefetcher, _dedupe
from clcrec.model import CLCRec, concat_normalised_features
from pipeline.errors import UserError


@dataclass(frozen=True)
class BenchTrainConfig:
    dataset: str = ""
    scale: str = "paper"
    steps: int = 300  # timed steps per loop, in `rounds` alternating rounds
    rounds: int = 5
    warmup: int = 5
    batch_size: int = 256
    num_neg: int = 128
    workers: int = 1
    device: str = "auto"
    amp: str = "auto"  # as TrainConfig.amp: fp32 on CPU, bf16 on CUDA
    encode: str = "auto"  # as TrainConfig.encode: unique on CPU, slots on CUDA
    seed: int = 0


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """Per-pair negative sampling exactly as the reference TrainingDataset does it."""

    def __init__(self, train: np.ndarray, warm_items: np.ndarray, num_neg: int):
        self.pairs = np.asarray(train)
        self.num_neg = num_neg
        self.all_set = set(int(i) for i in warm_items)
        self.user_items: dict[int, set] = {}
        for u, i in self.pairs.tolist():
            self.user_items.setdefault(u, set()).add(i)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        user, pos = (int(x) for x in self.pairs[index])
        # Python 3.11 removed sampling from a set, so the reference's set difference becomes a list.
        neg = random.sample(list(self.all_set - self.user_items[user]), self.num_neg)
        return user, [pos] + neg


class Collate:
    """Batches reference-style rows; dedupes item ids like the streaming producer does, so both
    loops run the identical model step. A class (not a closure) so spawned workers can pickle it."""

    def __init__(self, num_items: int, dedupe: bool):
        self.num_items, self.dedupe = num_items, dedupe
        self.slot_of = None

    def __call__(self, rows) -> Batch:
        users = torch.tensor([r[0] for r in rows], dtype=torch.int64)
        items_np = np.asarray([r[1] for r in rows], dtype=np.int64)  # (B, 1+K)
        b = Batch(users=users, items=torch.from_numpy(items_np))
        if self.dedupe:
            if self.slot_of is None:
                self.slot_of = np.full(self.num_items, -1, dtype=np.int64)
            flat = items_np.reshape(-1)
            uniq, inverse = np.empty_like(flat), np.empty_like(flat)
            q = _dedupe(flat, self.slot_of, uniq, inverse)
            b.uniq, b.inverse = torch.from_numpy(uniq[:q].copy()), torch.from_numpy(inverse.reshape(items_np.shape))
        return b


def _worker_context() -> str:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class TimedLoop:
    """One training loop (model, optimizer, batch source) that can be timed in several rounds,
    so two loops can alternate and share the machine's noise instead of each meeting its own."""

    def __init__(self, batches, model, cfg: TrainConfig, device, warmup: int):
        from clcrec.train import amp_settings, make_optimizer

        self.model, self.cfg, self.device = model, cfg, device
        self.opt = make_optimizer(model, cfg.l_r)
        self.autocast, self.scaler, _ = amp_settings(cfg, device)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.it = iter(DevicePrefetcher(batches, device))
        self.samples, self.seconds, self.wait = 0, 0.0, 0.0
        self._steps(warmup)

    def _steps(self, n: int) -> tuple[int, float]:
        """n training steps; (samples, seconds spent waiting for batches)."""
        from clcrec.train import train_step

        samples, wait = 0, 0.0
        for _ in range(n):
            tw = time.perf_counter()
            batch = next(self.it)
            wait += time.perf_counter() - tw
            hybrid = torch.rand(batch.items.shape, generator=self.gen, device=self.device) < self.cfg.num_sample
            train_step(self.model, self.model, self.opt, self.scaler, self.autocast, batch, hybrid, self.cfg.reg_weight)
            samples += batch.size
        return samples, wait

    def run(self, steps: int) -> None:
        """Time `steps` more steps and add them to the totals."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync point: start the clock on an idle device
        t0 = time.perf_counter()
        samples, wait = self._steps(steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync point: stop the clock when the device is done
        self.seconds += time.perf_counter() - t0
        self.samples += samples
        self.wait += wait

    def result(self) -> dict:
        return {"samples_per_s": self.samples / self.seconds, "seconds": self.seconds, "samples": self.samples,
                "wait_frac": self.wait / self.seconds}


def time_data(batches, steps: int | None, warmup: int) -> dict:
    """The data path alone: how fast a loop can be fed when the model step costs nothing.
    steps=None consumes `batches` to the end (one whole epoch, producer start-up included)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0, samples = time.perf_counter(), 0
    for i, b in enumerate(it):
        samples += b.size
        if steps is not None and i + 1 >= steps:
            break
    seconds = time.perf_counter() - t0
    return {"samples_per_s": samples / seconds, "samples": samples}


def run_bench_train(bc: BenchTrainConfig, console: Console) -> dict:
    from cache.store import CacheStore
    from clcrec.flow import default_paths, ensure_cache, ensure_synthetic
    from clcrec.train import amp_settings, resolve_device, wants_dedupe
    from pipeline.dataset import load_dataset

    if bc.rounds < 1 or bc.steps < bc.rounds or bc.warmup < 0:
        raise UserError(f"bench train needs rounds >= 1 and steps >= rounds (got steps {bc.steps}, rounds {bc.rounds})")
    cfg = default_paths(TrainConfig(dataset=bc.dataset, num_neg=bc.num_neg, batch_size=bc.batch_size, device=bc.device,
                                    amp=bc.amp, encode=bc.encode, seed=bc.seed), bc.scale)
    if not bc.dataset:
        ensure_synthetic(Path(cfg.dataset), bc.scale, bc.seed, console)
    ensure_cache(Path(cfg.dataset), Path(cfg.cache), bc.num_neg, bc.seed, console)
    ds = load_dataset(cfg.dataset)
    device = resolve_device(cfg)
    dedupe = wants_dedupe(cfg, device)
    feats = concat_normalised_features(list(ds.features.values()))
    need = (bc.warmup + bc.steps + bc.rounds) * bc.batch_size

    def fresh_model():
        torch.manual_seed(bc.seed)
        return CLCRec(ds.num_users, ds.num_items, feats, cfg.dim_E).to(device)

    gen = CacheStore(cfg.cache).open_generation(0, expect_fingerprint=ds.fingerprint)
    if gen.num_rows < need:
        console.print(f"[yellow]note:[/yellow] the generation has {gen.num_rows} rows < {need}; epochs repeat")
    console.print(f"bench train: {cfg.dataset} ({ds.num_users} users, {ds.num_items} items, {len(ds.train)} train pairs), "
                  f"batch {bc.batch_size}, num_neg {bc.num_neg}, device {device}, amp {amp_settings(cfg, device)[2]}, "
                  f"encode {'unique' if dedupe else 'slots'}, torch threads {torch.get_num_threads()}")

    def streaming_batches():
        epoch = 0
        while True:
            with ChunkStream(gen, num_items=ds.num_items, seed=bc.seed, epoch=epoch, batch_size=bc.batch_size,
                             dedupe=dedupe, pin=device.type == "cuda") as stream:
                yield from stream
            epoch += 1

    opened = []  # generators to close, so producer threads and workers end before exit

    def track(g):
        opened.append(g)
        return g

    ref_ds = ReferenceStyleDataset(ds.train, ds.warm_items, bc.num_neg)
    loader = torch.utils.data.DataLoader(
        ref_ds, batch_size=bc.batch_size, shuffle=True, num_workers=bc.workers,
        collate_fn=Collate(ds.num_items, dedupe), pin_memory=device.type == "cuda",
        persistent_workers=bc.workers > 0, prefetch_factor=4 if bc.workers > 0 else None,
        # numba's OpenMP layer is not fork-safe once a parallel kernel ran in this process, and
        # spawned workers abort in their own teardown ("terminate called ..."); forkserver's
        # workers fork from a fresh server process and exit cleanly.
        multiprocessing_context=_worker_context() if bc.workers > 0 else None,
    )

    def ref_batches():
        while True:
            yield from loader

    loops = {"streaming": TimedLoop(track(streaming_batches()), fresh_model(), cfg, device, bc.warmup),
             "reference": TimedLoop(track(ref_batches()), fresh_model(), cfg, device, bc.warmup)}
    per_round = -(-bc.steps // bc.rounds)
    for _ in progress_track(range(bc.rounds), description=f"{bc.rounds} alternating rounds of {per_round} steps", console=console, transient=True):
        for loop in loops.values():
            loop.run(per_round)
    results = {name: loop.result() for name, loop in loops.items()}
    one_epoch = ChunkStream(gen, num_items=ds.num_items, seed=bc.seed, epoch=99, batch_size=bc.batch_size,
                            dedupe=dedupe, pin=device.type == "cuda")
    data = {"streaming": time_data(one_epoch, None, 0),  # a whole epoch: the queue cannot hide the producer
            "reference": time_data(track(ref_batches()), bc.steps, bc.warmup)}
    for g in opened:
        g.close()
    if loader._iterator is not None:  # persistent workers: stop them now, not in interpreter teardown
        loader._iterator._shutdown_workers()  # (where they die mid-exit with "terminate called ...")
    ratio = results["streaming"]["samples_per_s"] / results["reference"]["samples_per_s"]
    data_ratio = data["streaming"]["samples_per_s"] / data["reference"]["samples_per_s"]
    table = Table(title="samples/s (a sample = a positive pair with its negatives)")
    for col in ("loop", "training samples/s", "data wait", "data path alone, samples/s"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['samples_per_s']:,.0f}", f"{r['wait_frac']:.1%}", f"{data[name]['samples_per_s']:,.0f}")
    Console().print(table)
    Console().print(f"speed-up streaming / reference: training {ratio:.1f}x, data path alone {data_ratio:.1f}x")
    results.update(ratio=ratio, data=data, data_ratio=data_ratio)
    return results
