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
