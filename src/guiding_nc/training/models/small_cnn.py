"""A few-second CPU feature extractor for 28×28 (MNIST-like) and 8×8 (sklearn digits) images."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from torch import Tensor, nn

from .common import check_bool, check_images, check_int

__all__ = ["SmallCNN"]


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
        agd_compatible: no biases, BatchNorm without affine parameters (see :mod:`guiding_nc.training.models`).
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
        self.in_channels = check_int("in_channels", in_channels)
        self.feature_dim = check_int("feature_dim", feature_dim)
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            size = (input_size, input_size)
        elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
            size = tuple(input_size)
        else:
            raise TypeError(f"input_size must be an int or an (H, W) pair, got {input_size!r}")
        self.input_size = (
            check_int("input_size[0]", size[0], minimum=2),
            check_int("input_size[1]", size[1], minimum=2),
        )
        if isinstance(channels, (int, str)) or not isinstance(channels, Sequence) or not channels:
            raise TypeError(f"channels must be a non-empty sequence of ints, got {channels!r}")
        widths = [check_int(f"channels[{i}]", c) for i, c in enumerate(channels)]
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
        check_bool("feature_batch_norm", feature_batch_norm)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c_in, feature_dim, bias=not (agd_compatible or feature_batch_norm))]
        if feature_batch_norm:
            layers.append(nn.BatchNorm1d(feature_dim, affine=not agd_compatible))
        if final_activation:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, in_channels, H, W) with ``(H, W) == input_size`` -> (B, feature_dim)."""
        check_images(x, self.in_channels, "SmallCNN")
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SmallCNN was built for input_size={self.input_size} but got images of spatial "
                f"size {tuple(x.shape[-2:])}"
            )
        return self.net(x)
