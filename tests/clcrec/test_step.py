"""The training step and its execution plans: counter-based hybrid draws, device assembly and
dense scoring training the same model as the CPU defaults, the plan chosen from sizes, and (on a
CUDA device) the whole step as one CUDA graph."""

import json

import pytest
import torch

from clcrec.config import TrainConfig
from clcrec.execution import DENSE_ITEMS_PER_SLOT, plan_execution
from clcrec.step import epoch_key, hybrid_hash, hybrid_mask, mix32
from clcrec.train import train
from pipeline.errors import UserError
from tests.clcrec.test_train import config, quiet
from tests.trajectory import skip_compile_under_forced_capability

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_mix32_matches_plain_integer_arithmetic():
    """The int64-tensor form of the 32-bit hash equals the same hash in Python's exact integers."""
    def ref(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    assert mix32(torch.tensor(xs, dtype=torch.int64)).tolist() == [ref(x) for x in xs]


def test_hybrid_draws_depend_only_on_key_row_and_slot():
    key = torch.tensor(epoch_key(0, 3))
    whole = hybrid_mask(key, torch.arange(100, 164), 17, 0.5)  # (64, 17): one batch
    halves = torch.cat([hybrid_mask(key, torch.arange(100, 132), 17, 0.5),  # two ranks' slices
                        hybrid_mask(key, torch.arange(132, 164), 17, 0.5)])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, hybrid_mask(torch.tensor(epoch_key(0, 4)), torch.arange(100, 164), 17, 0.5))
    assert hybrid_mask(key, torch.arange(5), 9, 0.0).sum() == 0 and hybrid_mask(key, torch.arange(5), 9, 1.0).all()
    # rows past 2^32 positions stay distinct from their low bits
    assert not torch.equal(hybrid_hash(key, torch.tensor([7]), 9), hybrid_hash(key, torch.tensor([7 + 2**32]), 9))


def test_hybrid_draws_are_bernoulli_with_the_asked_rate():
    m = hybrid_mask(torch.tensor(epoch_key(1, 0)), torch.arange(20000), 129, 0.3).double()
    assert abs(m.mean().item() - 0.3) < 0.002  # 2.6M draws: sd 0.0003
    assert m.mean(0).std().item() < 0.0035 * 1.2  # per slot: sd sqrt(0.21/20000) = 0.0032
    assert abs(torch.corrcoef(torch.stack([m[:, 0], m[:, 1]]))[0, 1].item()) < 0.03  # neighbouring slots


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_device_assembly_trains_exactly_like_host_assembly(tiny_dataset, tiny_cache, tmp_path):
    """The GPU's batch path (chunks shipped as stored, permuted and cut on the device), run on
    CPU tensors, serves the same batches in the same order: the same model, bit for bit."""
    out = {}
    for assemble in ("host", "device"):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / assemble, epochs=2, encode="slots", assemble=assemble)
        out[assemble] = (train(cfg, console=quiet())["test"], losses(tmp_path / assemble))
    assert out["host"] == out["device"]


@pytest.mark.trajectory
def test_whole_catalogue_encoding_trains_like_slot_encoding(tiny_dataset, tiny_cache, tmp_path):
    """--encode all (the catalogue encoded once, slots scored by gathers) is the same loss and
    gradient as encoding every slot (float64: test_model.py); in float32 training, rounding only."""
    for encode in ("slots", "all"):
        train(config(tiny_dataset, tiny_cache, tmp_path / encode, epochs=2, encode=encode), console=quiet())
    assert "whole catalogue encoded" in json.loads((tmp_path / "all" / "config.json").read_text())["execution"]
    assert losses(tmp_path / "all") == pytest.approx(losses(tmp_path / "slots"), rel=1e-4)


@pytest.mark.trajectory
def test_dense_scoring_trains_like_gather_scoring(tiny_dataset, tiny_cache, tmp_path):
    """Whole-table scoring is the same loss and gradient (float64 equality: test_model.py); in
    float32 training the two differ by rounding only."""
    a = config(tiny_dataset, tiny_cache, tmp_path / "gather", epochs=2, scoring="gather")
    b = config(tiny_dataset, tiny_cache, tmp_path / "dense", epochs=2, scoring="dense")
    train(a, console=quiet())
    train(b, console=quiet())
    assert losses(tmp_path / "dense") == pytest.approx(losses(tmp_path / "gather"), rel=1e-4)


def test_the_plan_follows_the_device_and_the_catalogue_size():
    cfg = TrainConfig(num_neg=128)
    cpu = plan_execution(cfg, torch.device("cpu"), 5986)
    assert (cpu.dense, cpu.dedupe, cpu.assemble, cpu.graph) == (False, True, "host", False)
    gpu_small = plan_execution(cfg, torch.device("cuda"), DENSE_ITEMS_PER_SLOT * 129)
    assert (gpu_small.dense, gpu_small.dedupe, gpu_small.assemble, gpu_small.graph) == (True, False, "device", True)
    gpu_large = plan_execution(cfg, torch.device("cuda"), DENSE_ITEMS_PER_SLOT * 129 + 1)
    assert (gpu_large.dense, gpu_large.dedupe, gpu_large.assemble) == (False, False, "device")
    # past dense's reach, the encoder runs over min(items, slots) rows: the whole catalogue while
    # it is smaller than a batch's slots (256 x 129 = 33,024), else every slot
    assert plan_execution(cfg, torch.device("cuda"), 33_024).encode_all
    assert not plan_execution(cfg, torch.device("cuda"), 33_025).encode_all
    big = cfg.replace(batch_size=4096)  # 528,384 slots
    assert plan_execution(big, torch.device("cuda"), 100_000).encode_all
    assert not plan_execution(cfg, torch.device("cuda"), 100_000).encode_all  # 33,024 slots < 100k items
    assert not plan_execution(big, torch.device("cuda"), 100_000, world=8).encode_all  # 66,048 slots per rank
    assert not plan_execution(big, torch.device("cpu"), 100_000).encode_all  # CPU: unique items
    assert plan_execution(cfg.replace(encode="all"), torch.device("cpu"), 100).describe().startswith(
        "device cpu, scoring gather, whole catalogue encoded")
    assert not plan_execution(cfg.replace(amp="fp16"), torch.device("cuda"), 100).graph  # GradScaler syncs
    assert not plan_execution(cfg, torch.device("cuda"), 100, world=2).graph  # DDP
    with pytest.raises(UserError, match="--cuda-graph on cannot be used: it needs a CUDA device"):
        plan_execution(cfg.replace(cuda_graph="on"), torch.device("cpu"), 100)
    with pytest.raises(UserError, match="--scoring dense .* no --encode unique"):
        plan_execution(cfg.replace(scoring="dense", encode="unique"), torch.device("cpu"), 100)
    with pytest.raises(UserError, match="--assemble device cannot deduplicate"):
        plan_execution(cfg.replace(assemble="device"), torch.device("cpu"), 100)


@pytest.mark.cuda
@CUDA
def test_hybrid_draws_are_the_same_bits_on_cuda():
    key, rows = torch.tensor(epoch_key(5, 2)), torch.arange(3000, 3256)
    assert torch.equal(hybrid_hash(key, rows, 129), hybrid_hash(key.cuda(), rows.cuda(), 129).cpu())


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_cuda_graph_trains_like_eager_steps(tiny_dataset, tiny_cache, tmp_path, scoring):
    """Replaying one captured step (static inputs, capturable Adam, device-side sums) trains the
    model eager steps train, the epoch's short last batch included (run eagerly)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for graph in ("off", "on"):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / graph, epochs=2, device="cuda", amp="fp32",
                     scoring=scoring, cuda_graph=graph)
        out[graph] = train(cfg, console=quiet())
        rec = json.loads((tmp_path / graph / "config.json").read_text())
        assert ("CUDA graph" in rec["execution"]) == (graph == "on")
    m = {g: [json.loads(x) for x in (tmp_path / g / "metrics.jsonl").read_text().splitlines()] for g in out}
    assert [r["samples"] for r in m["on"]] == [r["samples"] for r in m["off"]] == [3701, 3701]
    assert [r["loss"] for r in m["on"]] == pytest.approx([r["loss"] for r in m["off"]], rel=1e-4)


def test_the_numpy_hybrid_hash_has_the_torch_bits():
    import numpy as np

    from clcrec.step import hybrid_mask_np

    rows = np.array([0, 1, 5, 2**31, 2**32 + 3, 10**12], dtype=np.int64)
    for key, p in [(epoch_key(0, 0), 0.5), (epoch_key(3, 7), 0.3935), (0xFFFFFFFF, 0.9)]:
        np.testing.assert_array_equal(hybrid_mask_np(key, rows, 33, p),
                                      hybrid_mask(torch.tensor(key), torch.from_numpy(rows), 33, p).numpy())


def test_masks_drawn_per_chunk_equal_masks_drawn_per_step(tiny_cache, tiny_dataset):
    """The loader's per-chunk masks (host: numpy in the producer; device: torch on the device)
    are the step's own draw from each batch's epoch position."""
    import numpy as np

    from cache.store import CacheStore
    from clcrec.loader import ChunkStream

    gen = CacheStore(tiny_cache).open_generation(0)
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    key = epoch_key(0, 5)
    for assemble, rank in [("host", 0), ("device", 1)]:
        for b in ChunkStream(gen, num_items=n, seed=0, epoch=5, batch_size=60, rank=rank, world=2, dedupe=False,
                             assemble=assemble, hybrid=(key, 0.5)):
            rows = torch.arange(b.row0, b.row0 + b.size)
            assert torch.equal(b.hybrid, hybrid_mask(torch.tensor(key), rows, b.items.shape[1], 0.5))


@pytest.mark.trajectory
def test_compiled_losses_train_like_eager_losses(tiny_dataset, tiny_cache, tmp_path):
    """--compile on runs the full batches' losses through torch.compile (inductor's C++ code on
    CPU, triton on CUDA): the same model up to rounding, each full batch compiled, the epoch's
    short last batch (3701 = 57 x 64 + 53 rows) eager, and one compile serving every full step."""
    from clcrec import train as train_mod

    skip_compile_under_forced_capability()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # earlier tests compiled too
    runners = []
    orig = train_mod.StepRunner

    class Recording(orig):  # the real runner, remembered so its counters can be read
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            runners.append(self)

    out = {}
    for mode in ("off", "on"):
        train_mod.StepRunner = Recording
        try:
            cfg = config(tiny_dataset, tiny_cache, tmp_path / mode, epochs=2, scoring="dense", compile=mode)
            out[mode] = train(cfg, console=quiet())
        finally:
            train_mod.StepRunner = orig
    off, on = runners
    assert off.compiled_steps == 0 and on.compiled_steps == 2 * 57
    assert "compiled losses" in json.loads((tmp_path / "on" / "config.json").read_text())["execution"]
    assert losses(tmp_path / "on") == pytest.approx(losses(tmp_path / "off"), rel=1e-4)  # rounding, amplified by training
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"expected one compiled graph for the full batch shape, got {frames}"


@pytest.mark.parametrize("kw, why", [
    (dict(scoring="gather", encode="slots"), "on CPU the gather losses are compiled numba kernels (pass --scoring dense)"),
    (dict(scoring="gather", encode="unique"), "deduplicated batches change shape every step"),
])
def test_compile_is_refused_where_it_cannot_work(tiny_dataset, tiny_cache, tmp_path, kw, why):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "r", compile="on", **kw)
    with pytest.raises(UserError, match=r"^--compile on cannot be used: .*or pass --compile off$") as e:
        plan_execution(cfg, torch.device("cpu"), 100)
    assert why in str(e.value)


@pytest.mark.cuda
@CUDA
def test_compiled_losses_inside_the_cuda_graph_train_like_eager_steps(tiny_dataset, tiny_cache, tmp_path):
    """The fastest form the bench compares: inductor's kernels for the losses, captured with the
    backward and the Adam update in one CUDA graph; the same training as eager steps."""
    from torch.utils._triton import has_triton

    if not has_triton():
        pytest.skip("torch.compile on CUDA needs triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, graph, comp in (("eager", "off", "off"), ("fast", "on", "on")):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / name, epochs=2, device="cuda", amp="fp32",
                     scoring="dense", cuda_graph=graph, compile=comp)
        train(cfg, console=quiet())
    assert "CUDA graph, compiled losses" in json.loads((tmp_path / "fast" / "config.json").read_text())["execution"]
    assert losses(tmp_path / "fast") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


@pytest.mark.cuda
@CUDA
def test_a_step_that_cannot_be_captured_falls_back_to_eager_steps(tiny_dataset, tiny_cache, tmp_path):
    """--cuda-graph auto: a step torch cannot capture (here one that syncs the host) trains on
    eagerly, the batch whose capture failed included, with the reason in the epoch's record;
    --cuda-graph on stops with that reason."""
    from clcrec import train as train_mod
    from pipeline.errors import UserError as UE

    class Syncing(train_mod.StepRunner):  # the real runner, plus a host sync in its forward
        def _losses(self, *a):
            out = super()._losses(*a)
            float(out[0])  # host sync: illegal while a stream captures
            return out

    torch.backends.cuda.matmul.allow_tf32 = False
    orig = train_mod.StepRunner
    cfgs = {g: config(tiny_dataset, tiny_cache, tmp_path / g, epochs=2, device="cuda", amp="fp32",
                      scoring="dense", cuda_graph=g) for g in ("off", "auto", "on")}
    train(cfgs["off"], console=quiet())
    train_mod.StepRunner = Syncing
    try:
        train(cfgs["auto"], console=quiet())
        with pytest.raises(UE, match=r"^--cuda-graph on: capturing the training step failed .*pass --cuda-graph off$"):
            train(cfgs["on"], console=quiet())
    finally:
        train_mod.StepRunner = orig
    recs = [json.loads(x) for x in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert all("graph_failed" in r for r in recs) and [r["samples"] for r in recs] == [3701, 3701]
    assert losses(tmp_path / "auto") == pytest.approx(losses(tmp_path / "off"), rel=1e-4)


class ReplayOnCpu:
    """clcrec.step.CudaGraphs' stand-in, so the graph path's logic runs on CPU: warm-up and sync
    are plain calls, `capture` runs nothing (a capture records without running) and a replay
    re-runs the captured function on the tensors bound at capture (the static inputs the runner
    refills in place, as a CUDA graph reads fixed addresses). A CUDA replay recomputes the
    gradients that the capture allocated from None, so the stand-in clears them first."""

    def __init__(self, opt):
        self.opt, self.captures = opt, 0

    def warm_up(self, fn):
        fn()

    def sync(self):
        pass

    def capture(self, fn):
        self.captures += 1
        opt = self.opt

        class Replay:
            def replay(self):
                opt.zero_grad(set_to_none=True)
                fn()

        return Replay()


class FailingCapture(ReplayOnCpu):
    """A capture that fails as an uncapturable op makes CUDA's fail: after recording has begun."""

    def capture(self, fn):
        self.captures += 1
        raise RuntimeError("operation not permitted when stream is capturing")


def run_steps(tiny_dataset, tiny_cache, graphs_for=None, graph_mode="auto"):
    """Two epochs of device-assembled batches (hybrid masks included) through one StepRunner:
    eager, or through a stand-in for the CUDA calls. -> (model, runner, per-epoch sums, graphs)"""
    from cache.store import CacheStore
    from clcrec.loader import ChunkStream
    from clcrec.model import CLCRec, concat_normalised_features
    from clcrec.step import StepConfig, StepRunner, make_optimizer
    from pipeline.dataset import load_dataset

    ds = load_dataset(tiny_dataset)
    gen = CacheStore(tiny_cache).open_generation(0)
    feats = concat_normalised_features(list(ds.features.values()))
    cfg = StepConfig(reg_weight=0.1, num_sample=0.5, amp="fp32", dense=True, graph=graph_mode)
    torch.manual_seed(0)
    model = CLCRec(ds.num_users, ds.num_items, feats)
    opt = make_optimizer(model, 0.01)
    graphs = graphs_for(opt) if graphs_for else None
    runner = StepRunner(model, model, opt, cfg, torch.device("cpu"), graph=graphs is not None,
                        full_rows=64, graphs=graphs)
    sums = []
    for epoch in range(2):
        runner.start_epoch(epoch_key(0, epoch))
        with ChunkStream(gen, num_items=ds.num_items, seed=0, epoch=epoch, batch_size=64, dedupe=False,
                         assemble="device", hybrid=(epoch_key(0, epoch), 0.5)) as s:
            for b in s:
                runner.step(b)
        sums.append(runner.sums.tolist())
    return model, runner, sums, graphs


def same_training(a, b) -> bool:
    return a[2] == b[2] and all(torch.equal(x, y) for x, y in zip(a[0].state_dict().values(), b[0].state_dict().values()))


def test_the_graph_path_trains_exactly_like_eager_steps_on_cpu(tiny_dataset, tiny_cache):
    """StepRunner's graph logic (warm-up, capture on a full batch, static inputs refilled per batch,
    the short last batch eager) with CPU stand-ins for the CUDA calls: bit-for-bit the training
    of eager steps, over two epochs of device-assembled batches with their hybrid masks."""
    from clcrec.step import WARMUP

    eager = run_steps(tiny_dataset, tiny_cache)
    graph = run_steps(tiny_dataset, tiny_cache, ReplayOnCpu)
    assert same_training(graph, eager)
    runner, graphs = graph[1], graph[3]
    # 3701 rows = 57 full batches + 53 per epoch: WARMUP eager, 1 capture, the rest replayed,
    # and each epoch's short batch eager
    assert graphs.captures == 1 and runner.eager_steps == WARMUP and runner.replays == 2 * 57 - WARMUP


def test_a_failed_capture_trains_on_eagerly_or_stops_under_on(tiny_dataset, tiny_cache):
    """--cuda-graph auto: the batch whose capture failed and every later one train eagerly, bit
    for bit the eager run, with the reason kept; --cuda-graph on stops naming the reason."""
    eager = run_steps(tiny_dataset, tiny_cache)
    failed = run_steps(tiny_dataset, tiny_cache, FailingCapture)
    assert same_training(failed, eager)
    runner, graphs = failed[1], failed[3]
    assert graphs.captures == 1 and runner.replays == 0 and not runner.use_graph
    assert runner.graph_failed == "RuntimeError: operation not permitted when stream is capturing"
    with pytest.raises(UserError, match=r"^--cuda-graph on: capturing the training step failed \(RuntimeError: "
                                        r"operation not permitted .*\); pass --cuda-graph off$"):
        run_steps(tiny_dataset, tiny_cache, FailingCapture, graph_mode="on")


class GraphStandIn:
    """torch.cuda.CUDAGraph's capture calls as CUDA behaves: an error inside the captured function
    invalidates the capture, so capture_end then fails too (with a secondary message)."""

    def __init__(self, end_fails=False):
        self.calls, self.end_fails = [], end_fails

    def capture_begin(self, capture_error_mode="global"):
        self.calls.append(("begin", capture_error_mode))

    def capture_end(self):
        self.calls.append("end")
        if self.end_fails:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


class StreamStandIn:
    def __init__(self):
        self.entered = self.exited = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        self.exited += 1


def test_a_capture_that_fails_leaves_the_capture_stream_releases_the_pool_and_names_the_first_error():
    from clcrec.step import capture_into

    def sync_inside_capture():
        raise RuntimeError("operation not permitted when stream is capturing")

    for fn, end_fails, first in [(sync_inside_capture, True, "operation not permitted"),  # fn's error, not capture_end's
                                 (lambda: None, True, "previous error during capture")]:  # capture_end's own
        graph, stream, released = GraphStandIn(end_fails), StreamStandIn(), []
        with pytest.raises(RuntimeError, match=first):
            capture_into(graph, fn, stream, lambda: released.append(True))
        assert graph.calls == [("begin", "thread_local"), "end"]  # the capture is always ended
        assert stream.exited == stream.entered == 1  # back on the caller's stream
        assert released == [True]  # the graph's pool is given back to the allocator
    graph, stream, released = GraphStandIn(), StreamStandIn(), []
    capture_into(graph, lambda: None, stream, lambda: released.append(True))
    assert stream.exited == 1 and released == []  # a good capture keeps its pool


def test_resuming_sets_adams_capturable_from_the_plan_not_from_the_checkpoint():
    from clcrec.step import load_optimizer_state

    model = torch.nn.Linear(3, 2)
    saved = torch.optim.Adam(model.parameters(), lr=0.01, capturable=False)
    model(torch.randn(4, 3)).sum().backward()
    saved.step()
    state = saved.state_dict()
    graph_run = torch.optim.Adam(model.parameters(), lr=0.01, capturable=True)  # a run whose plan captures
    load_optimizer_state(graph_run, state, capturable=True)
    assert all(g["capturable"] for g in graph_run.param_groups)  # plain load_state_dict restores False
    assert all(st["step"].dtype == torch.float32 for st in graph_run.state.values())
    eager_run = torch.optim.Adam(model.parameters(), lr=0.01)
    load_optimizer_state(eager_run, graph_run.state_dict(), capturable=False)
    assert not any(g["capturable"] for g in eager_run.param_groups)


def test_a_cuda_device_is_bound_as_the_current_one(monkeypatch):
    """--device cuda:N makes GPU N current, so streams and graphs are created on it (CPU test of
    the logic: torch.cuda's calls recorded)."""
    from clcrec import execution

    bound = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: bound.append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert execution.resolve_device(TrainConfig(device="cuda:1")) == torch.device("cuda", 1)
    assert execution.resolve_device(TrainConfig(device="cuda")) == torch.device("cuda", 0)
    assert execution.resolve_device(TrainConfig(device="auto"), local_rank=0) == torch.device("cuda", 0)
    assert bound == [torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 0)]
    assert execution.resolve_device(TrainConfig(device="cpu")) == torch.device("cpu") and len(bound) == 3


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a CUDA device (two of them)")
def test_a_captured_step_on_a_second_gpu_trains(tiny_dataset, tiny_cache, tmp_path):
    """--device cuda:1 with a CUDA graph: the replays change the parameters (an empty graph, captured
    on GPU 0's stream, would leave them as the warm-up steps left them)."""
    from clcrec.checkpoint import load_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for graph in ("off", "on"):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / graph, epochs=1, device="cuda:1", amp="fp32",
                     scoring="dense", cuda_graph=graph)
        train(cfg, console=quiet())
        out[graph] = load_checkpoint(tmp_path / graph / "checkpoints" / "last.pt")["model"]
    for k, v in out["off"].items():
        if v.is_floating_point():
            torch.testing.assert_close(out["on"][k], v, rtol=1e-3, atol=1e-4)
