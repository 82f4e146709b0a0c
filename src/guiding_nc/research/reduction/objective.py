"""The UFM objectives in the features under four classifier parametrisations (the reductions).

:class:`UFMObjective` (built by :func:`ufm_objective`) in the features ``H`` (N, d) for the
classifier parametrisations ``free``, ``fixed``, ``implicit`` and ``affine``; each is a scalar
function of one flat float tensor.  The free problem is the base problem ``f(H, W, b)``; the other
three are reductions ``F(H) = f(H, Psi(H))`` (:mod:`guiding_nc.research.reduction`, whose
:mod:`~guiding_nc.research.reduction.analysis` compares the two).  Book: chapter 13
(``book/13_reduction_mappings.md``).

Conventions
-----------
* ``N`` samples, ``C`` classes, feature dimension ``d >= C``; labels are balanced
  (``n = N / C`` samples per class, every class present).
* Features are the rows of ``H`` (N, d); classifier rows are the rows of ``W`` (C, d).
* With ``normalize=True`` the classifier sees ``h_i / ||h_i||`` (as
  :func:`guiding_nc.core.heads.normalize_features`); logits are ``tau (W h + b)``.
* The loss is the mean cross-entropy plus optional ridge terms (see :class:`UFMObjective`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ...core.etf import canonical_point, etf_classifier, random_point, standard_simplex_etf
from ...core.newton_schulz import inverse_sqrt_newton_schulz

__all__ = [
    "PARAMETRISATIONS",
    "IMPLICIT_BACKENDS",
    "UFMVariables",
    "UFMObjective",
    "ufm_objective",
    "class_block_labels",
]

PARAMETRISATIONS = ("free", "fixed", "implicit", "affine")
IMPLICIT_BACKENDS = ("newton_schulz", "nearest_etf")


# ======================================================================= UFM objectives
def class_block_labels(num_classes: int, n_per_class: int, *, device=None) -> Tensor:
    """Balanced labels ``[0, 1, ..., C-1, 0, 1, ...]`` of length ``N = C * n_per_class`` (the classes
    interleaved; :func:`guiding_nc.training.loaders.balanced_labels` gives them class-major)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an int >= 1, got {n_per_class!r}")
    return torch.arange(num_classes, device=device).repeat(n_per_class)


class UFMVariables(NamedTuple):
    """The unflattened variables: ``H`` (N, d); ``W`` (C, d) or None; ``b`` (C,) or None."""

    H: Tensor
    W: Optional[Tensor]
    b: Optional[Tensor]


class UFMObjective:
    """Cross-entropy UFM objective in the features, as a scalar function of one flat tensor.

    The base problem (the ``free`` parametrisation) is

        f(H, W[, b]) = (1/N) Σ_i CE(tau (W φ(h_i) + b), y_i)
                       + (lambda_H / 2) ||H||_F² + (lambda_W / 2) ||W||_F²,

    with ``φ(h) = h / ||h||`` if ``normalize`` else ``φ(h) = h``.  The other three
    parametrisations are reductions ``F(H) = f(H, Psi(H))`` with ``x = vec(H)`` only:

    ``free``
        ``x = [vec(H); vec(W)] (; b)`` — W (and, with ``bias=True``, b) are separate variables.
    ``fixed``
        ``W = etf_classifier(U0)`` a fixed simplex ETF, ``U0 = [I_C; 0]`` (``rotation=
        "canonical"``, the paper's choice), a Haar-random Stiefel point (``"random"``, with
        ``seed``) or a given (d, C) tensor; no bias.  A constant reduction.
    ``implicit``
        The paper's implicit ETF classifier (Eq. 8), an *argmin reduction*:
        ``H̃ = centred class means of φ(H)`` (d, C) scaled to unit Frobenius norm, ``h_G``
        the global mean of ``φ(H)``, ``U* = argmin_{U ∈ St(d,C)} ||H̃ - U M||² + δ/2 ||U - P||²``
        (the nearest simplex ETF, :func:`guiding_nc.core.nearest.nearest_etf`), ``W = etf_classifier(U*)
        = sqrt(C) M U*ᵀ`` and ``b = -W h_G``, i.e. logits ``tau W (φ(h) - h_G)``.  The proximal
        point ``P`` is a *constant* of the objective (in training it is the previous solution and
        is detached): pass ``prox`` or a ``reference`` point, from which ``P`` is the proximal
        point :func:`nearest_etf` uses on a first call (the canonical δ → 0 solution), so at
        ``x = reference`` the logits are exactly those of a fresh
        :class:`guiding_nc.core.heads.ImplicitETFHead` in training mode.  ``delta = 0`` gives the
        prox-free reduction: ``W`` is then unique (only ``U* M`` enters ``W``) and equals
        ``sqrt(C/(C-1)) · polar(H̃ M)ᵀ`` with the rank-(C-1) polar factor.
    ``affine``
        ``W = Psi(H) = gamma · Π H`` with ``Π = (I_C - 1 1ᵀ / C) Yᵀ / n`` (C, N): row ``c`` of ``W``
        is ``gamma`` times the centred mean of class ``c``, ``mean_{y_i = c} h_i - mean_i h_i``.
        ``Psi`` is linear in the variable ``H`` — an *affine reduction* in the sense of the
        reduction-mapping paper (``Phi(H) = (H, Psi(H))`` with constant Jacobian, so
        ``∇²F = Jᵀ ∇²f J`` exactly, no correction term).  It encodes the structure of the
        solution set: at neural collapse the optimal classifier is self-dual to the centred
        class means (NC3, ``W* ∝`` centred means), and with unit-norm collapsed features and
        ``gamma = 1`` it coincides with the implicit ETF classifier there (centred means of
        unit vectors forming a simplex ETF = ``sqrt(C) H̃ᵀ = W_implicit``).  No bias (it is a
        reduction of the bias-free free problem).  ``affine_features="normalized"`` applies
        the same averaging to ``φ(H)`` instead; that ``Psi`` is affine in the normalised
        features but *not* in ``H`` (so the affine theory does not apply exactly).

    Parameters
    ----------
    parametrisation : one of :data:`PARAMETRISATIONS`
    labels : Tensor (N,) int — balanced, all ``C`` classes present.
    num_classes, dim : int — ``C >= 2``, ``d >= C``.
    tau : float > 0 — temperature (paper default 5).
    normalize : bool — feature normalisation ``φ``.
    weight_decay_H, weight_decay_W : float >= 0 — ``lambda_H``, ``lambda_W`` above.  The W term
        is included for every parametrisation (``F = f ∘ Phi``); for ``fixed``/``implicit`` it
        is the constant ``lambda_W C / 2``.
    bias : bool — ``free`` only: a learned bias ``b`` (C,) appended to ``x``.
    rotation, seed : ``fixed`` only (see above).
    delta, prox, reference : ``implicit`` only.  ``prox`` (d, C) on St(d, C); ``reference``
        a flat point or an (N, d) feature matrix.
    implicit_backend : ``"newton_schulz"`` (default) computes ``U*`` as the polar factor
        ``A (AᵀA)^{-1/2}``, ``A = 2 H̃ M + δ P`` (the same closed form as ``nearest_etf``),
        with :func:`~guiding_nc.core.newton_schulz.inverse_sqrt_newton_schulz` (``ns_iterations`` steps): differentiable to any
        order with ``torch.func`` (HVPs, Hessians).  ``"nearest_etf"`` calls
        :func:`guiding_nc.core.nearest.nearest_etf` with its closed-form derivatives: exact values,
        first and second derivatives, forward mode too, under ``torch.autograd`` and ``torch.func``
        (:mod:`guiding_nc.core.polar_derivatives`).
    ns_iterations : int — Newton–Schulz steps.  40 (default) converges to float64 precision when
        the smallest eigenvalue of ``AᵀA / ||A||_F²`` is >= 1e-12; with ``delta > 0`` that
        eigenvalue is about ``delta² (C - 1) / 4`` (the all-ones direction is set by the prox
        term alone), so the default covers ``delta >= ~1e-6``.  Check with
        :meth:`reduction_residual`; more iterations cost time linearly, not accuracy.
    affine_scale, affine_features : ``affine`` only (``gamma`` and ``"raw"``/``"normalized"``).
    dtype : the dtype of the constants (default float64); ``x`` of another dtype is accepted and
        the constants are cast to it.

    Shapes: ``x`` is 1-D with :attr:`numel` elements, laid out as ``[vec(H), vec(W), b]``
    (row-major; only the parts that are variables).  ``obj(x)`` returns a 0-d tensor.
    """

    def __init__(
        self,
        parametrisation: str,
        labels: Tensor,
        num_classes: int,
        dim: int,
        *,
        tau: float = 5.0,
        normalize: bool = True,
        weight_decay_H: float = 0.0,
        weight_decay_W: float = 0.0,
        bias: bool = False,
        rotation: Union[str, Tensor] = "canonical",
        seed: int = 0,
        delta: float = 1e-3,
        prox: Optional[Tensor] = None,
        reference: Optional[Tensor] = None,
        implicit_backend: str = "newton_schulz",
        ns_iterations: int = 40,
        affine_scale: float = 1.0,
        affine_features: str = "raw",
        eps: float = 1e-12,
        dtype: torch.dtype = torch.float64,
    ):
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {parametrisation!r}; choose one of {PARAMETRISATIONS}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < num_classes:
            raise ValueError(
                f"the feature dimension must be an int d >= C = {num_classes} (a simplex ETF needs d >= C), got {dim!r}"
            )
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError("labels must be a 1-D integer tensor")
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
        counts = torch.bincount(labels.cpu().to(torch.int64), minlength=num_classes)
        if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
            raise ValueError(f"labels must be balanced with every class present; class counts are {counts.tolist()}")
        for name, val in (("tau", tau),):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {val!r}")
        for name, val in (("weight_decay_H", weight_decay_H), ("weight_decay_W", weight_decay_W)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
        if bias and parametrisation != "free":
            raise ValueError("bias=True is only meaningful for the 'free' parametrisation "
                             "(fixed/affine have no bias, implicit has b = -W h_G)")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")

        self.parametrisation = parametrisation
        self.num_classes, self.dim = num_classes, dim
        self.num_samples = labels.numel()
        self.n_per_class = int(counts[0])
        self.tau, self.normalize = float(tau), bool(normalize)
        self.weight_decay_H, self.weight_decay_W = float(weight_decay_H), float(weight_decay_W)
        self.bias = bool(bias)
        self.eps = float(eps)
        self.dtype = dtype
        device = labels.device
        self.labels = labels.to(torch.int64)
        # Y (N, C) one-hot and Pi (C, N) = (I - 11^T/C) Y^T / n: centred class means as a matrix.
        self._onehot = torch.nn.functional.one_hot(self.labels, num_classes).to(dtype)
        centre = torch.eye(num_classes, dtype=dtype, device=device) - 1.0 / num_classes
        self._Pi = centre @ self._onehot.T / self.n_per_class
        self._M = standard_simplex_etf(num_classes, dtype=dtype, device=device)

        N, d, C = self.num_samples, dim, num_classes
        self.shapes = {"H": (N, d)}
        if parametrisation == "free":
            self.shapes["W"] = (C, d)
            if self.bias:
                self.shapes["b"] = (C,)
        self.numel = sum(math.prod(s) for s in self.shapes.values())

        self._W_fixed = None
        self.prox = None
        self.delta = None
        self.implicit_backend = None
        self.ns_iterations = None
        self.affine_scale = None
        self.affine_features = None
        self.rotation = None
        if parametrisation == "fixed":
            if isinstance(rotation, Tensor):
                if rotation.shape != (d, C):
                    raise ValueError(f"rotation must have shape ({d}, {C}), got {tuple(rotation.shape)}")
                U0 = rotation.to(dtype=dtype, device=device)
                err = float((U0.T @ U0 - torch.eye(C, dtype=dtype, device=device)).abs().max())
                if err > (1e-10 if dtype == torch.float64 else 1e-5):
                    raise ValueError(f"rotation must satisfy U^T U = I; max |U^T U - I| = {err:.3g}")
            elif rotation == "canonical":
                U0 = canonical_point(d, C, dtype=dtype, device=device)
            elif rotation == "random":
                U0 = random_point(d, C, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype).to(device)
            else:
                raise ValueError(f"rotation must be 'canonical', 'random' or a (d, C) tensor, got {rotation!r}")
            self.rotation = rotation if isinstance(rotation, str) else "tensor"
            self._W_fixed = etf_classifier(U0)  # the fixed ETF head's classifier (core.heads.FixedETFHead)
        elif parametrisation == "implicit":
            if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta < 0:
                raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
            if implicit_backend not in IMPLICIT_BACKENDS:
                raise ValueError(f"unknown implicit_backend {implicit_backend!r}; choose one of {IMPLICIT_BACKENDS}")
            if isinstance(ns_iterations, bool) or not isinstance(ns_iterations, int) or ns_iterations < 1:
                raise ValueError(f"ns_iterations must be an int >= 1, got {ns_iterations!r}")
            if delta == 0 and implicit_backend == "nearest_etf":
                raise ValueError("implicit_backend='nearest_etf' needs delta > 0 (nearest_etf is not "
                                 "differentiable at delta = 0); use the newton_schulz backend")
            self.delta = float(delta)
            self.implicit_backend = implicit_backend
            self.ns_iterations = ns_iterations
            if delta > 0:
                if prox is None and reference is None:
                    raise ValueError(
                        "the implicit objective with delta > 0 needs a constant proximal point: pass prox "
                        "(d, C) on St(d, C), or reference (a flat point or (N, d) features) to use the "
                        "proximal point nearest_etf picks on its first call there"
                    )
                if prox is not None:
                    if not isinstance(prox, Tensor) or prox.shape != (d, C):
                        raise ValueError(f"prox must be a ({d}, {C}) tensor")
                    P = prox.detach().to(dtype=dtype, device=device)
                    err = float((P.T @ P - torch.eye(C, dtype=dtype, device=device)).abs().max())
                    if err > (1e-10 if dtype == torch.float64 else 1e-5):
                        raise ValueError(f"prox must lie on St(d, C) (P^T P = I); max |P^T P - I| = {err:.3g}")
                    self.prox = P
                else:
                    self.prox = self._reference_prox(reference)
        elif parametrisation == "affine":
            if affine_features not in ("raw", "normalized"):
                raise ValueError(f"affine_features must be 'raw' or 'normalized', got {affine_features!r}")
            if isinstance(affine_scale, bool) or not isinstance(affine_scale, (int, float)) or not math.isfinite(affine_scale):
                raise ValueError(f"affine_scale must be a finite number, got {affine_scale!r}")
            self.affine_scale = float(affine_scale)
            self.affine_features = affine_features

    # ------------------------------------------------------------------ layout helpers
    def __repr__(self) -> str:
        extra = ""
        if self.parametrisation == "implicit":
            extra = f", delta={self.delta}, backend={self.implicit_backend!r}"
        elif self.parametrisation == "affine":
            extra = f", scale={self.affine_scale}, features={self.affine_features!r}"
        elif self.parametrisation == "fixed":
            extra = f", rotation={self.rotation!r}"
        return (f"UFMObjective({self.parametrisation!r}, N={self.num_samples}, C={self.num_classes}, "
                f"d={self.dim}, tau={self.tau}, normalize={self.normalize}{extra}, numel={self.numel})")

    def check_x(self, x: Tensor) -> None:
        """Raise unless ``x`` is a flat floating-point tensor of :attr:`numel` elements."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 1 or x.numel() != self.numel:
            raise ValueError(
                f"x must be a flat tensor of {self.numel} elements ({self.parametrisation}: "
                f"{' + '.join(f'{k}{v}' for k, v in self.shapes.items())}), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")

    def unflatten(self, x: Tensor) -> UFMVariables:
        """Split a flat ``x`` into :class:`UFMVariables` ``(H (N, d), W (C, d) | None, b (C,) | None)``."""
        self.check_x(x)
        N, d = self.shapes["H"]
        H = x[: N * d].reshape(N, d)
        W = b = None
        off = N * d
        if "W" in self.shapes:
            C = self.num_classes
            W = x[off: off + C * d].reshape(C, d)
            off += C * d
            if "b" in self.shapes:
                b = x[off: off + C]
        return UFMVariables(H, W, b)

    def flatten(self, H: Tensor, W: Optional[Tensor] = None, b: Optional[Tensor] = None) -> Tensor:
        """Inverse of :meth:`unflatten`.  For ``free``, ``W`` is required and ``b`` iff ``bias``."""
        if H.shape != self.shapes["H"]:
            raise ValueError(f"H must have shape {self.shapes['H']}, got {tuple(H.shape)}")
        parts = [H.reshape(-1)]
        if "W" in self.shapes:
            if W is None or W.shape != self.shapes["W"]:
                raise ValueError(f"the free parametrisation needs W of shape {self.shapes['W']}")
            parts.append(W.reshape(-1))
            if "b" in self.shapes:
                if b is None or b.shape != self.shapes["b"]:
                    raise ValueError(f"bias=True needs b of shape {self.shapes['b']}")
                parts.append(b.reshape(-1))
        elif W is not None or b is not None:
            raise ValueError(f"the {self.parametrisation!r} parametrisation has H as its only variable")
        return torch.cat(parts)

    def initial_point(self, generator: Optional[torch.Generator] = None, *, scale: float = 1.0) -> Tensor:
        """A random flat point: ``H ~ scale * N(0, 1)``, ``W ~ N(0, 1/d)``, ``b = 0`` (CPU generator)."""
        N, d = self.shapes["H"]
        H = scale * torch.randn(N, d, generator=generator, dtype=torch.float64)
        W = b = None
        if "W" in self.shapes:
            W = torch.randn(self.num_classes, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
            if "b" in self.shapes:
                b = torch.zeros(self.num_classes, dtype=torch.float64)
        return self.flatten(H, W, b).to(dtype=self.dtype, device=self.labels.device)

    def collapsed_point(self, *, scale: float = 1.0) -> Tensor:
        """Features at exact neural collapse: ``h_i = scale * W_ETF[y_i]`` (norm ``scale``), flat.

        ``W_ETF = etf_classifier([I_C; 0])`` (unit rows, summing to zero): the class means form
        a simplex ETF and the global mean is zero.  For ``free`` the classifier part is ``W_ETF`` (and ``b = 0``).
        """
        C, d = self.num_classes, self.dim
        W = etf_classifier(canonical_point(d, C, dtype=self.dtype, device=self.labels.device))
        H = scale * W[self.labels]
        return self.flatten(H, W if "W" in self.shapes else None,
                            torch.zeros(C, dtype=self.dtype, device=H.device) if "b" in self.shapes else None)

    # --------------------------------------------------------------------- the model
    def transform(self, H: Tensor) -> Tensor:
        """``φ(H)``: rows on the unit sphere if ``normalize`` (``eps`` guards zero rows), shape (N, d)."""
        if not self.normalize:
            return H
        return H / torch.linalg.vector_norm(H, dim=1, keepdim=True).clamp_min(self.eps)

    def class_mean_matrix(self, h: Tensor):
        """``(H̃ (d, C), h_G (d,))``: unit-Frobenius centred class means of ``h`` (N, d) and the global mean."""
        Y = self._onehot.to(h.dtype)
        means = Y.T @ h / self.n_per_class  # (C, d)
        h_g = h.mean(0)
        centred = means - h_g
        norm = torch.linalg.vector_norm(centred).clamp_min(self.eps)
        return (centred / norm).T, h_g

    def _reference_prox(self, reference: Tensor) -> Tensor:
        from ...core.nearest import nearest_etf

        if not isinstance(reference, Tensor):
            raise TypeError("reference must be a tensor (a flat point or (N, d) features)")
        ref = reference.detach().to(dtype=self.dtype, device=self.labels.device)
        if ref.ndim == 1:
            ref = self.unflatten(ref).H
        if ref.shape != self.shapes["H"]:
            raise ValueError(f"reference features must have shape {self.shapes['H']}, got {tuple(ref.shape)}")
        Ht, _ = self.class_mean_matrix(self.transform(ref))
        _, P = nearest_etf(Ht, None, self.delta, return_prox=True)
        return P.detach().clone()

    def implicit_direction(self, Ht: Tensor) -> Tensor:
        """The reduction's Stiefel point (d, C) for the class-mean matrix ``H̃`` (d, C).

        ``delta > 0``: ``U* = polar(2 H̃ M + delta P)``, the nearest-ETF solution.
        ``delta = 0``: the rank-(C-1) polar factor of ``H̃ M`` (``U* V_r`` on the class-mean
        subspace; ``U* M`` and hence ``W`` are the same for every minimiser), computed as
        ``B (BᵀB / c + 1 1ᵀ / C)^{-1/2} / sqrt(c)``, ``B = H̃ M``, ``c = ||B||_F²``.
        """
        C = self.num_classes
        M = self._M.to(Ht.dtype)
        if self.implicit_backend == "nearest_etf":
            from ...core.nearest import nearest_etf

            return nearest_etf(Ht, self.prox.to(Ht.dtype), self.delta)
        if self.delta > 0:
            A = 2.0 * Ht @ M + self.delta * self.prox.to(Ht.dtype)
            G = A.T @ A
            c = (A * A).sum()
            Z = inverse_sqrt_newton_schulz(G / c, self.ns_iterations)
            return A @ Z / torch.sqrt(c)
        B = Ht @ M
        c = (B * B).sum()
        J = torch.full((C, C), 1.0 / C, dtype=Ht.dtype, device=Ht.device)
        Z = inverse_sqrt_newton_schulz(B.T @ B / c + J, self.ns_iterations)
        return B @ Z / torch.sqrt(c)

    def classifier(self, x: Tensor):
        """``(W (C, d), b (C,) or None)`` at the flat point ``x``."""
        H, W, b = self.unflatten(x)
        p = self.parametrisation
        if p == "free":
            return W, b
        if p == "fixed":
            return self._W_fixed.to(H.dtype), None
        if p == "affine":
            src = H if self.affine_features == "raw" else self.transform(H)
            return self.affine_scale * (self._Pi.to(H.dtype) @ src), None
        h = self.transform(H)
        Ht, h_g = self.class_mean_matrix(h)
        U = self.implicit_direction(Ht)
        W = math.sqrt(self.num_classes) * (self._M.to(H.dtype) @ U.T)
        return W, -(W @ h_g)

    def logits(self, x: Tensor) -> Tensor:
        """``tau (W φ(h_i) + b)`` for every sample, shape (N, C)."""
        H = self.unflatten(x).H
        W, b = self.classifier(x)
        out = self.transform(H) @ W.T
        if b is not None:
            out = out + b
        return self.tau * out

    def per_sample_losses(self, x: Tensor) -> Tensor:
        """Cross-entropy of each sample, shape (N,)."""
        z = self.logits(x)
        return torch.logsumexp(z, dim=1) - z.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def __call__(self, x: Tensor) -> Tensor:
        """The objective value (0-d tensor) at the flat point ``x`` (N d [+ C d [+ C]],)."""
        self.check_x(x)
        H = self.unflatten(x).H
        W, b = self.classifier(x)
        z = self.transform(H) @ W.T
        if b is not None:
            z = z + b
        z = self.tau * z
        ce = torch.logsumexp(z, dim=1) - z.gather(1, self.labels.unsqueeze(1)).squeeze(1)
        value = ce.mean()
        if self.weight_decay_H:
            value = value + 0.5 * self.weight_decay_H * (H * H).sum()
        if self.weight_decay_W:
            value = value + 0.5 * self.weight_decay_W * (W * W).sum()
        return value

    def reduction_residual(self, x: Tensor) -> float:
        """Newton–Schulz convergence check for ``implicit``: ``max |U*ᵀU* - I|`` (δ > 0) or
        ``max |U*ᵀU* - (I - 1 1ᵀ/C)|`` (δ = 0) at ``x``; 0 for other parametrisations."""
        if self.parametrisation != "implicit":
            return 0.0
        with torch.no_grad():
            Ht, _ = self.class_mean_matrix(self.transform(self.unflatten(x.detach()).H))
            U = self.implicit_direction(Ht)
            C = self.num_classes
            target = torch.eye(C, dtype=U.dtype, device=U.device)
            if self.delta == 0:
                target = target - 1.0 / C
            return float((U.T @ U - target).abs().max())


def ufm_objective(parametrisation: str, labels: Tensor, num_classes: int, dim: int, **kwargs) -> UFMObjective:
    """Build a :class:`UFMObjective` (all keyword options are documented there)."""
    return UFMObjective(parametrisation, labels, num_classes, dim, **kwargs)
