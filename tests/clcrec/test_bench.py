"""`bench train` accounting: every timed loop counts exactly the steps it ran, and
`--compare-steps` times each form of the step the device allows (on CPU: eager and compiled)."""

from clcrec.bench.train import BenchTrainConfig, run_bench_train
from tests.support import NUM_NEG, quiet
from tests.trajectory import forced_aten_capability


def test_bench_train_counts_every_step_and_compares_the_step_forms(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bench builds its cache under ./caches
    bc = BenchTrainConfig(dataset=str(tiny_dataset), steps=6, rounds=2, warmup=2, batch_sizes=(64,),
                          num_neg=NUM_NEG, scoring="dense", compare_steps=True, workers=1)
    r = run_bench_train(bc, quiet())[64]
    assert r["streaming"]["samples"] == r["reference"]["samples"] == r["step_alone"]["samples"] == 6 * 64
    assert 0 <= r["streaming"]["wait_frac"] < 1 and r["streaming"]["gpu_busy"] is None
    forms = r["step_forms"]
    assert forms.pop("_base") == "dense, eager"
    assert sorted(forms) == ["dense, compiled", "dense, eager"]
    if forced_aten_capability() and "error" in forms["dense, compiled"]:
        # inductor's C++ code does not build under an emulated ATen capability (tests/trajectory.py):
        # the bench names the failure in the compiled form's row and times the rest
        forms.pop("dense, compiled")
    assert [f["samples"] for f in forms.values()] == [6 * 64] * len(forms)
    assert r["ratio"] == r["streaming"]["samples_per_s"] / r["reference"]["samples_per_s"]


def test_bench_json_holds_the_figures_and_the_machine(tiny_dataset, tmp_path):
    """`bench train|recommend --json`: every figure of the table, the options, and the machine."""
    import json
    import subprocess
    import sys

    from tests.support import REPO, cli_env

    for argv in (["bench", "train", "--dataset", tiny_dataset, "--steps", 4, "--rounds", 2, "--num-neg", NUM_NEG,
                  "--batch-size", 64, "--workers", 1, "--json", tmp_path / "train.json"],
                 ["bench", "recommend", "--dataset", tiny_dataset, "--k", 10, "--json", tmp_path / "recommend.json"]):
        proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, argv)], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "train.json").read_text())
    assert doc["bench"] == "train" and doc["config"]["steps"] == 4 and doc["config"]["batch_sizes"] == [64]
    assert {"cpu_model", "cpu_count", "torch", "cuda", "gpu"} <= set(doc["machine"])
    r = doc["results"]["by_batch_size"]["64"]
    for loop in ("step_alone", "streaming", "reference"):
        assert r[loop]["samples"] == 4 * 64 and r[loop]["samples_per_s"] > 0
    assert {"wait_frac", "gpu_busy"} <= set(r["streaming"]) and r["ratio"] > 0
    assert set(r["data"]) == {"streaming", "reference"} and "data_ratio" in r
    rec = json.loads((tmp_path / "recommend.json").read_text())["results"]
    assert rec["k"] == 10 and rec["rank_s"] > 0 and rec["rows"] == rec["users"] * 10
