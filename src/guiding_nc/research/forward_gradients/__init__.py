r"""Backpropagation-free (forward-mode) gradient estimators for ReLU MLPs.

Educational reproduction of the estimators compared in

* Wang, Markou & Campbell, "Towards Scalable Backpropagation-Free Gradient Estimation",
  AJCAI 2025, arXiv:2511.03110 (the orthogonalised upstream-Jacobian guess
  :math:`\tilde W^\perp`, its Newton–Schulz variant, and a preconditioned variant);
* Singhal et al., "How to Guess a Gradient", arXiv:2312.04709 (the :math:`W^\top` guess);
* Baydin et al., "Gradients without Backpropagation", arXiv:2202.08587 (forward gradients,
  i.e. weight perturbation) and Ren et al., "Scaling Forward Gradient with Local Losses",
  ICLR 2023 (activation perturbation).

Everything here is written from the public descriptions of those papers; no code was copied.

Network (functional form)
-------------------------
``params`` is a list of ``L`` layers ``(W_l, b_l)`` with ``W_l`` of shape ``(d_l, d_{l-1})``
(PyTorch's ``(out, in)`` convention) and ``b_l`` of shape ``(d_l,)`` or ``None``. For an input
batch ``x`` of shape ``(B, d_0)``::

    h_0 = x
    z_l = h_{l-1} W_l^T + b_l          (B, d_l)     pre-activations
    h_l = relu(z_l)                    for l < L   (hidden layers)
    logits = z_L                       (B, C),  C = d_L

and the objective is the mean cross-entropy ``f = (1/B) sum_b ell_b`` with
``ell_b = CE(z_{L,b}, y_b)``. Layers are indexed ``0 .. L-1`` in the API (layer ``i`` is
``params[i]``).

Estimators (all forward mode, ``torch.func.jvp``; one JVP per guess)
--------------------------------------------------------------------
Let ``g_{l,b} = d ell_b / d z_{l,b}`` be the (unknown) per-example pre-activation gradient, so
``dF/dW_l = (1/B) sum_b g_{l,b} h_{l-1,b}^T`` and ``dF/db_l = (1/B) sum_b g_{l,b}``.

``"weight"`` (weight perturbation, forward gradient of Baydin et al. / eq. 1 of Singhal et al.)
    ``v ~ N(0, I)`` over *all* weights and biases jointly; one JVP gives ``s = grad f . v``;
    estimate ``s v``. Unbiased: ``E[v v^T] = I``.

Activation-space estimators (``"activation"``, ``"wt"``, ``"upstream"``, ``"upstream_ns"``,
``"upstream_precond"``). For every layer ``l`` and example ``b`` a guess ``u_{l,b} = A_{l,b}
eta`` is drawn with ``eta ~ N(0, I_r)``; one JVP of the *per-example* loss vector
``(ell_1..ell_B)`` with respect to an additive perturbation of ``z_l`` (tangent ``u_l``, all
examples at once) returns every ``s_{l,b} = g_{l,b} . u_{l,b}``; the pre-activation gradient is
estimated as ``ghat_{l,b} = s_{l,b} Ahat_{l,b} eta`` and then mapped exactly to the weights:
``W_l <- (1/B) sum_b ghat_{l,b} h_{l-1,b}^T``, ``b_l <- (1/B) sum_b ghat_{l,b}``. Hence

    E[ghat_{l,b}] = Ahat_{l,b} A_{l,b}^T g_{l,b}            (closed form, see expected_estimate)

The methods differ only in ``A`` / ``Ahat``. For hidden layers (``l < L-1`` in 0-based
indices) define the (transposed) *upstream Jacobian* of example ``b``

    M_{l,b} = diag(m_{l,b}) W_{l+1}^T   in R^{d_l x d_{l+1}},   m_{l,b} = 1[z_{l,b} > 0],

i.e. ``M^T = d z_{l+1} / d z_l``. Because ``g_{l,b} = M_{l,b} g_{l+1,b}``, the true gradient
always lies in ``range(M_{l,b})``. With the thin SVD ``M = U S V^T`` (singular values below
``rtol * s_max`` treated as zero):

* ``"activation"`` (Ren et al.): ``A = Ahat = I`` -> unbiased, ``E = g``.
* ``"wt"`` (Singhal et al.'s W^T guess, ReLU-masked): ``A = Ahat = M`` (``u = M eps``,
  ``eps ~ N(0, I_{d_{l+1}})``) -> biased, ``E = M M^T g``.
* ``"upstream"`` (Wang et al.'s W~^perp, SVD): orthogonalise M (replace every non-zero
  singular value by 1, i.e. the polar factor ``U V^T``) and keep the top-k singular
  directions: ``u = U_k V_k^T eps``, which has the same law as ``U_k eta``; so
  ``A = Ahat = U_k`` -> ``E = U_k U_k^T g``, an orthogonal projection (bias = the part of g
  outside the top-k subspace; zero when ``k >= rank M``).
* ``"upstream_ns"`` (Newton–Schulz variant): the orthogonalisation is done by the cubic
  Newton–Schulz iteration instead of an SVD. ``k=None``: ``A = Ahat = NS(M)`` (approximate
  polar factor). ``k`` given: the top-k subspace is found by a few steps of block power
  (subspace) iteration ``Y <- M M^T NS(Y)`` started from ``Y = M Omega`` with a *fixed-seed*
  Gaussian ``Omega`` (so the estimator is a deterministic function of M and its expectation
  has the closed form ``Q Q^T g``), and ``A = Ahat = Q = NS(Y)``.
* ``"upstream_precond"`` (preconditioned / whitened): guesses as in W^T (``u = M eps``,
  equivalently ``U S eta``) but the estimate is preconditioned by ``(M M^T)^+``:
  ``ghat = (M M^T)^+ s u``, i.e. ``A = U S``, ``Ahat = U S^{-1}`` -> ``E = U U^T g = g``
  (``g`` lies in ``range(M)``), hence **unbiased by construction** for ``k=None``; its
  variance grows like ``1 / s_min^2``. With ``k`` the same construction is restricted to the
  top-k subspace (then ``E = U_k U_k^T g``, biased).

Last layer (logits): there is no upstream weight, so every activation-space estimator uses
plain activation perturbation ``u ~ N(0, I_C)`` there (unbiased; C is small).

``num_guesses=G`` averages G independent single-guess estimates (G JVPs per layer).

Reference tools (``true_gradient``, ``expected_estimate``) use reverse mode; estimators never
do (the tests patch ``torch.autograd.grad`` / ``backward`` to raise while estimating).

Memory: ``"wt"`` and ``"upstream_ns"`` with ``k`` are applied matrix-free (products with the
mask and ``W_{l+1}``, memory ``O(B d_l k)``); ``"upstream"``, ``"upstream_precond"`` and
``"upstream_ns"`` with ``k=None`` materialise the per-example ``M_{l,b}`` (``O(B d_l d_{l+1})``)
for their SVD / full Newton–Schulz.

Measurement and training tools (``gradient_spectra``, ``upstream_subspace_energy``,
``PeakMemoryMeter``, ``train_mlp``) back the book chapter ``book/14_forward_gradients.md``.

Modules: :mod:`.validation` (types, names, checks), :mod:`.mlp` (the functional network),
:mod:`.estimators` (the estimators), :mod:`.analysis` (what they are measured against) and
:mod:`.training` (training with them); import each name from its module.
"""
