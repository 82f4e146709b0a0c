"""Classifier heads for the three (five) training methods of the paper (§3.4-3.5, §4).

Every head maps backbone features ``(B, d)`` to logits ``(B, C)``::

    logits = head(features, labels)          # labels only needed by the implicit head in training

and exposes the classifier it currently uses as ``head.weight`` ``(C, d)`` and
``head.bias`` ``(C,)`` or ``None`` (detached views, for the metrics), plus
``head.transform(features)``: the features the classifier actually sees (projected
onto the unit sphere for every method except ``standard-no-norm``).

Methods (``build_head(method, ...)``):

``standard``          learned ``W`` (C, d); rows re-projected to unit norm after every
                      optimiser step (:meth:`LinearHead.renormalize_`).
``standard-no-norm``  learned ``W`` without weight *or* feature normalisation and
                      without temperature (``tau = 1``, paper Fig. 17).
``fixed``             ``W = etf_classifier([I_C; 0])``, the canonical simplex ETF.
``fixed-random``      ``W = etf_classifier(U)`` with a Haar-random ``U`` (seeded).
``fixed-uncentred``   the canonical fixed ETF *without* the centring by ``h_G`` (``logits =
                      tau W h``): kept only to measure what the centring changes.
``implicit``          ``W = etf_classifier(U*)`` with ``U*`` the nearest simplex ETF to the
                      EMA of the centred, normalised class means (Eq. 7-9), recomputed
                      every training step.

**One switch.** Every method (but ``fixed-uncentred``) computes its logits the same way,
the paper's Eq. 8::

    logits = tau (W (h - h_G) + b_learned)      h = features on the unit sphere

with ``h_G`` the running global mean of the normalised features, updated at every training
step by the EMA of Eq. 9 (:class:`~guiding_nc.core.running_means.GlobalMeanEMA`; gradients flow
into the batch's features through the new term, as in the implicit head).  The methods differ in
``W`` only.  (The paper writes the centring for its own method, ``b = -W h_G``; applying it to the
two baselines too is what makes the comparison one switch -- see the book's chapter on real images.)

**The code release's choices.** How a head picks ``h_G`` is its ``centring``
(:data:`~guiding_nc.core.running_means.CENTRINGS`, one class each in
:mod:`guiding_nc.core.running_means`: ``GlobalMeanEMA``, ``BatchMean``, ``DetachedBatchMean``, or
none); :mod:`guiding_nc.training.protocol` names the choices of the paper's released code
(``protocol: paper``) beside the one-switch protocol above.

The implicit head's class-mean bookkeeping lives in
:class:`~guiding_nc.core.running_means.ClassMeanEMA`; its rules for classes missing from a batch
are documented there.  Book: chapter 5b ("The training method").
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .checks import CLASSES, DELTA, EMA_FLOOR, TAU, Choice, Flag, Integer
from .etf import canonical_point, etf_classifier, random_point
from .nearest import BACKWARDS, SOLVERS, NearestETF
from .running_means import CENTRINGS, CLASS_MEAN_RULES, ClassMeanEMA, GlobalMeanEMA, build_centring, ema_alpha

__all__ = [
    "HeadOptions",
    "normalize_features",
    "LinearHead",
    "FixedETFHead",
    "ImplicitETFHead",
]

# Names and revisions live in the one registry of methods.


class _SphereProjection(torch.autograd.Function):
    """``u = h / max(||h||, eps)`` row-wise, with the projected gradient as its backward.

    The backward is ``(g - u (u . g)) / ||h||`` (rows with ``||h|| <= eps`` get ``g / eps``): four
    passes over a (B, d) array where autograd's broadcasting division takes about ten.  At the
    paper's UFM sizes these element-wise passes, not the matrix products, dominate a CPU step.
    The backward is written in differentiable operations, so double backward works too.
    """

    @staticmethod
    def forward(ctx, features: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_min_(eps)
        u = features / norm
        ctx.eps = eps
        ctx.save_for_backward(features, u)
        return u

    @staticmethod
    def backward(ctx, grad: Tensor):
        features, u = ctx.saved_tensors
        norm = torch.linalg.vector_norm(features, dim=1, keepdim=True)
        radial = torch.linalg.vecdot(u, grad, dim=1).unsqueeze(1) * (norm > ctx.eps)
        return torch.addcmul(grad, u, radial, value=-1.0) / norm.clamp_min(ctx.eps), None


def normalize_features(features: Tensor, eps: float = 1e-12) -> Tensor:
    """Project each row of ``features`` (B, d) onto the unit sphere (``eps`` guards zero rows).

    Same values and gradients as ``features / ||features||.clamp_min(eps)``, with a cheaper
    backward (:class:`_SphereProjection`).
    """
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, d), got {tuple(features.shape)}")
    return _SphereProjection.apply(features, float(eps))


# -------------------------------------------------------------------------------- heads
class _Head(nn.Module):
    """What every head shares: feature normalisation, the temperature and the logits
    ``tau (W (h - h_G) + b_learned)``.

    A subclass provides ``weight`` (C, d), ``learned_bias`` ((C,) or ``None``) and
    ``global_mean`` (``h_G``, or ``None`` for no centring), and calls :meth:`centred_logits`.
    """

    def __init__(self, feature_dim: int, num_classes: int, tau: float, normalize: bool):
        super().__init__()
        CLASSES("num_classes", num_classes)
        Integer(num_classes, why="a simplex ETF of C classes needs d >= C")("feature_dim", feature_dim)
        TAU("tau", tau)
        Flag()("normalize", normalize)
        self.feature_dim, self.num_classes = int(feature_dim), int(num_classes)
        self.tau, self.normalize = float(tau), bool(normalize)
        self.centring: Optional[GlobalMeanEMA] = None  # a subclass that centres sets it

    learned_bias: Optional[Tensor] = None

    @property
    def global_mean(self) -> Optional[Tensor]:
        """The running ``h_G`` (d,) the logits are centred by, or ``None`` (no centring)."""
        return None if self.centring is None else self.centring.global_mean

    def update_centre(self, h: Tensor, labels: Optional[Tensor]) -> Optional[Tensor]:
        """``h_G`` for the logits of the batch ``h``: updated by it in a training step (training
        mode with labels, as the implicit head's class means are), the centring's evaluation
        value otherwise (:func:`build_centring`)."""
        if self.centring is None:
            return None
        if self.training and labels is not None:
            return self.centring.update(h)
        return self.centring.for_eval(h)

    @property
    def bias(self) -> Optional[Tensor]:
        """The effective bias ``b_learned - W h_G`` (C,) of the current classifier, or ``None``."""
        h_g = self.global_mean
        b = self.learned_bias
        if h_g is None:
            return b
        shift = -(self.weight @ h_g.to(self.weight.dtype))
        return shift if b is None else shift + b.to(shift.dtype)

    def centred_logits(self, h: Tensor, W: Tensor, h_g: Optional[Tensor], b: Optional[Tensor] = None) -> Tensor:
        """``tau (h W^T - W h_G + b)`` for features ``h`` (B, d), in ``h``'s dtype.

        The centring goes through the (C,) bias ``W h_G``, which avoids a (B, d) subtraction
        and its backward.
        """
        W = W.to(h.dtype)
        out = h @ W.T
        if h_g is not None:
            out = out - W @ h_g.to(h.dtype)
        if b is not None:
            out = out + b.to(out.dtype)
        return self.tau * out

    def transform(self, features: Tensor) -> Tensor:
        """The features the classifier sees: on the unit sphere unless normalisation is off.

        Half-precision features (AMP) are normalised in float32.
        """
        if not self.normalize:
            return features
        if features.dtype in (torch.float16, torch.bfloat16):
            features = features.float()
        return normalize_features(features)

    def logits_from(self, h: Tensor) -> Tensor:
        """Logits of already-transformed features ``h`` (B, d) with the current classifier (no
        state change); ``h_G`` is the centring's evaluation value for this batch."""
        return self.centred_logits(h, self.weight, self.eval_centre(h), self.learned_bias)

    def eval_centre(self, h: Tensor) -> Optional[Tensor]:
        """``h_G`` for logits of ``h`` (B, d) outside a training step (no state change)."""
        return None if self.centring is None else self.centring.for_eval(h)

    # Optional instrumentation set by the trainer: an object with ``start(name)``/``stop(name)`` and
    # ``backward_hooks(U, H)`` (only the implicit head has something to time).
    timer = None

    def after_step(self) -> None:
        """Hook called by the trainer after every optimiser step."""

    def epoch_metrics(self) -> Dict[str, float]:
        """Numbers about the head's own state for the trainer's per-epoch row (none by default)."""
        return {}

    def check_dims(self, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"the head expects features of shape (B, {self.feature_dim}), got {tuple(features.shape)}")


class LinearHead(_Head):
    """Learned linear classifier ``(C, d)`` (method ``standard`` / ``standard-no-norm``).

    ``normalize_weight=True`` re-projects every row onto the unit sphere at construction and
    after each optimiser step (:meth:`renormalize_`).  ``bias`` adds a learned ``(C,)``
    bias (off by default: AGD only handles matrix parameters).  ``centring`` chooses ``h_G``
    (:func:`build_centring`; ``"running"`` by default, as every method in the one-switch protocol).
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, normalize_features: bool = True,
                 normalize_weight: bool = True, bias: bool = False, centring: str = "running",
                 ema_floor: float = 1e-4):
        super().__init__(feature_dim, num_classes, tau, normalize_features)
        self.normalize_weight = bool(normalize_weight)
        self.linear = nn.Linear(feature_dim, num_classes, bias=bias)
        self.centring = build_centring(centring, feature_dim, floor=ema_floor)
        if self.normalize_weight:
            self.renormalize_()

    @torch.no_grad()
    def renormalize_(self) -> None:
        w = self.linear.weight
        w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12))

    def after_step(self) -> None:
        if self.normalize_weight:
            self.renormalize_()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight.detach()

    @property
    def learned_bias(self) -> Optional[Tensor]:
        return None if self.linear.bias is None else self.linear.bias.detach()

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        return self.centred_logits(h, self.linear.weight, self.update_centre(h, labels), self.linear.bias)


class FixedETFHead(_Head):
    """Fixed simplex-ETF classifier ``W = etf_classifier(U)`` (``fixed`` / ``fixed-random``).

    ``rotation="canonical"``: ``U = [I_C; 0]`` (the paper's choice); ``"random"``: a
    Haar-random Stiefel point drawn from ``torch.Generator().manual_seed(seed)``.
    ``centring`` chooses ``h_G`` (:func:`build_centring`); method ``fixed-uncentred`` is ``"none"``.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, rotation: str = "canonical",
                 seed: int = 0, normalize_features: bool = True, centring: str = "running", ema_floor: float = 1e-4):
        super().__init__(feature_dim, num_classes, tau, normalize_features)
        if rotation == "canonical":
            U = canonical_point(feature_dim, num_classes, dtype=torch.float64)
        elif rotation == "random":
            g = torch.Generator().manual_seed(int(seed))
            U = random_point(feature_dim, num_classes, generator=g, dtype=torch.float64)
        else:
            raise ValueError(f"rotation must be 'canonical' or 'random', got {rotation!r}")
        self.rotation = rotation
        self.register_buffer("W", etf_classifier(U).to(torch.float32))
        self.centring = build_centring(centring, feature_dim, floor=ema_floor)

    @property
    def weight(self) -> Tensor:
        return self.W

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        return self.centred_logits(h, self.W, self.update_centre(h, labels))


class ImplicitETFHead(_Head):
    """The paper's implicit ETF classifier (Eq. 8 with the stochastic updates of §3.5).

    In training mode with labels, each call

    1. updates :class:`ClassMeanEMA` with the (normalised) batch features -> ``H_t``, ``h_G``;
    2. solves the proximal nearest-ETF problem ``U* = NearestETF(H_t)`` (first call: the
       paper's two-stage initialisation; later: previous solution as proximal point), in
       ``solve_dtype`` (float32 or float64) with autocast disabled;
    3. sets ``W = etf_classifier(U*)`` (unit-norm rows), ``b = -W h_G`` and returns
       ``tau (W h + b) = tau W (h - h_G)``, with ``h_G`` as ``centring`` says (:data:`CENTRINGS`:
       the EMA's running mean by default; the batch's own mean, with gradient, is the code
       release's choice).  ``class_means`` is :class:`ClassMeanEMA`'s rule.

    ``backward`` selects the DDN gradient through ``U*``: ``"closed_form"`` (polar adjoint),
    ``"kkt"`` (the paper's dense formula) or ``"none"`` (gradient off, as for ImageNet).
    ``polar`` is the route of the polar factor (:func:`guiding_nc.core.polar.polar_factor`; ``"auto"``:
    Newton–Schulz on CUDA, the SVD or the Gram matrix on the CPU).
    In eval mode (or without labels) the last ``W``/``h_G`` are used and nothing changes.
    The ``last_timing`` attribute, if a timer is attached via ``timer``, is filled by the trainer.

    Mixed precision: whatever the feature dtype or autocast dtype (bfloat16, float16), the class
    means, the nearest ETF and ``W`` are computed in ``solve_dtype`` with autocast off; the logits
    then follow the surrounding autocast like every head's.

    Host syncs in a training step (CUDA, ``polar="auto"``), audited: the class-mean update reads
    nothing back (a membership-mask product instead of ``bincount``, the EMA factors as tensors);
    the layer's input checks, which read values, run on the CPU only (:class:`NearestETF`
    ``check=None``); no ``.item()``, ``float()``, ``bool()`` or branch on a device value.  That leaves
    one read: the Newton–Schulz convergence check (one transfer of its residual bounds; two on a
    step that needs more iterations than the last ones did), which also catches non-finite class
    means (``NonFiniteInputError``).  Its backward (:func:`~guiding_nc.core.polar.polar_vjp_newton_schulz`)
    reads nothing.  The first step (the two-stage initialisation) and a fallback to the exact SVD
    route (warned) read more.  Non-finite features or losses are flagged on the device by the
    trainer and checked every ``nonfinite_check_every`` steps; :meth:`epoch_metrics` (read once per
    epoch) reports the route's iterations, fallbacks and reads per call.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, tau: float = 5.0, delta: float = 1e-3,
                 backward: str = "closed_form", solver: str = "closed_form", ema_floor: float = 1e-4,
                 solve_dtype: torch.dtype = torch.float32, max_iterations: int = 30, polar: str = "auto",
                 centring: str = "running", class_means: str = "normalised_batches"):
        super().__init__(feature_dim, num_classes, tau, True)
        if centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}")
        if backward not in BACKWARDS:
            raise ValueError(f"unknown DDN backward {backward!r}; choose one of {BACKWARDS}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown nearest-ETF solver {solver!r}; choose one of {SOLVERS}")
        if solve_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the nearest-ETF solve runs in float32 or float64, got {solve_dtype}")
        self.backward_mode = backward
        self.ema = ClassMeanEMA(feature_dim, num_classes, floor=ema_floor, dtype=solve_dtype, class_means=class_means)
        # "running" reads h_G from the class-mean EMA, which computes it anyway; the batch
        # centrings keep the batch mean it returns (build_centring's modules, fed by `use`).
        self.centring_mode = centring
        self.centring = None if centring in ("running", "none") else build_centring(centring, feature_dim,
                                                                                      dtype=solve_dtype)
        self.nearest = NearestETF(feature_dim, num_classes, delta=delta, method=solver, backward=backward,
                                  max_iterations=max_iterations, polar=polar)
        W0 = etf_classifier(canonical_point(feature_dim, num_classes, dtype=torch.float64))
        self.register_buffer("W", W0.to(solve_dtype))

    def epoch_metrics(self) -> Dict[str, float]:
        """The EMA's current smoothing factor ``alpha_t`` (Eq. 9), and what the Newton–Schulz
        route did once it has run (:meth:`guiding_nc.core.polar.NewtonSchulzState.metrics`)."""
        return {"ema_alpha": float(ema_alpha(int(self.ema.step), self.ema.floor)), **self.nearest.polar_state.metrics()}

    @property
    def weight(self) -> Tensor:
        return self.W

    @property
    def global_mean(self) -> Optional[Tensor]:
        if self.centring_mode == "running":
            return self.ema.global_mean
        return None if self.centring is None else self.centring.global_mean

    def eval_centre(self, h: Tensor) -> Optional[Tensor]:
        if self.centring_mode == "running":
            return self.ema.global_mean
        return None if self.centring is None else self.centring.for_eval(h)

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        self.check_dims(features)
        h = self.transform(features)
        if not (self.training and labels is not None):
            return self.logits_from(h)
        timer = self.timer
        if timer is not None:
            timer.start("etf_forward")
        device_type = h.device.type
        autocast_off = torch.autocast(device_type=device_type, enabled=False) if device_type in ("cuda", "cpu") \
            else nullcontext()
        with autocast_off:
            differentiable = self.backward_mode != "none"
            hs = h.to(self.ema.dtype)
            H, h_g, h_batch = self.ema.update(hs, labels, differentiable=True, with_batch_mean=True)
            if self.centring_mode != "running":
                h_g = None if self.centring is None else self.centring.use(h_batch)
            H_in = H if differentiable else H.detach()
            U = self.nearest(H_in)
            if timer is not None and differentiable and torch.is_grad_enabled() and U.requires_grad:
                timer.backward_hooks(U, H_in)
            W = etf_classifier(U, check=False)  # U* is orthonormal by construction: no host read
            with torch.no_grad():
                self.W.copy_(W.detach())
        if timer is not None:
            timer.stop("etf_forward")
        return self.centred_logits(h, W, h_g)


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class HeadOptions:
    """What every head builder receives besides the feature dimension and the number of classes
    (the registry's builders in :mod:`guiding_nc.core.methods` pick what their head uses)."""

    tau: float = 5.0
    delta: float = 1e-3
    ddn_backward: str = "closed_form"
    solver: str = "closed_form"
    ema_floor: float = 1e-4
    head_bias: bool = False
    etf_seed: int = 0
    solve_dtype: torch.dtype = torch.float32
    max_iterations: int = 30
    centring: str = "running"
    class_means: str = "normalised_batches"

    def __post_init__(self):
        TAU("tau", self.tau)
        DELTA("delta", self.delta)
        Choice(BACKWARDS, style="unknown", label="ddn_backward")("ddn_backward", self.ddn_backward)
        Choice(SOLVERS, style="unknown", label="solver")("solver", self.solver)
        EMA_FLOOR("ema_floor", self.ema_floor)
        Flag()("head_bias", self.head_bias)
        Integer(0)("etf_seed", self.etf_seed)
        Integer(1, 10_000)("max_iterations", self.max_iterations)
        Choice(CENTRINGS)("centring", self.centring)
        Choice(CLASS_MEAN_RULES)("class_means", self.class_means)
        if self.solve_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"solve_dtype must be torch.float32 or torch.float64, got {self.solve_dtype!r}")
