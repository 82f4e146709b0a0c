"""The training method's gradient (book chapter "The training method"): autograd through the implicit
head equals the two-path formula and central finite differences, in float64."""
import copy

import torch
import torch.nn.functional as F

import guiding_nc as gnc
from guiding_nc.core.heads import ImplicitETFHead, normalize_features
from guiding_nc.core.running_means import ClassMeanEMA, ema_alpha
from test_nearest import central_difference_grad

F64 = torch.float64


def test_the_moving_average_weighs_batch_s_by_s():
    ema, hats = ClassMeanEMA(6, 3, dtype=F64), []
    for t in range(1, 7):
        h, y = torch.randn(9, 6, dtype=F64, generator=torch.Generator().manual_seed(t)), torch.arange(9) % 3
        H, _ = ema.update(h, y)
        hats.append(ema.batch_matrix(*ema.batch_statistics(h, y))[0])
        assert torch.allclose(H, 2 / (t * (t + 1)) * sum((s + 1) * hats[s] for s in range(t)), atol=1e-14)


def test_the_gradient_to_the_features_three_ways():
    d, C, B, tau = 7, 3, 9, 5.0
    y = torch.arange(B) % C
    g = lambda s: torch.Generator().manual_seed(s)
    head = ImplicitETFHead(d, C, tau=tau, solve_dtype=F64).train()
    for s in range(9):
        head(torch.randn(B, d, dtype=F64, generator=g(s)), y)
    h = torch.randn(B, d, dtype=F64, generator=g(99))
    loss = lambda x: F.cross_entropy(copy.deepcopy(head)(x, y), y)
    hr = h.clone().requires_grad_()
    (g_auto,) = torch.autograd.grad(loss(hr), hr)
    # The two-path formula.
    alpha = ema_alpha(10)
    hn = normalize_features(h).requires_grad_()
    Hb, hgb, _ = head.ema.batch_matrix(*head.ema.batch_statistics(hn, y))
    Ht = (alpha * Hb + (1 - alpha) * head.ema.means).detach().requires_grad_()
    hG = (alpha * hgb + (1 - alpha) * head.ema.global_mean).detach()
    W = gnc.etf_classifier(gnc.nearest_etf(Ht, head.nearest.prox, head.nearest.delta))
    gz = (F.softmax(tau * (hn.detach() - hG) @ W.detach().T, 1) - F.one_hot(y, C).to(F64)) / B
    direct = tau * gz @ W.detach() - alpha * tau * gz.sum(0, keepdim=True) @ W.detach() / B
    (dHt,) = torch.autograd.grad(W, Ht, grad_outputs=tau * gz.T @ (hn.detach() - hG))
    (through_W,) = torch.autograd.grad(Hb, hn, grad_outputs=alpha * dHt)
    gh = direct + through_W
    g_formula = (gh - hn.detach() * (hn.detach() * gh).sum(1, keepdim=True)) / h.norm(dim=1, keepdim=True)
    assert torch.allclose(g_auto, g_formula, atol=1e-12)
    # Central finite differences.
    with torch.no_grad():
        g_fd = central_difference_grad(loss, h)
    assert torch.allclose(g_auto, g_fd, atol=1e-7)
