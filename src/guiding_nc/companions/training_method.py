"""The training method's checks (book chapter "The training method"): the gradient from the loss to
the features by its two-path formula, autograd and finite differences; one AGD step by hand and
the feature step each method takes; the rule for classes missing from a batch; the samplers.

Every function here computes what the chapter shows and ``tests/test_training_method.py``
asserts; the chapter calls them and prints their tables.
"""
from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.etf import etf_classifier, standard_simplex_etf
from ..core.heads import ImplicitETFHead, normalize_features
from ..core.nearest import nearest_etf
from ..core.running_means import ClassMeanEMA, ema_alpha
from ..training.optim import AGD, agd_scale
from .gradient_checks import central_difference_gradient
from .tables import METHOD_LABELS, Table, band, table

__all__ = ["batches", "warm_head", "head_loss", "two_path_gradient", "frozen_first_prox", "gradient_three_ways",
           "gradient_table", "agd_step_check", "agd_feature_steps", "fill_rule_comparison", "sampler_comparison"]

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batches(d: int, C: int, B: int, steps: int, *, structured: bool = True, noise: float = 0.5,
            seed: int = 0) -> List[Tuple[Tensor, Tensor]]:
    """``steps`` batches of ``B`` features ``(B, d)`` and labels ``arange(B) % C``, float64.

    ``structured``: every class keeps one centre (drawn once) for all batches, plus Gaussian noise
    of size ``noise``, so the running class means hold a lasting class structure, as a training
    run's do.  Otherwise every batch is fresh noise with no class structure at all."""
    y = torch.arange(B) % C
    centres = torch.randn(C, d, dtype=F64, generator=_gen(seed))
    out = []
    for s in range(steps):
        z = torch.randn(B, d, dtype=F64, generator=_gen(seed + 1 + s))
        out.append(((centres[y] + noise * z) if structured else z, y))
    return out


def warm_head(d: int, C: int, history: Sequence[Tuple[Tensor, Tensor]], *, tau: float = 5.0) -> ImplicitETFHead:
    """An implicit ETF head (float64 solve, training mode) after the batches of ``history``: its
    moving averages and proximal point are those of step ``len(history)``."""
    head = ImplicitETFHead(d, C, tau=tau, solve_dtype=F64).train()
    for h, y in history:
        head(h, y)
    return head


def head_loss(head: ImplicitETFHead, h: Tensor, y: Tensor) -> Tensor:
    """The batch's cross-entropy through a copy of ``head`` (the head's state is left as it is)."""
    return F.cross_entropy(copy.deepcopy(head)(h, y), y)


def two_path_gradient(head: ImplicitETFHead, h: Tensor, y: Tensor) -> Tuple[Tensor, float]:
    """``dL/dh`` assembled from the two paths of the chapter's formula, and the share
    ``||through W|| / ||dL/d h_hat||`` of the path through the classifier.

    The direct terms (through the logits and ``h_G``) are written out; the adjoint of the nearest
    ETF is ``torch.autograd.grad`` of :func:`nearest_etf` at a fixed proximal point; the
    Jacobian of the class-mean map is autograd of :meth:`ClassMeanEMA.batch_matrix`."""
    head = copy.deepcopy(head)
    C, B, tau = head.num_classes, h.shape[0], head.tau
    t = int(head.ema.step) + 1
    alpha = ema_alpha(t)
    hn = normalize_features(h).requires_grad_()
    Hb, hg_batch, _ = head.ema.batch_matrix(*head.ema.batch_statistics(hn, y))
    H_t = (alpha * Hb + (1 - alpha) * head.ema.means).detach()
    h_G = (alpha * hg_batch + (1 - alpha) * head.ema.global_mean).detach()
    delta = head.nearest.delta
    prox = head.nearest.prox if bool(head.nearest.initialized) else \
        nearest_etf(H_t, None, delta, return_prox=True)[1]
    Ht_leaf = H_t.clone().requires_grad_()
    W = etf_classifier(nearest_etf(Ht_leaf, prox, delta))
    Wd, hd = W.detach(), hn.detach()
    g = (F.softmax(tau * (hd - h_G) @ Wd.T, 1) - F.one_hot(y, C).to(h.dtype)) / B
    direct = tau * g @ Wd - alpha * tau * g.sum(0, keepdim=True) @ Wd / B  # through z and h_G
    (dL_dHt,) = torch.autograd.grad(W, Ht_leaf, grad_outputs=tau * g.T @ (hd - h_G))  # D U*^T
    (through_W,) = torch.autograd.grad(Hb, hn, grad_outputs=alpha * dL_dHt)  # alpha J_i^T [...]
    g_hat = direct + through_W
    grad = (g_hat - hd * (hd * g_hat).sum(1, keepdim=True)) / h.norm(dim=1, keepdim=True)
    return grad, float(through_W.norm() / g_hat.norm())


def frozen_first_prox(head: ImplicitETFHead, h: Tensor, y: Tensor) -> ImplicitETFHead:
    """A copy of a head before its first step whose proximal point is already the one the first
    step computes from ``h``, held fixed: the derivative the method takes at ``t = 1``."""
    frozen = copy.deepcopy(head)
    H1 = frozen.ema.batch_matrix(*frozen.ema.batch_statistics(normalize_features(h), y))[0]
    frozen.nearest.prox = nearest_etf(H1, None, frozen.nearest.delta, return_prox=True)[1]
    frozen.nearest.initialized.fill_(True)
    frozen.nearest._initialized = True
    return frozen


def gradient_three_ways(t: int, *, structured: bool = True, d: int = 9, C: int = 3, B: int = 12,
                        seed: int = 0, eps: float = 1e-6) -> Dict[str, float]:
    """At step ``t`` (after ``t - 1`` earlier batches): autograd through the head against the
    two-path formula and central differences (at ``t = 1`` also with the proximal point held
    fixed), the share of the path through ``W`` and ``alpha_t``."""
    data = batches(d, C, B, t, structured=structured, seed=seed)
    head = warm_head(d, C, data[:-1])
    h, y = data[-1]
    hr = h.clone().requires_grad_()
    (g_auto,) = torch.autograd.grad(head_loss(head, hr, y), hr)
    g_formula, share = two_path_gradient(head, h, y)
    with torch.no_grad():
        g_fd = central_difference_gradient(lambda x: head_loss(head, x, y), h, eps)
    row = {"t": t, "structured": structured, "alpha": ema_alpha(t), "formula": float((g_auto - g_formula).abs().max()),
           "fd": float((g_auto - g_fd).abs().max()), "share": share}
    if t == 1:
        frozen = frozen_first_prox(head, h, y)
        with torch.no_grad():
            g_fixed = central_difference_gradient(lambda x: head_loss(frozen, x, y), h, eps)
        row["fd_fixed"] = float((g_auto - g_fixed).abs().max())
    return row


def gradient_table(rows: Sequence[Dict[str, float]]) -> Table:
    """The rows of :func:`gradient_three_ways` as the chapter's table."""
    out = []
    for r in rows:
        fd = f"{r['fd']:.1e}"
        if "fd_fixed" in r:
            fd = f"{r['fd']:.1e} (proximal point recomputed), {r['fd_fixed']:.1e} (held fixed)"
        kind = "class structure" if r.get("structured", True) else "noise only"
        out.append([kind, r["t"], f"{r['alpha']:.3f}", f"{r['formula']:.1e}", fd, f"{r['share']:.3f}"])
    return table(["batches", "step t", "α_t", "autograd vs formula (max abs diff)", "autograd vs finite differences (max abs diff)",
                  "share through W"], out, align="lrrrlr")


def agd_step_check(gain: float = 10.0, seed: int = 500) -> Dict[str, object]:
    """One AGD step on a two-matrix network, by hand against :class:`AGD`.

    The distance each matrix moved is measured between copies taken before and after the
    optimiser's step, and compared with ``gain * eta / L * s_k`` computed from the gradients."""
    Wa = torch.randn(6, 4, dtype=F64, generator=_gen(seed), requires_grad=True)
    Wb = torch.randn(3, 6, dtype=F64, generator=_gen(seed + 1), requires_grad=True)
    x = torch.randn(16, 4, dtype=F64, generator=_gen(seed + 2))
    (torch.tanh(x @ Wa.T) @ Wb.T).pow(2).mean().backward()
    before = [W.detach().clone() for W in (Wa, Wb)]
    grads = [W.grad.clone() for W in (Wa, Wb)]
    scales = [agd_scale(W.shape) for W in (Wa, Wb)]
    L = 2
    G = sum(s * float(g.norm()) for s, g in zip(scales, grads)) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    by_hand = [W0 - gain * eta / L * s * g / g.norm() for W0, s, g in zip(before, scales, grads)]
    AGD([Wa, Wb], gain=gain).step()
    return {"eta": eta,
            "error": max(float((W.detach() - e).abs().max()) for W, e in zip((Wa, Wb), by_hand)),
            "moved": [float((W.detach() - W0).norm()) for W, W0 in zip((Wa, Wb), before)],
            "expected": [gain * eta / L * s for s in scales]}


def agd_feature_steps(*, num_samples: int = 100, feature_dim: int = 32, num_classes: int = 10,
                      gain: float = 10.0, seed: int = 0, out: Optional[Path] = None) -> Table:
    """The first AGD step of a UFM under each method and each ``agd_depth`` rule: AGD's depth
    ``L`` and how far the features moved (``||H_1 - H_0||_F``), from the trainer itself."""
    import tempfile

    from ..training.config import load_config
    from ..training.trainer import Trainer

    rows = []
    with tempfile.TemporaryDirectory(prefix="gnc_agd_depth_") as tmp:
        for rule in ("trainable", "layers"):
            for method in ("standard", "fixed", "implicit"):
                cfg = load_config("ufm10", {
                    "num_classes": num_classes, "num_samples": num_samples, "feature_dim": feature_dim,
                    "batch_size": num_samples, "epochs": 1, "eval_every": 1, "method": method, "gain": gain,
                    "agd_depth": rule, "seed": seed, "output_dir": str(out or tmp), "name": f"{method}_{rule}",
                    "device": "cpu", "report_epochs": [], "checkpoint_every": 0, "timing": "off",
                    "progress": False, "verbose": False})
                trainer = Trainer(cfg)
                H0 = trainer.network.backbone.features.detach().clone()
                trainer.fit()
                moved = float((trainer.network.backbone.features.detach() - H0).norm())
                rows.append([f"`{rule}`", METHOD_LABELS[method], trainer.optimizer.depth, f"{moved:.3f}"])
    return table(["`agd_depth`", "method", "AGD depth L", "first feature step ‖H₁ − H₀‖_F"], rows,
                 align="llrr")


def fill_rule_comparison(*, C: int = 100, d: int = 1024, b: int = 64, delta: float = 1e-3,
                         offsets: Sequence[float] = (0.0, 3.0), seed: int = 600) -> Table:
    """The rule for classes absent from a batch, isolated: one batch with ``b`` classes present
    of ``C``, one proximal point, two class-mean matrices that differ only in the absent columns.

    * this package: the centred means, absent columns zero (at the first step; later their
      running value), scaled to unit norm;
    * the public code: the absent columns hold the batch's uncentred global mean ``h_G``, and the
      whole matrix is scaled to unit norm (its own rule: no scale is chosen here).

    Features have class structure (a centre per class, plus noise) and a common offset of
    ``offsets`` (features after a ReLU share one), which sets ``||h_G||``.  For each: the extreme
    singular values and condition number of ``A = 2HM + delta P``, and how far the absent
    classes' classifier rows move from the proximal point's, and towards ``h_G``."""
    centres = torch.randn(C, d, dtype=F64, generator=_gen(seed))
    lab = torch.randperm(C, generator=_gen(seed + 1))[:b]
    noise = torch.randn(b, d, dtype=F64, generator=_gen(seed + 2))
    direction = torch.randn(d, dtype=F64, generator=_gen(seed + 3))
    full = centres.T - centres.T.mean(1, keepdim=True)
    P = nearest_etf(full / full.norm(), None, delta)  # the previous solution: all classes seen
    Wp = etf_classifier(P)
    M = standard_simplex_etf(C, dtype=F64)
    rows = []
    for offset in offsets:
        hn = normalize_features(centres[lab] + 0.5 * noise + offset * direction)
        ema = ClassMeanEMA(d, C, dtype=F64)
        sums, counts = ema.batch_statistics(hn, lab)
        ours, h_g, present = ema.batch_matrix(sums, counts)
        public = ema.batch_matrix(sums, counts, normalise=False)[0].clone()
        public[:, ~present] = h_g.unsqueeze(1)
        public = public / public.norm()
        for rule, H in (("this package (absent columns kept)", ours), ("public code (h_G in absent columns)", public)):
            s = torch.linalg.svdvals(2 * H @ M + delta * P)
            W = etf_classifier(nearest_etf(H, P, delta))
            moved = float((W[~present] - Wp[~present]).norm(dim=1).mean())
            towards = float((F.normalize(W[~present], dim=1) @ (h_g / h_g.norm())).mean())
            rows.append([f"{float(h_g.norm()):.2f}", rule, f"{float(s[-1]):.2e}", f"{float(s[0]):.3f}",
                         f"{float(s[0] / s[-1]):.0f}", f"{moved:.3f}", f"{towards:+.3f}"])
    return table(["‖h_G‖", "absent classes", "s_min(A)", "s_max(A)", "κ(A)",
                  "absent rows moved", "cos(absent rows, h_G)"], rows, align="rlrrrrr",
                 note=f"{C - b} of {C} classes absent from a batch of {b}; δ = {delta:g}; rows of W "
                      "have unit length, so a move lies between 0 and 2.")


def sampler_comparison(*, epochs: int, seeds: Sequence[int], work: Path, config: str = "digits_mlp",
                       methods: Sequence[str] = ("standard", "fixed")) -> Tuple[Table, Dict[str, Dict[str, list]]]:
    """Test top-1 (%) of the baselines with shuffled and with stratified batches, all else equal
    (the protocol options ``standard_sampler`` / ``fixed_sampler``); returns the table and the
    accuracies ``{method: {sampler: [per seed]}}``."""
    from ..training.config import load_config
    from ..training.trainer import train_run

    acc: Dict[str, Dict[str, list]] = {}
    for m in methods:
        for sampler in ("shuffled", "stratified"):
            for s in seeds:
                cfg = load_config(config, {
                    "method": m, "seed": s, "epochs": epochs, f"{m}_sampler": sampler, "eval_every": epochs,
                    "checkpoint_every": 0, "progress": False, "verbose": False, "num_threads": 1,
                    "report_epochs": [epochs], "run_dir": str(Path(work) / f"{m}_{sampler}_{s}")})
                top1 = train_run(cfg)["final_eval"]["test_top1"]
                acc.setdefault(m, {}).setdefault(sampler, []).append(top1)
    rows, said = [], []
    for m, by in acc.items():
        diff = [b - a for a, b in zip(by["shuffled"], by["stratified"])]
        spread = max(max(v) - min(v) for v in by.values())
        med = statistics.median(diff)
        inside = "inside" if abs(med) <= spread else "outside"
        said.append(f"{METHOD_LABELS[m]}: {100 * med:+.1f} pp, {inside} the seeds' own spread of "
                    f"{100 * spread:.1f} pp")
        rows.append([METHOD_LABELS[m], band("test_top1", by["shuffled"]), band("test_top1", by["stratified"]),
                     band("test_top1", diff).cell()])
    t = table(["method", "shuffled", "stratified", "stratified − shuffled, same seed (pp)"], rows, best=["higher"] * len(rows),
              note=f"{config}, test top-1 (%) after {epochs} epochs, median [min, max] over seeds "
                   f"{list(seeds)}; bold: the better sampler. Stratified minus shuffled (median of the "
                   f"paired differences): " + "; ".join(said) + ".")
    return t, acc
