"""The streaming loader: every pair once per epoch (across ranks), reproducible order, dedupe,
producer errors surfacing in the consumer, and prompt shutdown."""

import shutil
import threading

import numpy as np
import pytest
import torch

from cache.store import CacheStore
from clcrec.loader import ChunkStream, DevicePrefetcher, rank_chunks
from pipeline.errors import CacheError


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


@pytest.mark.parametrize("world,batch_size", [(1, 64), (1, 1), (2, 37), (3, 100)])
def test_every_pair_served_exactly_once_per_epoch_across_ranks(gen, tiny_dataset, world, batch_size):
    from pipeline.dataset import load_dataset

    ds = load_dataset(tiny_dataset)
    assert gen.num_chunks >= 4 and gen.num_rows % gen.chunk_rows != 0  # ragged tail exercised
    expected = sort_rows(generation_rows(gen))
    served, chunks_seen = [], []
    for rank in range(world):
        batches = list(stream(gen, ds.num_items, batch_size=batch_size, rank=rank, world=world, epoch=3))
        sizes = [b.size for b in batches]
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
        served.append(served_rows(batches))
        chunks_seen.extend(rank_chunks(gen.num_chunks, 0, 3, rank, world).tolist())
    assert sorted(chunks_seen) == list(range(gen.num_chunks))  # disjoint shares covering all
    np.testing.assert_array_equal(sort_rows(np.concatenate(served)), expected)
    # and the positives are exactly the training pairs
    pairs = np.concatenate(served)[:, :2]
    np.testing.assert_array_equal(sort_rows(pairs), sort_rows(ds.train.astype(np.int64)))


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


def test_corrupt_chunk_surfaces_in_the_consumer_with_its_cause(tiny_cache, tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    neg_dir = cache / "gen-000000" / "neg" / "c"
    shutil.copyfile(neg_dir / "2" / "0", neg_dir / "1" / "0")  # a valid chunk in the wrong place
    gen = CacheStore(cache).open_generation(0)
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    with pytest.raises(RuntimeError, match="negative-cache reader failed") as info:
        for _ in stream(gen, n):
            pass
    assert isinstance(info.value.__cause__, CacheError)
    assert "generation 0, chunk 1" in str(info.value.__cause__)


def test_breaking_out_early_stops_the_producer(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    before = threading.active_count()
    s = stream(gen, n, batch_size=8, prefetch=1)
    for i, _ in enumerate(s):
        if i == 2:
            break
    s.close()
    assert threading.active_count() == before


def test_device_prefetcher_passes_batches_through_in_order(gen, tiny_dataset):
    n = int(np.load(tiny_dataset / "item_status.npy").shape[0])
    direct = served_rows(stream(gen, n))
    via = served_rows(DevicePrefetcher(stream(gen, n), torch.device("cpu")))
    np.testing.assert_array_equal(direct, via)
