"""CiteULike-a ingest on small files written here: the canonical directory, the hashed tag and
citation bags, user sampling, and the bad-input rules (one line naming the file, exit 1, nothing
written). The real release is only smoke-tested, and skipped where it is absent."""

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from pipeline.dataset import load_dataset
from pipeline.features import token_bucket
from pipeline.ingest_citeulike import hashed_bag, ingest_citeulike, read_id_lists
from pipeline.ingest_common import IngestConfig
from pipeline.split import SplitConfig
from tests.pipeline.test_cli_bad_input import assert_clean_failure

REAL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "citeulike-a"
# 5 users, 6 articles; article 5 is saved by nobody; (user 0, article 0) is listed twice.
USERS = ["4 0 1 2 0", "2 1 3", "3 0 3 4", "1 2", "2 2 4"]
ITEM_TAGS = ["2 0 1", "2 1 0", "1 2", "0", "3 2 3 3", "1 0"]
TAGS = ["Genomics", "machine-learning", "networks", "Graphs"]
CITATIONS = ["1 1", "1 0", "0", "2 0 1", "0", "0"]


def write_citeulike(d: Path, users=USERS, item_tags=ITEM_TAGS, tags=TAGS, citations=CITATIONS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, lines in (("users.dat", users), ("item-tag.dat", item_tags), ("tags.dat", tags),
                        ("citations.dat", citations)):
        if lines is not None:
            (d / name).write_text("\n".join(lines) + "\n")
    return d


def _config(**split):
    return IngestConfig(split=SplitConfig(seed=0, cold_fraction=0.4, **split), tag_dim=16)


def test_ingest_writes_the_canonical_directory(tmp_path):
    src = write_citeulike(tmp_path / "cu")
    ds = load_dataset(ingest_citeulike(src, tmp_path / "out", _config(), citation_dim=8))
    assert (ds.num_users, ds.num_items) == (5, 5)  # article 5 has no saves: dropped
    assert ds.meta["ingest"]["duplicates_dropped"] == 1
    assert len(ds.train) + len(ds.val) + len(ds.test) == 11
    assert ds.item_ids()["original_id"].to_list() == [0, 1, 2, 3, 4]
    assert [m["name"] for m in ds.meta["modalities"]] == ["tags", "citations"]
    tags, cites = np.asarray(ds.features["tags"]), np.asarray(ds.features["citations"])
    assert tags.shape == (5, 16) and cites.shape == (5, 8)
    # articles 0 and 1 have the same tag set in another order: identical rows
    np.testing.assert_array_equal(tags[0], tags[1])
    # article 3 has no tags: a zero row; the others are unit rows
    assert not tags[3].any()
    np.testing.assert_allclose(np.linalg.norm(tags[[0, 2, 4]], axis=1), 1.0, rtol=1e-6)
    # article 4: tags 2, 3, 3 -> counts 1 and 2 in the buckets of "networks" and "graphs" (lower-cased)
    b_net, b_gr = token_bucket("networks", 16), token_bucket("graphs", 16)
    expect = np.zeros(16)
    expect[b_net] += 1
    expect[b_gr] += 2
    np.testing.assert_allclose(tags[4], expect / np.linalg.norm(expect), rtol=1e-6)
    # citations: article 3 links 0 and 1 -> their buckets; article 2 links nothing
    expect = np.zeros(8)
    for a in (0, 1):
        expect[token_bucket(f"article:{a}", 8)] += 1
    np.testing.assert_allclose(cites[3], expect / np.linalg.norm(expect), rtol=1e-6)
    assert not cites[2].any()
    assert ds.meta["source"]["kind"] == "citeulike"


def test_citations_can_be_left_out_and_users_sampled(tmp_path):
    src = write_citeulike(tmp_path / "cu", citations=None)  # no citations.dat needed without the modality
    ds = load_dataset(ingest_citeulike(src, tmp_path / "a", _config(), citation_dim=0, max_users=3))
    assert [m["name"] for m in ds.meta["modalities"]] == ["tags"]
    assert ds.num_users == 3 and ds.meta["ingest"]["features"]["users_in_source"] == 5
    again = load_dataset(ingest_citeulike(src, tmp_path / "b", _config(), citation_dim=0, max_users=3))
    assert ds.user_ids()["original_id"].to_list() == again.user_ids()["original_id"].to_list()  # seeded


def test_hashed_bag_counts_and_normalises():
    out = hashed_bag([np.array([0, 1, 1]), np.zeros(0, dtype=np.int64)], np.array([2, 0]), 3)
    np.testing.assert_allclose(out, [[2 / 5**0.5, 0, 1 / 5**0.5], [0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize(
    "files, fragments",
    [
        (dict(users=["4 0 1 2"]), ["users.dat line 1 starts with the count 4 but lists 3 id(s)"]),
        (dict(users=["2 0 9"]), ["users.dat line 1 names id 9", "item-tag.dat has 6 lines"]),
        (dict(users=["2 0 x"]), ["users.dat line 1: 'x' is not an integer"]),
        (dict(item_tags=["1 0", "1 7"]), ["item-tag.dat line 2 names id 7", "tags.dat names only 4 tags"]),
        (dict(citations=["0"]), ["citations.dat has 1 lines but", "item-tag.dat has 6"]),
        (dict(users=[]), ["users.dat holds no lines"]),
    ],
)
def test_bad_input_names_the_file_and_the_fix(cli, tmp_path, files, fragments):
    src = write_citeulike(tmp_path / "cu", **files)
    out = tmp_path / "out"
    r = cli("ingest", "citeulike", src, out, "--cold-fraction", "0.4")
    assert_clean_failure(r, out, "error:", *fragments)


def test_missing_files_and_options(cli, tmp_path):
    src = write_citeulike(tmp_path / "cu", tags=None)
    out = tmp_path / "out"
    assert_clean_failure(cli("ingest", "citeulike", src, out), out, "tag names file", "tags.dat does not exist")
    assert_clean_failure(cli("ingest", "citeulike", tmp_path / "nope", out), out, "nope does not exist")
    src = write_citeulike(tmp_path / "cu2")
    assert_clean_failure(cli("ingest", "citeulike", src, out, "--tag-dim", "0", "--citation-dim", "0"), out,
                         "leave no content")
    with pytest.raises(InputError, match="--max-users must be an integer >= 0"):
        ingest_citeulike(src, out, _config(), max_users=-1)


def test_read_id_lists_keeps_inner_empty_lines_as_empty(tmp_path):
    p = tmp_path / "x.dat"
    p.write_text("1 3\n\n2 1 2\n\n\n")
    lists = read_id_lists(p, "file")
    assert [x.tolist() for x in lists] == [[3], [], [1, 2]]


@pytest.mark.skipif(not (REAL / "users.dat").exists(), reason=f"{REAL} is absent (research data, never committed)")
def test_real_citeulike_smoke(cli, tmp_path):
    out = tmp_path / "cu"
    r = cli("ingest", "citeulike", REAL, out, "--max-users", "300")
    assert r.returncode == 0, r.stderr
    ds = load_dataset(out)
    assert ds.num_users == 300 and ds.meta["ingest"]["features"]["users_in_source"] == 5551
    assert [m["name"] for m in ds.meta["modalities"]] == ["tags", "citations"]
    assert (ds.item_status != 0).sum() > 0 and len(ds.train) > 0
