"""`gather_dot`: scores[b, k] = table[idx[b, k]] . vec[b], with its gradient, without
materialising the (B, 1+K, D) gathered rows.

Both CLCRec losses score each row's 1+K item slots against one vector per row. Written as
torch ops this is a gather to (B, 1+K, D), a batched matrix-vector product and, in the
backward pass, a (B, 1+K, D) gradient scattered back into the table: about 8 ms per call at
batch 256 x 129 slots on 2 CPU cores, most of it memory traffic and the poorly-shaped bmm.
The fused numba kernels below read each table row in place and take about 1 ms for forward
and backward together. They run serially on purpose: the result is then the same for any
thread count, and no numba thread pool competes with torch's (or with a background
negative-generation build) for the cores. Other devices use the torch ops.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


# fastmath lets the D-long dot product be vectorised (reassociated); the order is fixed by
# the compiled code, not by threads, so results stay reproducible on a given machine.
@numba.njit(nogil=True, cache=True, fastmath=True)
def _forward(table, idx, vec, out):  # (R, D) f32, (B, K) i64, (B, D) f32 -> (B, K) f32
    for b in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            r = idx[b, k]
            acc = np.float32(0.0)
            for d in range(table.shape[1]):
                acc += table[r, d] * vec[b, d]
            out[b, k] = acc


@numba.njit(nogil=True, cache=True, fastmath=True)
def _backward(table, idx, vec, grad, grad_table, grad_vec):
    """grad_table (R, D) must arrive zeroed; grad_vec (B, D) is overwritten."""
    for b in range(idx.shape[0]):
        for d in range(table.shape[1]):
            grad_vec[b, d] = 0.0
        for k in range(idx.shape[1]):
            r, g = idx[b, k], grad[b, k]
            for d in range(table.shape[1]):
                grad_vec[b, d] += g * table[r, d]
                grad_table[r, d] += g * vec[b, d]


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, idx, vec):
        table, idx, vec = table.contiguous(), idx.contiguous(), vec.contiguous()
        out = torch.empty(idx.shape, dtype=torch.float32)
        _forward(table.detach().numpy(), idx.numpy(), vec.detach().numpy(), out.numpy())
        ctx.save_for_backward(table, idx, vec)
        return out

    @staticmethod
    def backward(ctx, grad):
        table, idx, vec = ctx.saved_tensors
        grad_table, grad_vec = torch.zeros_like(table), torch.empty_like(vec)
        _backward(table.detach().numpy(), idx.numpy(), vec.detach().numpy(),
                  grad.float().contiguous().numpy(), grad_table.numpy(), grad_vec.numpy())
        return grad_table, None, grad_vec


def gather_dot(table: torch.Tensor, idx: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """(R, D), (B, K) int64, (B, D) -> (B, K): out[b, k] = table[idx[b, k]] . vec[b]."""
    if table.device.type == "cpu" and idx.dtype == torch.int64 and vec.dim() == 2:
        # float32 in and out (bf16 autocast on CPU included: the casts carry the gradient back)
        return _GatherDot.apply(table.float(), idx, vec.float())
    return torch_gather_dot(table, idx, vec)


def torch_gather_dot(table: torch.Tensor, idx: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """The same in torch ops (gather to (B, K, D), then a batched matrix-vector product): used on
    CUDA, where it is one fast kernel each way, and by the tests as the second implementation."""
    return torch.bmm(torch.nn.functional.embedding(idx, table), vec.unsqueeze(-1)).squeeze(-1)
