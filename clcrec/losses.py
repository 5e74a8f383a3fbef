"""Fused CPU kernels for the two contrastive losses.

Both CLCRec losses score each row's 1+K item slots against one vector per row,
scores[b, k] = table[idx[b, k]] . vec[b], and take a softmax cross-entropy with the positive in
column 0. Written as torch ops this is a gather to (B, 1+K, D), a batched matrix-vector product,
a log-sum-exp and, in the backward pass, a (B, 1+K, D) gradient scattered back into the table,
mostly memory traffic on a CPU. The numba kernels below read each table row in place and compute
the loss and its gradient in one pass each way (docs/speed.md has the timings). Reads and
writes nothing on disk.

They run serially on purpose: the result is then the same for any thread count, and no numba
thread pool competes with torch's (or with a background negative-generation build) for the
cores. `reassoc`/`contract` let the D-long dot products vectorise (the order is fixed by the
compiled code, not by threads); NaN and inf keep their IEEE meaning, so a diverging run still
shows a non-finite loss. Other devices use the torch ops (`torch_contrastive_loss`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch

FAST = {"reassoc", "contract"}


class Losses(NamedTuple):
    """The terms of one step's objective, 0-dim tensors (`CLCRec.forward` returns them and
    `CLCRec.combine` weighs them). A new term is a field here and a line in each of those two: the
    step sums every field and the trainer logs each under its name."""

    loss_re: torch.Tensor  # R-E: an item's ID embedding against content representations
    loss_ui: torch.Tensor  # U-I: a user against item slots, some of them content (hybrid)
    reg: torch.Tensor  # mean L2 norm of the user and item-slot embeddings


def torch_gather_dot(table: torch.Tensor, idx: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """(B, K) scores[b, k] = table[idx[b, k]] . vec[b] in torch ops: a gather to (B, K, D), then a
    batched matrix-vector product (on CUDA one fast kernel each way)."""
    return torch.bmm(torch.nn.functional.embedding(idx, table), vec.unsqueeze(-1)).squeeze(-1)


@numba.njit(nogil=True, cache=True, fastmath=FAST)
def _nce_forward(table, idx, vec, inv_temp, scores, lse):
    """Fills scores (B, K) = dot / temp and lse (B,); returns sum_b lse[b] - scores[b, 0]."""
    total = 0.0  # float64: the batch sum
    for b in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            r = idx[b, k]
            acc = np.float32(0.0)
            for d in range(table.shape[1]):
                acc += table[r, d] * vec[b, d]
            scores[b, k] = acc * inv_temp
        m = scores[b, 0]
        for k in range(1, idx.shape[1]):
            m = max(m, scores[b, k])
        z = 0.0
        for k in range(idx.shape[1]):
            z += math.exp(scores[b, k] - m)
        lse[b] = m + math.log(z)
        total += lse[b] - scores[b, 0]
    return total


@numba.njit(nogil=True, cache=True, fastmath=FAST)
def _nce_backward(table, idx, vec, scores, lse, coef, grad_table, grad_vec):
    """d(coef * sum_b loss_b): d score[b, k] = coef * (softmax[b, k] - [k == 0]), times temp^-1
    folded into coef. grad_table (R, D) must arrive zeroed; grad_vec (B, D) is overwritten."""
    for b in range(idx.shape[0]):
        for d in range(table.shape[1]):
            grad_vec[b, d] = 0.0
        for k in range(idx.shape[1]):
            ds = np.float32(coef * (math.exp(scores[b, k] - lse[b]) - (1.0 if k == 0 else 0.0)))
            r = idx[b, k]
            for d in range(table.shape[1]):
                grad_vec[b, d] += ds * table[r, d]
                grad_table[r, d] += ds * vec[b, d]


class _ContrastiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, idx, vec, temp: float):
        table, idx, vec = table.contiguous(), idx.contiguous(), vec.contiguous()
        scores = torch.empty(idx.shape, dtype=torch.float32)
        lse = torch.empty(idx.shape[0], dtype=torch.float32)
        total = _nce_forward(table.detach().numpy(), idx.numpy(), vec.detach().numpy(), 1.0 / temp,
                             scores.numpy(), lse.numpy())
        ctx.save_for_backward(table, idx, vec, scores, lse)
        ctx.temp = temp
        return torch.tensor(total / max(idx.shape[0], 1), dtype=torch.float32)  # mean; 0 for no rows

    @staticmethod
    def backward(ctx, grad):
        table, idx, vec, scores, lse = ctx.saved_tensors
        coef = float(grad) / (max(idx.shape[0], 1) * ctx.temp)  # grad is a CPU scalar: no device sync
        grad_table, grad_vec = torch.zeros_like(table), torch.empty_like(vec)
        _nce_backward(table.detach().numpy(), idx.numpy(), vec.detach().numpy(), scores.numpy(), lse.numpy(),
                      coef, grad_table.numpy(), grad_vec.numpy())
        return grad_table, None, grad_vec, None


def mean0(x: torch.Tensor) -> torch.Tensor:
    """Mean that is 0 (not NaN) for an empty tensor: a rank whose slice of the epoch's last,
    tiny global batch is empty still takes its DDP step, with zero gradients."""
    return x.sum() / max(x.numel(), 1)


def info_nce(scores: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """Mean softmax cross-entropy of scores / temp with the positive in column 0. scores: (B, 1+K).
    AMP scores are upcast before the division: a bf16 quotient would keep 8 bits of each logit."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    scores = scores / temp
    return mean0(torch.logsumexp(scores, dim=1) - scores[:, 0])


def torch_contrastive_loss(table, idx, vec, temp: float) -> torch.Tensor:
    """The loss in torch ops: stable log-sum-exp over gathered scores (used on CUDA, and by the
    tests as the second implementation)."""
    return info_nce(torch_gather_dot(table, idx, vec), temp)


def dense_contrastive_loss(table: torch.Tensor, idx: torch.Tensor, vec: torch.Tensor, temp: float) -> torch.Tensor:
    """The same loss as `contrastive_loss`, computed by scoring every row of `table`: (B, R) =
    vec @ table^T, one matmul, then the (B, 1+K) sampled columns. Its backward is a scatter into
    (B, R) and two matmuls, with no sort-based embedding backward: the fast form on a GPU when R is
    small next to the batch's slots. (gather's backward is a scatter-add, so repeated ids, as with
    `--on-short repeat`, are summed correctly.)"""
    return info_nce(torch.gather(vec @ table.t(), 1, idx), temp)


def contrastive_loss(table: torch.Tensor, idx: torch.Tensor, vec: torch.Tensor, temp: float) -> torch.Tensor:
    """mean_b [logsumexp_k(s[b, k]) - s[b, 0]], s[b, k] = table[idx[b, k]] . vec[b] / temp.
    table (R, D), idx (B, 1+K) int64 with the positive in column 0, vec (B, D) -> 0-dim float32."""
    if table.device.type == "cpu" and table.dtype != torch.float64 and idx.dtype == torch.int64 and vec.dim() == 2:
        return _ContrastiveLoss.apply(table.float(), idx, vec.float(), float(temp))
    return torch_contrastive_loss(table, idx, vec, temp)
