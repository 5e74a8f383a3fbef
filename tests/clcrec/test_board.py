"""TensorBoard curves: every scalar of an epoch is in the run's event files, one point per epoch,
and a run resumed from an older checkpoint (a kill after the epoch's log, before its checkpoint)
continues the same curves without duplicates; --no-tensorboard writes none."""

from __future__ import annotations

import shutil

import pytest

from clcrec.train.trainer import train
from tests.support import config, quiet


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: {tag: [(step, value)]}, through its own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def purge_marks(run_dir) -> list[int]:
    """The steps of the writers' restart marks (SessionLog START), file by file in time order:
    what tells a reader to drop the points a resumed run replays."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    marks = []
    for path in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        marks += [e.step for e in EventFileLoader(str(path)).Load()
                  if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    return marks


def test_resumed_run_continues_the_curves_one_point_per_epoch(tiny_dataset, tiny_cache, tmp_path):
    run = tmp_path / "run"
    aside = tmp_path / "last-epoch1.pt"

    def keep_epoch_1(epoch, record, best):
        if epoch == 1:
            shutil.copy(run / "checkpoints" / "last.pt", aside)

    cfg = config(tiny_dataset, tiny_cache, run, epochs=3)
    train(cfg, console=quiet(), on_epoch=keep_epoch_1)
    first = scalars(run)
    expected = {"loss/loss", "speed/samples_per_s", "speed/data_wait_frac", "speed/generation_wait_s", "lr",
                "select/score", *(f"val/{m}/{k}@{n}" for m in ("all", "warm", "cold")
                                  for k in ("recall", "ndcg", "precision", "hit") for n in (10, 20, 50))}
    assert expected <= set(first), sorted(expected - set(first))
    assert all([s for s, _ in pts] == [0, 1, 2] for pts in first.values())
    assert first["lr"][0][1] == pytest.approx(cfg.l_r)  # stored as float32

    # A kill after epoch 2 was logged but before its checkpoint: the last checkpoint is epoch 1's.
    shutil.copy(aside, run / "checkpoints" / "last.pt")
    train(cfg.replace(epochs=4), resume=True, console=quiet())
    after = scalars(run)
    assert all([s for s, _ in pts] == [0, 1, 2, 3] for pts in after.values()), after["loss/loss"]
    assert purge_marks(run)[-1] == 2  # the resumed writer drops epoch 2's first points
    assert after["loss/loss"][:2] == first["loss/loss"][:2]  # the earlier points are kept as they were


def test_no_tensorboard_writes_no_event_files(tiny_dataset, tiny_cache, tmp_path):
    train(config(tiny_dataset, tiny_cache, tmp_path / "run", epochs=1, tensorboard=False), console=quiet())
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
