"""The nearest-ETF layer on CUDA: agreement with the CPU, gradients, the Newton–Schulz route's accuracy
in float32 at C = 1000, the gesvda route, half precision and the host reads of a training step.

Every test here is marked ``cuda`` and skipped without a CUDA device (``pytest -m cuda`` selects them;
``make gpu-check`` runs them).  The CPU side of the same code is tested in test_polar.py.
"""
import math
import warnings

import pytest
import torch
from conftest import requires_cuda
from test_nearest import class_means

import guiding_nc as gnc
from guiding_nc.core import polar
from guiding_nc.core.heads import ImplicitETFHead
from guiding_nc.core.nearest import procrustes_matrix

pytestmark = requires_cuda

F64 = torch.float64
CUDA = "cuda"


def collapsed_means(d, C, seed, noise=1e-4):
    g = torch.Generator().manual_seed(seed)
    R = gnc.random_point(d, C, generator=g, dtype=F64)
    H = gnc.mul_simplex_etf(R) + noise * torch.randn(d, C, generator=g, dtype=F64) / math.sqrt(d * C)
    H = H - H.mean(1, keepdim=True)
    return H / H.norm(), R


def grad_of(H, P, G, **kwargs):
    Hr = H.clone().requires_grad_()
    U = gnc.nearest_etf(Hr, P, 1e-3, **kwargs)
    (U * G).sum().backward()
    return U.detach(), Hr.grad


def test_auto_takes_newton_schulz_on_cuda():
    A = class_means(64, 10, 0).to(CUDA)
    assert gnc.polar_route(A) == "newton_schulz"
    assert gnc.polar_route(A.float()) == "newton_schulz"


@pytest.mark.parametrize("d,C", [(512, 10), (1024, 100), (1024, 1000)])
def test_float64_agrees_with_the_cpu(d, C):
    H = class_means(d, C, 1)
    P = gnc.nearest_etf(H, None)
    H2 = H + 0.05 * class_means(d, C, 2)
    H2 = H2 / H2.norm()
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(3), dtype=F64)
    U_cpu, g_cpu = grad_of(H2, P, G)
    U_gpu, g_gpu = grad_of(H2.to(CUDA), P.to(CUDA), G.to(CUDA))
    assert (U_gpu.cpu() - U_cpu).abs().max() <= 1e-10
    assert (g_gpu.cpu() - g_cpu).norm() <= 1e-10 * g_cpu.norm()


def test_gradcheck_on_cuda():
    H = class_means(12, 5, 3).to(CUDA).requires_grad_()
    P = gnc.nearest_etf(H.detach(), None)
    assert torch.autograd.gradcheck(lambda h: gnc.nearest_etf(h, P), (H,))
    Pr = P.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda h, p: gnc.nearest_etf(h, p), (H, Pr), eps=2e-7, atol=1e-5)


def test_closed_form_equals_dense_kkt_on_cuda():
    H = class_means(64, 10, 4).to(CUDA)
    P = gnc.nearest_etf(H, None)
    G = torch.randn(64, 10, generator=torch.Generator().manual_seed(5), dtype=F64).to(CUDA)
    _, g_cf = grad_of(H, P, G)
    _, g_kkt = grad_of(H, P, G, backward="kkt")
    assert (g_cf - g_kkt).norm() <= 1e-10 * g_kkt.norm()


@pytest.mark.parametrize("d", [1024, 2048])
@pytest.mark.parametrize("collapsed", [False, True])
def test_float32_newton_schulz_at_1000_classes(d, collapsed):
    C = 1000
    if collapsed:
        H, P = collapsed_means(d, C, 6)
    else:
        H = class_means(d, C, 6)
        P = gnc.nearest_etf(H, None)
        H = H + 0.05 * class_means(d, C, 7)
        H = H / H.norm()
    G = torch.randn(d, C, generator=torch.Generator().manual_seed(8), dtype=F64)
    U64, g64 = grad_of(H, P, G)  # float64 on the CPU
    state = polar.NewtonSchulzState()
    U32, g32 = grad_of(H.float().to(CUDA), P.float().to(CUDA), G.float().to(CUDA), polar_state=state)
    assert state.calls == 1 and state.fallbacks == 0
    assert gnc.orthonormality_error(U32.double()) <= 1e-5
    assert (U32.double().cpu() - U64).abs().max() <= 1e-4
    assert (g32.double().cpu() - g64).norm() <= 1e-4 * g64.norm()


def test_gesvda_route():
    A = procrustes_matrix(*collapsed_means(1024, 200, 9), 1e-3).to(CUDA)
    U_ref = gnc.polar_factor(A.cpu(), "svd")[0]
    U, s, V, route = gnc.polar_factor(A, "gesvda", return_route=True)
    assert route == "gesvda" and (U.cpu() - U_ref).abs().max() <= 1e-10
    U32 = gnc.polar_factor(A.float(), "gesvda")[0]
    assert gnc.orthonormality_error(U32.double()) <= 1e-5


def test_newton_schulz_falls_back_to_gesvda_on_cuda(monkeypatch):
    A = procrustes_matrix(class_means(64, 12, 10), gnc.canonical_point(64, 12, dtype=F64), 1e-9).to(CUDA)
    monkeypatch.setattr(polar, "NS_MAX_ITERATIONS", 10)
    monkeypatch.setattr(polar, "_NS_FALLBACK_WARNED", False)
    with pytest.warns(RuntimeWarning, match="computed by the 'gesvda' route"):
        out = polar.polar_solve(A, "newton_schulz")
    assert out.route == "gesvda" and gnc.orthonormality_error(out.U) < 1e-10


@pytest.mark.parametrize("C", [10, 100])
def test_exact_collapse_float32_gives_finite_gradients(C):
    E = gnc.simplex_etf(C, 256, "canonical", dtype=torch.float32).to(CUDA)
    E = E / E.norm()
    X = E.clone().requires_grad_()
    U = gnc.nearest_etf(X, gnc.nearest_etf(E, None))
    (U * torch.randn_like(U)).sum().backward()
    assert torch.isfinite(X.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype):
    H = class_means(512, 100, 5).to(CUDA, dtype).requires_grad_()
    U = gnc.nearest_etf(H, None)
    U.float().sum().backward()
    assert U.dtype == dtype and torch.isfinite(H.grad.float()).all()


def host_syncs(fn):
    """``(syncs, fn())``: the warnings of torch's sync debug mode raised while ``fn`` ran (one per
    call that waited for the device)."""
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            out = fn()
            torch.cuda.set_sync_debug_mode(old)
    finally:
        torch.cuda.set_sync_debug_mode(old)
    return [w for w in caught if "synchroniz" in str(w.message)], out


def test_a_training_step_reads_the_device_once():
    """After warm-up, one forward + backward of the implicit head syncs with the host at most once:
    the Newton–Schulz convergence check (torch's sync debug mode reports every synchronising call)."""
    d, C, B = 512, 100, 1000
    head = ImplicitETFHead(d, C).to(CUDA).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=g).to(CUDA)
    y = (torch.arange(B) % C).to(CUDA)

    def step():
        f = x.clone().requires_grad_()
        torch.nn.functional.cross_entropy(head(f, y), y).backward()

    for _ in range(4):
        step()
    reads = head.nearest.polar_state.host_reads
    syncs, _ = host_syncs(step)
    assert len(syncs) <= 1, [str(w.message)[:200] for w in syncs]
    assert head.nearest.polar_state.host_reads == reads + 1
    assert head.epoch_metrics()["polar_ns_fallbacks"] == 0


def test_implicit_head_amp_step_on_cuda():
    d, C, B = 256, 50, 500
    head = ImplicitETFHead(d, C).to(CUDA).train()
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)).to(CUDA)
    y = (torch.arange(B) % C).to(CUDA)
    for _ in range(3):
        f = x.clone().requires_grad_()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = head(f.bfloat16(), y)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        assert torch.isfinite(f.grad).all()
    assert head.weight.dtype == torch.float32
    W = head.weight.double()
    assert (W @ W.T - (torch.eye(C, device=CUDA, dtype=F64) * C - 1) / (C - 1)).abs().max() < 1e-5


def test_resumed_head_matches_to_rounding():
    """The Newton–Schulz route's memory (iterations before its first check) is host state, not in the
    state dict: a resumed head may run a different number of iterations past convergence, which
    changes the result at rounding level only (on the CPU route a resume is bit for bit)."""
    d, C, B = 128, 20, 200
    a = ImplicitETFHead(d, C).to(CUDA).train()
    g = torch.Generator().manual_seed(2)
    y = (torch.arange(B) % C).to(CUDA)
    for _ in range(3):
        a(torch.randn(B, d, generator=g).to(CUDA), y)
    b = ImplicitETFHead(d, C).to(CUDA).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(B, d, generator=g).to(CUDA)
    assert (a(x, y) - b(x, y)).abs().max() < 1e-5
    assert (a.weight - b.weight).abs().max() < 1e-6


def test_a_trainer_step_of_the_implicit_method_reads_the_device_once(tmp_path):
    """The whole training step (UFM backbone, implicit head with its DDN gradient, AGD) on CUDA."""
    from guiding_nc.training.config import load_config
    from guiding_nc.training.trainer import Trainer

    cfg = load_config(None, {"dataset": "ufm", "model": "ufm", "num_classes": 20, "num_samples": 400,
                             "feature_dim": 128, "batch_size": 400, "method": "implicit", "epochs": 1,
                             "eval_train": False, "eval_test": False, "checkpoint_every": 0, "progress": False,
                             "verbose": False, "timing": "off", "device": "cuda", "run_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    trainer.network.train()
    x, y = next(iter(trainer.train_loader))
    x, y = x.to(trainer.device), y.to(trainer.device)
    for _ in range(4):
        trainer.train_step(x, y)
    syncs, (loss, _, finite) = host_syncs(lambda: trainer.train_step(x, y))
    assert len(syncs) <= 1, [str(w.message)[:200] for w in syncs]
    assert bool(finite) and torch.isfinite(loss.detach())
