"""The trainer end to end on a tiny synthetic dataset: run directory contents, early stopping,
kill and resume (real subprocess, SIGKILL), divergence, refresh, and refusals."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clcrec.config import TrainConfig
from clcrec.rundir import load_checkpoint
from clcrec.train.trainer import Trainer, train
from common.errors import DatasetChangedError, TrainingDivergedError, UserError
from tests.support import NUM_NEG, config, quiet

REPO = Path(__file__).resolve().parents[2]


def test_run_directory_holds_config_metrics_checkpoints_results_and_plots(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=4, content_prior="off")  # as logged
    results = train(cfg, console=quiet())
    run = tmp_path / "run"
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["l_r"] == 0.01 and record["config"]["num_neg"] == NUM_NEG
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["generation"] == 0 and m["samples"] == 3701 for m in metrics)  # every pair, each epoch
    # the best epoch is the one with the highest selection score: validation cold Recall@20 of the
    # choosing share, cold rows centred (the held-back items and the served ranking are only logged)
    assert all(m["select_score"] == m["val_choose"]["cold"]["recall@20"] for m in metrics)
    best = max(metrics, key=lambda m: m["select_score"])
    assert results["best_epoch"] == best["epoch"]
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    saved = json.loads((run / "results.json").read_text())
    assert saved["val"]["cold"]["recall@20"] == pytest.approx(best["val"]["cold"]["recall@20"])
    assert set(saved["baselines"]["test"]) == {"content", "random", "oracle"}
    for png in ("loss.png", "val_metrics.png", "warm_vs_cold.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # training reduced the loss
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_early_stopping_stops_after_patience_epochs_without_improvement(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=30, patience=2, l_r=0.05)
    results = train(cfg, console=quiet())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [m["select_score"] for m in metrics]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert results["best_epoch"] == best
    assert len(metrics) == min(30, best + 1 + 2)  # stopped exactly `patience` epochs after the best


def run_cli(*args, **kw):
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_and_resumed_run_ends_with_the_same_metrics(tiny_dataset, tiny_cache, tmp_path):
    # 5 epochs of 116 steps: the kill lands after epoch 1's checkpoint, with 3 epochs still to run
    common = ["--dataset", tiny_dataset, "--cache", tiny_cache, "--num-neg", NUM_NEG, "--batch-size", 32,
              "--epochs", 5, "--patience", 10, "--l-r", 0.01, "--threads", 1]
    straight = run_cli("train", *common, "--run-dir", tmp_path / "straight")
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    run = tmp_path / "killed"
    proc = run_cli("train", *common, "--run-dir", run)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "results.json").exists()

    resumed = run_cli("train", "--resume", run)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in err
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["best_epoch"] == b["best_epoch"]
    assert a["test"] == b["test"] and a["val"] == b["val"]
    la = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in metrics.read_text().splitlines()]
    assert la == lb


def test_sigterm_stops_a_run_with_exit_143_and_a_message_and_it_resumes(tiny_dataset, tiny_cache, tmp_path):
    # what a scheduler's stop sends: the handler raises where the process is, writers clean up
    run = tmp_path / "run"
    proc = run_cli("train", "--dataset", tiny_dataset, "--cache", tiny_cache, "--num-neg", NUM_NEG, "--batch-size", 32,
                   "--epochs", 4, "--patience", 10, "--l-r", 0.01, "--threads", 1, "--run-dir", run)
    metrics, last = run / "metrics.jsonl", run / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not (run / "results.json").exists() and last.exists()
    resumed = run_cli("train", "--resume", run)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert len(metrics.read_text().splitlines()) == 4 and (run / "results.json").exists()


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=2)
    train(cfg, console=quiet())
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    digest = hashlib.sha256(best.read_bytes()).hexdigest()

    trainer = Trainer(cfg.replace(epochs=4), resume=True, console=quiet())
    trainer.model.temp_value = 1e-45  # scores overflow to inf: the loss becomes NaN at once
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at epoch 2, step 0.*best checkpoint .* is intact"):
        trainer.fit()
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_refresh_every_moves_to_new_generations_built_in_the_background(tiny_dataset, tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    cfg = config(tiny_dataset, cache, tmp_path / "run", epochs=5, refresh_every=2)
    train(cfg, console=quiet())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["generation"] for m in metrics] == [0, 0, 1, 1, 2]
    assert all(m["generation_wait_s"] >= 0 for m in metrics)
    from cache.store import CacheStore

    assert CacheStore(cache).published() == [0, 1, 2]  # built ahead, but never past the last epoch


def test_generations_are_built_up_to_two_ahead_within_the_run():
    from clcrec.train.generations import upcoming_generations

    every1 = TrainConfig(epochs=6, refresh_every=1)
    assert upcoming_generations(every1, 0, 2) == [1, 2]
    assert upcoming_generations(every1, 4, 2) == [5]
    assert upcoming_generations(every1, 5, 2) == []
    every3 = TrainConfig(epochs=10, refresh_every=3)
    assert upcoming_generations(every3, 0, 2) == [1, 2] and upcoming_generations(every3, 7, 2) == [3]
    assert upcoming_generations(TrainConfig(epochs=10), 0, 2) == []  # refresh off: generation 0 only


def test_cache_of_another_dataset_is_refused(tiny_dataset, tmp_path):
    from cache.build import build_generation
    from cache.store import NegativeConfig
    from pipeline.synthetic import SynthConfig, write_synthetic

    other = tmp_path / "other"
    write_synthetic(other, SynthConfig(scale="tiny", seed=1))
    cache = tmp_path / "cache"
    build_generation(other, cache, 0, NegativeConfig(num_neg=NUM_NEG), progress=False)
    with pytest.raises(DatasetChangedError, match="built from another dataset.*rebuild"):
        Trainer(config(tiny_dataset, cache, tmp_path / "run"), console=quiet())


def test_resume_refuses_a_changed_config_and_an_existing_run_dir(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=1)
    train(cfg, console=quiet())
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        Trainer(cfg, console=quiet()).fit()
    with pytest.raises(UserError, match=r"config differs.*l_r: 0.01 -> 0.5"):
        Trainer(cfg.replace(l_r=0.5, epochs=2), resume=True, console=quiet()).fit()


def test_num_neg_must_match_the_cache(tiny_dataset, tiny_cache, tmp_path):
    with pytest.raises(UserError, match=f"holds {NUM_NEG} negatives per pair but the run asks for 128; pass --num-neg {NUM_NEG}"):
        Trainer(config(tiny_dataset, tiny_cache, tmp_path / "run", num_neg=128), console=quiet())


def test_training_does_not_depend_on_the_thread_count(tiny_dataset, tiny_cache, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2):
            cfg = config(tiny_dataset, tiny_cache, tmp_path / f"t{threads}", epochs=2, threads=threads)
            results = train(cfg, console=quiet())
            losses = [json.loads(x)["loss"] for x in (tmp_path / f"t{threads}" / "metrics.jsonl").read_text().splitlines()]
            runs[threads] = (losses, results["test"])
        assert runs[1] == runs[2]
    finally:
        torch.set_num_threads(before)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(tiny_dataset, tiny_cache, tmp_path):
    cfg = config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=2)
    killed = Trainer(cfg, console=quiet())
    killed.setup_run_dir()  # config.json written, no checkpoint: a kill here
    killed.run_lock.release()  # as the kernel does for a killed trainer
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    results = train(cfg, resume=True, console=quiet())
    assert [m["epoch"] for m in (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())] == [0, 1]
    assert results["best_epoch"] in (0, 1)


def test_options_given_with_resume_apply_or_are_refused(tiny_dataset, tiny_cache, tmp_path):
    run = tmp_path / "run"
    train(config(tiny_dataset, tiny_cache, run, epochs=1), console=quiet())
    refused = run_cli("train", "--resume", run, "--l-r", 0.5)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "cannot resume: the config differs" in err and "l_r: 0.01 -> 0.5" in err
    allowed = run_cli("train", "--resume", run, "--epochs", 2, "--patience", 7)
    _, err = allowed.communicate(timeout=120)
    assert allowed.returncode == 0, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["patience"] == 7


def test_a_fp32_run_resumes_under_fp16_with_a_fresh_grad_scaler(tiny_dataset, tiny_cache, tmp_path):
    """A disabled scaler saves {}; an enabled one must not try to load it (torch raises)."""
    run = tmp_path / "run"
    train(config(tiny_dataset, tiny_cache, run, epochs=1, amp="fp32"), console=quiet())
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["scaler"] == {} and set(ck["rng"]) == {"torch"}  # no per-GPU RNG states to mismatch
    train(config(tiny_dataset, tiny_cache, run, epochs=2, amp="fp16"), resume=True, console=quiet())
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and ck["scaler"]["scale"] > 0  # the second epoch ran under a live scaler


@pytest.mark.parametrize("field,value,message", [
    ("log_every", 0, "--log-every must be an integer >= 1, got 0"),
    ("eval_block", 0, "--eval-block must be an integer >= 1"),
    ("dim_E", 10**10, "--dim-e must be an integer <= 8192, got 10000000000"),  # bounded: no 600 GiB allocation
    ("epochs", 10**12, "--epochs must be an integer <= 100000"),  # bounded: no endless planning loop
    ("select_k", 5, "--select-k 5 must be one of ks"),
    ("amp", "fp8", "amp must be one of"),
])
def test_bad_config_values_are_refused_with_a_message(tiny_dataset, tiny_cache, tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        config(tiny_dataset, tiny_cache, tmp_path / "run", **{field: value})


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("encode,scoring", [("unique", "gather"), ("slots", "gather"), ("all", "gather"), ("auto", "dense")])
def test_cuda_fp32_training_matches_cpu(tiny_dataset, tiny_cache, tmp_path, encode, scoring):
    """The CUDA paths (host or device batch assembly, gather or dense scoring, eager or CUDA
    graph) train the same model as the CPU path: same batches, and the same hybrid draws (a
    counter hash with the same bits on every device), fp32 on both; only rounding differs."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for device in ("cpu", "cuda"):
        cfg = config(tiny_dataset, tiny_cache, tmp_path / device, epochs=2, device=device, amp="fp32",
                     encode=encode if device == "cuda" or encode != "auto" else "unique", scoring=scoring)
        results = train(cfg, console=quiet())
        metrics = [json.loads(x) for x in (tmp_path / device / "metrics.jsonl").read_text().splitlines()]
        out[device] = ([m["samples"] for m in metrics], [m["loss"] for m in metrics], results)
    assert out["cpu"][0] == out["cuda"][0]  # every pair served once per epoch on both
    assert out["cuda"][1] == pytest.approx(out["cpu"][1], rel=1e-3)
    for mode in ("all", "warm", "cold"):
        assert out["cuda"][2]["test"][mode]["recall@20"] == pytest.approx(out["cpu"][2]["test"][mode]["recall@20"], abs=0.02)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_run_resumes_and_ends_like_an_uninterrupted_run(tiny_dataset, tiny_cache, tmp_path):
    full = train(config(tiny_dataset, tiny_cache, tmp_path / "full", epochs=3, device="cuda"), console=quiet())
    train(config(tiny_dataset, tiny_cache, tmp_path / "part", epochs=2, device="cuda"), console=quiet())
    resumed = train(config(tiny_dataset, tiny_cache, tmp_path / "part", epochs=3, device="cuda"), resume=True, console=quiet())
    # CUDA's scatter-adds use atomics, so bits differ run to run: compare to within rounding.
    losses = {name: [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("full", "part")}
    assert losses["part"] == pytest.approx(losses["full"], rel=1e-3)
    for mode in ("all", "warm", "cold"):
        assert resumed["test"][mode]["recall@20"] == pytest.approx(full["test"][mode]["recall@20"], abs=0.02)


def test_a_run_killed_before_its_first_selectable_epoch_can_be_evaluated(tiny_dataset, tiny_cache, tmp_path, monkeypatch):
    """Averaged weights are selectable from epoch 9 on (selection.first_selectable); a run killed
    earlier still has a best.pt, marked provisional, which evaluate uses and names, and which the
    first selectable epoch replaces."""
    from clcrec.evaluation.report import evaluate_run
    from clcrec.train.selection import first_selectable

    run = tmp_path / "run"
    cfg = config(tiny_dataset, tiny_cache, run, epochs=20, eval_ema=0.9)
    assert first_selectable(cfg.eval_ema, cfg.epochs) == 9
    real = Trainer.end_epoch

    def end_then_die(self, epoch, generation, record):
        stop = real(self, epoch, generation, record)
        if epoch == 1:
            raise KeyboardInterrupt  # killed after two epochs
        return stop

    monkeypatch.setattr(Trainer, "end_epoch", end_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, console=quiet())
    monkeypatch.undo()
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ck["provisional"] is True and ck["epoch"] == 1 and ck["best_epoch"] == -1
    notes = []
    res = evaluate_run(run, notes=notes)
    assert 0 <= res["test"]["cold"]["recall@20"] <= 1
    assert len(notes) == 1 and "provisional: epoch 1" in notes[0] and "--resume" in notes[0]
    results = train(cfg.replace(epochs=10), resume=True, console=quiet())  # epoch 9: the first selectable
    assert results["best_epoch"] == 9 and "provisional" not in load_checkpoint(run / "checkpoints" / "best.pt")
