"""The CLCRec model: ID embeddings, a content encoder, and the two contrastive losses.

Faithful to the paper and the reference code, with these deliberate differences:
- Users and items have separate embedding tables (the reference stacks them in one table and
  offsets item ids by num_user); both are initialised with the reference's xavier-normal std
  computed over the stacked shape, so the initial distribution is the same.
- The U-I hybrid contrast picks item slots with an independent Bernoulli(num_sample) draw per
  slot. The reference draws `int(slots * num_sample)` indices *with replacement*, so only about
  39% of slots (1 - e^-0.5) are replaced at num_sample=0.5, not 50%; ours replaces num_sample of
  them in expectation, with no host sync.
- Each softmax is computed as logsumexp(scores) - score_pos (stable), not log(exp/sum(exp)).
- Per-item work has four forms, chosen by clcrec/train/plan.py from `scoring` and `encode`:
  `unique` encodes each distinct item of the batch once (ids deduplicated by the loader's producer
  thread; the CPU default), `slots` encodes every slot (no dedupe, fixed shapes), `all` encodes the
  whole catalogue once and scores the slots by gathers (fixed shapes; fewer encoder rows than
  `slots` whenever the catalogue is smaller than a batch's slots), and `dense`
  encodes the whole catalogue once per step and scores each batch row against every item with one
  matmul per loss, then picks the sampled columns (the GPU default for catalogues that are small
  next to a batch's slots: its backward is matmuls instead of gathers and a sort-based embedding
  backward). The reference encodes the whole catalogue at every step too, but scores by gathers.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clcrec.config import COLD_VECTORS, TrainConfig
from clcrec.losses import Losses, contrastive_loss, dense_contrastive_loss, mean0
from common.errors import UserError

# raw: a cold item ranks by its encoder output as is (the reference code). normalised: by the unit
# direction of that output (what the R-E loss trains: cosine to the item's ID embedding), scaled to
# the mean norm of the warm items' ID embeddings, so no cold item outranks the others for every
# user by its norm alone, and cold and warm rows have comparable scales in all-item rankings.
# scaled: the output times one factor that brings the warm items' outputs to their ID embeddings'
# mean norm: on the ID scale on average, while each item keeps its output's relative length (the
# popularity signal the raw norm carries among cold items). (The modes: clcrec.config.COLD_VECTORS.)


def concat_normalised_features(features: list[np.ndarray]) -> torch.Tensor:
    """Each modality L2-normalised per row (as the reference does), then concatenated."""
    parts = [F.normalize(torch.from_numpy(np.array(f, dtype=np.float32)), dim=1) for f in features]  # copies the mmap
    return torch.cat(parts, dim=1).contiguous()  # (I, F)


def check_fits_memory(rows: int, dim: int) -> None:
    """Refuse embedding tables that cannot be trained in this machine's memory (16 bytes per
    parameter: weight, gradient, two Adam moments), before torch tries to allocate them."""
    need = rows * dim * 16
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > have:
        raise UserError(f"--dim-e {dim}: the embedding tables of {rows:,} users and items need {need / 2**30:,.1f} "
                        f"GiB to train, past this machine's {have / 2**30:,.1f} GiB of memory; use a smaller --dim-e")


# The content prior: cold items rank by u . (c_mean + (1 - W) * (c_i - c_mean)) + W * unit *
# (cos(profile_u, content_i) - the user's mean cosine over cold items): a convex mix of the
# deviations of the model's score and of the content-only cosine from their means over the cold
# items, the cosine scaled to the model's spread (`prior_unit`), the mix then scaled by g to the
# model's spread again (`prior_gain`). A user's mean score over the cold items and (on average) its
# spread stay the model's, so the mix reorders cold items without moving them as a group against
# warm items in all-item rankings. Both terms are dot products, so the tables grow by the F content
# columns (users: beta = g * W * unit times the profile; items: lean * (content - centre)) and every
# ranking path stays one matmul. `lean` is 1 for cold items, 0 for warm ones (and 1 - n / (n + k)
# under an update's blend).
PRIOR_GRID = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)  # weights W tried on validation (1: content alone)


class Prior(NamedTuple):
    weight: float  # W: the content cosine's share of a cold item's score
    beta: float  # g * W * prior_unit: the factor on the user profiles
    share: float  # g * (1 - W): the factor on the model's deviations from the cold mean row

    @classmethod
    def of(cls, record: dict | None) -> "Prior":
        """The prior a run recorded (config.json "content_prior"); none for runs without one."""
        r = record if isinstance(record, dict) else {}
        vals = {k: r.get(k, d) for k, d in (("weight", 0.0), ("beta", 0.0), ("share", None))}
        vals["share"] = 1.0 - vals["weight"] if vals["share"] is None and _real(vals["weight"]) else vals["share"]
        bad = [k for k, v in vals.items() if not _real(v) or (k == "weight" and not 0 <= v <= 1)]
        if bad or (record is not None and not isinstance(record, dict)):
            raise UserError(f"the run's config.json has an invalid content_prior ({bad[0] if bad else 'not a table'}: "
                            f"{vals[bad[0]] if bad else record!r}; weight must be a finite number from 0 to 1, beta "
                            "and share finite numbers); the run's ranking cannot be trusted: restore its config.json")
        return cls(float(vals["weight"]), float(vals["beta"]), float(vals["share"]))


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NO_PRIOR = Prior(0.0, 0.0, 1.0)


class CLCRec(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        features: torch.Tensor,  # (I, F) concatenated normalised content features
        dim_E: int = 64,
        hidden: int = 256,
        temp_value: float = 2.0,
        lr_lambda: float = 0.5,
        num_sample: float = 0.5,
        cold_vectors: str = "raw",  # how cold items' encoder outputs rank: one of COLD_VECTORS
        reg_content: float = 0.0,  # weight of the slots' encoder-output norms in the regulariser
    ):
        super().__init__()
        if cold_vectors not in COLD_VECTORS:
            raise ValueError(f"cold_vectors must be one of {COLD_VECTORS}, got {cold_vectors!r}")
        self.cold_vectors = cold_vectors
        self.num_users, self.num_items = num_users, num_items
        self.temp_value, self.lr_lambda, self.num_sample = temp_value, lr_lambda, num_sample
        self.reg_content = float(reg_content)
        self.user_emb = nn.Embedding(num_users, dim_E)
        self.item_emb = nn.Embedding(num_items, dim_E)
        # Reference: xavier_normal_ on one (num_user + num_item, dim_E) table.
        std = math.sqrt(2.0 / (num_users + num_items + dim_E))
        nn.init.normal_(self.user_emb.weight, 0.0, std)
        nn.init.normal_(self.item_emb.weight, 0.0, std)
        self.register_buffer("features", features, persistent=False)  # (I, F)
        self.encoder = nn.Sequential(
            nn.Linear(features.shape[1], hidden), nn.LeakyReLU(), nn.Linear(hidden, dim_E)
        )

    @classmethod
    def from_config(cls, cfg: TrainConfig, dataset, modalities: list[str] | None = None) -> "CLCRec":
        """The model a TrainConfig describes over `dataset` (a pipeline Dataset): its content is
        `modalities` (default: the config's choice among the dataset's), each normalised per row.
        Initialised from torch's current RNG state: seed it first for a reproducible model."""
        if modalities is None:
            modalities = cfg.select_modalities([m["name"] for m in dataset.meta["modalities"]])
        check_fits_memory(dataset.num_users + dataset.num_items, cfg.dim_E)
        feats = concat_normalised_features([dataset.features[m] for m in modalities])
        return cls(dataset.num_users, dataset.num_items, feats, cfg.dim_E, cfg.hidden, cfg.temp_value,
                   cfg.lr_lambda, cfg.num_sample, cfg.cold_vectors, cfg.reg_content)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Content representation of `items` (any shape) -> (..., D)."""
        return self.encoder(F.embedding(items, self.features))  # index_select: faster than [items] on CPU

    def forward(
        self,
        users: torch.Tensor,  # (B,) user ids
        items: torch.Tensor,  # (B, 1+K) item ids, positive in column 0
        hybrid: torch.Tensor,  # (B, 1+K) bool: slots whose U-I item uses the encoder output
        uniq: torch.Tensor | None = None,  # (Q,) distinct item ids of the batch (unique mode)
        inverse: torch.Tensor | None = None,  # (B, 1+K) index of each slot into uniq
        dense: bool = False,  # score against the whole item table (uniq/inverse unused)
        encode_all: bool = False,  # encode the whole catalogue, score by gathers (uniq/inverse unused)
    ) -> Losses:
        """Returns the loss terms (Losses: loss_re, loss_ui, reg) as 0-dim tensors; no host sync.

        Per-item work (embedding lookup, encoder, normalisation, norms) runs once per row of a
        per-step item table: the batch's distinct items (unique), every slot (slots: each slot its
        own "distinct" item) or the whole catalogue (dense: `inverse` is then the item ids). Each
        loss scores the slots' rows against one vector per batch row (`contrastive_loss`: fused
        numba on CPU, no (B, 1+K, D) tensor; dense: one (B, Q) matmul and a column gather), and the
        hybrid choice is an index into [ID rows; content rows], not a D-wide `where`.
        """
        if dense or encode_all:
            emb = self.item_emb.weight  # (I, D): no gather, and a dense gradient
            feat = self.encoder(self.features)  # (I, D): each item once
            inverse, nce = items, (dense_contrastive_loss if dense else contrastive_loss)
        else:
            if uniq is None:
                uniq = items.reshape(-1)  # (B*(1+K),)
                inverse = torch.arange(uniq.numel(), device=items.device).view(items.shape)
            emb = self.item_emb(uniq)  # (Q, D)
            feat = self.encode(uniq)  # (Q, D)
            nce = contrastive_loss
        q = emb.shape[0]
        user = self.user_emb(users)  # (B, D)

        # R-E: the positive's normalised ID embedding against the normalised content
        # representations of the positive and its negatives.
        anchor = F.normalize(F.embedding(inverse[:, 0], emb), dim=-1)  # (B, D)
        loss_re = nce(F.normalize(feat, dim=-1), inverse, anchor, self.temp_value)

        # U-I with hybrid contrast: in `hybrid` slots the item is its content representation.
        # One gather from [ID rows; content rows] with the choice folded into the index.
        both = torch.cat([emb, feat.to(emb.dtype)])  # (2Q, D)
        pick = inverse + hybrid.long() * q  # (B, 1+K) row in `both`
        loss_ui = nce(both, pick, user, self.temp_value)

        # The reference regulariser: mean L2 norm of the user and of every item-slot embedding.
        # Slot mean as a count-weighted sum over table rows: no (B, 1+K) gather to differentiate.
        # (bincount would size its output from the data: a host sync on CUDA; index_add_ is not)
        flat = inverse.reshape(-1)
        # (embedding rows are parameters' dtype, fp32 under autocast too: no casts needed)
        slots = emb.new_zeros(q).index_add_(0, flat, torch.ones_like(flat, dtype=emb.dtype))  # (Q,)
        item_reg = (slots * emb.norm(dim=1)).sum() / max(inverse.numel(), 1)
        reg = (mean0(user.norm(dim=1)) + item_reg) / 2
        if self.reg_content > 0:
            # The encoder's outputs score in U-I slots beside the ID embeddings but, in the reference,
            # no norm term holds them: they grow along the users' shared direction until a cold item's
            # score is mostly its content-predicted popularity, one list for everyone (docs/results.md).
            content_reg = (slots * feat.float().norm(dim=1)).sum() / max(inverse.numel(), 1)
            reg = reg + self.reg_content * content_reg / 2
        return Losses(loss_re, loss_ui, reg)

    def combine(self, loss_re, loss_ui, reg, reg_weight: float) -> torch.Tensor:
        """The objective from the Losses terms (pass them as `*losses`)."""
        return self.lr_lambda * loss_re + (1 - self.lr_lambda) * loss_ui + reg_weight * reg

    @torch.no_grad()
    def cold_scale(self, item_status) -> float:
        """Mean L2 norm of the warm items' ID embeddings (the scale of normalised cold rows)."""
        warm = torch.as_tensor(item_status, device=self.item_emb.weight.device) == 0  # (I,)
        norms = self.item_emb.weight.detach().float().norm(dim=1)  # (I,)
        return float(norms[warm].mean()) if bool(warm.any()) else 1.0  # host sync (once per table)

    @torch.no_grad()
    def content_scale(self, item_status, block: int = 65536) -> float:
        """The factor `cold_rows` takes under `cold_vectors`: 1 (raw); the warm ID embeddings' mean
        norm (normalised); that over the warm items' mean encoder-output norm (scaled; over every
        item without warm ones)."""
        if self.cold_vectors in ("raw", "centred"):
            return 1.0
        scale = self.cold_scale(item_status)
        if self.cold_vectors == "normalised":
            return scale
        dev = self.item_emb.weight.device
        warm = torch.nonzero(torch.as_tensor(item_status, device=dev) == 0).flatten()  # (W,)
        idx = warm if warm.numel() else torch.arange(self.num_items, device=dev)
        total = sum(float(self.encode(idx[s : s + block]).float().norm(dim=1).sum()) for s in range(0, idx.numel(), block))
        return scale / max(total / max(idx.numel(), 1), 1e-12)

    @contextmanager
    def ranked_as(self, form: str):
        """Rank cold items as `form` (one of COLD_VECTORS) inside the block, then as before."""
        kind, self.cold_vectors = self.cold_vectors, form
        try:
            yield
        finally:
            self.cold_vectors = kind

    @torch.no_grad()
    def cold_shift(self, item_status, block: int = 65536) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(centre (D,), axis (D,)) that `centred` cold rows take, else None: the cold items' mean
        encoder output and the unit direction of the mean user embedding. A cold row's deviation
        from the centre loses its component on the axis, so its mean score over all users is the
        centre's for every cold item: nothing is common to all users' cold lists, while a user's
        own lean along the axis still counts, and so does the cold items' level against warm ones."""
        if self.cold_vectors != "centred":
            return None
        dev = self.item_emb.weight.device
        cold = torch.nonzero(torch.as_tensor(item_status, device=dev) != 0).flatten()  # (C,)
        total = torch.zeros(self.item_emb.weight.shape[1], device=dev)
        for s in range(0, cold.numel(), block):
            total += self.encode(cold[s : s + block]).float().sum(0)
        axis = F.normalize(self.user_emb.weight.detach().float().mean(0), dim=0)  # (D,)
        return total / max(cold.numel(), 1), axis

    def cold_rows(self, encoded: torch.Tensor, scale: float, shift=None) -> torch.Tensor:
        """(N, D) ranking rows of cold items from their encoder outputs (N, D), per `cold_vectors`,
        `scale` from `content_scale`, `shift` from `cold_shift` (centred)."""
        if self.cold_vectors == "raw":
            return encoded
        if self.cold_vectors == "centred":
            centre, axis = shift
            return encoded - ((encoded - centre) @ axis)[:, None] * axis  # (N, D)
        if self.cold_vectors == "scaled":
            return encoded * scale
        return F.normalize(encoded, dim=-1) * scale

    @torch.no_grad()
    def ranking_table(self, item_status: torch.Tensor, block: int = 65536, *, counts: torch.Tensor | None = None,
                      blend_k: float = 0.0, content_share: float = 1.0) -> torch.Tensor:
        """(I, D) float32: warm items use their ID embedding, cold items their encoder output (as is,
        or its direction at the warm items' mean norm: `cold_vectors`).

        With `blend_k` > 0 every item is ranked by w * ID + (1 - w) * content, w = n / (n + k) from
        its training interaction count n (`counts`, (I,)): an item with a few interactions leans on
        its content, a popular one on its ID embedding, an item without any is pure content.
        `content_share` != 1 (a content prior's g * (1 - W)) scales every encoder-output row about the
        cold items' mean row (`cold_centre`): a user's mean score over cold items stays the model's,
        so all-item rankings keep the model's balance of warm and cold."""
        table = self.item_emb.weight.detach().float().clone()
        item_status = torch.as_tensor(item_status, device=table.device)  # numpy or a tensor anywhere: the model's device
        scale, shift = self.content_scale(item_status), self.cold_shift(item_status)
        centre = self.cold_centre(item_status, scale, shift) if content_share != 1.0 else None

        def rows(idx):
            r = self.cold_rows(self.encode(idx).float(), scale, shift)
            return r if centre is None else centre + content_share * (r - centre)

        if blend_k > 0:
            w = (counts.float() / (counts.float() + blend_k)).to(table.device)[:, None]  # (I, 1)
            for s in range(0, table.shape[0], block):
                idx = torch.arange(s, min(s + block, table.shape[0]), device=table.device)
                table[idx] = w[idx] * table[idx] + (1 - w[idx]) * rows(idx)
            return table
        cold = torch.nonzero(item_status != 0).flatten()  # (C,)
        for s in range(0, cold.numel(), block):
            idx = cold[s : s + block]
            table[idx] = rows(idx)
        return table

    @torch.no_grad()
    def cold_centre(self, item_status, scale: float, shift=None, block: int = 65536) -> torch.Tensor:
        """(D,) the mean encoder-output ranking row of the cold items (zeros without any)."""
        dev = self.item_emb.weight.device
        cold = torch.nonzero(torch.as_tensor(item_status, device=dev) != 0).flatten()  # (C,)
        total = torch.zeros(self.item_emb.weight.shape[1], device=dev)
        for s in range(0, cold.numel(), block):
            total += self.cold_rows(self.encode(cold[s : s + block]).float(), scale, shift).sum(0)
        return total / max(cold.numel(), 1)

    @torch.no_grad()
    def user_table(self) -> torch.Tensor:
        return self.user_emb.weight.detach().float()

    @torch.no_grad()
    def tables(self, train: np.ndarray, item_status, prior: Prior = NO_PRIOR, *,
               counts: torch.Tensor | None = None, blend_k: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(user table, ranking table) as served: `ranking_table`'s rows, with the content `prior`
        (`with_prior`) over the training pairs `train`."""
        status = torch.as_tensor(item_status, device=self.item_emb.weight.device)  # numpy, or a tensor anywhere
        users = self.user_table()
        items = self.ranking_table(status, counts=counts, blend_k=blend_k, content_share=prior.share)
        if prior.beta <= 0:
            return users, items
        if blend_k > 0:
            lean = blend_k / (counts.float() + blend_k)  # 1 - n / (n + k): the content share of each item
        else:
            lean = (status != 0).float()
        return with_prior(users, items, *self.content_tables(train, item_status), lean, prior.beta)

    @torch.no_grad()
    def content_tables(self, train: np.ndarray, item_status, chunk: int = 1 << 18):
        """(user profiles (U, F), item content (I, F), centre (F,)) float32. An item's content is the
        encoder's input (each modality normalised) as a unit row; a user's profile is the unit mean
        over their training items (zeros without any): profile . content is the content-only cosine
        (clcrec/evaluation/baselines.py's, over the run's modalities). The centre is the mean content
        of the cold items (`item_status` != 0): the prior ranks by the cosine less its mean over them."""
        items = F.normalize(self.features.float(), dim=1)  # (I, F)
        train = np.asarray(train)
        users = items.new_zeros(self.num_users, items.shape[1], dtype=torch.float64)  # (U, F) sums
        for s in range(0, len(train), chunk):
            block = torch.as_tensor(np.asarray(train[s : s + chunk], dtype=np.int64), device=items.device)  # (C, 2)
            users.index_add_(0, block[:, 0], items[block[:, 1]].double())
        return F.normalize(users, dim=1).float(), items, self.content_centre(item_status)

    @torch.no_grad()
    def content_centre(self, item_status) -> torch.Tensor:
        """(F,) the mean unit content row of the cold items (zeros without any)."""
        items = F.normalize(self.features.float(), dim=1)  # (I, F)
        cold = torch.as_tensor(item_status, device=items.device) != 0  # (I,)
        return items[cold].mean(0) if bool(cold.any()) else items.new_zeros(items.shape[1])


def with_prior(users: torch.Tensor, items: torch.Tensor, profiles: torch.Tensor, content: torch.Tensor,
               centre: torch.Tensor, lean: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, D + F), (I, D + F): the ranking tables (their encoder-output rows already scaled by the
    prior's share) with the content prior's columns, the profiles weighted by `beta`."""
    lean = lean.to(device=items.device, dtype=items.dtype)[:, None]  # (I, 1)
    return (torch.cat([users, beta * profiles.to(users.device)], dim=1),
            torch.cat([items, lean * (content.to(items.device) - centre.to(items.device))], dim=1))


@torch.no_grad()
def prior_gain(users: torch.Tensor, items: torch.Tensor, mixed: torch.Tensor, cold: torch.Tensor,
               sample: int = 2048) -> float:
    """g: the model's within-user spread of cold scores (`items`) over that of the mix (`mixed`, the
    users' table widened by with_prior), averaged over the first `sample` users."""
    idx = torch.nonzero(cold.to(items.device)).flatten()
    if idx.numel() < 2:
        return 1.0
    pure = float((users[:sample] @ items[idx].T).std(dim=1).mean())
    mix = float((mixed[0][:sample] @ mixed[1][idx].T).std(dim=1).mean())
    return pure / mix if mix > 0 else 1.0


@torch.no_grad()
def prior_unit(users: torch.Tensor, items: torch.Tensor, profiles: torch.Tensor, content: torch.Tensor,
               cold: torch.Tensor, sample: int = 2048) -> float:
    """The cosine's factor at W = 1: the spread of the model's cold-item scores (pure, W = 0) over
    that of the content cosines (each user's sd across cold items, averaged over the first `sample`
    users: what orders one user's list), so that the mix's W is the cosine's share whatever the
    scale of the encoder's outputs."""
    idx = torch.nonzero(cold.to(items.device)).flatten()
    if idx.numel() == 0:
        return 0.0
    model = users[:sample] @ items[idx].T  # (S, C)
    cos = profiles[:sample].to(items.device) @ content[idx].to(items.device).T  # (S, C)
    spread = float(cos.std(dim=1).mean()) if idx.numel() > 1 else 0.0
    return float(model.std(dim=1).mean()) / spread if spread > 0 else 0.0
