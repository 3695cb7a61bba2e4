"""DEEN (Zhang & Wang, CVPR 2023): the diverse embedding expansion network, built on vireid's two-stream ResNet.

The network of the official code (ZYK100/LLCM, ``DEEN/model.py`` @ 886e27c; every fact and its line is on the recipe
card ``docs/recipes/deen.md``)::

    stem (modality-specific) -> layer1 -> MFA1 -> layer2 -> MFA2 -> layer3 -> MFA3 -> DEE -> layer4 -> avg -> BN -> FC
    RegDB (``stages=3``):       layer1 -> MFA1 -> layer2 -> MFA2 -> DEE -> layer3 -> avg -> BN -> FC   (no layer4)

* **MFA** (multi-level feature aggregation, :class:`MFABlock`) after every stage but the last: a channel non-local
  block (:class:`ChannelNonLocal`) then a position non-local block (:class:`PairedNonLocal`), each reading the
  stage's output ``x_h`` and the previous (lower) feature ``x_l``, each ending in a zero-initialised BatchNorm, so
  an MFA block starts as the identity on ``x_h``.
* **DEE** (diverse embedding expansion, :class:`DEEModule`) before the last stage: ``expansions`` (2) branches, each
  ``1x1conv(relu(mean of three 3x3 convs C -> C/4 with dilation 1, 2, 3))`` back to C channels; the original map and
  the branches are stacked **along the batch** ``[x; x_1; x_2]`` and dropout (p 0.01) is applied to all of it. Every
  later layer (the last stage, pooling, BNNeck, classifier) sees a batch three times as large; the expanded rows are
  what the CPM and orthogonality losses of :mod:`vireid.losses.deen` act on.
* Head: global average pooling (not GeM), BNNeck (weight ~ N(1, 0.01), frozen zero bias), linear classifier without
  bias (N(0, 0.001)).

Interface (the training contract of docs/training_interfaces.md): ``model(x, modality)`` returns
:class:`~vireid.models.TrainOutput` in training mode whose rows are ``1 + expansions`` blocks of ``B`` (the original
batch, then each expansion, samples in the input order inside each block), and :class:`~vireid.models.EvalOutput` in
eval mode: ``bn`` is the test feature of the official ``test.py``, the concatenation over the branches of the
L2-normalised pooled and BN features (see :meth:`DEENModel.forward`), ``pooled`` the concatenation of the
L2-normalised pooled features only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import ResNet

from vireid.errors import ConfigError
from vireid.models import EvalOutput, TrainOutput, get_backbone
from vireid.models.backbones import STAGES, TwoStreamResNet, stage_out_channels
from vireid.models.layers import BNNeck, GlobalAvgPool, LinearClassifier
from vireid.models.weights import (
    LoadReport,
    fetch_imagenet_state_dict,
    load_torchvision_state_dict,
    read_state_dict_file,
)

__all__ = [
    "ChannelNonLocal",
    "DEEModule",
    "DEENModel",
    "MFABlock",
    "PairedNonLocal",
    "build_deen_model",
    "split_branches",
]

PNLLayout = Literal["reference", "positions"]


def _kaiming_fan_in(conv: nn.Conv2d) -> None:
    """The official ``weights_init_kaiming`` on a Conv2d: kaiming_normal_(a=0, mode='fan_in'); the bias keeps
    PyTorch's default initialisation."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")


def split_branches(x: torch.Tensor, branches: int) -> tuple[torch.Tensor, ...]:
    """Split a DEEN batch ``[(branches) * B, ...]`` into its ``branches`` blocks of ``B`` rows (original first)."""
    if branches < 1 or x.shape[0] % branches:
        raise ValueError(f"split_branches: {x.shape[0]} rows do not split into {branches} equal blocks")
    return tuple(torch.chunk(x, branches, dim=0))


class ChannelNonLocal(nn.Module):
    """The CNL half of an MFA block: attention between channels, the low-level map re-weighted into the high one.

    With ``x_h`` [B, C_h, H_h, W_h] (the stage output) and ``x_l`` [B, C_l, H_l, W_l] (the lower feature), 1x1
    convolutions (with bias) ``g: C_l -> C_l``, ``theta: C_h -> C_l``, ``phi: C_l -> C_l`` (stride ``s``) and
    ``W = BN(conv_{C_l -> C_h}, stride s)``::

        A = theta(x_h) . phi(x_l)^T / C_l        [B, C_l, C_l]   (positions of theta and phi must coincide)
        z = x_h + W(A . g(x_l))                   (g's positions are those of x_l; W's stride brings them to x_h's)

    ``stride`` is 1 when ``x_l`` has ``x_h``'s resolution (MFA1) and 2 when it has twice it (MFA2, MFA3). The BN of
    ``W`` starts at weight 0 and bias 0, so the block starts as the identity on ``x_h``. Convolutions keep PyTorch's
    default initialisation (the official code applies no other).
    """

    def __init__(self, high_channels: int, low_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ChannelNonLocal: stride must be 1 or 2, got {stride}")
        self.high_channels, self.low_channels, self.stride = high_channels, low_channels, stride
        self.g = nn.Conv2d(low_channels, low_channels, kernel_size=1)
        self.theta = nn.Conv2d(high_channels, low_channels, kernel_size=1)
        self.phi = nn.Conv2d(low_channels, low_channels, kernel_size=1, stride=stride)
        self.out_conv = nn.Conv2d(low_channels, high_channels, kernel_size=1, stride=stride)
        self.out_bn = nn.BatchNorm2d(high_channels)
        nn.init.zeros_(self.out_bn.weight)
        nn.init.zeros_(self.out_bn.bias)

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        b = x_h.shape[0]
        g = self.g(x_l)
        theta = self.theta(x_h).reshape(b, self.low_channels, -1)          # [B, C_l, N_h]
        phi = self.phi(x_l).reshape(b, self.low_channels, -1)              # [B, C_l, N_l']
        if theta.shape[2] != phi.shape[2]:
            raise ValueError(f"ChannelNonLocal: the high map has {theta.shape[2]} positions but the strided low map "
                             f"{phi.shape[2]}; the input size does not halve evenly between stages")
        attention = torch.matmul(theta, phi.transpose(1, 2)) / self.low_channels  # [B, C_l, C_l]
        y = torch.matmul(attention, g.reshape(b, self.low_channels, -1)).reshape(g.shape)
        if x_h.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return x_h + self.out_bn(self.out_conv(y))

    def extra_repr(self) -> str:
        return f"high={self.high_channels}, low={self.low_channels}, stride={self.stride}"


class PairedNonLocal(nn.Module):
    """The PNL half of an MFA block: attention between spatial positions of the high and the low map.

    1x1 convolutions (with bias) to ``c = C_l // 2`` channels: ``theta`` on ``x_h``, ``g`` and ``phi`` on ``x_l``;
    ``W = BN(conv_{c -> C_h})`` (BN zero-initialised: the block starts as the identity on ``x_h``).

    ``layout="reference"`` (default) reproduces how the official code arranges these maps: it *views* each
    ``[B, c, H, W]`` map as ``[B, C_l, H*W/2]`` (``C_l = 2c`` rows) before the products. In memory order that makes
    row ``2k + h`` hold channel ``k`` at positions ``h*N/2 .. (h+1)*N/2 - 1``, so the "positions" the attention runs
    over are the N/2 pairs (p, p + N/2) -- a position in the upper half of the map with the one N/2 later in the
    lower half -- each described by a ``C_l``-vector::

        u(t)[b, j, 2k + h] = t[b, k, h*N/2 + j]                 j < N/2,  h in {0, 1}
        y = (u(theta(x_h)) u(phi(x_l))^T / (N_l/2)) u(g(x_l))   [B, N_h/2, C_l], folded back the same way
        z = x_h + W(y)

    ``layout="positions"`` is the textbook non-local block the code intends: N positions, ``c``-vectors, divided by
    N_l. The reference layout needs ``c * N`` to be divisible by ``C_l`` (N even): a ValueError otherwise.
    The product is evaluated as ``theta (phi^T g)`` (a ``C_l x C_l`` inner matrix instead of ``N_h x N_l``); the two
    orders are the same sum, equal up to float rounding.
    """

    def __init__(self, high_channels: int, low_channels: int, layout: PNLLayout = "reference") -> None:
        super().__init__()
        if layout not in ("reference", "positions"):
            raise ValueError(f"PairedNonLocal: layout must be 'reference' or 'positions', got {layout!r}")
        if low_channels < 2:
            raise ValueError(f"PairedNonLocal: low_channels must be >= 2, got {low_channels}")
        self.high_channels, self.low_channels, self.layout = high_channels, low_channels, layout
        self.inner = low_channels // 2
        self.g = nn.Conv2d(low_channels, self.inner, kernel_size=1)
        self.theta = nn.Conv2d(high_channels, self.inner, kernel_size=1)
        self.phi = nn.Conv2d(low_channels, self.inner, kernel_size=1)
        self.out_conv = nn.Conv2d(self.inner, high_channels, kernel_size=1)
        self.out_bn = nn.BatchNorm2d(high_channels)
        nn.init.zeros_(self.out_bn.weight)
        nn.init.zeros_(self.out_bn.bias)

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, c, H, W]`` -> ``[B, rows, cols]`` with the layout's meaning of rows (features) and cols (positions)."""
        b = t.shape[0]
        if self.layout == "positions":
            return t.reshape(b, self.inner, -1)
        if (self.inner * t.shape[2] * t.shape[3]) % self.low_channels:
            raise ValueError(f"PairedNonLocal(layout='reference'): a {tuple(t.shape[2:])} map cannot be viewed as "
                             f"{self.low_channels} rows (needs an even number of positions); change the input size "
                             f"or use layout='positions'")
        return t.contiguous().reshape(b, self.low_channels, -1)   # the reference's .view on a contiguous map

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        b = x_h.shape[0]
        theta = self._rows(self.theta(x_h))                 # [B, R, P_h]
        phi = self._rows(self.phi(x_l))                     # [B, R, P_l]
        g = self._rows(self.g(x_l))                         # [B, R, P_l]
        inner = torch.matmul(phi, g.transpose(1, 2)) / phi.shape[2]    # [B, R, R]
        y = torch.matmul(theta.transpose(1, 2), inner)      # [B, P_h, R]
        y = y.transpose(1, 2).contiguous().reshape(b, self.inner, *x_h.shape[2:])
        if x_h.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return x_h + self.out_bn(self.out_conv(y))

    def extra_repr(self) -> str:
        return f"high={self.high_channels}, low={self.low_channels}, layout={self.layout}"


class MFABlock(nn.Module):
    """Multi-level feature aggregation: ``PNL(CNL(x_h, x_l), x_l)``; starts as the identity on ``x_h``."""

    def __init__(self, high_channels: int, low_channels: int, stride: int, layout: PNLLayout = "reference") -> None:
        super().__init__()
        self.cnl = ChannelNonLocal(high_channels, low_channels, stride)
        self.pnl = PairedNonLocal(high_channels, low_channels, layout)

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        return self.pnl(self.cnl(x_h, x_l), x_l)


class DEEBranch(nn.Module):
    """One expansion branch: ``conv1x1_{C/4 -> C}(relu((d1(x) + d2(x) + d3(x)) / 3))``, ``dk`` a 3x3 conv
    ``C -> C/4`` with dilation and padding k, no bias (Kaiming fan-in init); the 1x1 conv has a bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = channels // 4
        if reduced < 1:
            raise ValueError(f"DEEModule: channels must be >= 4, got {channels}")
        self.dilated = nn.ModuleList(
            nn.Conv2d(channels, reduced, kernel_size=3, stride=1, padding=d, dilation=d, bias=False) for d in (1, 2, 3)
        )
        self.project = nn.Conv2d(reduced, channels, kernel_size=1)
        for conv in (*self.dilated, self.project):
            _kaiming_fan_in(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = (self.dilated[0](x) + self.dilated[1](x) + self.dilated[2](x)) / 3
        return self.project(F.relu(mixed))


class DEEModule(nn.Module):
    """Diverse embedding expansion: ``dropout(cat([x, branch_1(x), ..., branch_E(x)], dim=0))``.

    The output has ``(1 + expansions) * B`` rows; the first ``B`` are ``x`` itself (up to dropout, p = 0.01 in
    training, nothing in eval mode).
    """

    def __init__(self, channels: int, expansions: int = 2, dropout: float = 0.01) -> None:
        super().__init__()
        if expansions < 1:
            raise ValueError(f"DEEModule: expansions must be >= 1, got {expansions}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DEEModule: dropout must be in [0, 1), got {dropout}")
        self.channels, self.expansions = channels, expansions
        self.branches = nn.ModuleList(DEEBranch(channels) for _ in range(expansions))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([x] + [branch(x) for branch in self.branches], dim=0))


class DEENModel(nn.Module):
    """Two-stream ResNet with MFA blocks and the DEE module; see the module docstring for the data flow.

    Args:
        backbone: a :class:`TwoStreamResNet` with a modality-specific stem only (``specific_stages=0``) and no
            non-local blocks; with ``stages=3`` its ``layer4`` has been removed.
        stages: 4 (SYSU-MM01, LLCM) or 3 (RegDB: no MFA3 and no layer4; the feature has layer3's width).
        num_classes: identities of the classifier (0: none).
        mfa: insert the MFA blocks (the DEEN default; False for the ablation without them).
        pnl_layout: see :class:`PairedNonLocal`.
        expansions, dee_dropout: see :class:`DEEModule`.
        eval_branches: ``"all"`` (the official test feature) or ``"original"`` (only the un-expanded embedding).
        eval_pool_weight: weight ``a`` of the pooled blocks in the test similarity; the BN blocks get ``1 - a``.
            The official ``test.py`` prints two results: ``distmat7`` (pooled and BN summed with equal weights,
            ``a = 0.5``, the default here) and ``distmat8`` (``a = 0.1``).
        build_kwargs: the :func:`build_deen_model` arguments (for checkpoints).
    """

    def __init__(self, backbone: TwoStreamResNet, *, stages: int, num_classes: int, mfa: bool = True,
                 pnl_layout: PNLLayout = "reference", expansions: int = 2, dee_dropout: float = 0.01,
                 eval_branches: Literal["all", "original"] = "all", eval_pool_weight: float = 0.5,
                 build_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if stages not in (3, 4):
            raise ValueError(f"DEENModel: stages must be 3 or 4, got {stages}")
        if backbone.specific_stages != 0:
            raise ValueError("DEENModel: the backbone must have a modality-specific stem only (specific_stages=0)")
        self.backbone = backbone
        self.stage_names: tuple[str, ...] = STAGES[:stages]
        missing = [n for n in self.stage_names if n not in backbone.shared_names]
        if missing:
            raise ValueError(f"DEENModel: the backbone lacks the shared stages {missing}")
        stem_bn = backbone.visible.get_submodule("bn1")
        if not isinstance(stem_bn, nn.BatchNorm2d):
            raise TypeError("DEENModel: the backbone's stem has no BatchNorm2d 'bn1' (not a torchvision ResNet)")
        stem_channels = int(stem_bn.num_features)
        widths = [stage_out_channels(_stage(backbone, n)) for n in self.stage_names]
        self.stages = stages
        self.use_mfa = bool(mfa)
        self.mfa = nn.ModuleList()
        if mfa:
            lows = [stem_channels] + widths[:-2]
            for k, (high, low) in enumerate(zip(widths[:-1], lows)):
                self.mfa.append(MFABlock(high, low, stride=1 if k == 0 else 2, layout=pnl_layout))
        self.dee = DEEModule(widths[-2], expansions, dee_dropout)
        self.branches = 1 + expansions
        dim = widths[-1]
        self.pooling = GlobalAvgPool()
        self.neck = BNNeck(dim, weight_init="normal", weight_std=0.01)
        self.classifier = LinearClassifier(dim, num_classes) if num_classes > 0 else None
        self.num_classes = int(num_classes)
        self.pool_dim = dim
        if eval_branches not in ("all", "original"):
            raise ValueError(f"DEENModel: eval_branches must be 'all' or 'original', got {eval_branches!r}")
        if not 0.0 <= eval_pool_weight <= 1.0:
            raise ValueError(f"DEENModel: eval_pool_weight must be in [0, 1], got {eval_pool_weight}")
        self.eval_branches = eval_branches
        self.eval_pool_weight = float(eval_pool_weight)
        n_eval = self.branches if eval_branches == "all" else 1
        blocks_per_branch = int(eval_pool_weight > 0) + int(eval_pool_weight < 1)
        self.feature_dim: int = dim * n_eval * blocks_per_branch
        """Width of the eval feature ``bn`` (the concatenation of the selected blocks)."""
        self.build_kwargs: dict[str, Any] = dict(build_kwargs or {})
        self.pretrained_report: LoadReport | None = None

    # ---------------------------------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``[(1 + expansions) * B, C, h, w]``: original rows first, then each expansion."""
        low = self.backbone.forward_specific(x, modality)
        last = len(self.stage_names) - 1
        out = low
        for k, name in enumerate(self.stage_names):
            if k == last:
                low = self.dee(low)
            out = self.backbone.shared.get_submodule(name)(low)
            if k < last:
                low = self.mfa[k](out, low) if self.use_mfa else out
        return out

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> TrainOutput | EvalOutput:
        """Training: :class:`TrainOutput` over all ``(1 + expansions) * B`` rows. Eval: :class:`EvalOutput` with

        ``bn = normalize(cat_k [sqrt(a) * n(p_k), sqrt(1 - a) * n(b_k)])`` over the branches k (``n`` = L2
        normalisation, ``p_k`` / ``b_k`` the pooled / BN feature of branch k, ``a = eval_pool_weight``). The inner
        product of two such features is proportional to the official ``Σ_k a·<p_k, p'_k> + (1 − a)·<b_k, b'_k>``
        (its distmat7 at a = 0.5, distmat8 at a = 0.1); ``pooled = normalize(cat_k n(p_k))``.
        """
        feature_map = self.forward_features(x, modality)
        pooled = self.pooling(feature_map)
        bn = self.neck(pooled)
        if self.training:
            logits = self.classifier(bn) if self.classifier is not None else None
            return TrainOutput(feature_map=feature_map, pooled=pooled, bn=bn, logits=logits)
        n_eval = self.branches if self.eval_branches == "all" else 1
        p_blocks = split_branches(F.normalize(pooled.float(), dim=1), self.branches)[:n_eval]
        b_blocks = split_branches(F.normalize(bn.float(), dim=1), self.branches)[:n_eval]
        a = self.eval_pool_weight
        parts: list[torch.Tensor] = []
        for p, q in zip(p_blocks, b_blocks):
            if a > 0:
                parts.append(p * a ** 0.5)
            if a < 1:
                parts.append(q * (1 - a) ** 0.5)
        return EvalOutput(bn=F.normalize(torch.cat(parts, dim=1), dim=1),
                          pooled=F.normalize(torch.cat(p_blocks, dim=1), dim=1))

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """BNNeck + classifier (the official optimiser's full-lr groups); the frozen BN bias is included."""
        yield from self.neck.parameters()
        if self.classifier is not None:
            yield from self.classifier.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Everything else: both stems, the shared stages, the MFA blocks and the DEE module (0.1x lr)."""
        head = {id(p) for p in self.head_parameters()}
        for p in self.parameters():
            if id(p) not in head:
                yield p


# --------------------------------------------------------------------------------------------------------------------
# factory


def build_deen_model(
    arch: str = "resnet50",
    num_classes: int = 0,
    pretrained: str | os.PathLike | None = "imagenet",
    stages: int = 4,
    mfa: bool = True,
    pnl_layout: PNLLayout = "reference",
    expansions: int = 2,
    dee_dropout: float = 0.01,
    eval_branches: Literal["all", "original"] = "all",
    eval_pool_weight: float = 0.5,
) -> DEENModel:
    """Build a :class:`DEENModel`: the official DEEN network on a registered backbone (``model.arch``).

    Defaults are the SYSU-MM01 / LLCM network; RegDB's is ``stages=3``. ``pretrained``: ``"imagenet"``, ``"none"``
    or a local torchvision-format weights file, loaded into both stems and the shared stages (MFA, DEE and the head
    keep their own initialisation). ``last_stride`` is 1 (the official ``resnet50(last_conv_stride=1)``).
    """
    kwargs: dict[str, Any] = {
        "arch": arch, "num_classes": num_classes, "pretrained": None if pretrained is None else str(pretrained),
        "stages": stages, "mfa": mfa, "pnl_layout": pnl_layout, "expansions": expansions, "dee_dropout": dee_dropout,
        "eval_branches": eval_branches, "eval_pool_weight": eval_pool_weight,
    }
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"model.num_classes: {num_classes!r} is not allowed; expected an integer >= 0")
    checks: list[tuple[str, object, tuple[object, ...]]] = [
        ("stages", stages, (3, 4)), ("mfa", mfa, (True, False)), ("pnl_layout", pnl_layout, ("reference", "positions")),
        ("eval_branches", eval_branches, ("all", "original")),
    ]
    for name, value, allowed in checks:
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"method.{name}: {value!r} is not allowed; expected one of "
                              f"{', '.join(repr(a) for a in allowed)}")
    if isinstance(expansions, bool) or not isinstance(expansions, int) or expansions < 1:
        raise ConfigError(f"method.expansions: {expansions!r} is not allowed; expected an integer >= 1")
    if not isinstance(dee_dropout, (int, float)) or not 0.0 <= dee_dropout < 1.0:
        raise ConfigError(f"method.dee_dropout: {dee_dropout!r} is not allowed; expected a number in [0, 1)")
    if not isinstance(eval_pool_weight, (int, float)) or not 0.0 <= eval_pool_weight <= 1.0:
        raise ConfigError(f"method.eval_pool_weight: {eval_pool_weight!r} is not allowed; expected a number in [0, 1]")
    definition = get_backbone(arch)
    template = definition.build()
    report = _load_weights(template, pretrained, arch, definition.imagenet_weights)
    backbone = TwoStreamResNet(template, specific_stages=0, last_stride=1, non_local_after=None)
    if stages == 3:
        _drop_layer4(backbone)
    model = DEENModel(backbone, stages=stages, num_classes=num_classes, mfa=mfa, pnl_layout=pnl_layout,
                      expansions=expansions, dee_dropout=float(dee_dropout), eval_branches=eval_branches,
                      eval_pool_weight=float(eval_pool_weight), build_kwargs=kwargs)
    model.pretrained_report = report
    return model


def _drop_layer4(backbone: TwoStreamResNet) -> None:
    """Remove ``layer4`` from the shared path (DEEN's RegDB network ends at layer3), keeping the backbone's
    bookkeeping consistent so that it has no parameter that never receives a gradient (DDP would refuse those)."""
    del backbone.shared.layer4
    backbone.shared.part_names = tuple(n for n in backbone.shared.part_names if n != "layer4")
    backbone.shared_names = tuple(n for n in backbone.shared_names if n != "layer4")
    backbone.out_channels = stage_out_channels(_stage(backbone, "layer3"))


def _stage(backbone: TwoStreamResNet, name: str) -> nn.Sequential:
    """A shared stage of the backbone (a ResNetStage, which behaves as the Sequential it was built from)."""
    return backbone.shared.get_submodule(name)  # type: ignore[return-value]


def _load_weights(template: ResNet, pretrained: str | os.PathLike | None, arch: str,
                  imagenet: Any) -> LoadReport | None:
    """Load ``pretrained`` into the torchvision-layout ``template`` before it is split into streams."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none"):
        return None
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        if imagenet is None:
            raise ConfigError(f"model.pretrained: {arch} has no ImageNet weights; use pretrained=none "
                              f"or a path to a torchvision-format {arch} weights file")
        return load_torchvision_state_dict(template, fetch_imagenet_state_dict(arch, imagenet),
                                           f"ImageNet weights {imagenet!r}", arch)
    path = Path(pretrained)
    return load_torchvision_state_dict(template, read_state_dict_file(path), str(path), arch)
