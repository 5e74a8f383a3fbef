"""Ingest of the reference code's .npy layout (pipeline/ingest_refnpy.py) on a layout built here."""

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM, load_dataset
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_refnpy import infer_num_users, ingest_refnpy

PICKLE_OK = IngestConfig(allow_pickle=True)


def pairs(a):
    return sorted(map(tuple, np.asarray(a).tolist()))


def test_reference_layout_keeps_its_split(ref_layout, tmp_path):
    src, exp = ref_layout
    ds = load_dataset(ingest_refnpy(src, tmp_path / "out", PICKLE_OK))
    assert ds.num_users == 4 and ds.num_items == 6  # ids 4..9 -> items 0..5
    # train (0,4) appears twice: dropped once
    assert pairs(ds.train) == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (3, 0), (3, 2)]
    assert pairs(ds.val) == [(0, 2), (1, 4), (2, 0), (3, 4)]
    assert pairs(ds.test) == [(0, 5), (2, 5), (3, 1)]
    # item 8 -> 4 cold-val, 9 -> 5 cold-test, 7 -> 3 cold without interactions -> cold-test
    assert ds.item_status.tolist() == [WARM, WARM, WARM, COLD_TEST, COLD_VAL, COLD_TEST]
    np.testing.assert_array_equal(ds.features["v"], exp["feat_v"])
    assert set(ds.features) == {"v", "t"}
    ing = ds.meta["ingest"]
    assert ing["duplicates_dropped"] == 1 and ing["cold_items_without_interactions"] == 1
    assert ds.item_ids()["original_id"].to_list() == [4, 5, 6, 7, 8, 9]
    assert ds.meta["split"]["protocol"] == "reference"


def test_pickle_refused_without_flag(ref_layout, tmp_path):
    src, _ = ref_layout
    with pytest.raises(InputError, match=r"val_full.npy is a pickled object array.*runs code.*--allow-pickle"):
        ingest_refnpy(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_union_of_warm_and_cold_files_when_full_absent(ref_layout, tmp_path):
    src, _ = ref_layout
    (src / "val_full.npy").unlink()
    (src / "test_full.npy").unlink()
    (src / "cold_set.npy").unlink()  # cold items then come from val_cold / test_cold
    ds = load_dataset(ingest_refnpy(src, tmp_path / "out", PICKLE_OK))
    assert pairs(ds.val) == [(0, 2), (1, 4), (2, 0), (3, 4)]
    # without cold_set item 7 is not cold: it is a warm item without interactions
    assert ds.item_status.tolist() == [WARM, WARM, WARM, WARM, COLD_VAL, COLD_TEST]


def test_infer_num_users():
    assert infer_num_users(np.array([4, 9, 6]), max_user=3, num_item=6, given=None) == 4
    with pytest.raises(InputError, match="cannot infer num_user.*pass --num-users"):
        infer_num_users(np.array([5, 9]), max_user=3, num_item=6, given=None)
    assert infer_num_users(np.array([5, 9]), max_user=3, num_item=6, given=4) == 4
    with pytest.raises(InputError, match="user id 4 is not below num_user=4"):
        infer_num_users(np.array([4, 9]), max_user=4, num_item=6, given=None)
    with pytest.raises(InputError, match=r"item ids 4..10 fall outside"):
        infer_num_users(np.array([4, 10]), max_user=3, num_item=6, given=4)


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda d: np.save(d / "feat_t.npy", np.ones((5, 2))), "same number of rows"),
        (lambda d: np.save(d / "feat_v.npy", np.full((6, 3), np.nan)), r"feat_v.npy\) has 18 NaN/inf"),
        (lambda d: np.save(d / "train.npy", np.array([[0, 4], [1, 10]])), "fall outside|cannot infer"),
        (lambda d: np.save(d / "train.npy", np.array([[0, 4], [1, 8]])), "interactions with cold-set items"),
        (lambda d: np.save(d / "train.npy", np.array([[0, 4.5]])), "must hold integer ids"),
        (lambda d: np.save(d / "train.npy", np.array([[-1, 4]])), "negative ids"),
        (lambda d: (d / "train.npy").unlink(), "lacks train.npy"),
        (lambda d: [(d / f"feat_{m}.npy").unlink() for m in "vt"], "no feat_v.npy"),
    ],
)
def test_bad_reference_layouts(ref_layout, tmp_path, mutate, msg):
    src, _ = ref_layout
    mutate(src)
    with pytest.raises(InputError, match=msg):
        ingest_refnpy(src, tmp_path / "out", PICKLE_OK)
    assert not (tmp_path / "out").exists()


def test_cold_set_saved_as_python_set(ref_layout, tmp_path):
    src, _ = ref_layout
    np.save(src / "cold_set.npy", np.array({9, 8, 7}, dtype=object), allow_pickle=True)
    ds = load_dataset(ingest_refnpy(src, tmp_path / "out", PICKLE_OK))
    assert ds.item_status.tolist() == [WARM, WARM, WARM, COLD_TEST, COLD_VAL, COLD_TEST]
