"""Building blocks between the backbone and the losses: pooling (GeM, average), BNNeck, classifiers, non-local block.

Every formula here is written out in the docstrings because the published numbers depend on details (where an
epsilon sits, which bias is frozen, how wide the non-local block is). SPEC sections 3 (AGW) and 6 (AML) are the
source; where the reference code differs from the papers, the code's behaviour is the default and says so.

The head (pooling output onwards) always computes in float32, also inside ``torch.autocast``: it is a tiny part of
the cost, and GeM's cube and cube root, the BatchNorm statistics and the cosines of the circle classifier are
exactly where half precision loses accuracy.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GeM",
    "GlobalAvgPool",
    "BNNeck",
    "LinearClassifier",
    "CircleClassifier",
    "NonLocal",
    "float32_region",
]


def float32_region(x: torch.Tensor) -> tuple[torch.Tensor, torch.autocast]:
    """Return ``x`` as float32 and a context manager that switches autocast off for ``x``'s device type.

    Used by the head modules so that they compute in float32 whatever autocast region they are called from.
    """
    return x.float(), torch.autocast(device_type=x.device.type, enabled=False)


class GeM(nn.Module):
    """Generalised-mean pooling over all spatial positions: ``[B, C, H, W] -> [B, C]`` (float32).

    Two published variants, selected by ``learnable``:

    * fixed ``p`` (AGW, SPEC 3): ``(mean_hw(x ** p) + 1e-12) ** (1 / p)``. No clamp: the AGW code feeds the
      post-ReLU layer4 map (never negative), and the 1e-12 sits *inside* the root, after the mean.
    * learnable ``p`` (AML / fast-reid, SPEC 6): ``mean_hw(clamp(x, min=1e-6) ** p) ** (1 / p)`` with ``p`` an
      ``nn.Parameter`` of shape ``[1]`` initialised to ``p``. The clamp keeps a fractional power defined.

    With ``p = 1`` both reduce to average pooling (up to the epsilons).
    """

    FIXED_EPS = 1e-12
    CLAMP_EPS = 1e-6

    def __init__(self, p: float = 3.0, learnable: bool = False) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM: p must be positive, got {p}")
        self.learnable = learnable
        self.p: nn.Parameter | float
        if learnable:
            self.p = nn.Parameter(torch.full((1,), float(p)))
        else:
            self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, no_autocast = float32_region(x)
        with no_autocast:
            if self.learnable:
                p: torch.Tensor | float = cast(nn.Parameter, self.p).float()
                return x.clamp(min=self.CLAMP_EPS).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
            p = cast(float, self.p)
            return (x.pow(p).mean(dim=(2, 3)) + self.FIXED_EPS).pow(1.0 / p)

    def extra_repr(self) -> str:
        p = float(cast(nn.Parameter, self.p).detach()[0]) if self.learnable else self.p
        return f"p={p:.4g}, learnable={self.learnable}"


class GlobalAvgPool(nn.Module):
    """Average over all spatial positions: ``[B, C, H, W] -> [B, C]`` (float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, no_autocast = float32_region(x)
        with no_autocast:
            return x.mean(dim=(2, 3))


class BNNeck(nn.Module):
    """BatchNorm1d over the pooled feature with its bias fixed at zero (the "BNNeck" of Luo et al.).

    The bias is a zero tensor with ``requires_grad=False`` so the optimiser never moves it: the BN feature stays
    centred, which is what lets the classifier (on the BN feature) and the triplet loss (on the pooled feature)
    coexist. ``weight_init``:

    * ``"ones"``: weight 1 (the textbook BNNeck; our AGW default).
    * ``"normal"``: weight ~ N(1, ``weight_std``). fast-reid / AML use std 0.02; note that the public AGW code also
      initialises its neck this way, with std 0.01 (``weights_init_kaiming``), a negligible difference.
    """

    def __init__(self, dim: int, weight_init: Literal["ones", "normal"] = "ones", weight_std: float = 0.02) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        if weight_init == "ones":
            nn.init.ones_(self.bn.weight)
        elif weight_init == "normal":
            nn.init.normal_(self.bn.weight, 1.0, weight_std)
        else:
            raise ValueError(f"BNNeck: weight_init must be 'ones' or 'normal', got {weight_init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, no_autocast = float32_region(x)
        with no_autocast:
            return self.bn(x)


class LinearClassifier(nn.Module):
    """Identity classifier ``logits = x W^T`` without bias; W ~ N(0, 0.001) as in AGW and most re-ID baselines."""

    def __init__(self, dim: int, num_classes: int, std: float = 0.001) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, 0.0, std)

    @property
    def weight(self) -> torch.Tensor:
        return self.fc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, no_autocast = float32_region(x)
        with no_autocast:
            return self.fc(x)


class CircleClassifier(nn.Module):
    """Cosine classifier: ``cos[b, k] = <x_b / |x_b|, w_k / |w_k|>`` in [-1, 1].

    Returns the raw cosines; the circle-softmax scale and margins are applied by the loss
    (:func:`vireid.losses.circle_logits`), so that the same head serves any margin. The weight is initialised
    like ``nn.Linear`` (Kaiming-uniform, a = sqrt(5)), as in fast-reid; only its direction matters.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, no_autocast = float32_region(x)
        with no_autocast:
            return F.linear(F.normalize(x, dim=1), F.normalize(self.weight.float(), dim=1))


class NonLocal(nn.Module):
    """Dot-product non-local block as used by AGW (SPEC 3); starts as the identity.

    With ``N = H * W`` positions and 1x1 convolutions ``theta, phi, g: C -> C'`` (with bias)::

        f[i, j] = theta(x)_i . phi(x)_j / N          (no softmax: the affinity is divided by N)
        y_i     = sum_j f[i, j] * g(x)_j             (C' channels)
        z       = x + BN(conv_{C' -> C}(y))          (BN weight and bias initialised to 0)

    Because the output BN starts at weight 0 and bias 0, ``z == x`` at initialisation in train and eval mode, so
    inserting the block into a pretrained ResNet does not change its function until training moves the BN.

    ``inner_channels`` is C'. The public AGW code computes it as ``reduc_ratio // reduc_ratio`` = 1 (a bug that every
    published AGW number includes; our "faithful" default); the intended width is ``C // 2`` ("half").

    The product is evaluated as ``theta @ (phi @ g)`` when ``C' < N`` (cost O(N C'^2) instead of O(N^2 C')); the two
    orders are the same sum, equal up to float rounding.
    """

    def __init__(self, channels: int, inner_channels: int) -> None:
        super().__init__()
        if inner_channels < 1 or channels < 1:
            raise ValueError(f"NonLocal: channels and inner_channels must be >= 1, got {channels}, {inner_channels}")
        self.channels = channels
        self.inner_channels = inner_channels
        self.theta = nn.Conv2d(channels, inner_channels, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner_channels, kernel_size=1)
        self.g = nn.Conv2d(channels, inner_channels, kernel_size=1)
        self.out_conv = nn.Conv2d(inner_channels, channels, kernel_size=1)
        self.out_bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.out_bn.weight)
        nn.init.zeros_(self.out_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = h * w
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, N, C']
        phi = self.phi(x).flatten(2)                       # [B, C', N]
        g = self.g(x).flatten(2).transpose(1, 2)           # [B, N, C']
        if self.inner_channels < n:
            y = torch.matmul(theta, torch.matmul(phi, g) / n)
        else:
            y = torch.matmul(torch.matmul(theta, phi) / n, g)
        y = y.transpose(1, 2).reshape(b, self.inner_channels, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return x + self.out_bn(self.out_conv(y))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_channels={self.inner_channels}"
