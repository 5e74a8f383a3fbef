"""The streaming loader: every pair once per epoch (across ranks), reproducible order, dedupe,
producer errors surfacing in the consumer, and prompt shutdown."""

import shutil
import threading

import numpy as np
import pytest
import torch

from cache.store import CacheStore
from clcrec.data.stream import ChunkStream, DevicePrefetcher
from common.errors import CacheError


def generation_rows(gen) -> np.ndarray:
    """Every row of the generation as (user, pos, neg...), read the obvious way."""
    parts = []
    for c in range(gen.num_chunks):
        u, p, n = gen.read_chunk(c)
        parts.append(np.column_stack([u.astype(np.int64), p.astype(np.int64), n.astype(np.int64)]))
    return np.concatenate(parts)


def served_rows(batches) -> np.ndarray:
    return np.concatenate([np.column_stack([b.users.numpy(), b.items.numpy()]) for b in batches])


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def stream(gen, num_items, **kw):
    args = dict(num_items=num_items, seed=0, epoch=0, batch_size=64)
    args.update(kw)
    return ChunkStream(gen, **args)


@pytest.fixture
def gen(tiny_cache):
    return CacheStore(tiny_cache).open_generation(0)


@pytest.mark.parametrize("world,batch_size", [(1, 64), (1, 1), (2, 38), (3, 99), (4, 4)])
def test_every_pair_served_exactly_once_per_epoch_across_ranks(gen, tiny_dataset, world, batch_size):
    from pipeline.dataset import load_dataset

    ds = load_dataset(tiny_dataset)
    assert gen.num_chunks >= 4 and gen.num_rows % gen.chunk_rows != 0  # ragged tail exercised
    expected = sort_rows(generation_rows(gen))
    single = list(stream(gen, ds.num_items, batch_size=batch_size, epoch=3))
    assert all(b.size == batch_size for b in single[:-1]) and 0 < single[-1].size <= batch_size
    per_rank = [list(stream(gen, ds.num_items, batch_size=batch_size, rank=r, world=world, epoch=3))
                for r in range(world)]
    # every rank runs the same number of steps (DDP needs no Join) ...
    assert {len(bs) for bs in per_rank} == {len(single)}
    # ... and step i of all ranks together is exactly the 1-process batch i, split in rank order
    for i, whole in enumerate(single):
        parts = [bs[i] for bs in per_rank]
        joined = np.concatenate([served_rows([p]) for p in parts])
        np.testing.assert_array_equal(joined, served_rows([whole]))
        assert [p.offset for p in parts] == list(np.cumsum([0] + [p.size for p in parts[:-1]]))
        assert all(p.global_size == whole.size for p in parts)
    served = np.concatenate([served_rows(bs) for bs in per_rank])
    np.testing.assert_array_equal(sort_rows(served), expected)
    # and the positives are exactly the training pairs
    np.testing.assert_array_equal(sort_rows(served[:, :2]), sort_rows(ds.train.astype(np.int64)))


def test_a_rank_with_an_empty_share_of_the_last_batch_still_steps(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    world = 4
    batch_size = 4 * ((gen.num_rows - 1) // 4)  # the last global batch has exactly 1 row
    assert gen.num_rows - batch_size == 1 or gen.num_rows % batch_size == 1
    per_rank = [list(stream(gen, n, batch_size=batch_size, rank=r, world=world)) for r in range(world)]
    assert len({len(bs) for bs in per_rank}) == 1
    last_sizes = [bs[-1].size for bs in per_rank]
    assert sorted(last_sizes) == [0, 0, 0, 1]


def test_order_is_reproducible_per_epoch_and_differs_between_epochs(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    a = served_rows(stream(gen, n, epoch=1))
    b = served_rows(stream(gen, n, epoch=1))
    c = served_rows(stream(gen, n, epoch=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(sort_rows(a), sort_rows(c))  # same rows, new order


def test_dedupe_reconstructs_every_slot(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    for b in stream(gen, n, batch_size=50):
        assert b.uniq.unique().numel() == b.uniq.numel()  # distinct
        torch.testing.assert_close(b.uniq[b.inverse], b.items)
        # first-appearance order, so the result does not depend on a sort implementation
        flat = b.items.flatten().tolist()
        assert b.uniq.tolist() == list(dict.fromkeys(flat))


def test_without_dedupe_batches_carry_no_index(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    b = next(iter(stream(gen, n, dedupe=False)))
    assert b.uniq is None and b.inverse is None and b.items.dtype == torch.int64


@pytest.mark.parametrize("assemble, readers", [("host", 1), ("host", 3), ("device", 3)])
def test_corrupt_chunk_surfaces_in_the_consumer_with_its_cause(tiny_cache, tiny_dataset, tmp_path, assemble, readers):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    neg_dir = cache / "gen-000000" / "neg" / "c"
    shutil.copyfile(neg_dir / "2" / "0", neg_dir / "1" / "0")  # a valid chunk in the wrong place
    gen = CacheStore(cache).open_generation(0)
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    # a UserError reaches the consumer as itself, so the CLI prints its message, no traceback
    with pytest.raises(CacheError, match="generation 0, chunk 1"):
        for _ in stream(gen, n, assemble=assemble, readers=readers, dedupe=assemble == "host"):
            pass


@pytest.mark.parametrize("assemble, readers", [("host", 1), ("host", 3), ("device", 3)])
def test_breaking_out_early_stops_the_producer(gen, tiny_dataset, assemble, readers):
    """...and its reader threads: nothing is left running."""
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    def ours():  # the stream's own threads (zarr's I/O pool may grow meanwhile: not ours to judge)
        return [t.name for t in threading.enumerate() if t.name.startswith(("chunk-producer", "chunk-reader"))]

    assert ours() == []
    s = stream(gen, n, batch_size=8, prefetch=1, assemble=assemble, readers=readers, dedupe=assemble == "host")
    for i, _ in enumerate(s):
        if i == 2:
            assert ours()  # they ran
            break
    s.close()
    assert ours() == []


def test_device_prefetcher_passes_batches_through_in_order(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    direct = served_rows(stream(gen, n))
    via = served_rows(DevicePrefetcher(stream(gen, n), torch.device("cpu")))
    np.testing.assert_array_equal(direct, via)


def batch_record(b):
    return (b.users.tolist(), b.items.tolist(), b.offset, b.global_size, b.row0)


@pytest.mark.parametrize("world,batch_size", [(1, 64), (1, 7), (3, 99), (4, 4)])
def test_device_assembly_serves_the_same_batches_as_host_assembly(gen, tiny_dataset, world, batch_size):
    """The GPU path (chunks shipped as stored, permuted and cut on the device) runs here on CPU
    tensors: batch for batch, rank for rank, identical to the host path, with several readers."""
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    assert gen.item_dtype == np.uint16  # the compact id path (int16 bits widened on the device)
    for rank in range(world):
        host = [batch_record(b) for b in stream(gen, n, batch_size=batch_size, rank=rank, world=world, epoch=2, dedupe=False)]
        dev = [batch_record(b) for b in stream(gen, n, batch_size=batch_size, rank=rank, world=world, epoch=2,
                                               dedupe=False, assemble="device", readers=3)]
        assert dev == host


def test_row0_is_each_slice_position_in_the_epoch(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    starts = [b.row0 for r in range(3) for b in stream(gen, n, batch_size=30, rank=r, world=3, dedupe=False)]
    sizes = [b.size for r in range(3) for b in stream(gen, n, batch_size=30, rank=r, world=3, dedupe=False)]
    pairs = sorted(zip(starts, sizes))
    assert [s for s, _ in pairs] == list(np.cumsum([0] + [z for _, z in pairs[:-1]]))  # a partition of 0..N-1
    assert sum(sizes) == gen.num_rows


def test_device_assembly_refuses_dedupe(gen, tiny_dataset):
    from common.errors import UserError

    with pytest.raises(UserError, match="does not deduplicate"):
        stream(gen, 10, assemble="device", dedupe=True)


@pytest.mark.parametrize("num_items, dtype", [(40_000, np.uint16), (70_000, np.int32)])
def test_device_assembly_widens_ids_past_int16_and_int32_ids_exactly(tmp_path, num_items, dtype):
    """Item ids above 32,767 travel as the int16 bits of uint16 (and must not come back
    sign-extended), and catalogues past 65,535 travel as int32: both serve exactly the host
    path's batches, and every id is the one stored."""
    from cache.build import build_generation
    from cache.store import NegativeConfig
    from tests.support import make_dataset

    data = make_dataset(tmp_path / "d", num_users=30, num_items=num_items, pairs=600)
    build_generation(data, tmp_path / "c", 0, NegativeConfig(num_neg=8, chunk_rows=128), progress=False)
    g = CacheStore(tmp_path / "c").open_generation(0)
    assert g.item_dtype == dtype
    host = [batch_record(b) for b in stream(g, num_items, batch_size=50, dedupe=False)]
    dev = [batch_record(b) for b in stream(g, num_items, batch_size=50, dedupe=False, assemble="device")]
    assert dev == host
    served = served_rows(stream(g, num_items, batch_size=50, dedupe=False, assemble="device"))
    assert served[:, 1:].max() >= 32_768 and served[:, 1:].min() >= 0
    assert np.array_equal(sort_rows(served), sort_rows(generation_rows(g)))


def test_an_early_stop_drops_the_reads_not_yet_started(gen, tiny_dataset):
    """With several readers, stopping after the first chunk waits only for the reads already
    running: the queued ones are cancelled, not read (and decoded, and pinned) for nothing."""
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    assert gen.num_chunks >= 6
    gate, started = threading.Event(), []

    class Gated(ChunkStream):
        def _prepare(self, c, g0):
            started.append(c)
            if c != self.chunks[0]:
                gate.wait(10)  # every read but the first is still running when the consumer stops
            return super()._prepare(c, g0)

    s = Gated(gen, num_items=n, seed=0, epoch=0, batch_size=8, prefetch=1, readers=2)
    batches = iter(s)
    next(batches)
    threading.Timer(0.3, gate.set).start()  # let the running reads finish once close() is waiting
    s.close()
    # Chunks 0..3 were queued at the start and 4, 5 as 0 and 1 were taken; two reader threads
    # had started 0, 1 and 2. Nothing queued behind them may start after the stop.
    assert sorted(started) == sorted(s.chunks[:3].tolist()), started
