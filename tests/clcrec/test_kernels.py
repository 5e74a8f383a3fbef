"""The fused contrastive-loss kernels against a slow loop and against the torch formulation."""

import math

import numpy as np
import pytest
import torch

from clcrec.kernels import contrastive_loss, torch_contrastive_loss


def slow_loss_and_grads(table, idx, vec, temp):
    """Obvious float64 loops: the mean softmax cross-entropy and its gradients."""
    t, v = table.double().numpy(), vec.double().numpy()
    B, K = idx.shape
    loss, gt, gv = 0.0, np.zeros_like(t), np.zeros_like(v)
    for b in range(B):
        s = [t[int(idx[b, k])] @ v[b] / temp for k in range(K)]
        m = max(s)
        lse = m + math.log(sum(math.exp(x - m) for x in s))
        loss += (lse - s[0]) / B
        for k in range(K):
            ds = (math.exp(s[k] - lse) - (k == 0)) / (B * temp)
            r = int(idx[b, k])
            gt[r] += ds * v[b]
            gv[b] += ds * t[r]
    return loss, gt, gv


def inputs(seed, R=7, B=5, K=9, D=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    table = (scale * torch.randn(R, D, generator=g)).requires_grad_()
    vec = torch.randn(B, D, generator=g, requires_grad=True)
    idx = torch.randint(0, R, (B, K), generator=g)  # R < K: every row repeats indices
    return table, idx, vec


def test_loss_and_gradients_equal_a_slow_loop():
    table, idx, vec = inputs(0)
    loss = contrastive_loss(table, idx, vec, 2.0)
    loss.backward()
    ref, ref_gt, ref_gv = slow_loss_and_grads(table.detach(), idx, vec.detach(), 2.0)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(table.grad.numpy(), ref_gt, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(vec.grad.numpy(), ref_gv, rtol=1e-4, atol=1e-6)
    unused = sorted(set(range(table.shape[0])) - set(idx.flatten().tolist()))
    assert not table.grad[unused].any()  # rows no slot picked get exactly zero


def test_equals_the_torch_formulation_on_non_contiguous_inputs():
    table, idx, vec = inputs(1, R=40, B=8, K=33, D=16)
    t_nc = table.detach().t().contiguous().t().requires_grad_()  # same values, column-major
    v_nc = vec.detach().t().contiguous().t().requires_grad_()
    assert not t_nc.is_contiguous() and not v_nc.is_contiguous()
    fused = contrastive_loss(t_nc, idx, v_nc, 0.5)
    (3 * fused).backward()  # an upstream gradient other than 1 reaches the kernel
    plain = torch_contrastive_loss(table, idx, vec, 0.5)
    (3 * plain).backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(t_nc.grad, table.grad)
    torch.testing.assert_close(v_nc.grad, vec.grad)


def test_stable_where_exp_overflows_and_nan_still_shows():
    table, idx, vec = inputs(2, scale=300.0)  # scores of several thousand: exp overflows float32
    loss = contrastive_loss(table, idx, vec, 1.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(slow_loss_and_grads(table.detach(), idx, vec.detach(), 1.0)[0], rel=1e-4)
    with torch.no_grad():
        table[idx[0, 3]] = float("nan")
    assert torch.isnan(contrastive_loss(table, idx, vec, 1.0))  # divergence stays visible


def test_no_rows_give_zero_loss_and_zero_gradients():
    table, _, vec = inputs(3)
    empty = torch.empty((0, 9), dtype=torch.int64)
    loss = contrastive_loss(table, empty, vec[:0], 2.0)
    loss.backward()
    assert loss.item() == 0.0 and not table.grad.any()


def test_bf16_inputs_get_a_float32_loss_and_gradients_in_their_dtype():
    table, idx, vec = inputs(4)
    tb, vb = table.detach().bfloat16().requires_grad_(), vec.detach().bfloat16().requires_grad_()
    loss = contrastive_loss(tb, idx, vb, 2.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert tb.grad.dtype == vb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, torch_contrastive_loss(tb.float(), idx, vb.float(), 2.0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_path_equals_the_cpu_kernels():
    table, idx, vec = inputs(5, R=50, B=16, K=65, D=32)
    loss = contrastive_loss(table, idx, vec, 2.0)
    loss.backward()
    tc, vc = table.detach().cuda().requires_grad_(), vec.detach().cuda().requires_grad_()
    loss_c = contrastive_loss(tc, idx.cuda(), vc, 2.0)
    loss_c.backward()
    torch.testing.assert_close(loss_c.cpu(), loss, rtol=1e-4, atol=1e-4)  # TF32 may be on for bmm
    torch.testing.assert_close(tc.grad.cpu(), table.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vc.grad.cpu(), vec.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["gather", "dense"])
def test_bf16_scores_are_upcast_before_the_temperature(form):
    """Under bf16 autocast the scores come out of the matmul in bf16; they are divided by the
    temperature in fp32, so the logits are rounded once (to bf16, by the matmul), not twice."""
    from clcrec.kernels import dense_contrastive_loss, info_nce, torch_gather_dot

    torch.manual_seed(0)
    table, vec = torch.randn(50, 16), torch.randn(32, 16)
    idx = torch.randint(0, 50, (32, 9))
    temp = 0.3  # not a power of two: the division rounds
    loss_fn = torch_contrastive_loss if form == "gather" else dense_contrastive_loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(table, idx, vec, temp)
        scores = torch_gather_dot(table, idx, vec) if form == "gather" else torch.gather(vec @ table.t(), 1, idx)
    assert scores.dtype == torch.bfloat16
    once = info_nce(scores.double() / temp).item()  # the bf16 scores, then exact arithmetic
    twice = info_nce((scores / temp).double()).item()  # divided in bf16: the defect
    assert got.dtype == torch.float32 and got.item() == pytest.approx(once, rel=1e-6)  # measured 7e-8
    assert twice != pytest.approx(once, rel=1e-4)  # the defect's error, measured 3.5e-4: the test tells them apart
