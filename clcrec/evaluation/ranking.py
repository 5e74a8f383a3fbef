"""Exact full-ranking evaluation of user/item vectors: Precision, Recall, NDCG and HitRate @K.

Reads and writes no files: the caller passes vectors (already on the target device), a dataset's
train and eval pairs and its item status, and gets plain Python floats back. Used by the trainer
at each validation, by `cli.py evaluate` (clcrec/evaluation/report.py) and by the baselines
(clcrec/evaluation/baselines.py). Top-k lists for serving are clcrec/evaluation/topk.py's.

    results = evaluate_ranking(user_vecs, item_vecs, ds.train, ds.val, ds.item_status)
    results["cold"]["recall@20"], results["cold"]["users"]

Definitions (the reference CLCRec code's, with its bugs fixed):
- Each user is ranked against every item; their training items score -inf. (The reference code
  used 1e-15, which lifts masked items above every negative score.)
- Modes: `all` ranks all items and counts all positives; `warm` masks cold items (status != 0) and
  counts warm positives; `cold` masks warm items and counts cold positives. Cold-val and cold-test
  items are both cold candidates whichever split is evaluated.
- A user counts in a mode iff they have >= 1 positive in it; metrics are means over those users and
  `users` says how many. A mode with no such user reports 0.0 for every metric and users=0.
- precision@K = hits/K; recall@K = hits/#pos; ndcg@K = DCG/IDCG, DCG = sum over hit ranks r
  (0-based) of 1/log2(r+2), IDCG over min(#pos, K) ideal positions; hit@K = 1 if any hit. (The
  reference code took IDCG over min(#hits, K), which inflates NDCG.)
- Positives are deduplicated. A positive that is also a training item stays in #pos but can never be
  a hit. An item scored -inf is never a hit, even when a user has fewer than K candidates and masked
  items fill the top-K.
- K larger than a mode's candidate count is clamped: the top list is shorter, precision still
  divides by K, and keys keep the requested K so results compare across datasets.
- Ties between equal scores are ordered as torch.topk orders them, which is unspecified and may
  differ between CPU and CUDA; learned float vectors practically never tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import TrainingDivergedError
from pipeline.dataset import check_pairs

MODES = ("all", "warm", "cold")
METRICS = ("precision", "recall", "ndcg", "hit")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 20, 50)  # normalised to sorted, unique ints
    # Users scored per block: peak memory ~ user_block * num_items * 9 bytes (float32 scores, a
    # copy for the warm/cold columns, bool positives). Any value >= 1 works.
    user_block: int = 1024
    modes: tuple[str, ...] = MODES

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        is_k = lambda k: isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1  # noqa: E731
        if not ks or not all(is_k(k) for k in ks):
            raise ValueError(f"EvalConfig.ks must be a non-empty list of integers >= 1, got {self.ks!r}")
        modes = tuple(self.modes)
        unknown = [m for m in modes if m not in MODES]
        if not modes or unknown:
            raise ValueError(f"EvalConfig.modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if not isinstance(self.user_block, (int, np.integer)) or self.user_block < 1:
            raise ValueError(f"EvalConfig.user_block must be an integer >= 1, got {self.user_block!r}")
        object.__setattr__(self, "ks", tuple(sorted({int(k) for k in ks})))
        object.__setattr__(self, "modes", tuple(dict.fromkeys(modes)))
        object.__setattr__(self, "user_block", int(self.user_block))


def metric_keys(ks: tuple[int, ...]) -> list[str]:
    """Result keys in order: precision@K, recall@K, ndcg@K, hit@K for each K."""
    return [f"{m}@{k}" for k in ks for m in METRICS]


# ---------------------------------------------------------------------------------------------
# Host-side preparation: validated pairs -> CSR index arrays
# ---------------------------------------------------------------------------------------------


def _check_status(item_status: np.ndarray) -> np.ndarray:
    status = np.asarray(item_status)
    if status.ndim != 1 or status.size == 0:
        raise ValueError(f"item_status must be a non-empty 1-D array (num_items,), got shape {status.shape}")
    if not np.isin(status, (0, 1, 2)).all():
        raise ValueError("item_status values must be 0 (warm), 1 (cold-val) or 2 (cold-test)")
    return status.astype(np.int8, copy=False)


def _csr(users: np.ndarray, items: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (num_rows+1,), items int64) grouped by row, items ascending."""
    # A dataset's train pairs are stored sorted (user, item): skip the O(N log N) sort then.
    du = np.diff(users)
    if (du >= 0).all() and ((du > 0) | (np.diff(items) >= 0)).all():
        order = slice(None)
    else:
        order = np.lexsort((items, users))
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_rows), out=indptr[1:])
    return indptr, np.ascontiguousarray(items[order], dtype=np.int64)


def _gather_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray):
    """Sub-CSR of `rows` (in that order), vectorised: (entry_row, entry_col, new_indptr)."""
    starts = indptr[rows]  # (R,)
    lens = indptr[rows + 1] - starts  # (R,)
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_indptr[1:])
    entry_row = np.repeat(np.arange(len(rows), dtype=np.int64), lens)  # (T,)
    offsets = np.arange(new_indptr[-1], dtype=np.int64) - new_indptr[entry_row] + starts[entry_row]
    return entry_row, indices[offsets], new_indptr


def _check_vectors(user_vecs: torch.Tensor, item_vecs: torch.Tensor, finite: bool = True) -> None:
    if not (isinstance(user_vecs, torch.Tensor) and isinstance(item_vecs, torch.Tensor)):
        raise ValueError("user_vecs and item_vecs must be torch tensors on the target device")
    if user_vecs.ndim != 2 or item_vecs.ndim != 2 or user_vecs.shape[1] != item_vecs.shape[1]:
        raise ValueError(
            f"user_vecs (U, D) and item_vecs (I, D) must be 2-D with the same D, got "
            f"{tuple(user_vecs.shape)} and {tuple(item_vecs.shape)}"
        )
    if user_vecs.device != item_vecs.device:
        raise ValueError(f"user_vecs on {user_vecs.device} but item_vecs on {item_vecs.device}; move both")
    # One host sync per evaluation: NaN would make topk order meaningless without any error.
    if finite and not bool(torch.isfinite(user_vecs).all() & torch.isfinite(item_vecs).all()):
        raise TrainingDivergedError(
            "user/item vectors contain NaN or inf: the model diverged (lower the learning rate) "
            "or the checkpoint is corrupt"
        )


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


class RankingEvaluator:
    """Full-ranking evaluation for fixed (train, eval, item status); prepare once, call per epoch.

    Only users with at least one eval positive are scored. Index arrays are moved to a device on
    first use there and cached.
    """

    def __init__(
        self, train_pairs, eval_pairs, item_status, num_users: int, config: EvalConfig = EvalConfig()
    ) -> None:
        self.config = config
        self.status = _check_status(item_status)
        self.num_users, self.num_items = int(num_users), len(self.status)
        num_items = self.num_items
        train = check_pairs("train_pairs", train_pairs, self.num_users, num_items, ValueError)
        pos = check_pairs("eval_pairs", eval_pairs, self.num_users, num_items, ValueError)
        keys = np.unique(pos[:, 0] * num_items + pos[:, 1])  # dedup; sorted by user, then item
        pos_users, pos_items = keys // num_items, keys % num_items
        self.eval_users = np.unique(pos_users)  # (E,) the only users that can count
        pos_rows = np.searchsorted(self.eval_users, pos_users)  # (P,) row among eval users
        self.pos_indptr = np.searchsorted(pos_rows, np.arange(len(self.eval_users) + 1))
        t_indptr, t_items = _csr(train[:, 0], train[:, 1], self.num_users)
        t_rows, t_cols, self.train_indptr = _gather_rows(t_indptr, t_items, self.eval_users)
        warm_pos = self.status[pos_items] == 0
        npos = {
            "all": np.bincount(pos_rows, minlength=len(self.eval_users)),
            "warm": np.bincount(pos_rows[warm_pos], minlength=len(self.eval_users)),
            "cold": np.bincount(pos_rows[~warm_pos], minlength=len(self.eval_users)),
        }
        self.users_per_mode = {m: int((n > 0).sum()) for m, n in npos.items()}
        self._host = {
            "eval_users": self.eval_users, "train_rows": t_rows, "train_cols": t_cols,
            "pos_rows": pos_rows, "pos_cols": pos_items,
            "cols_warm": np.flatnonzero(self.status == 0), "cols_cold": np.flatnonzero(self.status != 0),
            **{f"npos_{m}": n for m, n in npos.items()},
        }  # fmt: skip
        self._dev: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._dev:
            acc = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
            kmax = max(self.config.ks)
            disc = 1.0 / np.log2(np.arange(kmax) + 2.0)  # (kmax,) 1/log2(r+2)
            t = {k: torch.as_tensor(v, dtype=torch.int64, device=device) for k, v in self._host.items()}
            t["discount"] = torch.as_tensor(disc, dtype=acc, device=device)
            t["idcg"] = torch.as_tensor(np.concatenate([[0.0], np.cumsum(disc)]), dtype=acc, device=device)
            self._dev[device] = t
        return self._dev[device]

    @torch.no_grad()
    def __call__(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> dict[str, dict[str, float]]:
        cfg = self.config
        sums = None
        for m, s, e, hit in self._hits(user_vecs, item_vecs):
            t = self._tensors(user_vecs.device)
            if sums is None:
                sums = torch.zeros(len(cfg.modes), 4 * len(cfg.ks), dtype=t["discount"].dtype, device=user_vecs.device)
            sums[m] += self._block_sums(hit, t[f"npos_{cfg.modes[m]}"][s:e], t).sum(1)
        # the one device->host copy of the evaluation
        sums = sums.cpu().numpy() if sums is not None else np.zeros((len(cfg.modes), 4 * len(cfg.ks)))
        keys = metric_keys(cfg.ks)
        out: dict[str, dict[str, float]] = {}
        for m, mode in enumerate(cfg.modes):
            n = self.users_per_mode[mode]
            out[mode] = {key: (float(sums[m, j]) / n if n else 0.0) for j, key in enumerate(keys)}
            out[mode]["users"] = n
        return out

    @torch.no_grad()
    def per_user(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, mode: str, key: str) -> np.ndarray:
        """(users_per_mode[mode],) one metric (`key`, e.g. "recall@10") of each user counted in `mode`,
        in user order: the terms whose mean __call__ returns (paired comparisons of two rankings)."""
        cfg = self.config
        if mode not in cfg.modes or key not in metric_keys(cfg.ks):
            raise ValueError(f"{mode} {key} is not evaluated here: modes {cfg.modes}, ks {cfg.ks}")
        col = metric_keys(cfg.ks).index(key)
        parts = []
        for _, s, e, hit in self._hits(user_vecs, item_vecs, only=mode):
            t = self._tensors(user_vecs.device)
            npos = t[f"npos_{mode}"][s:e]
            parts.append(self._block_sums(hit, npos, t)[col][npos > 0])
        return torch.cat(parts).cpu().numpy() if parts else np.zeros(0)

    def _hits(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, only: str | None = None):
        """Yield (mode index, first, end, hit (B, kmax)) per block of eval users and mode: whether
        each of a user's top items is a held-out positive of that mode."""
        _check_vectors(user_vecs, item_vecs)
        if user_vecs.shape[0] != self.num_users or item_vecs.shape[0] != self.num_items:
            raise ValueError(
                f"vectors are for {user_vecs.shape[0]} users x {item_vecs.shape[0]} items but the pairs "
                f"and item_status describe {self.num_users} x {self.num_items}; use the same dataset"
            )
        cfg, dev = self.config, user_vecs.device
        t = self._tensors(dev)
        kmax, n_eval = max(cfg.ks), len(self.eval_users)
        active = [m for m in cfg.modes if self.users_per_mode[m] > 0 and only in (None, m)]
        neg_inf = float("-inf")
        # Autocast off: a caller inside an AMP region must still get float32 scores.
        with torch.autocast(device_type=dev.type, enabled=False):
            items_f = item_vecs.float()  # (I, D)
            for s in range(0, n_eval if active else 0, cfg.user_block):
                e = min(s + cfg.user_block, n_eval)
                scores = user_vecs.index_select(0, t["eval_users"][s:e]).float() @ items_f.T  # (B, I)
                a, b = int(self.train_indptr[s]), int(self.train_indptr[e])  # host ints: no sync
                scores[t["train_rows"][a:b] - s, t["train_cols"][a:b]] = neg_inf
                a, b = int(self.pos_indptr[s]), int(self.pos_indptr[e])
                pos = torch.zeros(e - s, self.num_items, dtype=torch.bool, device=dev)  # (B, I)
                pos[t["pos_rows"][a:b] - s, t["pos_cols"][a:b]] = True
                for m, mode in enumerate(cfg.modes):
                    if mode not in active:
                        continue
                    cols = None if mode == "all" else t[f"cols_{mode}"]  # (I_mode,) candidate items
                    sub = scores if cols is None else scores.index_select(1, cols)  # (B, I_mode)
                    vals, idx = torch.topk(sub, min(kmax, sub.shape[1]), dim=1)  # (B, k)
                    if cols is not None:
                        idx = cols[idx]  # (B, k) back to item ids
                    yield m, s, e, pos.gather(1, idx) & (vals != neg_inf)  # a -inf item is never a hit

    def _block_sums(self, hit: torch.Tensor, npos: torch.Tensor, t: dict) -> torch.Tensor:
        """(4 * len(ks), B) each block user's precision, recall, ndcg, hit @K (zero for a user that
        does not count: no positive of the mode)."""
        acc = t["discount"].dtype
        k = hit.shape[1]
        h = hit.to(acc)  # (B, k)
        nhit_at = h.cumsum(1)  # (B, k) hits within the first r+1 positions
        dcg_at = (h * t["discount"][:k]).cumsum(1)  # (B, k)
        counted = npos > 0  # (B,)
        npos_f = npos.clamp(min=1).to(acc)  # (B,)
        out = []
        for K in self.config.ks:
            c = min(K, k) - 1
            nhit, dcg = nhit_at[:, c], dcg_at[:, c]  # (B,)
            idcg = t["idcg"][npos.clamp(max=K)]  # (B,) zero only for users that do not count
            ndcg = torch.where(counted, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
            out.append(torch.stack([nhit / K, nhit / npos_f, ndcg, (nhit > 0).to(acc)]) * counted)  # (4, B)
        return torch.cat(out)


def evaluate_ranking(
    user_vecs: torch.Tensor,  # (U, D) on the target device
    item_vecs: torch.Tensor,  # (I, D)
    train_pairs: np.ndarray,  # (N, 2) int: masked
    eval_pairs: np.ndarray,  # (M, 2) int: positives
    item_status: np.ndarray,  # (I,) int8
    config: EvalConfig = EvalConfig(),
) -> dict[str, dict[str, float]]:
    """{mode: {"precision@K", "recall@K", "ndcg@K", "hit@K" for each K..., "users": n}}.

    See the module docstring for the definitions. To evaluate the same split every epoch, build a
    `RankingEvaluator` once instead; this function prepares one per call.
    """
    _check_vectors(user_vecs, item_vecs, finite=False)  # the evaluator call checks finiteness
    if np.shape(item_status) != (item_vecs.shape[0],):
        raise ValueError(
            f"item_status has shape {np.shape(item_status)} but there are {item_vecs.shape[0]} item "
            "vectors; pass the item_status of the dataset the vectors were trained on"
        )
    evaluator = RankingEvaluator(train_pairs, eval_pairs, item_status, user_vecs.shape[0], config)
    return evaluator(user_vecs, item_vecs)
