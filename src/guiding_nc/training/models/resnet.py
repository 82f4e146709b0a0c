"""CIFAR ResNets: torchvision's ResNet-18 and ResNet-50 with a 3×3 stride-1 stem, no max-pool and
no classifier (paper §4: CIFAR10, CIFAR100, STL10, ImageNet)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .common import check_images, check_int, disable_batchnorm_affine, make_projection

__all__ = ["ResNet18", "ResNet50"]


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
        check_int("in_channels", in_channels)
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
            self.feature_dim = check_int("feature_dim", feature_dim)
            self.fc = make_projection(natural, feature_dim, agd_compatible)
        if agd_compatible:
            disable_batchnorm_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_channels, H, W), H, W >= 8 (32 for CIFAR) -> features (B, feature_dim)."""
        check_images(x, self.in_channels, self._name)
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
