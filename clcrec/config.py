"""TrainConfig: every knob of a training run, written into the run dir and every checkpoint.

Hyperparameter names and defaults follow the reference CLCRec code's MovieLens command
(l_r, reg_weight, num_neg, lr_lambda, temp_value, num_sample, batch_size, dim_E, has_v/a/t).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from cache.manifest import EXCLUSIONS
from common.errors import UserError
from common.tomlconfig import read_toml_fields, toml_text

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
# Fields a resumed run may change: where and how fast it runs, and how long, but not what it learns.
RESUMABLE_CHANGES = {"run_dir", "content_prior", "epochs", "patience", "device", "amp", "threads", "log_every", "prefetch", "eval_block", "encode",
                     "scoring", "cuda_graph", "compile", "assemble", "readers", "tensorboard"}
SELECT_MODES = ("cold", "warm", "all", "mean")
SELECT_RANKS = ("centred", "served")  # how cold items rank while epochs are selected
ENCODE_MODES = ("auto", "unique", "slots", "all")
SCORING_MODES = ("auto", "gather", "dense")
GRAPH_MODES = ("auto", "on", "off")
COMPILE_MODES = ("off", "on")
ASSEMBLE = ("host", "device")  # where batches are cut (clcrec/data/stream.py)
ASSEMBLE_MODES = ("auto", *ASSEMBLE)
MAX_K = 10_000  # the largest Recall@K / NDCG@K cut-off (ks, select_k): top-K lists of 1e9 never end
# (field, lower bound, upper bound or None, lower bound excluded): checked on every TrainConfig
NUMERIC_RANGES = [
    ("l_r", 0, None, True), ("reg_weight", 0, None, False), ("reg_content", 0, None, False), ("num_neg", 1, 65535, False),
    ("lr_lambda", 0, 1, False), ("temp_value", 0, None, True), ("num_sample", 0, 1, False),
    ("batch_size", 1, 2**20, False), ("dim_E", 1, 8192, False), ("hidden", 1, 65536, False),
    ("epochs", 1, 100_000, False), ("patience", 1, 100_000, False), ("select_k", 1, MAX_K, False),
    ("eval_block", 1, 2**20, False), ("refresh_every", 0, 100_000, False), ("seed", 0, 2**63 - 1, False),
    ("prefetch", 1, 64, False), ("log_every", 1, 10**9, False), ("threads", 0, 4096, False),
    ("readers", 0, 64, False), ("select_window", 1, 1000, False), ("eval_ema", 0, 0.99, False),
    ("val_confirm", 0, 0.9, False),
]  # upper bounds: far past any useful value, short of an allocation that fails or a loop that never ends
_OPTION_NAMES = {"dim_E": "--dim-e"}
# What a run recorded before these fields existed trained with (TrainConfig.from_dict)
RECORDED_BEFORE = {"reg_content": 0.0, "val_confirm": 0.0, "select_rank": "served"}


def option_name(field: str) -> str:
    """The command-line option of a TrainConfig field (l_r -> --l-r)."""
    return _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
EXCLUDE_MODES = EXCLUSIONS  # which of a user's items negatives avoid (cache/manifest.py says why)
# bernoulli: each U-I slot uses the content representation with probability num_sample;
# with-replacement: the reference's int(slots * num_sample) slot indices drawn with replacement.
HYBRID_DRAWS = ("bernoulli", "with-replacement")
COLD_VECTORS = ("raw", "normalised", "scaled", "centred")  # how cold items rank (clcrec/model.py says what each does)


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer past float's range (10**400)
        return False


def _prior_ok(value) -> bool:
    if value in ("auto", "off"):
        return True
    try:
        w = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return False
    return 0 <= w <= 1


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = ""
    cache: str = ""
    run_dir: str = ""
    # --- model and loss (reference names and defaults) ---
    # 5x the reference's 0.001: at 0.001 a sparse, many-item dataset stays on the loss's initial plateau
    # for 1,000-2,400 steps and stops before converging (docs/results.md); reproduction mode passes 0.001.
    l_r: float = 0.005
    reg_weight: float = 0.1
    # The regulariser's weight on the encoder outputs' norms (the slots' mean), next to the ID
    # embeddings' (0: the reference, which regularises ID embeddings only). 1 keeps them on the ID
    # scale but pins them near zero on strong content: CiteULike's loss never left its plateau.
    reg_content: float = 0.0
    num_neg: int = 128  # must equal the cache's num_neg
    exclude: str = "train"  # must equal the cache's exclusion; "all-known" leaks held-out items
    lr_lambda: float = 0.5  # weight of the R-E loss; U-I gets 1 - lr_lambda
    temp_value: float = 2.0
    num_sample: float = 0.5  # fraction of item slots in U-I that use the content encoder
    hybrid_draw: str = "bernoulli"  # how those slots are drawn: one of HYBRID_DRAWS
    batch_size: int = 256  # positive pairs per step (global across ranks)
    dim_E: int = 64
    hidden: int = 256  # encoder hidden width (reference: 256)
    # How cold items rank (clcrec/model.py): "raw" (the encoder output, the reference's; a run may serve
    # "centred" instead, without the component all users share, where that wins on both validation
    # halves: clcrec/train/confirm.py), "centred", "normalised", "scaled" (docs/results.md: the ablation)
    cold_vectors: str = "raw"
    # Cold items rank by 1 - W of the model's score plus W of the content-only cosine (clcrec/model.py
    # with_prior): "auto" chooses W on validation when training ends, "off" is W = 0, or W in [0, 1].
    content_prior: str = "auto"
    has_v: bool = True  # modality switches for datasets with v / a / t features
    has_a: bool = True
    has_t: bool = True
    modalities: tuple[str, ...] = ()  # explicit feature subset; () = all (after has_* switches)
    # --- schedule ---
    # A cap, not a schedule: early stopping (patience) ends a run; at 30, 3 of the quality matrix's
    # 27 runs still selected their last epoch (CiteULike's sample, ml100k-thin). Nothing depends on
    # the cap but where the run may stop, so runs that stop before it are unchanged (docs/results.md).
    epochs: int = 60
    patience: int = 10  # epochs without a validation improvement (longer than the EMA's ~10-epoch memory)
    select_mode: str = "cold"  # which validation Recall@K picks the best epoch (see README)
    select_k: int = 10  # the reference's (and the quality target's) K
    eval_ema: float = 0.9  # evaluate and keep an EMA of epoch-end weights (0: the raw weights)
    # Select on the mean of the last `select_window` validation scores (1: each epoch's own score);
    # 3 damps one-epoch spikes of small validation sets (docs/results.md, clcrec/train/selection.py).
    select_window: int = 3
    # A seeded share of the validation-cold items makes no choice (epoch, prior weight): it confirms
    # them against the content-only cosine and a shared list (clcrec/train/confirm.py; 0: off).
    val_confirm: float = 0.5
    # How cold items rank while epochs are selected: "centred" (cold_vectors centred: without the list
    # all users share, so a shared list that happens to hold popular validation items cannot pick the
    # epoch) or "served" (as the run serves them; the reference's, and reproduction mode's).
    select_rank: str = "centred"
    ks: tuple[int, ...] = (10, 20, 50)
    eval_block: int = 1024  # users per evaluation block
    refresh_every: int = 0  # move to the next negative generation every N epochs (0: never)
    seed: int = 0
    # --- execution ---
    device: str = "auto"  # auto -> cuda if available else cpu
    amp: str = "auto"  # auto -> bf16 on CUDA, fp32 on CPU
    encode: str = "auto"  # unique: each distinct item of a batch once; slots: every slot; all: the catalogue
    scoring: str = "auto"  # gather | dense (whole-table matmuls); auto: clcrec/train/plan.py
    cuda_graph: str = "auto"  # capture the step in one CUDA graph: auto (when possible) | on | off
    compile: str = "off"  # on: the losses through torch.compile (inductor fuses them; clcrec/train/step.py)
    assemble: str = "auto"  # where batches are cut: host | device (auto: device on CUDA)
    readers: int = 0  # threads reading and preparing chunks (0: 1 on CPU, up to 4 on CUDA)
    prefetch: int = 4  # chunks buffered ahead by the producer thread
    log_every: int = 50  # steps between host syncs for loss logging / divergence checks
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    tensorboard: bool = True  # event files in the run directory (clcrec/train/board.py)

    def __post_init__(self):
        # Messages name the command-line option (--l-r ...), since that is where a value comes from.
        checks = [
            (self.amp in AMP_MODES, f"--amp must be one of {AMP_MODES}, got {self.amp!r}"),
            (self.select_mode in SELECT_MODES, f"--select-mode must be one of {SELECT_MODES}, got {self.select_mode!r}"),
            (self.select_rank in SELECT_RANKS, f"--select-rank must be one of {SELECT_RANKS}, got {self.select_rank!r}"),
            (self.encode in ENCODE_MODES, f"--encode must be one of {ENCODE_MODES}, got {self.encode!r}"),
            (self.scoring in SCORING_MODES, f"--scoring must be one of {SCORING_MODES}, got {self.scoring!r}"),
            (self.cuda_graph in GRAPH_MODES, f"--cuda-graph must be one of {GRAPH_MODES}, got {self.cuda_graph!r}"),
            (self.compile in COMPILE_MODES, f"--compile must be one of {COMPILE_MODES}, got {self.compile!r}"),
            (self.assemble in ASSEMBLE_MODES, f"--assemble must be one of {ASSEMBLE_MODES}, got {self.assemble!r}"),
            (self.exclude in EXCLUDE_MODES, f"--exclude must be one of {EXCLUDE_MODES}, got {self.exclude!r}"),
            (self.hybrid_draw in HYBRID_DRAWS, f"--hybrid-draw must be one of {HYBRID_DRAWS}, got {self.hybrid_draw!r}"),
            (self.cold_vectors in COLD_VECTORS, f"--cold-vectors must be one of {COLD_VECTORS}, got {self.cold_vectors!r}"),
            (_prior_ok(self.content_prior), f"--content-prior must be auto, off or a number W with 0 <= W <= 1, "
                                            f"got {self.content_prior!r}"),
        ]
        for name, lo, hi, lo_open in NUMERIC_RANGES:
            v = getattr(self, name)
            kind = int if isinstance(dataclasses.fields(self)[_FIELD_INDEX[name]].default, int) else float
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
            ok = ok and (kind is float or float(v).is_integer())
            ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
            # the bound that failed (both when the value is not a number at all)
            low_ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if lo_open else v >= lo)
            rng = f"{'>' if lo_open else '>='} {lo}" if not low_ok or hi is None else f"<= {hi}"
            checks.append((ok, f"{option_name(name)} must be {'an integer' if kind is int else 'a finite number'} "
                               f"{rng}, got {v!r}"))
        checks.append((all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_K for k in self.ks)
                       and len(self.ks) > 0, f"ks must be integers from 1 to {MAX_K}, got {list(self.ks)}"))
        checks.append((self.select_k in self.ks, f"--select-k {self.select_k} must be one of ks={self.ks}"))
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A recorded config (a run's config.json, a checkpoint's); a field it predates takes the
        value runs had before the field existed (`RECORDED_BEFORE`), not today's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {**RECORDED_BEFORE, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}}
        return cls(**d)

    @classmethod
    def read_toml(cls, path: Path) -> dict:
        """The fields a TOML file sets (`train --config`), each checked: an unknown key or a wrong
        type is a UserError naming the file and the key."""
        return read_toml_fields(path, cls)

    def to_toml(self) -> str:
        """The resolved config as `train --config` reads it. run_dir is left out, so training from
        the file starts a new run (in a new directory) rather than refusing an existing one."""
        values = {k: v for k, v in self.to_dict().items() if k != "run_dir"}
        return toml_text(values, header="The resolved config of a run: `python cli.py train --config THIS_FILE` trains "
                         "it again\n(command-line options override the file).",
                         left_out={"run_dir": f"{self.run_dir!r} is left out: a re-run gets a new directory (or --run-dir)"})

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    @property
    def prior_weight(self) -> float | None:
        """The content prior's weight W (None: chosen on validation)."""
        return None if self.content_prior == "auto" else 0.0 if self.content_prior == "off" else float(self.content_prior)

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


_FIELD_INDEX = {f.name: i for i, f in enumerate(dataclasses.fields(TrainConfig))}


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v
