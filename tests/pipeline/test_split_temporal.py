"""The temporal split: after the cutoff is test, the latest part before it validation, items first
seen after it cold; timestamps travel with every split; the random split stays the default."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM, load_dataset
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_movielens import ingest_movielens
from pipeline.split_temporal import TemporalSplitConfig, split_temporal


def test_split_by_time_with_known_answer():
    # item 0 and 1 seen early, item 2 first in the validation period, item 3 only after the cutoff
    pairs = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0], [2, 2], [0, 2], [1, 3], [2, 3], [3, 1]])
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    split, notes = split_temporal(pairs, times, 4, TemporalSplitConfig("0.7", val_fraction=0.3))
    assert notes["cutoff_time"] == 8 and notes["val_start_time"] == 6
    assert split.train.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]
    assert split.val.tolist() == [[0, 2], [2, 2]]
    assert split.test.tolist() == [[1, 3], [2, 3], [3, 1]]
    assert split.item_status.tolist() == [WARM, WARM, COLD_VAL, COLD_TEST]
    assert notes["new_items_after_cutoff"] == 1 and notes["new_users_after_cutoff"] == 1  # user 3
    by_date, _ = split_temporal(pairs, times, 4, TemporalSplitConfig("1970-01-01T00:00:08", val_fraction=0.3))
    assert by_date.test.tolist() == split.test.tolist()


@pytest.mark.parametrize("cutoff", ["1.5", "0", "yesterday", "2001-13-01"])
def test_bad_cutoffs_are_named(cutoff):
    with pytest.raises(InputError, match="--cutoff"):
        TemporalSplitConfig(cutoff)


def test_ingest_keeps_timestamps_and_splits_in_time(ml100k_small, tmp_path):
    # ratings k = 0..8 at 881250940 + k; (10, 1) twice: its first time is kept
    ds = load_dataset(ingest_movielens(ml100k_small, tmp_path / "t", IngestConfig(split=TemporalSplitConfig("0.6", 0.0))))
    assert ds.meta["split"]["protocol"] == "temporal"
    rows = {(int(u), int(i)): int(t) for s in ("train", "val", "test") for (u, i), t in zip(ds.split(s), ds.times(s))}
    assert len(rows) == 8 and rows[(0, 0)] == 881250940  # users 10/20/30 -> 0/1/2, movie 1 -> 0
    cutoff = ds.meta["ingest"]["cutoff_time"]
    assert (ds.times("train") < cutoff).all() and (ds.times("test") >= cutoff).all() and len(ds.test)
    random = load_dataset(ingest_movielens(ml100k_small, tmp_path / "r"))  # the default: random cold items
    assert random.meta["split"]["protocol"] == "cold-items" and len(random.times("train")) == len(random.train)
    with pytest.raises(InputError, match="no interactions on one side"):
        ingest_movielens(ml100k_small, tmp_path / "x", IngestConfig(split=TemporalSplitConfig("2020-01-01")))
    assert not (tmp_path / "x").exists()


def test_options_that_do_not_go_together_are_named(tmp_path):
    from commands.data import _split_config
    from pipeline.ingest_common import assemble

    args = (0, 0.2, 0.5, 0.1, 0.1)
    with pytest.raises(InputError, match="needs --cutoff"):
        _split_config(*args, None, "temporal", None)
    with pytest.raises(InputError, match="--cutoff needs --split temporal"):
        _split_config(*args, None, "random", "0.8")
    with pytest.raises(InputError, match="--split must be random or temporal"):
        _split_config(*args, None, "time", "0.8")
    import polars as pl

    untimed = pl.DataFrame({"user": [1, 2], "item": [1, 2]})
    with pytest.raises(InputError, match="no timestamps, so it cannot be split in time"):
        assemble(tmp_path / "d", interactions=untimed, items=pl.DataFrame({"original_id": [1, 2]}),
                 features={"v": np.ones((2, 2), np.float32)}, config=IngestConfig(split=TemporalSplitConfig("0.5")),
                 source={}, label="t")
    assert not (tmp_path / "d").exists()
