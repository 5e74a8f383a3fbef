"""The training step: AMP, optimizer, and (on CUDA) the whole step as one CUDA graph.

Reads and writes nothing on disk. Used by the trainer (clcrec/train/trainer.py) and `bench train`.

    runner = StepRunner(net, model, opt, StepConfig(...), device)
    runner.start_epoch(key)             # per-epoch hybrid key, loss sums reset (device tensors)
    for batch in batches: runner.step(batch)
    runner.sums, runner.bad_step        # device tensors (SUM_NAMES); read them at sync points only

What a step does is `StepRunner.train_step`: forward (`forward_losses`), backward, update, sums,
each stage labelled for the profiler. Eager steps call it; the CUDA graph captures it; `--compile
on` compiles its forward. The hybrid masks come with the batch (clcrec/data/hybrid.py).

CUDA graph: with a fixed batch shape, no GradScaler (bf16/fp32) and one process, the first
`WARMUP` steps run eagerly on a side stream (real steps on real batches: they allocate the Adam
state and the autograd workspaces), then one step is captured. Each later step is a few device
copies into the static inputs and one replay, so the host no longer limits small batches.
A batch of another shape (the epoch's short last batch) runs eagerly: it trains exactly its rows.
The CUDA calls sit in `CudaGraphs`, so the tests run this logic on CPU with a stand-in that replays
by re-running the captured function (bit-for-bit the eager training), besides the CUDA-only tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from clcrec.data.hybrid import hybrid_mask
from clcrec.device import amp_mode, amp_settings
from clcrec.losses import Losses
from common.errors import UserError

WARMUP = 3  # eager steps before capture (the docs' recommendation: let lazy state initialise)
SUM_NAMES = ("loss", *Losses._fields)  # what StepRunner.sums holds, in order


# ---------------------------------------------------------------------------------------------
# AMP and optimizer
# ---------------------------------------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, lr: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam as in the reference (dense, no weight decay); the fused kernel where torch has one
    (3x faster on CPU for the 4M-parameter embedding tables of the paper-scale data). A CUDA graph
    needs `capturable` (the step count and bias corrections stay on the device)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, TypeError):  # older torch or an unsupported device
        return torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state under this run's own execution flags. A state saved on
    CPU or with --cuda-graph off says capturable=False, and loading restores that, so the CUDA
    graph's capture would fail (or fall back to eager steps); the run's flags win, and the step
    counters move to the parameters' device as capturable and fused Adam need them."""
    keep = [{k: g[k] for k in ("capturable", "fused", "foreach", "differentiable") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, keep):
        group.update(flags)
    on_device = any(g.get("capturable") or g.get("fused") for g in opt.param_groups)
    for p, st in opt.state.items():
        if on_device and torch.is_tensor(st.get("step")):
            st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepConfig:
    reg_weight: float
    num_sample: float
    amp: str = "auto"
    dense: bool = False  # score against the whole item table (clcrec.model.CLCRec.forward)
    encode_all: bool = False  # encode the whole catalogue, score the slots by gathers
    graph: str = "auto"  # auto: capture on CUDA when possible; on: require it; off: eager
    compile: bool = False  # full batches' losses through torch.compile (checked by clcrec.train.plan)


def wants_graph(cfg: StepConfig, device: torch.device, world: int, dedupe: bool) -> bool:
    """Whether the step can be one CUDA graph: CUDA, one process (DDP's hooks are not captured
    here), no GradScaler (its inf check syncs the host), fixed shapes (no per-batch dedupe)."""
    mode = amp_mode(cfg.amp, device)
    blockers = [why for bad, why in [
        (device.type != "cuda", "it needs a CUDA device"),
        (world > 1, "distributed runs step through DDP"),
        (mode == "fp16", "fp16's GradScaler syncs the host every step (use bf16)"),
        (dedupe, "deduplicated batches change shape every step (use --encode slots or --scoring dense)"),
    ] if bad]
    if cfg.graph == "on" and blockers:
        raise UserError(f"--cuda-graph on cannot be used: {blockers[0]}; pass --cuda-graph auto or off")
    return cfg.graph != "off" and not blockers


class CudaGraphs:
    """The CUDA calls of the graph path, in one place: warm-up steps on a side stream (the docs'
    recipe), the host sync before capture, and the capture, which returns something to `replay()`.
    The tests run StepRunner's graph logic on CPU through a stand-in whose replay re-runs the
    captured function on the static inputs (tests/clcrec/test_step.py)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device)  # warm-up steps
        self.capture_stream = torch.cuda.Stream(device)  # on this device (torch.cuda.graph's own
        # default stream is made on the current device, which need not be this one)

    def warm_up(self, fn) -> None:
        cur = torch.cuda.current_stream(self.device)
        self.side.wait_stream(cur)
        with torch.cuda.stream(self.side):
            fn()
        cur.wait_stream(self.side)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def capture(self, fn):
        """Capture fn() into a new graph and return it; on failure raise the first error, with
        the thread back on its own stream and the graph's memory pool released. (By hand rather
        than `with torch.cuda.graph(...)`: when capture_end raises there, the stream is never
        restored and the allocator keeps routing this stream's frees to the capture's pool, so
        every block freed after record_stream is held for good, and the error reported is the
        secondary one.)"""
        graph, pool = self._new_graph(), self._new_pool()
        first = None
        ended = False
        with self._on_capture_stream():  # restores the current stream however the capture ends
            # thread_local: the producer thread keeps pinning host memory while this thread captures.
            graph.capture_begin(pool, capture_error_mode="thread_local")
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the cleanup
                first = e
            try:
                graph.capture_end()
                ended = True
            except BaseException as e:  # noqa: BLE001
                first = first or e
        if first is None:
            return graph
        if ended:
            graph.reset()  # a completed capture of a failed step: its graph and pool go
        else:
            self._release(pool)  # capture_end never got to end the pool's use
        raise first

    # The CUDA primitives capture() uses; the tests replace them to run its logic on CPU.
    def _new_graph(self):
        return torch.cuda.CUDAGraph()

    def _new_pool(self):
        return torch.cuda.graph_pool_handle()

    def _on_capture_stream(self):
        return torch.cuda.stream(self.capture_stream)

    def _release(self, pool) -> None:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        for release in (torch._C._cuda_endAllocateToPool, torch._C._cuda_releasePool):
            try:
                release(index, pool)
            except RuntimeError:  # that step already ran before capture_end failed
                pass


class StepRunner:
    """Runs training steps, eagerly or by replaying one captured CUDA graph, and keeps the epoch's
    loss sums and first non-finite step on the device (no host sync per step)."""

    def __init__(self, net, model, opt, cfg: StepConfig, device: torch.device, *, graph: bool = False,
                 full_rows: int = 0, graphs=None):
        self.full_rows = full_rows  # rows of a full batch on this rank: the only shape captured
        self.net, self.model, self.opt, self.cfg, self.device = net, model, opt, cfg, device
        self.autocast, self.scaler, self.amp_mode = amp_settings(cfg.amp, device)
        self.use_graph = graph
        self.key = torch.zeros((), dtype=torch.int64, device=device)
        self.sums = torch.zeros(1 + len(Losses._fields), device=device)  # SUM_NAMES
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.step_no = torch.zeros((), dtype=torch.long, device=device)
        self.eager_steps = 0
        self.graph_failed: str | None = None  # why capture failed (auto then steps eagerly)
        self.graph = None  # the captured step (torch.cuda.CUDAGraph), replayed per full batch
        self.replays = 0
        self._static: dict[str, torch.Tensor] = {}
        self._graphs = (graphs or CudaGraphs(device)) if graph else None
        # One compiled shape (the full batch): dynamic=False gives inductor static kernels, and the
        # epoch's short last batch runs the same losses eagerly instead of compiling a second shape.
        self._compiled = torch.compile(self.forward_losses, fullgraph=True, dynamic=False) if cfg.compile else None
        self.compiled_steps = 0  # steps whose losses ran compiled code

    def start_epoch(self, key: int) -> None:
        self.key.fill_(key)
        self.sums.zero_()
        self.bad_step.fill_(-1)
        self.step_no.zero_()

    def forward_losses(self, users, items, row0, hybrid, uniq, inverse) -> tuple[torch.Tensor, Losses]:
        """(objective, its Losses terms): the forward pass, run under autocast by the caller.
        `hybrid` comes drawn per chunk by the loader; without it (bench's reference loop) it is
        drawn here from row0. This is what `--compile on` compiles."""
        if hybrid is None:
            rows = row0 + torch.arange(users.shape[0], dtype=torch.int64, device=users.device)  # (B,)
            hybrid = hybrid_mask(self.key, rows, items.shape[1], self.cfg.num_sample)  # (B, 1+K)
        terms = self.net(users, items, hybrid, uniq, inverse, dense=self.cfg.dense, encode_all=self.cfg.encode_all)
        return self.model.combine(*terms, self.cfg.reg_weight), terms

    def train_step(self, users, items, row0, hybrid=None, uniq=None, inverse=None) -> None:
        """One training step, all on the device: forward, backward, update, bookkeeping. Eager
        steps call it; the CUDA graph captures exactly it; `--compile on` swaps in the compiled
        forward for full batches. Gradients must be zero (or None) on entry."""
        forward = self.forward_losses
        if self._compiled is not None and users.shape[0] == self.full_rows:
            forward = self._compiled
            self.compiled_steps += 1
        with record_function("step/forward"), self.autocast():
            loss, terms = forward(users, items, row0, hybrid, uniq, inverse)
        with record_function("step/backward"):
            self.scaler.scale(loss).backward()
        with record_function("step/update"):
            self.scaler.step(self.opt)
            self.scaler.update()
        with record_function("step/bookkeeping"):
            self.sums += torch.stack([loss, *terms]).detach().float()  # (1 + terms,)
            # Remember the first non-finite step: no sync here.
            self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(loss), self.step_no, self.bad_step))
            self.step_no += 1

    def _eager(self, batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        row0 = None if batch.hybrid is not None else torch.full((), batch.row0, dtype=torch.int64, device=self.device)
        self.train_step(batch.users, batch.items, row0, batch.hybrid, batch.uniq, batch.inverse)

    def step(self, batch) -> None:
        if not self.use_graph:
            return self._eager(batch)
        shape = tuple(batch.items.shape)
        if self.graph is None and self.eager_steps < WARMUP:
            self._graphs.warm_up(lambda: self._eager(batch))  # off the capture stream, as the docs ask
            self.eager_steps += 1
            return
        if self.graph is None:
            if batch.size != self.full_rows:
                return self._eager(batch)  # never capture the short last batch's shape
            return self._capture(batch)
        if shape != tuple(self._static["items"].shape):
            return self._eager(batch)  # the short last batch: exactly its rows, eagerly
        if (batch.hybrid is None) != ("row0" in self._static):
            return self._eager(batch)  # a batch unlike the captured one: never replay on it
        self._static["users"].copy_(batch.users, non_blocking=True)
        self._static["items"].copy_(batch.items, non_blocking=True)
        if batch.hybrid is None:
            self._static["row0"].fill_(batch.row0)
        else:
            self._static["hybrid"].copy_(batch.hybrid, non_blocking=True)
        self.graph.replay()
        self.replays += 1

    def _capture(self, batch) -> None:
        """Capture one step and replay it for this batch. Under --cuda-graph auto a capture that
        fails (an op torch cannot capture on this build or driver) leaves the run on eager steps
        with `graph_failed` saying why; under `on` it stops with that reason."""
        s = self._static
        s["users"], s["items"] = batch.users.clone(), batch.items.clone()
        if batch.hybrid is None:
            s["row0"] = torch.full((), batch.row0, dtype=torch.int64, device=self.device)
        else:
            s["hybrid"] = batch.hybrid.clone()
        self._graphs.sync()  # sync point: once per run, before capture
        self.opt.zero_grad(set_to_none=True)  # backward inside the graph allocates static grads
        users, items, row0, hybrid = s["users"], s["items"], s.get("row0"), s.get("hybrid")  # bound now, like addresses
        try:
            graph = self._graphs.capture(lambda: self.train_step(users, items, row0, hybrid))
        except Exception as e:  # noqa: BLE001 - nothing ran during capture: this batch can still train
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:200]
            if self.cfg.graph == "on":
                raise UserError(f"--cuda-graph on: capturing the training step failed ({why}); "
                                "pass --cuda-graph off") from e
            # A captured step only records kernels, so the parameters, Adam state and sums are
            # untouched; the counter bumps ran host-side only for the compiled-steps statistic.
            self._static.clear()
            self.use_graph, self.graph_failed = False, why
            self._graphs.sync()
            return self._eager(batch)
        self.graph = graph
        self.graph.replay()  # capture records without running: this batch still has to train
        self.replays += 1
