"""The fused gather-dot kernels against a slow loop and against the torch formulation."""

import numpy as np
import pytest
import torch

from clcrec.kernels import gather_dot, torch_gather_dot


def slow_gather_dot(table, idx, vec, grad):
    """Obvious float64 loops: scores and the gradients of sum(grad * scores)."""
    t, v, g = table.double().numpy(), vec.double().numpy(), grad.double().numpy()
    out, gt, gv = np.zeros(idx.shape), np.zeros_like(t), np.zeros_like(v)
    for b in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            r = int(idx[b, k])
            out[b, k] = t[r] @ v[b]
            gt[r] += g[b, k] * v[b]
            gv[b] += g[b, k] * t[r]
    return out, gt, gv


def inputs(seed, R=7, B=5, K=9, D=6):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(R, D, generator=g, requires_grad=True)
    vec = torch.randn(B, D, generator=g, requires_grad=True)
    idx = torch.randint(0, R, (B, K), generator=g)  # R < K: every row repeats indices
    grad = torch.randn(B, K, generator=g)
    return table, idx, vec, grad


def test_forward_and_gradients_equal_a_slow_loop():
    table, idx, vec, grad = inputs(0)
    out = gather_dot(table, idx, vec)
    out.backward(grad)
    ref_out, ref_gt, ref_gv = slow_gather_dot(table.detach(), idx, vec.detach(), grad)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table.grad.numpy(), ref_gt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vec.grad.numpy(), ref_gv, rtol=1e-5, atol=1e-5)
    unused = sorted(set(range(table.shape[0])) - set(idx.flatten().tolist()))
    assert not table.grad[unused].any()  # rows no slot picked get exactly zero


def test_equals_the_torch_formulation_on_non_contiguous_inputs():
    table, idx, vec, grad = inputs(1, R=40, B=8, K=33, D=16)
    t_nc = table.detach().t().contiguous().t().requires_grad_()  # same values, column-major
    v_nc = vec.detach().t().contiguous().t().requires_grad_()
    assert not t_nc.is_contiguous() and not v_nc.is_contiguous()
    fused = gather_dot(t_nc, idx, v_nc)
    fused.backward(grad)
    plain = torch_gather_dot(table, idx, vec)
    plain.backward(grad)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(t_nc.grad, table.grad)
    torch.testing.assert_close(v_nc.grad, vec.grad)


def test_bf16_inputs_get_float32_scores_and_gradients_in_their_dtype():
    table, idx, vec, grad = inputs(2)
    tb, vb = table.detach().bfloat16().requires_grad_(), vec.detach().bfloat16().requires_grad_()
    out = gather_dot(tb, idx, vb)
    assert out.dtype == torch.float32
    out.backward(grad)
    assert tb.grad.dtype == vb.grad.dtype == torch.bfloat16
    ref = torch_gather_dot(tb.float(), idx, vb.float())
    torch.testing.assert_close(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_path_equals_the_cpu_kernels():
    table, idx, vec, grad = inputs(3, R=50, B=16, K=65, D=32)
    out = gather_dot(table, idx, vec)
    out.backward(grad)
    tc, vc = table.detach().cuda().requires_grad_(), vec.detach().cuda().requires_grad_()
    out_c = gather_dot(tc, idx.cuda(), vc)
    out_c.backward(grad.cuda())
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-4, atol=1e-4)  # TF32 may be on for bmm
    torch.testing.assert_close(tc.grad.cpu(), table.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vc.grad.cpu(), vec.grad, rtol=1e-4, atol=1e-4)
