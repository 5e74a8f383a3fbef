"""`cli.py bench train`: what limits training speed, measured side by side in one run.

    python cli.py bench train                               # synthetic paper scale
    python cli.py bench train --batch-size 256 --batch-size 4096 --batch-size 16384
    python cli.py bench train --dataset data/ml-100k

For each batch size, in one process, on the same data, model and step (clcrec.train.step.StepRunner,
with the execution plan `train` would use: clcrec.train.plan):
  step alone: one batch resident on the device, stepped repeatedly (the model's ceiling);
  streaming:  the trainer's loop: cached generation -> producer thread -> (device) assembly;
  reference:  a torch DataLoader whose __getitem__ does what the reference code does per pair,
              `random.sample` over (warm items - the user's items), with `workers` processes
              (default 4 on CUDA, as the reference's published MovieLens command; 1 on CPU);
  data path alone: each loop's batches with no model step.
The streaming and reference loops alternate in `rounds` rounds, so drifts in the load of a shared
machine hit both alike. A sample is one positive pair with its num_neg negatives. "data wait" is
host time spent waiting for the next batch; on CUDA the host runs ahead of the GPU, so it bounds
from above how long the GPU starved for data. "GPU busy" is the GPU time between CUDA events
recorded around each step, over the wall time (the rest the GPU idled, waiting for the host or
for data). Reads the dataset and its cache (built if missing); writes nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track as progress_track
from rich.table import Table

from clcrec.bench.reference_loop import Collate, ReferenceStyleDataset, worker_context
from clcrec.config import TrainConfig
from clcrec.data.stream import ChunkStream, DevicePrefetcher, batches_on_device
from clcrec.model import CLCRec
from common.errors import UserError


@dataclass(frozen=True)
class BenchTrainConfig:
    dataset: str = ""
    scale: str = "paper"
    steps: int = 300  # timed steps per loop, in `rounds` alternating rounds
    rounds: int = 5
    warmup: int = 5
    batch_sizes: tuple[int, ...] = (256,)
    num_neg: int = 128
    workers: int = 0  # reference DataLoader workers (0: 4 on CUDA, 1 on CPU)
    device: str = "auto"
    amp: str = "auto"  # as TrainConfig.amp: fp32 on CPU, bf16 on CUDA
    encode: str = "auto"  # as TrainConfig.encode
    scoring: str = "auto"  # as TrainConfig.scoring
    cuda_graph: str = "auto"  # as TrainConfig.cuda_graph
    compile: str = "off"  # as TrainConfig.compile
    compare_steps: bool = False  # also time the step alone in every form: eager / graph / compiled
    readers: int = 0  # as TrainConfig.readers
    reference: bool = True  # also time the reference-style loop
    seed: int = 0


class TimedLoop:
    """One training loop (model, optimizer, step runner, batch source) that can be timed in several
    rounds, so two loops can alternate and share the machine's noise instead of each meeting its own."""

    def __init__(self, batches, model, cfg: TrainConfig, plan, warmup: int):
        from clcrec.data.hybrid import epoch_key
        from clcrec.train.plan import step_config
        from clcrec.train.step import StepRunner, make_optimizer

        self.device = plan.device
        self.opt = make_optimizer(model, cfg.l_r, capturable=plan.graph)
        self.runner = StepRunner(model, model, self.opt, step_config(cfg, plan.dense, plan.encode_all), plan.device,
                                 graph=plan.graph, full_rows=cfg.batch_size)
        self.runner.start_epoch(epoch_key(cfg.seed, 0))
        self.it = iter(batches)
        self.samples, self.seconds, self.wait, self.busy_ms = 0, 0.0, 0.0, 0.0
        self.cuda = self.device.type == "cuda"
        self._steps(warmup)

    def _steps(self, n: int, events: list | None = None) -> tuple[int, float]:
        """n training steps; (samples, seconds spent waiting for batches)."""
        samples, wait = 0, 0.0
        for _ in range(n):
            tw = time.perf_counter()
            batch = next(self.it)
            wait += time.perf_counter() - tw
            if events is not None:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.runner.step(batch)
                end.record()
                events.append((start, end))
            else:
                self.runner.step(batch)
            samples += batch.size
        return samples, wait

    def run(self, steps: int) -> None:
        """Time `steps` more steps and add them to the totals."""
        if self.cuda:
            torch.cuda.synchronize(self.device)  # sync point: start the clock on an idle device
        events = [] if self.cuda else None
        t0 = time.perf_counter()
        samples, wait = self._steps(steps, events)
        if self.cuda:
            torch.cuda.synchronize(self.device)  # sync point: stop the clock when the device is done
            self.busy_ms += sum(a.elapsed_time(b) for a, b in events)
        self.seconds += time.perf_counter() - t0
        self.samples += samples
        self.wait += wait

    def result(self) -> dict:
        return {"samples_per_s": self.samples / self.seconds, "seconds": self.seconds, "samples": self.samples,
                "wait_frac": self.wait / self.seconds,
                "gpu_busy": (self.busy_ms / 1e3 / self.seconds) if self.cuda else None}


def repeat(batch):
    while True:
        yield batch


def time_data(batches, steps: int | None, warmup: int, device: torch.device) -> dict:
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: device assembly is asynchronous
    seconds = time.perf_counter() - t0
    return {"samples_per_s": samples / seconds, "samples": samples}


def run_bench_train(bc: BenchTrainConfig, console: Console) -> dict:
    from cache.store import CacheStore
    from clcrec.data.hybrid import epoch_key
    from clcrec.device import amp_mode, bind_device, resolve_device
    from clcrec.train.flow import default_paths, ensure_cache, ensure_synthetic
    from clcrec.train.plan import plan_execution
    from pipeline.dataset import load_dataset

    if bc.rounds < 1 or bc.steps < bc.rounds or bc.warmup < 0:
        raise UserError(f"bench train needs rounds >= 1 and steps >= rounds (got steps {bc.steps}, rounds {bc.rounds})")
    if not bc.batch_sizes or min(bc.batch_sizes) < 1:
        raise UserError(f"--batch-size must be >= 1, got {list(bc.batch_sizes)}")
    if bc.workers < 0:
        raise UserError(f"--workers must be >= 0 (0: 4 on CUDA, 1 on CPU), got {bc.workers}")
    device = resolve_device(bc.device)  # a bad --device is refused before any data is generated
    bind_device(device)
    base = default_paths(TrainConfig(dataset=bc.dataset, num_neg=bc.num_neg, device=bc.device, amp=bc.amp,
                                     encode=bc.encode, scoring=bc.scoring, cuda_graph=bc.cuda_graph,
                                     compile=bc.compile, readers=bc.readers, seed=bc.seed), bc.scale)
    if not bc.dataset:
        ensure_synthetic(Path(base.dataset), bc.scale, bc.seed, console)
    ensure_cache(Path(base.dataset), Path(base.cache), bc.num_neg, bc.seed, console)
    ds = load_dataset(base.dataset)
    plan = plan_execution(base, device, ds.num_items)
    workers = bc.workers or (4 if device.type == "cuda" else 1)
    gen = CacheStore(base.cache).open_generation(0, expect_fingerprint=ds.fingerprint)
    console.print(f"bench train: {base.dataset} ({ds.num_users} users, {ds.num_items} items, {len(ds.train)} train pairs), "
                  f"num_neg {bc.num_neg}, amp {amp_mode(base.amp, device)}, {plan.describe()}, "
                  f"reference workers {workers}, torch threads {torch.get_num_threads()}", highlight=False)

    def fresh_model():
        torch.manual_seed(bc.seed)
        return CLCRec.from_config(base, ds).to(device)

    bc_num_sample = base.num_sample

    def stream(batch_size: int, epoch: int) -> ChunkStream:
        return ChunkStream(gen, num_items=ds.num_items, seed=bc.seed, epoch=epoch, batch_size=batch_size,
                           dedupe=plan.dedupe, pin=device.type == "cuda", assemble=plan.assemble, device=device,
                           readers=plan.readers, hybrid=(epoch_key(bc.seed, epoch), bc_num_sample))

    out = {}
    for batch_size in bc.batch_sizes:
        cfg = base.replace(batch_size=batch_size)
        need = (bc.warmup + bc.steps + bc.rounds) * batch_size
        if gen.num_rows < need:
            console.print(f"[yellow]note:[/yellow] batch {batch_size}: the generation has {gen.num_rows} rows < {need}; epochs repeat")
        out[batch_size] = _bench_batch_size(bc, cfg, plan, ds, gen, stream, fresh_model, workers, console)
        if bc.compare_steps:
            out[batch_size]["step_forms"] = _step_forms(bc, cfg, plan, ds, stream, fresh_model, console)
    _print_table(out, bc.reference)
    if bc.compare_steps:
        _print_forms(out)
    return out


def _step_forms(bc, cfg, plan, ds, stream, fresh_model, console) -> dict:
    """The step alone (one resident batch) in each form this device allows, each with a fresh model:
    eager, compiled losses (torch.compile) and, on CUDA, each inside one CUDA graph; on CUDA also
    the other scoring (dense <-> gather), eager and as a graph, which is what sets
    clcrec.train.plan.DENSE_ITEMS_PER_SLOT. A form that cannot run is reported with its reason."""
    import dataclasses

    from clcrec.train.plan import check_compile, plan_execution

    cuda = plan.device.type == "cuda"
    forms = [(plan.dense, graph, compiled) for compiled in (False, True) for graph in ((False, True) if cuda else (False,))]
    if cuda and not plan.dedupe:
        forms += [(not plan.dense, graph, False) for graph in (False, True)]
    with stream(cfg.batch_size, 97) as s:
        resident = next(iter(batches_on_device(s, plan.device)))
    res = {}

    for dense, graph, compiled in forms:
        # the other scoring as `train --scoring` would run it (gather: its encoding choice too)
        try:
            base = plan if dense == plan.dense else plan_execution(
                cfg.replace(scoring="dense" if dense else "gather"), plan.device, ds.num_items)
        except UserError:
            continue  # the user's options rule that scoring out
        name = f"{base.scoring}, {'compiled' if compiled else 'eager'}" + (" + CUDA graph" if graph else "")
        try:
            if compiled:
                check_compile(plan.device, dense, base.dedupe, 1)
            if graph and not plan.graph:
                raise UserError("this plan cannot capture the step (see --cuda-graph)")
            form_cfg = cfg.replace(compile="on" if compiled else "off", scoring="dense" if dense else "gather")
            loop = TimedLoop(repeat(resident), fresh_model(), form_cfg,
                             dataclasses.replace(base, graph=graph, compiled=compiled), bc.warmup)
            loop.run(bc.steps)
            res[name] = loop.result()
            if graph and loop.runner.graph_failed:
                res[name] = {"error": f"capture failed, ran eagerly: {loop.runner.graph_failed}"[:160]}
        except Exception as e:  # noqa: BLE001 - a comparison row, not the run: report why and go on
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}
        console.print(f"  batch {cfg.batch_size}, step alone, {name}: "
                      + (f"{res[name]['samples_per_s']:,.0f} samples/s" if "error" not in res[name] else res[name]["error"]),
                      highlight=False)
    res["_base"] = f"{plan.scoring}, eager"
    return res


def _bench_batch_size(bc, cfg, plan, ds, gen, stream, fresh_model, workers, console) -> dict:
    device = plan.device
    opened = []  # generators to close, so producer threads and workers end before exit

    def track(g):
        opened.append(g)
        return g

    def streaming_batches():
        epoch = 0
        while True:
            with stream(cfg.batch_size, epoch) as s:
                yield from batches_on_device(s, device)
            epoch += 1

    loops = {"streaming": TimedLoop(track(streaming_batches()), fresh_model(), cfg, plan, bc.warmup)}
    loader = None
    if bc.reference:
        ref_ds = ReferenceStyleDataset(ds.train, ds.warm_items, bc.num_neg)
        loader = torch.utils.data.DataLoader(
            ref_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
            collate_fn=Collate(ds.num_items, plan.dedupe), pin_memory=device.type == "cuda",
            persistent_workers=True, prefetch_factor=4,
            # numba's OpenMP layer is not fork-safe once a parallel kernel ran in this process, and
            # spawned workers abort in their own teardown ("terminate called ..."); forkserver's
            # workers fork from a fresh server process and exit cleanly.
            multiprocessing_context=worker_context(),
        )

        def ref_batches():
            while True:
                yield from loader

        loops["reference"] = TimedLoop(DevicePrefetcher(track(ref_batches()), device), fresh_model(), cfg,
                                       plan, bc.warmup)
    per_round = -(-bc.steps // bc.rounds)
    for _ in progress_track(range(bc.rounds), description=f"batch {cfg.batch_size}: {bc.rounds} alternating rounds of {per_round} steps",
                            console=console, transient=True):
        for loop in loops.values():
            loop.run(per_round)
    res = {name: loop.result() for name, loop in loops.items()}
    for name, loop in loops.items():
        if loop.runner.graph_failed:
            console.print(f"[yellow]note:[/yellow] batch {cfg.batch_size}, {name}: the step could not be captured "
                          f"({loop.runner.graph_failed}); it ran eagerly", highlight=False)

    # The step alone: one batch resident on the device, stepped again and again.
    with stream(cfg.batch_size, 98) as s:
        resident = next(iter(batches_on_device(s, device)))
    alone = TimedLoop(repeat(resident), fresh_model(), cfg, plan, bc.warmup)
    alone.run(bc.steps)
    res["step_alone"] = alone.result()

    with stream(cfg.batch_size, 99) as s:  # a whole epoch: the queue cannot hide the producer
        data = {"streaming": time_data(batches_on_device(s, device), None, 0, device)}
    if loader is not None:
        data["reference"] = time_data(track(ref_batches()), bc.steps, bc.warmup, torch.device("cpu"))
    for g in opened:
        g.close()
    if loader is not None and loader._iterator is not None:  # persistent workers: stop them now, not in
        loader._iterator._shutdown_workers()  # interpreter teardown (where they die with "terminate called")
    res["data"] = data
    if loader is not None:
        res["ratio"] = res["streaming"]["samples_per_s"] / res["reference"]["samples_per_s"]
        res["data_ratio"] = data["streaming"]["samples_per_s"] / data["reference"]["samples_per_s"]
    return res


def _print_forms(out: dict) -> None:
    table = Table(title="the step alone, batch resident, by form", caption="vs eager: against the plan's scoring, eager")
    for col in ["batch", "form", "ms per step", "samples/s", "vs eager"]:
        table.add_column(col, justify="right")
    table.add_column("why not", max_width=70)
    for batch_size, r in out.items():
        forms = dict(r["step_forms"])
        base = forms.pop("_base")
        eager = forms.get(base, {}).get("samples_per_s")
        for name, f in forms.items():
            if "error" in f:
                table.add_row(str(batch_size), name, "-", "-", "-", f["error"])
                continue
            sps = f["samples_per_s"]
            table.add_row(str(batch_size), name, f"{1e3 * batch_size / sps:.3f}", f"{sps:,.0f}",
                          f"{sps / eager:.2f}x" if eager else "-", "")
    Console(width=max(160, Console().width)).print(table)


def _print_table(out: dict, reference: bool) -> None:
    table = Table(title="samples/s (a sample = a positive pair with its negatives)")
    cols = ["batch", "step alone", "streaming", "data wait", "GPU busy"]
    cols += ["reference", "streaming / reference"] if reference else []
    cols += ["data path alone: streaming"] + (["reference"] if reference else [])
    for col in cols:
        table.add_column(col, justify="right")
    for batch_size, r in out.items():
        st = r["streaming"]
        row = [str(batch_size), f"{r['step_alone']['samples_per_s']:,.0f}", f"{st['samples_per_s']:,.0f}",
               f"{st['wait_frac']:.1%}", "-" if st["gpu_busy"] is None else f"{st['gpu_busy']:.1%}"]
        if reference:
            row += [f"{r['reference']['samples_per_s']:,.0f}", f"{r['ratio']:.1f}x"]
        row += [f"{r['data']['streaming']['samples_per_s']:,.0f}"]
        if reference:
            row += [f"{r['data']['reference']['samples_per_s']:,.0f}"]
        table.add_row(*row)
    Console(width=max(160, Console().width)).print(table)  # wide: logs are not terminals
