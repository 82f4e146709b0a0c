"""A fully-connected feature extractor (flattens its input); covers MNIST-1D vectors."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .common import check_activation, check_bool, check_int, resolve_bias

__all__ = ["MLP"]


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
        agd_compatible: build every ``Linear`` without a bias (AGD, see :mod:`guiding_nc.training.models`).
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
        self.in_features = check_int("in_features", in_features)
        self.feature_dim = check_int("feature_dim", feature_dim)
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints, got {type(hidden).__name__}")
        widths = [check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        act = check_activation(activation)
        use_bias = resolve_bias(bias, agd_compatible)
        self.agd_compatible = agd_compatible
        dims = [in_features, *widths, feature_dim]
        layers: list = [nn.Flatten()]
        check_bool("feature_batch_norm", feature_batch_norm)
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
