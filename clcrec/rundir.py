"""Checkpoints and the run directory.

    RUN_DIR/
      config.json            the full TrainConfig plus dataset fingerprint and cache config
      config.toml            the same TrainConfig as `train --config` reads it (run_dir left out)
      events.out.tfevents.*  TensorBoard curves, one point per epoch (clcrec/train/board.py)
      metrics.jsonl          one JSON record per finished epoch
      checkpoints/last.pt    model, optimizer, scaler, RNG states, epoch, generation, early-stop state
      checkpoints/best.pt    the same, at the best validation epoch (the reported model)
      results.json           final validation/test metrics of the best checkpoint (+ baselines)
      *.png                  loss, validation metrics, warm vs cold plots
      embeddings/            exported user/item tables (cli.py export)

`open_run` opens a finished run (config, dataset, model) for evaluation and serving.

Every file is written atomically, so a kill at any moment leaves the previous version readable.
Checkpoints hold only tensors and plain types and load with `torch.load(weights_only=True)`: a
file that needs anything else (a planted pickle that would run code) is refused. Each also records
a SHA-256 over its whole content (`digest`), so a flipped byte anywhere is named, not trained on,
and the `run_id` that config.json was given at creation, so a checkpoint copied or linked in from
another run is refused by name (runs from before run ids: its config must be the run's).
A run directory is locked (RUN_DIR/run.lock, common/lock.py's flock) while a trainer writes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clcrec.config import COLD_VECTORS, RESUMABLE_CHANGES, TrainConfig
from clcrec.model import CLCRec, Prior
from common.errors import DatasetChangedError, UserError
from common.fsutil import atomic_write_bytes, atomic_write_json
from pipeline.dataset import Dataset, load_dataset

RUN_LOCK = "run.lock"
# key -> required type of a checkpoint's entries (what resume, evaluate and serve read)
CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "scaler": dict, "rng": dict, "epoch": int,
                   "generation": int, "best_score": float, "best_epoch": int, "bad_epochs": int,
                   "config": dict, "dataset_fingerprint": str, "modalities": list}


def state_digest(obj, h=None) -> str:
    """SHA-256 over a checkpoint's content in a fixed order: keys, values, tensor dtypes, shapes
    and bytes. Stored in the file and recomputed on load, because torch.load does not check the
    integrity of tensor data (a flipped byte in a weight loads silently)."""
    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k in sorted(obj, key=repr):
            state_digest(k, h)
            state_digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for v in obj:
            state_digest(v, h)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    return h.hexdigest() if top else ""


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({**state, "digest": state_digest(state)}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A verified checkpoint dict, or UserError naming the file: missing, not weights-only (could
    run code), truncated, corrupt, or with content that does not match its recorded digest."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; the run has not finished an epoch yet: start it again "
                        f"(`cli.py train --resume {path.parent.parent}` starts it from epoch 0)")
    fix = "restore it from a backup or train again (checkpoints/last.pt and best.pt are written atomically)"
    try:
        # weights_only=True: tensors, dicts, lists and numbers only; nothing in the file can run code
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # an object to import and call: what a planted pickle needs
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain values, and "
                f"loading those could run code; this is not a checkpoint this program wrote. {fix}"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt (its bytes are not a readable checkpoint); {fix}") from None
    except Exception as e:  # truncated / empty / garbage: RuntimeError, EOFError, zip errors...
        raise UserError(f"checkpoint {path} is truncated or corrupt ({_first_line(e)}); {fix}") from None
    if not isinstance(ck, dict):
        raise UserError(f"checkpoint {path} is not a checkpoint of this program (a {type(ck).__name__}); {fix}")
    for key, kind in CHECKPOINT_KEYS.items():
        ok = isinstance(ck.get(key), kind) or (kind is float and isinstance(ck.get(key), int))
        if not ok:
            raise UserError(f"checkpoint {path} lacks a valid {key!r} entry; {fix}")
    digest = ck.pop("digest", None)
    if digest is None and "run_id" in ck:  # run ids came after digests: this program wrote both or neither
        raise UserError(f"checkpoint {path} has a run id but no digest: it was altered after it was written; {fix}")
    if digest is not None and digest != state_digest(ck):  # None: written before digests existed
        raise UserError(f"checkpoint {path} is corrupt: its content does not match its recorded digest; {fix}")
    return ck


def check_model_state(ck: dict, model: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint whose weights do not fit `model` (names and shapes), naming the first."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in ck["model"].items()}
    for k in sorted(set(want) | set(have)):
        if want.get(k) != have.get(k):
            raise UserError(
                f"checkpoint {path} does not fit the run's model: {k} is {have.get(k)} in the file, "
                f"{want.get(k)} in the model of its config.json and dataset; the run directory is inconsistent"
            )


def check_own_checkpoint(ck: dict, record: dict, path: Path, run_root: Path) -> None:
    """Refuse a checkpoint that is not this run's: another run id than config.json's, or (runs from
    before ids) a config that differs from config.json's in what the model learns."""
    fix = (f"Restore this run's own {Path(path).name}, or use the run it came from "
           f"({ck['config'].get('run_dir', '?')})")
    how = "linked" if Path(path).is_symlink() else "copied"
    mine, theirs = record.get("run_id"), ck.get("run_id")
    if mine and theirs:
        if mine != theirs:
            raise UserError(f"checkpoint {path} belongs to another run (run id {theirs[:12]}, this run's is "
                            f"{mine[:12]}): it was {how} in from another run directory. {fix}")
        return
    saved, now = ck["config"], record["config"]
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k]
                  and not (isinstance(saved[k], (list, tuple)) and list(saved[k]) == list(now[k] or [])))
    if diff:
        raise UserError(f"checkpoint {path} was not written by run {run_root}: its config differs from "
                        f"{Path(run_root) / 'config.json'} in {', '.join(diff[:4])}; it was {how} in from "
                        f"another run directory. {fix}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()  # torch's messages run to several lines of advice: keep the first sentence
    return text.splitlines()[0].split(". ")[0][:200] if text else type(e).__name__


def rng_state() -> dict:
    # Only the CPU generator: the one random draw of training (the hybrid mask) comes from a
    # generator reseeded per epoch, and nothing draws from the default CUDA generators. Saving
    # those (one per visible GPU) would make a resume on fewer visible GPUs fail for nothing.
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])  # a "cuda" entry from older checkpoints is ignored


class RunDir:
    """Paths and record-keeping of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ckpt_dir = self.root / "checkpoints"
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.results_path = self.root / "results.json"
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"
        self._run_id: str | None = None

    def create(self, record: dict, *, exist_ok: bool = False) -> None:
        if self.config_path.exists() and not exist_ok:
            raise UserError(
                f"{self.root} already holds a run; pass --resume {self.root} to continue it "
                "or choose another --run-dir"
            )
        from common.fsutil import write_marker

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_marker(self.root, "run")  # proves the directory is this program's run (common/provenance.py)
        atomic_write_json(self.config_path, {**record, "run_id": uuid.uuid4().hex})  # binds its checkpoints
        atomic_write_bytes(self.root / "config.toml", TrainConfig.from_dict(record["config"]).to_toml().encode())
        self._run_id = None

    def run_id(self) -> str | None:
        """The id config.json was created with (None for runs from before ids); read once."""
        if self._run_id is None:
            self._run_id = self.read_config().get("run_id")
        return self._run_id

    def read_config(self) -> dict:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run directory; pass a run directory")
        if not self.config_path.exists():
            raise UserError(f"{self.root} is not a run directory (no config.json)")
        try:
            record = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.config_path} is unreadable or truncated ({e}); the run cannot be used: "
                            "start a new run") from None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise UserError(f"{self.config_path} lacks the run's 'config'; the run cannot be used: start a new run")
        return record

    def train_config(self, record: dict | None = None) -> TrainConfig:
        """The TrainConfig config.json records, checked; a bad field is named as config.json names it
        (l_r, where the checks name the command-line option --l-r)."""
        record = record or self.read_config()
        try:
            return TrainConfig.from_dict(record["config"])
        except (TypeError, UserError) as e:  # an unknown-typed or out-of-range field, hand-edited
            fields = {f.lower(): f for f in TrainConfig.__dataclass_fields__}
            text = re.sub(r"^--([a-z-]+)", lambda m: fields.get(m[1].replace("-", "_"), m[0]), str(e))
            raise UserError(f"{self.config_path} holds an invalid config ({text}); restore it, or start a new run") from None

    def check_restartable(self) -> None:
        """Refuse to restart from epoch 0 a run that has trained before but lost its last.pt:
        starting over would overwrite its best.pt, metrics and results."""
        done = [p.name for p in (self.best, self.results_path) if p.exists()]
        done += [f"{len(self.read_metrics())} epoch(s) in metrics.jsonl"] if self.read_metrics() else []
        if done:
            raise UserError(f"{self.last} is missing, but run {self.root} has trained ({', '.join(done)}); "
                            f"resuming would start it from epoch 0 and overwrite them. Restore last.pt from a "
                            f"backup, or train a new run (--config {self.root / 'config.toml'} --run-dir NEW)")

    def lock(self):
        """The run's writer lock (cache.lock's flock: released by the kernel if the trainer dies).
        Raises UserError naming the holder if another trainer has this run directory."""
        from common.lock import OwnedLock

        lock = OwnedLock(self.root / RUN_LOCK, f"trainer of {self.root}", busy=(
            "another trainer is running on {path} ({holder}); two trainers on one run directory would "
            "overwrite each other's checkpoints. Wait for it to finish, or use another --run-dir"))
        lock.acquire(wait=False)
        return lock

    def record_update(self, **fields) -> None:
        """Add `fields` to config.json (atomically): what the run chose when it finished."""
        atomic_write_json(self.config_path, {**self.read_config(), **fields})

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a kill mid-append
                break
        return out

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    def append_metrics(self, records: list[dict], record: dict) -> list[dict]:
        """Rewrite metrics.jsonl atomically with `record` appended (a few KB per epoch)."""
        records = [*records, record]
        self.write_metrics(records)
        return records


@dataclass
class TrainedRun:
    """A finished run opened for use: its config, dataset and model (eval mode, on the CPU)."""

    cfg: TrainConfig
    dataset: Dataset
    model: CLCRec
    checkpoint: dict
    record: dict = None  # config.json: lineage and the blend of an updated run
    root: Path | None = None  # the run directory it was opened from

    @property
    def blend_k(self) -> float:
        """k of the ID/content blend n / (n + k) chosen by `cli.py update` (0: none, ID or content by status)."""
        return float(((self.record or {}).get("blend") or {}).get("k", 0.0))

    @property
    def prior(self) -> Prior:
        """The content prior chosen when the run finished (clcrec/model.py with_prior; none before)."""
        return Prior.of((self.record or {}).get("content_prior"))

    @torch.no_grad()
    def tables(self, blend_k: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors (U, D), ranking table (I, D)) in float32, with the run's blend unless
        `blend_k` is given (0: the ID embedding for warm items, content for cold ones), and the
        run's content prior (then D is dim_E + the content width)."""
        k = self.blend_k if blend_k is None else blend_k
        counts = torch.as_tensor(item_counts(self.dataset)) if k > 0 else None
        return self.model.tables(self.dataset.train, self.dataset.item_status, self.prior, counts=counts, blend_k=k)


def served_form(record: dict | None, default: str) -> str:
    """How the run ranks cold items as served: the form it chose when it finished (recorded with
    its content prior, clcrec/train/confirm.py), else its config's `cold_vectors`."""
    form = ((record or {}).get("content_prior") or {}).get("cold_vectors", default)
    if form not in COLD_VECTORS:
        raise UserError(f"config.json: content_prior.cold_vectors must be one of {COLD_VECTORS}, got {form!r}; "
                        "restore the run's config.json")
    return form


def item_counts(dataset: Dataset) -> np.ndarray:
    """(I,) int64 training interactions per item."""
    return np.bincount(np.asarray(dataset.train)[:, 1], minlength=dataset.num_items).astype(np.int64)


def open_run(run_dir: Path, which: str = "best") -> TrainedRun:
    """Open run_dir's `best` or `last` checkpoint with its config and dataset, each checked: the
    dataset's fingerprint must be the checkpoint's, and the weights must fit the config's model."""
    run = RunDir(run_dir)
    record = run.read_config()
    cfg = run.train_config(record)
    path = run.best if which == "best" else run.last
    if which == "best" and not path.exists() and run.last.exists():  # a run from before provisional best.pt
        done = len(run.read_metrics())
        raise UserError(f"run {run_dir} has no best checkpoint yet: it finished {done} epoch(s), none of them "
                        f"selectable yet (averaged weights need their memory); continue it with "
                        f"`cli.py train --resume {run_dir}`")
    ck = load_checkpoint(path)
    check_own_checkpoint(ck, record, path, run.root)  # before the dataset: a foreign file is named as such
    # An updated run (cli.py update) carries its dataset inside: "dataset_dir" is relative to it.
    dataset = load_dataset(run.root / record["dataset_dir"] if record.get("dataset_dir") else cfg.dataset)
    if ck["dataset_fingerprint"] != dataset.fingerprint:
        raise DatasetChangedError(
            f"dataset {cfg.dataset} changed since run {run_dir} was trained (fingerprints differ); "
            "re-train, or point the run at the original data"
        )
    model = CLCRec.from_config(cfg, dataset, list(ck["modalities"]))
    model.cold_vectors = served_form(record, cfg.cold_vectors)
    check_model_state(ck, model, path)
    model.load_state_dict(ck["model"])
    model.eval()
    return TrainedRun(cfg, dataset, model, ck, record, run.root)
