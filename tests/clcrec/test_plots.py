"""clcrec.train.plots writes valid PNGs atomically, whatever keys the metric records lack."""

from __future__ import annotations

import math

import pytest

from clcrec.train.plots import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["loss.png", "val_metrics.png", "warm_vs_cold.png"]


def run_records(epochs=12):
    out = []
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "generation": (e - 1) // 4, "loss": 2.0 / e + 0.3, "loss_ui": 1.5 / e,
               "loss_re": 0.5 / e + 0.3, "samples_per_s": 52000 + 300 * (e % 3)}  # fmt: skip
        if e % 2 == 0:
            rise = 1 - math.exp(-e / 4)
            rec["val"] = {
                mode: {"recall@20": base * rise, "ndcg@20": 0.6 * base * rise}
                for mode, base in (("all", 0.2), ("warm", 0.25), ("cold", 0.12))
            }
        out.append(rec)
    return out


def assert_pngs(paths, out_dir):
    assert [p.name for p in paths] == NAMES
    for p in paths:
        assert p.parent == out_dir
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert sorted(x.name for x in out_dir.iterdir()) == sorted(NAMES)  # no temp files left behind


def test_plot_run_writes_three_pngs(tmp_path):
    out = tmp_path / "plots"
    assert_pngs(plot_run(run_records(), out, best_epoch=8), out)
    # Re-plotting replaces the files in place.
    assert_pngs(plot_run(run_records(5), out, k=20), out)


@pytest.mark.parametrize(
    "records",
    [
        [],
        [
            {},  # blank record
            {"epoch": 1, "val": None},
            {"epoch": 2, "val": {"cold": {}}, "generation": 0},  # partial validation
            {"epoch": 3, "loss": float("nan"), "val": {"warm": {"recall@10": 0.1}}},
            {"epoch": 4, "loss": "oops", "samples_per_s": None, "generation": None},
            {"epoch": 4, "loss": 0.9},  # a repeated epoch (resumed run): the later record wins
            7,  # not a record at all
        ],
    ],
    ids=["no-records", "missing-and-bad-keys"],
)
def test_plot_run_tolerates_missing_keys(tmp_path, records):
    assert_pngs(plot_run(records, tmp_path, k=10, best_epoch=3), tmp_path)
