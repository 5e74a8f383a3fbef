"""The cold-item split of the CLCRec paper: seeded, deterministic, the same on any machine.

    python cli.py ingest movielens ../shared/datasets/ml-100k data/ml-100k --seed 0 --cold-fraction 0.2

Reads re-indexed (user, item) pairs; returns train / val / test pairs and the item status
(pipeline.dataset.WARM / COLD_VAL / COLD_TEST). Writes nothing itself.

Protocol: `cold_fraction` of the items that have interactions become cold, `cold_val_share` of
them validation-cold and the rest test-cold; every interaction of a cold item goes to validation
or test respectively. The warm items' interactions are shuffled and split
(1 - val - test) / val / test into train / validation / test. A user-supplied cold list replaces
the random choice of cold items (its items are still shuffled into val/test by the same share).

Determinism: one numpy Generator(PCG64(seed)) draws, in a fixed order, a permutation of the
sorted active item ids and then a permutation of the warm interactions in (user, item) order, so
nothing depends on hash order, input row order or thread count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from pipeline.dataset import COLD_TEST, COLD_VAL, WARM


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    cold_fraction: float = 0.2  # of the items with interactions
    cold_val_share: float = 0.5  # of the cold items that go to validation (rest: test)
    val_fraction: float = 0.1  # of the warm interactions
    test_fraction: float = 0.1  # of the warm interactions
    cold_items_file: Path | None = None  # original item ids, one per line; replaces random choice

    def __post_init__(self):
        self.validate()  # at the boundary: a bad option fails before any file is read

    def validate(self) -> None:
        import math

        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be an integer in 0..2^63-1, got {self.seed!r}")
        for name, v in (("--cold-fraction", self.cold_fraction), ("--cold-val-share", self.cold_val_share),
                        ("--val-fraction", self.val_fraction), ("--test-fraction", self.test_fraction)):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise InputError(f"--cold-fraction must be in [0, 1), got {self.cold_fraction}")
        if not 0.0 <= self.cold_val_share <= 1.0:
            raise InputError(f"--cold-val-share must be in [0, 1], got {self.cold_val_share}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise InputError(
                f"validation and test fractions (--val-fraction, --test-fraction) must be >= 0 and sum to "
                f"less than 1 (got {self.val_fraction} + {self.test_fraction})"
            )

    def to_meta(self) -> dict:
        d = asdict(self)
        d["cold_items_file"] = str(self.cold_items_file) if self.cold_items_file else None
        return {"protocol": "cold-items", **d}


@dataclass
class SplitResult:
    train: np.ndarray  # (N_train, 2) input dtype, sorted by (user, item)
    val: np.ndarray  # (N_val, 2) warm and cold-val interactions, sorted
    test: np.ndarray  # (N_test, 2) warm and cold-test interactions, sorted
    item_status: np.ndarray  # (num_items,) int8


def sort_pairs(pairs: np.ndarray, num_items: int) -> np.ndarray:
    """`pairs` in (user, item) order; returned as is (no copy) when already sorted."""
    key = pairs[:, 0].astype(np.int64) * num_items + pairs[:, 1]
    if len(key) > 1 and not (key[1:] >= key[:-1]).all():
        pairs = pairs[np.argsort(key, kind="stable")]
    return pairs


def split_cold_items(
    pairs: np.ndarray, num_items: int, config: SplitConfig, cold_items: np.ndarray | None = None
) -> SplitResult:
    """Split re-indexed (user, item) pairs; `cold_items` (item indices) overrides the random choice.

    Memory: one label byte per interaction plus the outputs; sorted input is not copied.
    """
    config.validate()
    pairs = np.asarray(pairs)
    if not np.issubdtype(pairs.dtype, np.integer):
        raise InputError(f"interaction ids must be integers, got dtype {pairs.dtype}")
    pairs = sort_pairs(pairs, num_items)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    active = np.unique(pairs[:, 1])  # sorted items that have interactions
    if cold_items is None:
        n_cold = int(round(config.cold_fraction * len(active)))
        cold = rng.permutation(active)[:n_cold]
    else:
        cold = rng.permutation(np.unique(np.asarray(cold_items, dtype=np.int64)))
    n_cold_val = int(round(config.cold_val_share * len(cold)))
    item_status = np.zeros(num_items, dtype=np.int8)
    item_status[cold[:n_cold_val]] = COLD_VAL
    item_status[cold[n_cold_val:]] = COLD_TEST

    # label per interaction: 0 train, 1 val, 2 test; cold items' label is their status
    label = item_status[pairs[:, 1]]
    warm = np.flatnonzero(label == WARM)
    if len(warm) == 0:
        raise InputError(
            "the split leaves no warm interactions, so no training data; "
            "lower --cold-fraction or use a shorter cold-item list"
        )
    perm = rng.permutation(len(warm))
    n_val = int(round(config.val_fraction * len(warm)))
    n_test = int(round(config.test_fraction * len(warm)))
    if n_val + n_test >= len(warm):
        raise InputError(
            f"the split leaves no training data: {len(warm)} warm interactions, "
            f"{n_val} to validation and {n_test} to test; provide more data or lower the fractions"
        )
    label[warm[perm[:n_val]]] = COLD_VAL
    label[warm[perm[n_val : n_val + n_test]]] = COLD_TEST
    del perm, warm
    # Held-out data that was asked for but rounds away on small data is refused here, not later
    # as a puzzling training error; all fractions 0 writes a dataset without held-out data on purpose.
    for code, name, frac in ((COLD_VAL, "validation", config.val_fraction), (COLD_TEST, "test", config.test_fraction)):
        if frac > 0 and not (label == code).any():
            raise InputError(
                f"the split leaves no {name} interactions ({len(pairs)} interaction(s), {len(active)} item(s) "
                "are too few for the fractions asked); provide more data, or pass "
                "--val-fraction 0 --test-fraction 0 to write a dataset without held-out data on purpose"
            )
    return SplitResult(  # boolean selection keeps the (user, item) order
        train=pairs[label == WARM], val=pairs[label == COLD_VAL], test=pairs[label == COLD_TEST],
        item_status=item_status,
    )


def read_id_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file of ids (lines starting with '#' are comments)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cold-item list {path} does not exist")
    ids = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    ids = [s for s in ids if s and not s.startswith("#")]
    if not ids:
        raise InputError(f"cold-item list {path} is empty; give one original item id per line")
    return ids


def map_cold_items(path: Path, known_ids: list[str], kept_index: dict[str, int]) -> tuple[np.ndarray, int]:
    """Map a cold-item list file to item indices.

    `known_ids` are all original item ids of the source (as strings); `kept_index` maps the ids of
    items that have interactions to their index. Unknown ids are an error; known items without
    interactions are skipped (they were dropped) and counted. Returns (indices, n_skipped).
    """
    ids = [_normalise_id(s) for s in read_id_list(path)]
    known = set(known_ids)
    unknown = [s for s in ids if s not in known]
    if unknown:
        raise InputError(
            f"cold-item list {path} names {len(unknown)} unknown item id(s), e.g. {unknown[0]!r}; "
            "use the original item ids of the source data"
        )
    idx = [kept_index[s] for s in ids if s in kept_index]
    return np.asarray(sorted(set(idx)), dtype=np.int64), len(set(ids)) - len(set(idx))


def _normalise_id(s: str) -> str:
    """'042' and '42' name the same integer id; other strings are kept as they are."""
    try:
        return str(int(s))
    except ValueError:
        return s
