"""TrainConfig: every knob of a training run, written into the run dir and every checkpoint.

Hyperparameter names and defaults follow the reference CLCRec code's MovieLens command
(l_r, reg_weight, num_neg, lr_lambda, temp_value, num_sample, batch_size, dim_E, has_v/a/t).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cache.manifest import EXCLUSIONS
from pipeline.errors import UserError

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
# Fields a resumed run may change: where and how fast it runs, and how long, but not what it learns.
RESUMABLE_CHANGES = {"run_dir", "epochs", "patience", "device", "amp", "threads", "log_every", "prefetch", "eval_block", "encode"}
SELECT_MODES = ("cold", "warm", "all", "mean")
ENCODE_MODES = ("auto", "unique", "slots")
EXCLUDE_MODES = EXCLUSIONS  # which of a user's items negatives avoid (cache/manifest.py says why)
# bernoulli: each U-I slot uses the content representation with probability num_sample;
# with-replacement: the reference's int(slots * num_sample) slot indices drawn with replacement.
HYBRID_DRAWS = ("bernoulli", "with-replacement")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = ""
    cache: str = ""
    run_dir: str = ""
    # --- model and loss (reference names and defaults) ---
    l_r: float = 0.001
    reg_weight: float = 0.1
    num_neg: int = 128  # must equal the cache's num_neg
    exclude: str = "train"  # must equal the cache's exclusion; "all-known" leaks held-out items
    lr_lambda: float = 0.5  # weight of the R-E loss; U-I gets 1 - lr_lambda
    temp_value: float = 2.0
    num_sample: float = 0.5  # fraction of item slots in U-I that use the content encoder
    hybrid_draw: str = "bernoulli"  # how those slots are drawn: one of HYBRID_DRAWS
    batch_size: int = 256  # positive pairs per step (global across ranks)
    dim_E: int = 64
    hidden: int = 256  # encoder hidden width (reference: 256)
    has_v: bool = True  # modality switches for datasets with v / a / t features
    has_a: bool = True
    has_t: bool = True
    modalities: tuple[str, ...] = ()  # explicit feature subset; () = all (after has_* switches)
    # --- schedule ---
    epochs: int = 30
    patience: int = 5  # epochs without a validation improvement before stopping
    select_mode: str = "cold"  # which validation Recall@K picks the best epoch (see README)
    select_k: int = 20
    # Select on the mean of the last `select_window` validation scores (1: each epoch's own score);
    # 3 damps one-epoch spikes of small validation sets (README section 5, clcrec/averaging.py).
    select_window: int = 3
    ks: tuple[int, ...] = (10, 20, 50)
    eval_block: int = 1024  # users per evaluation block
    refresh_every: int = 0  # move to the next negative generation every N epochs (0: never)
    seed: int = 0
    # --- execution ---
    device: str = "auto"  # auto -> cuda if available else cpu
    amp: str = "auto"  # auto -> bf16 on CUDA, fp32 on CPU
    encode: str = "auto"  # unique: encode each distinct item of a batch once; slots: every slot
    prefetch: int = 4  # chunks buffered ahead by the producer thread
    log_every: int = 50  # steps between host syncs for loss logging / divergence checks
    threads: int = 0  # torch intra-op threads (0: leave torch's default)

    def __post_init__(self):
        checks = [
            (self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}"),
            (self.select_mode in SELECT_MODES, f"select_mode must be one of {SELECT_MODES}"),
            (self.encode in ENCODE_MODES, f"encode must be one of {ENCODE_MODES}"),
            (self.exclude in EXCLUDE_MODES, f"--exclude must be one of {EXCLUDE_MODES}, got {self.exclude!r}"),
            (self.hybrid_draw in HYBRID_DRAWS, f"--hybrid-draw must be one of {HYBRID_DRAWS}, got {self.hybrid_draw!r}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.num_neg >= 1, "num_neg must be >= 1"),
            (0.0 <= self.num_sample <= 1.0, "num_sample must be in [0, 1]"),
            (0.0 <= self.lr_lambda <= 1.0, "lr_lambda must be in [0, 1]"),
            (self.temp_value > 0, "temp_value must be > 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.select_k in self.ks, f"select_k={self.select_k} must be one of ks={self.ks}"),
            (self.refresh_every >= 0, "refresh_every must be >= 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.select_window >= 1, f"--select-window must be >= 1, got {self.select_window}"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.eval_block >= 1, "eval_block must be >= 1"),
            (self.prefetch >= 1, "prefetch must be >= 1"),
            (self.dim_E >= 1 and self.hidden >= 1, "dim_E and hidden must be >= 1"),
            (self.threads >= 0, "threads must be >= 0 (0: torch's default)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def check_resumable(self, saved: dict) -> None:
        """Refuse to resume a checkpoint saved under a different training config."""
        now = self.to_dict()
        diff = sorted(
            k for k in now if k not in RESUMABLE_CHANGES and k in saved and _norm(saved[k]) != _norm(now[k])
        )
        if diff:
            pairs = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
            raise UserError(
                f"cannot resume: the config differs from the checkpoint's ({pairs}); start a new run "
                f"instead (only {sorted(RESUMABLE_CHANGES)} may change on resume)"
            )

    def generation_for_epoch(self, epoch: int) -> int:
        """Generation id that epoch `epoch` (0-based) trains on: a pure function, so a resumed
        run reads the same negatives as an uninterrupted one."""
        return epoch // self.refresh_every if self.refresh_every > 0 else 0

    def select_modalities(self, available: list[str]) -> list[str]:
        names = list(self.modalities) if self.modalities else list(available)
        unknown = sorted(set(names) - set(available))
        if unknown:
            raise UserError(f"modalities {unknown} are not in the dataset, which has {available}")
        off = {"v": not self.has_v, "a": not self.has_a, "t": not self.has_t}
        names = [n for n in names if not off.get(n, False)]
        if not names:
            raise UserError("every modality is switched off; CLCRec needs at least one content feature")
        return names

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v
