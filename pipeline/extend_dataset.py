"""A run's dataset extended by interactions that arrived after training (the data half of `update`).

    python cli.py update runs/ml --interactions new.csv --out runs/ml-upd [--new-items new/]

Reads the parent dataset (pipeline.dataset.Dataset), the new interactions (original ids, from
pipeline.new_interactions) and the content features of items the parent lacks; writes one new
dataset directory (pipeline.dataset.write_dataset, atomic) whose indexes extend the parent's:

    users / items   the parent's rows in the parent's order, then the new ones by ascending id
    train           the parent's training pairs + the new pairs, minus a validation share
    val             the parent's validation pairs not in the file + the latest `val_fraction` of the
                    new pairs (by timestamp; a seeded random share without timestamps)
    test            the parent's test pairs not in the file (what the update did not see)
    item_status     warm once an item has a training pair; new items without one: cold-val
    features        the run's modalities only, new items' rows appended
    extras          train_recent (bool per training pair: this update's), and the splits' times when
                    both the parent and the file have them

Returns what the model side needs to extend its tables (`Extension`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from common.errors import InputError
from pipeline.dataset import COLD_VAL, WARM, Dataset, write_dataset


@dataclass
class NewItemRows:
    """Content features of items a run has never seen: one row per original id."""

    ids: np.ndarray  # (N,) int64 original ids
    features: dict[str, np.ndarray]  # modality -> (N, dim) raw features, as the dataset stores them
    titles: list | None = None


@dataclass
class Extension:
    parent_users: int
    parent_items: int
    init_items: np.ndarray  # item indices whose ID embedding starts from content (new or formerly cold)
    init_users: np.ndarray  # user indices without parent training pairs (new ones included)
    summary: dict = field(default_factory=dict)


def _index(ids: pl.Series, known: pl.DataFrame, extra: np.ndarray) -> np.ndarray:
    """Index of each id: its row in `known` (columns original_id, idx), else len(known) + its
    position in `extra` (sorted new ids)."""
    base = pl.DataFrame({"original_id": ids}).join(known, on="original_id", how="left", maintain_order="left")["idx"]
    out = base.to_numpy(allow_copy=True).astype(np.float64)
    miss = np.isnan(out)
    out[miss] = len(known) + np.searchsorted(extra, ids.to_numpy()[miss])
    return out.astype(np.int64)


def extend_dataset(parent: Dataset, modalities: list[str], delta: pl.DataFrame, new_items: NewItemRows | None,
                   target, *, val_fraction: float, seed: int, label: str, source: dict) -> Extension:
    """Write the extended dataset to `target`; InputError (nothing written) names bad input."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    users, items = parent.user_ids(), parent.item_ids()
    u0, i0 = parent.num_users, parent.num_items
    known_items = items.select("original_id", idx=pl.col("item").cast(pl.Int64))
    known_users = users.select("original_id", idx=pl.col("user").cast(pl.Int64))
    # polars joins need one key type: the parent's ids are Int64 (ingest) or whatever a test wrote
    delta = delta.with_columns(pl.col("user").cast(known_users["original_id"].dtype),
                               pl.col("item").cast(known_items["original_id"].dtype))

    # --- items: the run's, or new ones with features; nothing else ---
    d_items = np.unique(delta["item"].to_numpy())
    in_run = np.isin(d_items, known_items["original_id"].to_numpy())
    offered = np.asarray(new_items.ids if new_items is not None else [], dtype=np.int64)
    unknown = d_items[~in_run & ~np.isin(d_items, offered)]
    if len(unknown):
        raise InputError(
            f"{label}: {len(unknown)} item id(s) are neither in the run nor among the new items (e.g. item "
            f"{unknown[0]}); give their content with --new-items DIR (from embed-items) or --movielens FILE")
    added = d_items[~in_run].astype(np.int64)  # sorted original ids of new items
    d_users = np.unique(delta["user"].to_numpy())
    added_users = d_users[~np.isin(d_users, known_users["original_id"].to_numpy())].astype(np.int64)
    n_users, n_items = u0 + len(added_users), i0 + len(added)

    pairs = np.stack([_index(delta["user"], known_users, added_users), _index(delta["item"], known_items, added)], 1)
    key = pairs[:, 0] * n_items + pairs[:, 1]

    def keys(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        return a[:, 0] * n_items + a[:, 1]

    fresh = ~np.isin(key, keys(parent.train))  # pairs the parent trained on add nothing
    if not fresh.any():
        raise InputError(f"{label}: all {len(pairs)} pair(s) are already in the run's training data; nothing to update")
    times = delta["timestamp"].to_numpy().astype(np.int64) if "timestamp" in delta.columns else None
    pairs, key = pairs[fresh], key[fresh]
    times = times[fresh] if times is not None else None

    # --- validation share of the new pairs: the latest ones (the future the blend must predict) ---
    n_val = int(round(val_fraction * len(pairs)))
    if n_val >= len(pairs):
        raise InputError(f"{label}: {len(pairs)} new pair(s) leave none to train on with --val-fraction {val_fraction}")
    if times is not None:
        order = np.lexsort((pairs[:, 1], pairs[:, 0], times))  # by time, ties by (user, item)
    else:
        order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pairs))
    is_val = np.zeros(len(pairs), dtype=bool)
    is_val[order[len(pairs) - n_val:]] = True

    # --- the splits: parent rows keep their indexes; the file's pairs leave val/test ---
    keep_val = ~np.isin(keys(parent.val), key)
    keep_test = ~np.isin(keys(parent.test), key)
    train = np.concatenate([np.asarray(parent.train, dtype=np.int64), pairs[~is_val]])
    val = np.concatenate([np.asarray(parent.val, dtype=np.int64)[keep_val], pairs[is_val]])
    test = np.asarray(parent.test, dtype=np.int64)[keep_test]
    status = np.concatenate([parent.item_status, np.full(len(added), COLD_VAL, np.int8)])
    trained_items = np.unique(pairs[~is_val, 1])
    was_cold = trained_items[status[trained_items] != WARM]  # new items and the parent's cold ones
    status[trained_items] = WARM

    feats = {}
    for m in modalities:
        new_rows = np.zeros((0, parent.features[m].shape[1]), np.float32)
        if len(added):
            pos = {int(i): r for r, i in enumerate(np.asarray(new_items.ids, dtype=np.int64))}
            new_rows = np.asarray(new_items.features[m])[[pos[int(i)] for i in added]]
        feats[m] = np.concatenate([np.asarray(parent.features[m]), new_rows]).astype(np.float32)
    user_ids = pl.concat([users.select("original_id"), pl.DataFrame({"original_id": added_users}).cast(
        {"original_id": users["original_id"].dtype})])
    new_item_rows = pl.DataFrame({"original_id": added}).cast({"original_id": items["original_id"].dtype})
    if "title" in items.columns:
        titles = [None] * len(added)
        if new_items is not None and new_items.titles is not None:
            by_id = dict(zip(np.asarray(new_items.ids).tolist(), new_items.titles))
            titles = [by_id.get(int(i)) for i in added]
        new_item_rows = new_item_rows.with_columns(pl.Series("title", titles, dtype=pl.String))
    item_ids = pl.concat([items.drop("item"), new_item_rows], how="diagonal_relaxed")

    trained_before = np.bincount(np.asarray(parent.train)[:, 0], minlength=n_users) > 0
    init_users = np.unique(pairs[~is_val, 0])
    init_users = init_users[~trained_before[init_users]]
    summary = {
        "rows": int(delta.height), "new_pairs": int(len(pairs)), "already_trained_pairs": int((~fresh).sum()),
        "validation_pairs": int(n_val), "training_pairs": int((~is_val).sum()),
        "new_users": int(len(added_users)), "new_items": int(len(added)),
        "items_warmed": int(len(was_cold)), "users_initialised": int(len(init_users)),
        "parent_val_pairs_removed": int((~keep_val).sum()), "parent_test_pairs_removed": int((~keep_test).sum()),
    }
    # this update's training pairs: a fine-tune with replay (cache/write.py) trains on them and a sample of the rest
    extra_arrays = {"train_recent": np.arange(len(train)) >= len(parent.train)}
    if times is not None and parent.times("train") is not None:
        def kept(name, mask):
            return np.asarray(parent.times(name), dtype=np.int64)[mask]
        extra_arrays.update(train_time=np.concatenate([np.asarray(parent.times("train")), times[~is_val]]),
                            val_time=np.concatenate([kept("val", keep_val), times[is_val]]),
                            test_time=kept("test", keep_test))
    sort = np.lexsort((train[:, 1], train[:, 0]))  # write_dataset sorts train so: keep the row arrays aligned
    train = train[sort]
    extra_arrays = {k: v[sort] if k.startswith("train_") else v for k, v in extra_arrays.items()}
    write_dataset(target, train=train, val=val, test=test, item_status=status, features=feats,
                  user_ids=user_ids, item_ids=item_ids, source=source,
                  split={"protocol": "update", "val_fraction": val_fraction, "seed": seed,
                         "parent_split": parent.meta.get("split")},
                  extra={"update": summary, "ingest": parent.meta.get("ingest", {})},  # how features were built
                  extra_arrays=extra_arrays, featurizer=parent.featurizer())  # raw new items keep working
    return Extension(u0, i0, was_cold.astype(np.int64), init_users.astype(np.int64), summary)
