"""VGG13 with BatchNorm for 32×32 images, without the large fully-connected layers (paper §4:
CIFAR10/100, STL10)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor, nn

from .common import check_images, check_int, make_projection

__all__ = ["VGG13", "VGG13_CONFIG"]

#: Convolution configuration of VGG13 (Simonyan & Zisserman, 2015, column B): numbers are
#: output channels of 3×3 convolutions, ``"M"`` is a 2×2 max-pool.
VGG13_CONFIG: Tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)


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
        self.in_channels = check_int("in_channels", in_channels)
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
            self.feature_dim = check_int("feature_dim", feature_dim)
            self.projection = make_projection(c_in, feature_dim, agd_compatible)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_channels, H, W), H, W >= 32 -> features (B, feature_dim)."""
        check_images(x, self.in_channels, "VGG13")
        if min(x.shape[-2:]) < 32:
            raise ValueError(
                f"VGG13 has five 2×2 max-pools and needs H, W >= 32, got spatial size "
                f"{tuple(x.shape[-2:])}"
            )
        return self.projection(self.pool(self.features(x)))
