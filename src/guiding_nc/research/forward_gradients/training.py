"""Training an MLP with any estimator (or with backpropagation): chapter 14's training runs."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from .validation import (
    ESTIMATORS,
    Params,
    check_k,
    check_pos_int,
    check_xy,
)
from .mlp import (
    flatten_params,
    forward_record,
    random_mlp,
)
from .estimators import estimate
from .analysis import cosine_similarity_per_layer, true_gradient


# --------------------------------------------------------------------------------------
# training with an estimator (book chapter 14)
# --------------------------------------------------------------------------------------
#: Gradient sources accepted by :func:`train_mlp`: backpropagation plus every estimator.
TRAIN_METHODS: Tuple[str, ...] = ("backprop",) + ESTIMATORS


def gradient(name: str, params: Params, x: Tensor, y: Tensor, *, k: Optional[int] = None,
             num_guesses: int = 1, generator: Optional[torch.Generator] = None) -> Params:
    """``true_gradient`` for ``name="backprop"``, else :func:`estimate` (forward mode only)."""
    if name == "backprop":
        if k is not None:
            raise ValueError("k is only used by the upstream estimators; backprop takes k=None")
        return true_gradient(params, x, y)
    return estimate(name, params, x, y, k=k, num_guesses=num_guesses, generator=generator)


def _accuracy_and_loss(params: Params, x: Tensor, y: Tensor, batch: int = 2048) -> Tuple[float, float]:
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            logits = forward_record(params, x[i:i + batch])[0]
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
            loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
    return correct / x.shape[0], loss / x.shape[0]


def train_mlp(
    name: str,
    dims: Sequence[int],
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    k: Optional[int] = None,
    num_guesses: int = 1,
    seed: int = 0,
    eval_every: int = 25,
    eval_train: int = 1000,
    return_params: bool = False,
) -> Dict[str, object]:
    """Train the ReLU MLP ``dims`` with Adam on gradients from ``name`` (:data:`TRAIN_METHODS`).

    Args:
        dims: ``[d_0, d_1, ..., d_L]`` (``d_0`` = flattened input size, ``d_L`` = classes).
        x_train, x_test: ``(N, d_0)`` (or ``(N, *)``) float inputs; y_train, y_test: ``(N,)`` labels.
        steps: optimiser steps; minibatches of ``batch_size`` drawn by a seeded permutation
            per epoch. lr: Adam learning rate (the same for every method; not tuned).
        k: subspace size for the upstream estimators. num_guesses: guesses per step.
        seed: seeds the initialisation, the minibatch order and the guesses.
        eval_every: evaluate every this many steps (and at step 0 and ``steps``).
        eval_train: number of training examples (fixed, first ones) used for the train loss.
        return_params: also return the trained parameters under ``"params"``.

    Returns:
        ``{"step": [...], "test_accuracy": [...], "train_loss": [...], "train_accuracy": [...],
        "cosine": [[per-layer cosine of that step's gradient to the true minibatch gradient],
        ...] (recorded at the evaluation steps > 0), "cosine_step": [...], "diverged": bool}``.
        Training stops early (``diverged=True``) if the loss becomes non-finite.
    """
    if name not in TRAIN_METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {TRAIN_METHODS}")
    steps = check_pos_int("steps", steps)
    batch_size = check_pos_int("batch_size", batch_size)
    eval_every = check_pos_int("eval_every", eval_every)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    gen = torch.Generator().manual_seed(int(seed))
    params = random_mlp(list(dims), generator=gen)
    xtr, ytr = check_xy(params, x_train, y_train)
    xte, yte = check_xy(params, x_test, y_test)
    if name != "backprop":
        check_k(name, params, k)
    elif k is not None:
        raise ValueError("k is only used by the upstream estimators; backprop takes k=None")
    leaves = [t for t in flatten_params(params)]
    opt = torch.optim.Adam(leaves, lr=lr)
    N = xtr.shape[0]
    order = torch.randperm(N, generator=gen)
    pos = 0
    rec: Dict[str, object] = {"step": [], "test_accuracy": [], "train_loss": [], "train_accuracy": [],
                              "cosine": [], "cosine_step": [], "diverged": False}

    def evaluate(step: int) -> bool:
        acc, _ = _accuracy_and_loss(params, xte, yte)
        tr_acc, tr_loss = _accuracy_and_loss(params, xtr[:eval_train], ytr[:eval_train])
        rec["step"].append(step)
        rec["test_accuracy"].append(acc)
        rec["train_loss"].append(tr_loss)
        rec["train_accuracy"].append(tr_acc)
        return math.isfinite(tr_loss)

    evaluate(0)
    for step in range(1, steps + 1):
        if pos + batch_size > N:
            order, pos = torch.randperm(N, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        xb, yb = xtr[idx], ytr[idx]
        grads = gradient(name, params, xb, yb, k=k, num_guesses=num_guesses, generator=gen)
        is_eval = step % eval_every == 0 or step == steps
        if is_eval:
            rec["cosine"].append(cosine_similarity_per_layer(grads, true_gradient(params, xb, yb)))
            rec["cosine_step"].append(step)
        for p, gr in zip(leaves, flatten_params(grads)):
            p.grad = gr
        opt.step()
        if is_eval and not evaluate(step):
            rec["diverged"] = True
            break
    if return_params:
        rec["params"] = params
    return rec
