"""The unconstrained-features model (UFM) under four classifier parametrisations, as reductions.

This package measures how the choice of classifier ``W`` changes the optimisation landscape
in the features ``H``, in the sense of "Sharper Convergence Rates for Nonconvex Optimisation
via Reduction Mappings" (Markou, Ajanthan, Gould, arXiv 2506.08428).  That paper splits the
variables as ``x = (x1, x2)``, fixes ``x2 = Psi(x1)`` by a *reduction mapping* that encodes
known structure of the solution set, and studies the *reduced objective*
``F(x1) = f(x1, Psi(x1))``.  Its Hessian is

    ∇²F = Jᵀ ∇²f J + Σ_k ∂f/∂x2_k · ∇²Psi_k,    J = [I; DPsi],

so an affine ``Psi`` (second term zero) only compresses ``∇²f`` onto the graph of ``Psi``,
while a nonlinear ``Psi`` (such as an argmin) adds a correction term.  The paper shows that
well-designed reductions lower the smoothness constant ``L`` and raise the PL / Morse–Bott
constant ``mu``, so the condition number ``L / mu`` improves.

Modules (book chapter ``book/13_reduction_mappings.md``; the second-order tools and landscape
constants they use are in :mod:`guiding_nc.research.curvature`):

* :mod:`~guiding_nc.research.reduction.objective` — the UFM objectives
  (:class:`~guiding_nc.research.reduction.objective.UFMObjective`, built by ``ufm_objective``) in
  the features ``H`` (N, d) for the parametrisations ``free``, ``fixed``, ``implicit`` and
  ``affine``; each is a scalar function of one flat float tensor;
* :mod:`~guiding_nc.research.reduction.analysis` — the reduction-mapping analysis: the matched
  weight decay, the base problem ``f``, ``Psi``, ``Phi = (id, Psi)``, ``DPsi``, the pullback metric,
  generalised eigenvalues, the Morse–Bott constant, ``f*`` and all local landscape numbers at a point;
* :mod:`~guiding_nc.research.reduction.descent` — recorded full-batch gradient-descent runs.
"""
