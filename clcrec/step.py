"""The training step: hybrid draws, AMP, optimizer, and (on CUDA) the whole step as one CUDA graph.

Reads and writes nothing on disk. Used by the trainer (clcrec/train.py) and `bench train`.

    runner = StepRunner(net, model, opt, StepConfig(...), device)
    runner.start_epoch(key)             # per-epoch hybrid key, loss sums reset (device tensors)
    for batch in batches: runner.step(batch)
    runner.sums, runner.bad_step        # device tensors; read them at sync points only

Hybrid draws are counter-based: slot k of the row at epoch position p uses a 32-bit hash of
(epoch key, p, k), computed with int64 tensor ops that give the same bits on every device. So the
mask needs no generator state (a CUDA graph can replay it), CPU and CUDA runs draw the same masks,
a resumed epoch replays them, and a rank computes exactly its rows of the global batch.

The loader draws the masks per chunk in its producer thread (`hybrid_mask_np`, compiled: 40M rows/s
on one core, where the int64 tensor form costs ~20 full-width kernels on a GPU) and ships them with
the chunk, so the step carries no hashing; without a loader's masks (bench's reference loop) the
step draws them from the batch's position with `hybrid_mask`.

CUDA graph: with a fixed batch shape, no GradScaler (bf16/fp32) and one process, the first
`WARMUP` steps run eagerly on a side stream (real steps on real batches: they allocate the Adam
state and the autograd workspaces), then one step is captured: forward, backward, the fused Adam
update (capturable), the loss sums and the divergence check. Each later step is three device copies
into the static inputs and one replay, so the host no longer limits small batches.
A batch of another shape (the epoch's short last batch) runs eagerly: it trains exactly its rows.
The CUDA calls sit in `CudaGraphs`, so the tests run this logic on CPU with a stand-in that replays
by re-running the captured function (bit-for-bit the eager training), besides the CUDA-only tests.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numba
import numpy as np
import torch

WARMUP = 3  # eager steps before capture (the docs' recommendation: let lazy state initialise)
M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Counter-based hybrid draws
# ---------------------------------------------------------------------------------------------

def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (split c in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply, "lowbias32") on int64 tensors in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def epoch_key(seed: int, epoch: int) -> int:
    """The epoch's 32-bit hybrid key, from (seed, epoch) as every other per-epoch stream."""
    return int(np.random.SeedSequence([seed, epoch, 0x4D]).generate_state(1)[0])


def hybrid_hash(key: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) uniform 32-bit hashes of (key, epoch position of each row, slot).
    key: 0-dim int64 in [0, 2^32); rows: (B,) int64 epoch positions."""
    r = mix32((rows & M32) ^ key)  # (B,)
    r = mix32(r ^ ((rows >> 32) & M32))  # positions past 2^32 stay distinct
    slots = torch.arange(width, dtype=torch.int64, device=rows.device) * 0x9E3779B9 & M32  # (width,)
    return mix32(r.unsqueeze(1) ^ slots)  # (B, width)


def slot_rate(num_sample: float, draw: str, slots: int) -> float:
    """The probability that one U-I slot uses the content representation. `bernoulli`: num_sample.
    `with-replacement`, the reference's way: int(slots * num_sample) slot indices of a batch of
    `slots` slots drawn with replacement leave a slot untouched with probability
    (1 - 1/slots)^draws, so about 1 - exp(-num_sample) of the slots are replaced (39% at 0.5).
    Here each slot is drawn independently at that rate: the reference's marginal rate, with the
    counter hash's properties (no generator state, rank- and device-independent)."""
    if draw == "bernoulli" or slots <= 0:
        return num_sample
    return 1.0 - (1.0 - 1.0 / slots) ** int(slots * num_sample)


def hybrid_threshold(num_sample: float) -> int:
    return int(round(num_sample * 2**32))  # h < 2^32 always: num_sample 1 takes every slot


def hybrid_mask(key: torch.Tensor, rows: torch.Tensor, width: int, num_sample: float) -> torch.Tensor:
    """(B, width) bool: Bernoulli(num_sample) per slot, from the counter hash (no generator state)."""
    return hybrid_hash(key, rows, width) < hybrid_threshold(num_sample)


# The same hash as one compiled pass for the CPU producer thread: serial and GIL-free, so it never
# competes with torch's thread pool, and about 10x cheaper than the same arithmetic in numpy.
@numba.njit(nogil=True, cache=True)
def _mix32_nb(x):  # pragma: no cover - compiled
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    return x ^ (x >> np.uint64(16))


@numba.njit(nogil=True, cache=True)
def _hybrid_rows(key, rows, width, threshold, out):  # pragma: no cover - compiled
    m = np.uint64(M32)
    for i in range(rows.shape[0]):
        p = np.uint64(rows[i])
        r = _mix32_nb((p & m) ^ key)
        r = _mix32_nb(r ^ ((p >> np.uint64(32)) & m))
        for k in range(width):
            out[i, k] = _mix32_nb(r ^ ((np.uint64(k) * np.uint64(0x9E3779B9)) & m)) < threshold


def hybrid_mask_np(key: int, rows: np.ndarray, width: int, num_sample: float) -> np.ndarray:
    """`hybrid_mask` on the host: the same bits (tested). rows: (B,) int64 epoch positions."""
    out = np.empty((len(rows), width), dtype=np.bool_)
    _hybrid_rows(np.uint64(key), np.ascontiguousarray(rows, dtype=np.int64), width,
                 np.uint64(hybrid_threshold(num_sample)), out)
    return out


# ---------------------------------------------------------------------------------------------
# AMP and optimizer
# ---------------------------------------------------------------------------------------------

def amp_settings(amp: str, device: torch.device):
    """(autocast context factory, GradScaler, mode): one code path for bf16 / fp16 / fp32."""
    mode = amp if amp != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if mode == "fp32":
        autocast = nullcontext
    else:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        # No weight-cast cache: a CUDA graph must not capture casts cached outside it (torch's
        # CUDA-graph notes), and each weight is cast once per step here anyway.
        autocast = lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=False)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))
    return autocast, scaler, mode


def make_optimizer(model: torch.nn.Module, lr: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam as in the reference (dense, no weight decay); the fused kernel where torch has one
    (3x faster on CPU for the 4M-parameter embedding tables of the paper-scale data). A CUDA graph
    needs `capturable` (the step count and bias corrections stay on the device)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, TypeError):  # older torch or an unsupported device
        return torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict, capturable: bool) -> None:
    """Load a checkpoint's optimizer state under this run's plan. load_state_dict restores the
    saved param groups' `capturable`: a run saved on CPU or with --cuda-graph off and resumed on a
    GPU would get capturable=False under a CUDA graph (capture fails, or falls back to eager)."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group["capturable"] = capturable
    if capturable:  # a capturable step count lives on the parameter's device, as a float
        for p, st in opt.state.items():
            if "step" in st and torch.is_tensor(st["step"]) and st["step"].device != p.device:
                st["step"] = st["step"].to(p.device, torch.float32)


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
    compile: bool = False  # full batches' losses through torch.compile (checked by clcrec.execution)


def wants_graph(cfg: StepConfig, device: torch.device, world: int, dedupe: bool) -> bool:
    """Whether the step can be one CUDA graph: CUDA, one process (DDP's hooks are not captured
    here), no GradScaler (its inf check syncs the host), fixed shapes (no per-batch dedupe)."""
    from pipeline.errors import UserError

    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "fp32")
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
        self.side = torch.cuda.Stream(device)
        self.capture_stream = torch.cuda.Stream(device)

    def warm_up(self, fn) -> None:
        cur = torch.cuda.current_stream(self.device)
        self.side.wait_stream(cur)
        with torch.cuda.stream(self.side):
            fn()
        cur.wait_stream(self.side)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def capture(self, fn) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        self.capture_stream.wait_stream(torch.cuda.current_stream(self.device))
        capture_into(graph, fn, torch.cuda.stream(self.capture_stream), lambda: release_capture_pool(graph, self.device))
        torch.cuda.current_stream(self.device).wait_stream(self.capture_stream)
        return graph


def capture_into(graph, fn, on_capture_stream, release_pool) -> None:
    """Capture `fn` into `graph` by hand rather than with `torch.cuda.graph`, whose __exit__, when
    capture_end raises, never leaves the capture stream and leaves the caching allocator believing
    a capture is under way (so every block freed after record_stream is deferred for good). Here
    the stream context exits whatever happens; after a failure the allocator is told the capture
    ended and the graph's private pool is released; and the error raised is the first one (fn's,
    not capture_end's complaint that the capture it invalidated cannot end). thread_local: the
    producer thread keeps pinning host memory while this thread captures."""
    first = None
    with on_capture_stream:
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the capture is ended
            first = e
        try:
            graph.capture_end()
        except BaseException as e:  # noqa: BLE001
            first = first or e
    if first is not None:
        release_pool()
        raise first


def release_capture_pool(graph, device: torch.device) -> None:
    """After a failed capture: end the allocator's routing into the graph's pool, if capture_end
    did not get that far, and release the pool (a graph that never finished capturing does not)."""
    dev = device.index if device.index is not None else torch.cuda.current_device()
    pool = graph.pool()
    try:
        torch._C._cuda_endAllocateToPool(dev, pool)
    except RuntimeError:  # capture_end had ended it
        pass
    torch._C._cuda_releasePool(dev, pool)


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
        self.sums = torch.zeros(4, device=device)  # loss, loss_re, loss_ui, reg
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
        self._compiled = torch.compile(self._losses, fullgraph=True, dynamic=False) if cfg.compile else None
        self.compiled_steps = 0  # steps whose losses ran compiled code

    def start_epoch(self, key: int) -> None:
        self.key.fill_(key)
        self.sums.zero_()
        self.bad_step.fill_(-1)
        self.step_no.zero_()

    def _losses(self, users, items, row0, hybrid, uniq, inverse):
        """(loss, loss_re, loss_ui, reg): the forward pass, run under autocast by the caller.
        `hybrid` comes drawn per chunk by the loader; without it (bench's reference loop) it is
        drawn here from row0."""
        if hybrid is None:
            rows = row0 + torch.arange(users.shape[0], dtype=torch.int64, device=users.device)  # (B,)
            hybrid = hybrid_mask(self.key, rows, items.shape[1], self.cfg.num_sample)  # (B, 1+K)
        loss_re, loss_ui, reg = self.net(users, items, hybrid, uniq, inverse, dense=self.cfg.dense,
                                         encode_all=self.cfg.encode_all)
        return self.model.combine(loss_re, loss_ui, reg, self.cfg.reg_weight), loss_re, loss_ui, reg

    def _compute(self, users, items, row0, hybrid=None, uniq=None, inverse=None) -> None:
        """Forward, backward, update and bookkeeping, all on the device."""
        losses = self._losses
        if self._compiled is not None and users.shape[0] == self.full_rows:
            losses = self._compiled
            self.compiled_steps += 1
        with self.autocast():
            loss, loss_re, loss_ui, reg = losses(users, items, row0, hybrid, uniq, inverse)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        parts = torch.stack([loss, loss_re, loss_ui, reg]).detach().float()  # (4,)
        self.sums += parts
        # Remember the first non-finite step: no sync here.
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(loss), self.step_no, self.bad_step))
        self.step_no += 1

    def _eager(self, batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        row0 = None if batch.hybrid is not None else torch.full((), batch.row0, dtype=torch.int64, device=self.device)
        self._compute(batch.users, batch.items, row0, batch.hybrid, batch.uniq, batch.inverse)

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
            graph = self._graphs.capture(lambda: self._compute(users, items, row0, hybrid))
        except Exception as e:  # noqa: BLE001 - nothing ran during capture: this batch can still train
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:200]
            if self.cfg.graph == "on":
                from pipeline.errors import UserError

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
