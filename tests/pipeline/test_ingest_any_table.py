"""Ingest of any interactions table with per-modality feature files (pipeline/ingest_table.py)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from common.errors import InputError
from pipeline.dataset import WARM, load_dataset
from pipeline.ingest_common import IngestConfig
from pipeline.ingest_table import ingest_table, parse_feature_spec
from pipeline.split import SplitConfig

NO_COLD = SplitConfig(cold_fraction=0.0, val_fraction=0.0, test_fraction=0.0)
# items 100, 200, 300 interacted; 400 only in the feature files; (7, 100) duplicated
ROWS = [(7, 100), (7, 200), (9, 300), (9, 100), (8, 200), (7, 100)]


def write_inputs(d: Path) -> dict:
    d.mkdir(exist_ok=True)
    (d / "inter.csv").write_text("uid,iid,score\n" + "".join(f"{u},{i},1.0\n" for u, i in ROWS))
    pl.DataFrame({"uid": [u for u, _ in ROWS], "iid": [i for _, i in ROWS]}).write_parquet(d / "inter.parquet")
    ids = [400, 300, 200, 100]  # deliberately not sorted
    img = np.array([[4, 4], [3, 3], [2, 2], [1, 1]], dtype=np.float64)
    np.save(d / "img.npy", img)
    (d / "img_ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    pl.DataFrame({"iid": [100, 300, 200], "vec": [[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.0, 0.0, 0.0]]}).write_parquet(d / "txt.parquet")
    pl.DataFrame({"iid": [200, 100, 300], "a": [2.0, 1.0, 3.0], "b": [20, 10, 30]}).write_parquet(d / "cols.parquet")
    return {"img": f"img={d / 'img.npy'}:{d / 'img_ids.txt'}", "txt": f"txt={d / 'txt.parquet'}", "cols": f"cols={d / 'cols.parquet'}"}


def config(specs, **kw):
    return IngestConfig(
        split=kw.pop("split", NO_COLD), user_col="uid", item_col="iid",
        features=tuple(parse_feature_spec(s) for s in specs), **kw,
    )


@pytest.mark.parametrize("table", ["inter.csv", "inter.parquet"])
def test_table_with_three_feature_kinds(tmp_path, table):
    specs = write_inputs(tmp_path / "in")
    ds = load_dataset(ingest_table(tmp_path / "in" / table, tmp_path / "out", config(specs.values())))
    assert ds.user_ids()["original_id"].to_list() == [7, 8, 9]
    assert ds.item_ids()["original_id"].to_list() == [100, 200, 300]
    assert sorted(map(tuple, ds.train.tolist())) == [(0, 0), (0, 1), (1, 1), (2, 0), (2, 2)]
    np.testing.assert_array_equal(ds.features["img"], [[1, 1], [2, 2], [3, 3]])  # aligned by id
    np.testing.assert_array_equal(ds.features["txt"], [[1, 0, 0], [2, 0, 0], [3, 0, 0]])
    np.testing.assert_array_equal(ds.features["cols"], [[1, 10], [2, 20], [3, 30]])
    ing = ds.meta["ingest"]
    assert (ing["rows_read"], ing["duplicates_dropped"], ing["items_without_interactions_dropped"]) == (6, 1, 1)
    assert ds.meta["source"]["user_col"] == "uid"


def test_cold_item_list_and_fingerprint(tmp_path):
    specs = write_inputs(tmp_path / "in")
    (tmp_path / "cold.txt").write_text("300\n")
    cfg = config([specs["img"]], split=SplitConfig(cold_items_file=tmp_path / "cold.txt", val_fraction=0, test_fraction=0))
    ds = load_dataset(ingest_table(tmp_path / "in" / "inter.csv", tmp_path / "a", cfg))
    assert ds.item_status.tolist() == [WARM, WARM, 2]  # one cold item, share 0.5 rounds to 0 in val
    assert sorted(map(tuple, ds.test.tolist())) == [(2, 2)]
    assert ds.meta["split"]["cold_items_file"].endswith("cold.txt")
    # fingerprint: same input, same fingerprint; a changed feature value or interaction changes it
    same = load_dataset(ingest_table(tmp_path / "in" / "inter.csv", tmp_path / "b", cfg))
    assert same.fingerprint == ds.fingerprint
    np.save(tmp_path / "in" / "img.npy", np.array([[4, 4], [3, 3], [2, 2], [1, 1.5]]))
    changed = load_dataset(ingest_table(tmp_path / "in" / "inter.csv", tmp_path / "c", cfg))
    assert changed.fingerprint != ds.fingerprint
    with open(tmp_path / "in" / "inter.csv", "a") as f:
        f.write("8,100,1.0\n")
    more = load_dataset(ingest_table(tmp_path / "in" / "inter.csv", tmp_path / "d", cfg))
    assert more.fingerprint not in (ds.fingerprint, changed.fingerprint)


def _write(path, text):
    path.write_text(text)


@pytest.mark.parametrize(
    "mutate, specs_key, msg",
    [
        (lambda d: _write(d / "img_ids.txt", "300\n200\n"), "img", r"img.npy has shape \(4, 2\) but .*img_ids.txt lists 2 ids"),
        (lambda d: _write(d / "img_ids.txt", "400\n300\n200\n999\n"), "img", r"img.npy lacks 1 item\(s\) that have interactions, e.g. item 100"),
        (lambda d: np.save(d / "img.npy", np.array([[4, 4], [3, np.inf], [2, 2], [1, 1]])), "img", r"img.npy\) has 1 NaN/inf"),
        (lambda d: pl.DataFrame({"iid": [100, 200], "vec": [[1.0], [2.0]]}).write_parquet(d / "txt.parquet"), "txt", r"txt.parquet lacks 1 item\(s\).*e.g. item 300"),
        (lambda d: pl.DataFrame({"iid": [100, 200, 300], "name": ["a", "b", "c"]}).write_parquet(d / "cols.parquet"), "cols", "non-numeric: \\['name'\\]"),
        (lambda d: _write(d / "inter.csv", "uid,iid\n7,100\n7,abc\n"), "img", r"inter.csv column 'iid' must hold integer ids; found 'abc'"),
        (lambda d: _write(d / "inter.csv", "uid,iid\n7,100\n-3,200\n"), "img", r"column 'uid' has negative ids, e.g. -3"),
        (lambda d: _write(d / "inter.csv", "user,iid\n7,100\n"), "img", r"inter.csv has no column 'uid'; its columns are \['user', 'iid'\]"),
        (lambda d: _write(d / "inter.csv", ""), "img", r"interactions file .*inter.csv is empty"),
        (lambda d: _write(d / "inter.csv", "uid,iid\n"), "img", r"inter.csv has no rows"),
        (lambda d: (d / "img.npy").unlink(), "img", r"feature file for 'img' .*img.npy does not exist"),
    ],
)
def test_bad_table_inputs(tmp_path, mutate, specs_key, msg):
    specs = write_inputs(tmp_path / "in")
    mutate(tmp_path / "in")
    with pytest.raises(InputError, match=msg):
        ingest_table(tmp_path / "in" / "inter.csv", tmp_path / "out", config([specs[specs_key]]))
    assert not (tmp_path / "out").exists()


def test_feature_spec_parsing(tmp_path):
    s = parse_feature_spec("img=a/b.npy:a/ids.txt")
    assert (s.name, str(s.path), str(s.ids)) == ("img", "a/b.npy", "a/ids.txt")
    assert parse_feature_spec("t=x.parquet").ids is None
    with pytest.raises(InputError, match="needs its item-id order file"):
        parse_feature_spec("img=a/b.npy")
    with pytest.raises(InputError, match="use NAME=FEAT.parquet"):
        parse_feature_spec("just-a-path.parquet")
