"""Feature extractors for the experiments of "Guiding Neural Collapse" (Markou et al., 2024).

Every model here maps an input batch to *penultimate features* of shape ``(B, feature_dim)``
and exposes the integer attribute ``feature_dim``. The classifier head (learned, fixed ETF,
or the paper's implicit nearest-ETF classifier) is **not** part of the model: the trainer owns
it, because the three methods compared in the paper (§4) differ only in that head.

Models (paper §4 and the "Training protocol" section of ``PAPER_NOTES.md``):

* :class:`UFM` — the unconstrained feature model: the features are a free parameter
  ``(num_samples, feature_dim)``, indexed by sample id (paper §4, UFM-10/100/200/1000).
* :class:`MLP` — a fully-connected network (flattens its input); covers MNIST-1D vectors.
* :class:`SmallCNN` — a few-second CPU model for 28×28 (MNIST-like) and 8×8 (sklearn digits).
* :class:`ResNet18`, :class:`ResNet50` — CIFAR variants (3×3 stride-1 stem, no max-pool).
* :class:`VGG13` — VGG13 with BatchNorm for 32×32 inputs, no large fully-connected layers.

One module per model family (:mod:`.ufm`, :mod:`.mlp`, :mod:`.small_cnn`, :mod:`.resnet`,
:mod:`.vgg`), their shared checks in :mod:`.common`; this package holds the registry:
:data:`MODEL_NAMES`, :func:`build_model` and :func:`model_defaults`.

AGD compatibility
-----------------
Automatic Gradient Descent (Bernstein et al., 2023; :class:`guiding_nc.training.optim.AGD`), the
optimiser the paper uses, only supports parameters that are matrices or convolution kernels.
Passing ``agd_compatible=True`` builds a model whose every parameter is at least 2-D:

* ``nn.Linear`` layers are built with ``bias=False``;
* ``nn.Conv2d`` layers are built with ``bias=False`` (the ResNets' convs have none anyway);
* every BatchNorm layer is built with ``affine=False`` (it still normalises with batch
  statistics and keeps running statistics, which are buffers, not parameters).

The UFM's only parameter, the features matrix, is already 2-D.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .common import check_int
from .mlp import MLP
from .resnet import ResNet18, ResNet50
from .small_cnn import SmallCNN
from .ufm import UFM
from .vgg import VGG13

__all__ = [
    "MODEL_NAMES",
    "MODEL_LABELS",
    "build_model",
    "model_defaults",
]

MODEL_NAMES: Tuple[str, ...] = ("ufm", "mlp", "small_cnn", "resnet18", "resnet50", "vgg13")
#: How figures and tables name each model.
MODEL_LABELS = {"ufm": "UFM", "mlp": "MLP", "small_cnn": "small CNN", "resnet18": "ResNet18", "resnet50": "ResNet50",
                "vgg13": "VGG13"}


def _resolve_channels(in_channels: Optional[int], input_shape: Optional[Tuple[int, ...]]) -> int:
    if input_shape is not None and len(input_shape) == 3:
        c = input_shape[0]
        if in_channels is not None and in_channels != c:
            raise ValueError(
                f"in_channels={in_channels} conflicts with input_shape={tuple(input_shape)} "
                f"(which has {c} channels)"
            )
        return c
    return 3 if in_channels is None else in_channels


def _check_input_shape(input_shape) -> Optional[Tuple[int, ...]]:
    if input_shape is None:
        return None
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape:
        raise TypeError(f"input_shape must be a non-empty tuple of ints, got {input_shape!r}")
    return tuple(check_int(f"input_shape[{i}]", s) for i, s in enumerate(input_shape))


def model_defaults(name: str) -> Dict[str, Any]:
    """The keyword defaults of model ``name``'s class: what an absent ``model_kwargs`` entry means
    (so ``{"final_activation": True}`` and ``{}`` name the same MLP)."""
    import inspect

    cls = {"ufm": UFM, "mlp": MLP, "small_cnn": SmallCNN, "resnet18": ResNet18, "resnet50": ResNet50,
           "vgg13": VGG13}.get(str(name).lower())
    if cls is None:
        return {}
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_model(
    name: str,
    *,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    input_shape: Optional[Sequence[int]] = None,
    feature_dim: Optional[int] = None,
    num_samples: Optional[int] = None,
    agd_compatible: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a feature extractor by name; see :data:`MODEL_NAMES`.

    Args:
        name: one of ``"ufm"``, ``"mlp"``, ``"small_cnn"``, ``"resnet18"``, ``"resnet50"``,
            ``"vgg13"`` (case-insensitive).
        num_classes: accepted for a uniform call signature and validated, but unused: models end
            at the penultimate features; the trainer owns the classifier.
        in_channels: image channels. Default: ``input_shape[0]`` for a 3-D ``input_shape``,
            else 3. An explicit value that contradicts ``input_shape`` is an error.
        input_shape: per-sample input shape without the batch dimension: ``(C, H, W)`` for
            images, ``(L,)`` for vectors (MNIST-1D: ``(40,)``). Required for ``"mlp"`` (unless
            ``in_features`` is passed) and ``"small_cnn"``; validated for the others.
        feature_dim: feature width. Required for ``"ufm"``; default 128 for ``"mlp"`` and
            ``"small_cnn"``; for the ResNets/VGG ``None`` keeps the natural width (512, 2048,
            512) and another value adds a small projection.
        num_samples: number of training samples; required for ``"ufm"``.
        agd_compatible: build without biases and BatchNorm affine parameters (module docstring).
        **kwargs: forwarded to the model class (e.g. ``hidden``, ``activation``, ``init_std``,
            ``generator``, ``channels``).

    Returns:
        An ``nn.Module`` mapping inputs to ``(B, model.feature_dim)`` features.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names are {', '.join(MODEL_NAMES)}")
    if num_classes is not None:
        check_int("num_classes", num_classes)
    if in_channels is not None:
        check_int("in_channels", in_channels)
    if feature_dim is not None:
        check_int("feature_dim", feature_dim)
    shape = _check_input_shape(input_shape)

    if key == "ufm":
        if num_samples is None or feature_dim is None:
            raise ValueError("model 'ufm' needs both num_samples and feature_dim")
        return UFM(num_samples, feature_dim, **kwargs)
    if num_samples is not None:
        raise ValueError(f"num_samples is only meaningful for model 'ufm', not {name!r}")

    if key == "mlp":
        if "in_features" in kwargs:
            in_features = kwargs.pop("in_features")
            if shape is not None and math.prod(shape) != in_features:
                raise ValueError(f"in_features={in_features} conflicts with input_shape={shape}")
        elif shape is None:
            raise ValueError("model 'mlp' needs input_shape (e.g. (40,) or (1, 28, 28))")
        else:
            in_features = math.prod(shape)
        return MLP(in_features, feature_dim=128 if feature_dim is None else feature_dim,
                   agd_compatible=agd_compatible, **kwargs)

    channels = _resolve_channels(in_channels, shape)
    if shape is not None and len(shape) != 3:
        raise ValueError(f"model {name!r} expects input_shape (C, H, W), got {shape}")

    if key == "small_cnn":
        if shape is None:
            raise ValueError("model 'small_cnn' needs input_shape (C, H, W), e.g. (1, 28, 28)")
        return SmallCNN(channels, 128 if feature_dim is None else feature_dim, shape[1:],
                        agd_compatible=agd_compatible, **kwargs)
    if key == "vgg13":
        if shape is not None and min(shape[1:]) < 32:
            raise ValueError(f"model 'vgg13' needs H, W >= 32, got input_shape={shape}")
        return VGG13(channels, feature_dim=feature_dim, agd_compatible=agd_compatible, **kwargs)
    if shape is not None and min(shape[1:]) < 8:
        raise ValueError(f"model {name!r} needs H, W >= 8, got input_shape={shape}")
    cls = ResNet18 if key == "resnet18" else ResNet50
    return cls(channels, feature_dim=feature_dim, agd_compatible=agd_compatible, **kwargs)
