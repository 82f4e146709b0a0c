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
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "MODEL_NAMES",
    "UFM",
    "UFM_INITS",
    "MLP",
    "SmallCNN",
    "ResNet18",
    "ResNet50",
    "VGG13",
    "VGG13_CONFIG",
    "build_model",
    "model_defaults",
]

MODEL_NAMES: Tuple[str, ...] = ("ufm", "mlp", "small_cnn", "resnet18", "resnet50", "vgg13")

#: Convolution configuration of VGG13 (Simonyan & Zisserman, 2015, column B): numbers are
#: output channels of 3×3 convolutions, ``"M"`` is a 2×2 max-pool.
VGG13_CONFIG: Tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)

_ACTIVATIONS: dict = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


# --------------------------------------------------------------------------- validation helpers
def _check_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def _check_activation(activation: str) -> Callable[[], nn.Module]:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, got {type(activation).__name__}")
    key = activation.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; valid activations are {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[key]


def _resolve_bias(bias: Optional[bool], agd_compatible: bool) -> bool:
    """``bias=None`` means "True unless agd_compatible"; an explicit conflict is an error."""
    if not isinstance(agd_compatible, bool):
        raise TypeError(f"agd_compatible must be a bool, got {type(agd_compatible).__name__}")
    if bias is None:
        return not agd_compatible
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool or None, got {type(bias).__name__}")
    if bias and agd_compatible:
        raise ValueError(
            "bias=True conflicts with agd_compatible=True: AGD does not support bias vectors"
        )
    return bias


def _check_images(x: Tensor, in_channels: int, model: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{model} expects a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{model} expects images of shape (B, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model} was built for in_channels={in_channels} but got input with {x.shape[1]} "
            f"channels (shape {tuple(x.shape)})"
        )


def _make_projection(in_dim: int, out_dim: int, agd_compatible: bool) -> nn.Module:
    """A small ``Linear(in_dim, out_dim) -> ReLU`` projection (bias-free when AGD-compatible)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=not agd_compatible), nn.ReLU(inplace=True))


def _disable_batchnorm_affine(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm{1,2}d`` in ``module`` by an identical one with ``affine=False``.

    Done after construction because torchvision's ResNet initialiser writes to ``bn.weight``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            replacement = type(child)(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                affine=False,
                track_running_stats=child.track_running_stats,
            )
            setattr(module, name, replacement)
        else:
            _disable_batchnorm_affine(child)
    return module


# --------------------------------------------------------------------------------------- UFM
UFM_INITS = ("gaussian", "mean_free")


def _mean_free_(features: Tensor, labels: Optional[Tensor], offset: float, std: float,
                generator: Optional[torch.Generator]) -> None:
    """Rewrite Gaussian rows ``features`` (N, d) in place into the ``mean_free`` start of :class:`UFM`."""
    if labels is None:
        raise ValueError("UFM init 'mean_free' needs the labels (one per sample)")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"UFM init 'mean_free' needs {features.shape[0]} labels, got {labels.numel()}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not (math.isfinite(offset) and offset >= 0):
        raise ValueError(f"init_offset must be a finite number >= 0, got {offset!r}")
    classes, counts = torch.unique(labels, return_counts=True)
    odd = classes[counts % 2 == 1]
    if odd.numel():
        raise ValueError(f"UFM init 'mean_free' pairs the samples of each class: classes {odd[:5].tolist()} "
                         "have an odd number of samples")
    shifts = torch.empty(int(classes.max()) + 1, features.shape[1]).normal_(0.0, std, generator=generator)
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        half = idx.numel() // 2
        g = features[idx[:half]]
        features[idx[half:]] = -g
        features[idx] += offset * shifts[c]


class UFM(nn.Module):
    """Unconstrained feature model: one free feature vector per training sample.

    The features ``H`` are an ``nn.Parameter`` named ``features`` of shape
    ``(num_samples, feature_dim)``; ``forward(indices)`` returns the rows ``H[indices]`` of
    shape ``(B, feature_dim)``. Paper §4 ("UFM-10": C=10, N=1000, d=512; "UFM-100/200": N=5000,
    d=1024; "UFM-1000": N=10000, d=1024).

    Args:
        num_samples: N, the number of training samples (rows of ``H``).
        feature_dim: d, the feature dimension.
        init_std: standard deviation of the i.i.d. Gaussian initialisation of ``H``. Default
            ``1/sqrt(feature_dim)``, so every feature vector has expected squared norm 1.
        init: ``"gaussian"`` (the paper's: i.i.d. rows) or ``"mean_free"``: every class's rows
            come in antipodal pairs ``+g, -g`` (``g`` Gaussian as above) shifted by one small
            class offset ``init_offset * r_c`` (``r_c`` Gaussian as above), so a class mean is
            exactly ``init_offset * r_c`` and holds no trace of its own samples.  A
            nearest-class-mean classifier -- and hence the implicit ETF, built from the class
            means -- then starts at chance (measured in the book's UFM-scaling chapter) instead
            of classifying the random features before any step.  Needs ``labels`` with an even
            count in every class.
        labels: ``(num_samples,)`` class labels, for ``init="mean_free"``.
        init_offset: the class offsets' scale for ``init="mean_free"`` (default ``1e-3``; it
            must be small against ``1/sqrt(feature_dim)`` for the start to be at chance).
        generator: optional ``torch.Generator`` for a reproducible initialisation.
        check_indices: validate the index range in ``forward`` (one host-device sync per call;
            set ``False`` to skip it in a hot loop once the data pipeline is trusted).

    Under AGD (:class:`guiding_nc.training.optim.AGD`) ``H`` is one "layer": a matrix whose gradient is
    normalised by its Frobenius norm; :func:`guiding_nc.training.optim.agd_init_` leaves it untouched.
    """

    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        *,
        init_std: Optional[float] = None,
        init: str = "gaussian",
        labels: Optional[Tensor] = None,
        init_offset: float = 1e-3,
        generator: Optional[torch.Generator] = None,
        check_indices: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples = _check_int("num_samples", num_samples)
        self.feature_dim = _check_int("feature_dim", feature_dim)
        if init_std is None:
            init_std = 1.0 / math.sqrt(feature_dim)
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)):
            raise TypeError(f"init_std must be a float, got {type(init_std).__name__}")
        if not (math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"init_std must be finite and >= 0, got {init_std}")
        self.init_std = float(init_std)
        self.check_indices = bool(check_indices)
        if init not in UFM_INITS:
            raise ValueError(f"unknown UFM init {init!r}; choose one of {', '.join(UFM_INITS)}")
        self.init = init
        features = torch.empty(num_samples, feature_dim)
        features.normal_(0.0, self.init_std, generator=generator)
        if init == "mean_free":
            _mean_free_(features, labels, init_offset, self.init_std, generator)
        self.features = nn.Parameter(features)

    def forward(self, indices: Tensor) -> Tensor:
        """Rows of the feature matrix: ``indices`` (B,) integer -> features (B, feature_dim)."""
        if not isinstance(indices, Tensor):
            raise TypeError(f"UFM expects a LongTensor of sample indices, got {type(indices).__name__}")
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"UFM expects integer sample indices, got dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(
                f"UFM expects a 1-D tensor of sample indices (B,), got shape {tuple(indices.shape)}"
            )
        if self.check_indices and indices.numel() > 0:
            bad = (indices < 0) | (indices >= self.num_samples)
            if bool(bad.any()):
                lo, hi = int(indices.min()), int(indices.max())
                raise ValueError(
                    f"UFM sample indices must lie in [0, {self.num_samples}), got values in "
                    f"[{lo}, {hi}]"
                )
        return self.features.index_select(0, indices.long())

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, feature_dim={self.feature_dim}"


# --------------------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """Fully-connected feature extractor: ``flatten -> [Linear -> act] * (len(hidden) + 1)``.

    Input: any tensor ``(B, *)`` with ``prod(*) == in_features`` (e.g. MNIST-1D vectors
    ``(B, 40)``, images ``(B, 1, 28, 28)``). Output: features ``(B, feature_dim)``, taken after
    the last activation (unless ``final_activation=False``), as penultimate features are in the
    neural-collapse literature.

    Args:
        in_features: flattened input size.
        hidden: widths of the hidden layers (may be empty: one ``Linear`` layer).
        feature_dim: output (feature) width.
        bias: add bias vectors. Default: ``True`` unless ``agd_compatible``.
        activation: one of ``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"``, ``"identity"``.
        final_activation: apply the activation to the output features too.
        feature_batch_norm: batch-normalise the last ``Linear``'s output before its activation
            (without affine parameters under ``agd_compatible``), as the last block of a ResNet
            does: a unit then fires on about half of every batch and cannot die.
        agd_compatible: build every ``Linear`` without a bias (AGD, see module docstring).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 256),
        feature_dim: int = 128,
        *,
        bias: Optional[bool] = None,
        activation: str = "relu",
        final_activation: bool = True,
        feature_batch_norm: bool = False,
        agd_compatible: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features)
        self.feature_dim = _check_int("feature_dim", feature_dim)
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints, got {type(hidden).__name__}")
        widths = [_check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        act = _check_activation(activation)
        use_bias = _resolve_bias(bias, agd_compatible)
        self.agd_compatible = agd_compatible
        dims = [in_features, *widths, feature_dim]
        layers: list = [nn.Flatten()]
        _check_bool("feature_batch_norm", feature_batch_norm)
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=use_bias and not (last and feature_batch_norm)))
            if last and feature_batch_norm:
                layers.append(nn.BatchNorm1d(d_out, affine=not agd_compatible))
            if not last or final_activation:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, *) with ``prod(*) == in_features`` -> features (B, feature_dim)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"MLP expects a torch.Tensor input, got {type(x).__name__}")
        if x.dim() < 2 or x[0].numel() != self.in_features:
            raise ValueError(
                f"MLP was built for in_features={self.in_features} but got input of shape "
                f"{tuple(x.shape)} (expected (B, ...) with {self.in_features} values per sample)"
            )
        return self.net(x)


# ---------------------------------------------------------------------------------- SmallCNN
class SmallCNN(nn.Module):
    """A tiny CNN that trains in seconds on a CPU, for 28×28 (MNIST-like) and 8×8 (digits) images.

    Architecture: ``conv3x3(in, c0) -> BN -> ReLU``, then one ``conv3x3 stride 2 -> BN -> ReLU``
    per remaining entry of ``channels`` (two for ``input_size >= 8``, one below), global average
    pooling and ``Linear(channels[-1], feature_dim) -> ReLU``. Input ``(B, in_channels,
    input_size, input_size)``; output ``(B, feature_dim)``.

    Args:
        in_channels: image channels.
        feature_dim: output (feature) width.
        input_size: spatial size (int for square images, or ``(H, W)``); checked in ``forward``.
        channels: conv widths; default ``(16, 32, 64)`` (trimmed to two stages below 8 pixels).
        batch_norm: use BatchNorm after each conv.
        final_activation: apply ReLU to the output features.
        feature_batch_norm: batch-normalise the feature layer before its ReLU (as
            :class:`MLP`'s option of the same name).
        agd_compatible: no biases, BatchNorm without affine parameters (see module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        feature_dim: int,
        input_size: Union[int, Tuple[int, int]],
        *,
        channels: Sequence[int] = (16, 32, 64),
        batch_norm: bool = True,
        final_activation: bool = True,
        feature_batch_norm: bool = False,
        agd_compatible: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels)
        self.feature_dim = _check_int("feature_dim", feature_dim)
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            size = (input_size, input_size)
        elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
            size = tuple(input_size)
        else:
            raise TypeError(f"input_size must be an int or an (H, W) pair, got {input_size!r}")
        self.input_size = (
            _check_int("input_size[0]", size[0], minimum=2),
            _check_int("input_size[1]", size[1], minimum=2),
        )
        if isinstance(channels, (int, str)) or not isinstance(channels, Sequence) or not channels:
            raise TypeError(f"channels must be a non-empty sequence of ints, got {channels!r}")
        widths = [_check_int(f"channels[{i}]", c) for i, c in enumerate(channels)]
        if not isinstance(agd_compatible, bool):
            raise TypeError(f"agd_compatible must be a bool, got {type(agd_compatible).__name__}")
        self.agd_compatible = agd_compatible
        if min(self.input_size) < 8:
            widths = widths[:2]  # a single stride-2 stage for very small images
        layers: list = []
        c_in = in_channels
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1,
                          bias=not (batch_norm or agd_compatible))
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out, affine=not agd_compatible))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        _check_bool("feature_batch_norm", feature_batch_norm)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c_in, feature_dim, bias=not (agd_compatible or feature_batch_norm))]
        if feature_batch_norm:
            layers.append(nn.BatchNorm1d(feature_dim, affine=not agd_compatible))
        if final_activation:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, in_channels, H, W) with ``(H, W) == input_size`` -> (B, feature_dim)."""
        _check_images(x, self.in_channels, "SmallCNN")
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SmallCNN was built for input_size={self.input_size} but got images of spatial "
                f"size {tuple(x.shape[-2:])}"
            )
        return self.net(x)


# ------------------------------------------------------------------------------------ ResNets
class _CIFARResNet(ResNet):
    """torchvision's ResNet with a CIFAR stem and no classifier (``fc`` is the identity).

    Changes to :class:`torchvision.models.resnet.ResNet`: ``conv1`` is a 3×3 stride-1 conv with
    ``in_channels`` inputs, ``maxpool`` is removed, ``fc`` is removed (features after global
    average pooling, ``512 * block.expansion`` wide), optional small projection to
    ``feature_dim``; with ``agd_compatible`` every BatchNorm has ``affine=False`` and the
    projection has no bias (all convs are bias-free already).
    """

    _name = "ResNet"

    def __init__(self, block, layers, in_channels: int, feature_dim: Optional[int],
                 agd_compatible: bool) -> None:
        _check_int("in_channels", in_channels)
        if not isinstance(agd_compatible, bool):
            raise TypeError(f"agd_compatible must be a bool, got {type(agd_compatible).__name__}")
        super().__init__(block, list(layers), num_classes=1)
        self.in_channels = in_channels
        self.agd_compatible = agd_compatible
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        natural = 512 * block.expansion
        if feature_dim is None or feature_dim == natural:
            self.fc = nn.Identity()
            self.feature_dim = natural
        else:
            self.feature_dim = _check_int("feature_dim", feature_dim)
            self.fc = _make_projection(natural, feature_dim, agd_compatible)
        if agd_compatible:
            _disable_batchnorm_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_channels, H, W), H, W >= 8 (32 for CIFAR) -> features (B, feature_dim)."""
        _check_images(x, self.in_channels, self._name)
        return self._forward_impl(x)


class ResNet18(_CIFARResNet):
    """CIFAR ResNet-18 feature extractor (He et al., 2016; paper §4: CIFAR10). Features: 512.

    ``ResNet18(in_channels=3, *, feature_dim=None, agd_compatible=False)``; input
    ``(B, in_channels, H, W)`` (32×32 for CIFAR; any size >= 8 works thanks to global pooling),
    output ``(B, feature_dim)``. ``feature_dim=None`` (or 512) means no projection.
    """

    _name = "ResNet18"

    def __init__(self, in_channels: int = 3, *, feature_dim: Optional[int] = None,
                 agd_compatible: bool = False) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), in_channels, feature_dim, agd_compatible)


class ResNet50(_CIFARResNet):
    """CIFAR ResNet-50 feature extractor (paper §4: CIFAR100, STL10, ImageNet). Features: 2048.

    ``ResNet50(in_channels=3, *, feature_dim=None, agd_compatible=False)``; input
    ``(B, in_channels, H, W)``, output ``(B, feature_dim)``. ``feature_dim=None`` (or 2048)
    means no projection.
    """

    _name = "ResNet50"

    def __init__(self, in_channels: int = 3, *, feature_dim: Optional[int] = None,
                 agd_compatible: bool = False) -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), in_channels, feature_dim, agd_compatible)


# -------------------------------------------------------------------------------------- VGG13
class VGG13(nn.Module):
    """VGG13 with BatchNorm for 32×32 images (paper §4: CIFAR10/100, STL10). Features: 512.

    The convolutional part follows :data:`VGG13_CONFIG` (3×3 conv -> BN -> ReLU, 2×2 max-pools).
    After the fifth pool a 32×32 input is ``512×1×1``; a global average pool (a no-op at 32×32,
    it makes larger inputs such as STL10's 96×96 work) and a flatten give the 512-wide feature.
    The three big fully-connected layers of ImageNet VGG are omitted. If ``feature_dim`` is given
    and differs from 512, a small ``Linear(512, feature_dim) -> ReLU`` projection is appended.

    Input ``(B, in_channels, H, W)`` with ``H, W >= 32``; output ``(B, feature_dim)``.
    With ``agd_compatible`` the convs/projection have no bias and BatchNorm has ``affine=False``.
    """

    def __init__(self, in_channels: int = 3, *, feature_dim: Optional[int] = None,
                 batch_norm: bool = True, agd_compatible: bool = False) -> None:
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels)
        if not isinstance(agd_compatible, bool):
            raise TypeError(f"agd_compatible must be a bool, got {type(agd_compatible).__name__}")
        self.agd_compatible = agd_compatible
        layers: list = []
        c_in = in_channels
        for v in VGG13_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(c_in, v, kernel_size=3, padding=1, bias=not agd_compatible))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v, affine=not agd_compatible))
                layers.append(nn.ReLU(inplace=True))
                c_in = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if feature_dim is None or feature_dim == c_in:
            self.projection = nn.Identity()
            self.feature_dim = c_in
        else:
            self.feature_dim = _check_int("feature_dim", feature_dim)
            self.projection = _make_projection(c_in, feature_dim, agd_compatible)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_channels, H, W), H, W >= 32 -> features (B, feature_dim)."""
        _check_images(x, self.in_channels, "VGG13")
        if min(x.shape[-2:]) < 32:
            raise ValueError(
                f"VGG13 has five 2×2 max-pools and needs H, W >= 32, got spatial size "
                f"{tuple(x.shape[-2:])}"
            )
        return self.projection(self.pool(self.features(x)))


# ------------------------------------------------------------------------------------ factory
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
    return tuple(_check_int(f"input_shape[{i}]", s) for i, s in enumerate(input_shape))


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
        _check_int("num_classes", num_classes)
    if in_channels is not None:
        _check_int("in_channels", in_channels)
    if feature_dim is not None:
        _check_int("feature_dim", feature_dim)
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
