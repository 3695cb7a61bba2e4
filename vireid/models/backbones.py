"""Two-stream ResNet: modality-specific stem (and optionally first stages), shared remaining stages, non-local blocks.

The networks are torchvision's ResNets (``torchvision.models.resnet50`` / ``resnet18``, or a half-width ResNet-18
assembled from torchvision's ``BasicBlock``); this module only re-arranges them:

* ``visible`` and ``infrared`` streams each hold a copy of the stem ``conv1, bn1, relu, maxpool`` and, with
  ``specific_stages = k``, of ``layer1 .. layerk``; ``specific_stages = -1`` is a single-stream ResNet (AML,
  fast-reid): both streams are empty and ``shared`` holds the stem too;
* ``shared`` holds ``layer{k+1} .. layer4``, run on the whole batch (so its BatchNorm statistics are over both
  modalities, as in the AGW reference);
* non-local blocks (:class:`~vireid.models.layers.NonLocal`) are inserted after chosen blocks of a stage.

Inside each stream the module names are torchvision's (``visible.conv1.weight``, ``shared.layer3.5.bn2.weight``),
so a torchvision state dict maps onto a stream by prefixing its keys; the non-local blocks live under
``<stage>.non_local.<block index>`` and never collide with torchvision keys.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.resnet import BasicBlock, ResNet, conv1x1

from vireid.errors import DataError
from vireid.models.layers import NonLocal

__all__ = [
    "STAGES",
    "TwoStreamResNet",
    "ResNetStage",
    "resnet50_random",
    "resnet18_random",
    "resnet18_half_random",
    "stage_out_channels",
    "set_last_stride",
]

STAGES = ("layer1", "layer2", "layer3", "layer4")
STEM = ("conv1", "bn1", "relu", "maxpool")

NonLocalWidth = Literal["faithful", "half"]


# --------------------------------------------------------------------------------------------------------------------
# torchvision networks (randomly initialised; weights are loaded by vireid.models.weights)


def resnet50_random() -> ResNet:
    """torchvision ResNet-50 (v1.5: stride on the 3x3 conv), random init."""
    return tv_resnet50(weights=None)


def resnet18_random() -> ResNet:
    """torchvision ResNet-18, random init."""
    return tv_resnet18(weights=None)


def resnet18_half_random() -> ResNet:
    """ResNet-18 with half the channels everywhere (32-64-128-256, feature dim 256), random init.

    A small CPU option (about 1/4 of ResNet-18's multiply-adds). Built from torchvision's ``ResNet`` and
    ``BasicBlock`` with the same module names as torchvision, so the same weight mapping and state-dict layout apply.
    No ImageNet weights exist for it.
    """
    model = tv_resnet18(weights=None)
    widths = (32, 64, 128, 256)
    model.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    inplanes = widths[0]
    for name, planes, stride in zip(STAGES, widths, (1, 2, 2, 2)):
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        setattr(model, name, nn.Sequential(*blocks))
        inplanes = planes
    model.fc = nn.Linear(widths[-1], 1000)
    # torchvision's initialisation, re-applied to the new modules
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------------------------------------------------
# helpers on torchvision-layout networks


def stage_out_channels(stage: nn.Sequential) -> int:
    """Number of channels a ResNet stage outputs: the last BatchNorm2d of its last block outside ``downsample``."""
    last = None
    for name, module in stage[-1].named_modules():
        if isinstance(module, nn.BatchNorm2d) and not name.startswith("downsample"):
            last = module
    if last is None:
        raise ValueError("cannot infer the output channels of a stage whose last block has no BatchNorm2d")
    return int(last.num_features)


def set_last_stride(model: ResNet, stride: int) -> None:
    """Set the stride of layer4's first block (its strided conv and its downsample conv) in place.

    Stride 1 is AGW's setting: a 288x144 input gives an 18x9 layer4 map instead of 9x5.
    """
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {stride}")
    for module in model.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (stride, stride)


# --------------------------------------------------------------------------------------------------------------------
# modules


class ResNetStage(nn.Module):
    """A torchvision ResNet stage (``layerN``) with optional non-local blocks after some of its blocks.

    The blocks keep torchvision's names ``"0", "1", ...``; the non-local blocks are in ``non_local[str(i)]`` and run
    right after block ``i``.
    """

    def __init__(self, blocks: nn.Sequential, non_local: Mapping[int, NonLocal] | None = None) -> None:
        super().__init__()
        self._n_blocks = len(blocks)
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        non_local = dict(non_local or {})
        for i in non_local:
            if not 0 <= i < self._n_blocks:
                raise ValueError(f"non-local position {i} is outside the stage's blocks 0..{self._n_blocks - 1}")
        self.non_local = nn.ModuleDict({str(i): m for i, m in sorted(non_local.items())})

    def __len__(self) -> int:
        return self._n_blocks

    def __getitem__(self, i: int) -> nn.Module:
        return getattr(self, str(range(self._n_blocks)[i]))

    def blocks(self) -> Iterator[nn.Module]:
        for i in range(self._n_blocks):
            yield getattr(self, str(i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self._n_blocks):
            x = getattr(self, str(i))(x)
            key = str(i)
            if key in self.non_local:
                x = self.non_local[key](x)
        return x


class _Path(nn.Module):
    """A sequence of named parts (stem modules and stages) run in order; names are torchvision's."""

    def __init__(self, parts: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.part_names = tuple(name for name, _ in parts)
        for name, module in parts:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.part_names:
            x = getattr(self, name)(x)
        return x


class TwoStreamResNet(nn.Module):
    """ResNet with a modality-specific front (stem + ``layer1..k``) and a shared back (``layer{k+1}..layer4``).

    Args:
        template: a torchvision-layout ResNet (``conv1, bn1, relu, maxpool, layer1..4``), already carrying the
            weights to start from; it is deep-copied, never modified or aliased.
        specific_stages: k in -1..4; 0 = only the stem is modality-specific (AGW); -1 = nothing is (one stream
            for both modalities, as AML's fast-reid ResNet).
        last_stride: stride of layer4 (1 = AGW: 288x144 -> 18x9 map).
        non_local_after: ``{"layer2": (2, 3), "layer3": (3, 4, 5)}``: insert a non-local block after these blocks
            (0-based) of these stages. Empty or None: no non-local blocks. A non-local block in a modality-specific
            stage is duplicated with that stage.
        non_local_width: ``"faithful"`` = 1 inner channel (the AGW code), ``"half"`` = C/2.

    ``forward(x, modality)`` returns the layer4 map ``[B, C, h, w]`` in the input order.
    """

    def __init__(
        self,
        template: ResNet,
        specific_stages: int = 0,
        last_stride: int = 1,
        non_local_after: Mapping[str, Sequence[int]] | None = None,
        non_local_width: NonLocalWidth = "faithful",
    ) -> None:
        super().__init__()
        if not -1 <= specific_stages <= len(STAGES):
            raise ValueError(f"specific_stages must be in -1..{len(STAGES)}, got {specific_stages}")
        if non_local_width not in ("faithful", "half"):
            raise ValueError(f"non_local_width must be 'faithful' or 'half', got {non_local_width!r}")
        non_local_after = dict(non_local_after or {})
        unknown = sorted(set(non_local_after) - set(STAGES))
        if unknown:
            raise ValueError(f"non-local positions name unknown stages {unknown}; stages are {list(STAGES)}")

        template = copy.deepcopy(template)
        set_last_stride(template, last_stride)
        self.specific_stages = specific_stages
        self.last_stride = last_stride
        self.non_local_width = non_local_width
        self.non_local_after = {k: tuple(sorted(v)) for k, v in non_local_after.items()}
        self.out_channels = stage_out_channels(template.layer4)

        def stage(name: str) -> ResNetStage:
            blocks = getattr(template, name)
            channels = stage_out_channels(blocks)
            inner = 1 if non_local_width == "faithful" else max(1, channels // 2)
            positions = self.non_local_after.get(name, ())
            return ResNetStage(blocks, {i: NonLocal(channels, inner) for i in positions})

        stem: list[tuple[str, nn.Module]] = [(name, getattr(template, name)) for name in STEM]
        k = max(specific_stages, 0)
        front = (stem if specific_stages >= 0 else []) + [(name, stage(name)) for name in STAGES[:k]]
        back = (stem if specific_stages < 0 else []) + [(name, stage(name)) for name in STAGES[k:]]
        self.specific_names = tuple(name for name, _ in front)
        self.shared_names = tuple(name for name, _ in back)
        self.visible = _Path(front)
        self.infrared = copy.deepcopy(self.visible)
        self.shared = _Path(back)

    # ---------------------------------------------------------------------------------------------------------------

    def stream(self, modality: int) -> nn.Module:
        """The modality-specific front for modality 0 (visible) or 1 (infrared)."""
        return (self.visible, self.infrared)[modality]

    def forward_specific(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Run each sample through its modality's front; the result is in the input order.

        A single-modality batch goes through one stream without copying; a batch grouped as all-visible then
        all-infrared (the reference's order) is split by slicing; any other order is gathered, run and scattered
        back. One host synchronisation per call (the group sizes decide the shapes).
        """
        m = _check_inputs(x, modality)
        if not self.specific_names:  # single stream: nothing modality-specific
            return x
        b = x.shape[0]
        is_visible = m == 0
        stats = torch.stack([is_visible.sum(), (m[1:] >= m[:-1]).all().long(), ((m < 0) | (m > 1)).any().long()])
        n_visible, grouped, bad = (int(v) for v in stats.tolist())
        if bad:
            raise DataError(f"model input: modality values must be 0 (visible) or 1 (infrared); got {_preview(m)}")
        if n_visible == b:
            return self.visible(x)
        if n_visible == 0:
            return self.infrared(x)
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        if grouped:
            out = torch.cat([self.visible(x[:n_visible]), self.infrared(x[n_visible:])])
        else:
            idx_v = torch.nonzero(is_visible).squeeze(1)
            idx_i = torch.nonzero(~is_visible).squeeze(1)
            y = torch.cat([self.visible(x.index_select(0, idx_v)), self.infrared(x.index_select(0, idx_i))])
            order = torch.cat([idx_v, idx_i])
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(b, device=order.device)
            out = y.index_select(0, inverse)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.shared(self.forward_specific(x, modality))

    def non_local_blocks(self) -> list[tuple[str, NonLocal]]:
        """All non-local blocks with their qualified names (both streams' copies when they sit in a specific stage)."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, NonLocal)]

    def torchvision_key_targets(self, key: str) -> list[str]:
        """Names in this module's state dict that a torchvision ResNet state-dict ``key`` maps to.

        Stem and specific-stage keys map to both streams, the others to ``shared``; ``fc.*`` maps to nothing.
        """
        head = key.split(".", 1)[0]
        if head in self.specific_names:
            return [f"visible.{key}", f"infrared.{key}"]
        if head in self.shared_names:
            return [f"shared.{key}"]
        return []


def _check_inputs(x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"model input: images must be a float tensor [B, 3, H, W]; got {shape}")
    if not isinstance(modality, torch.Tensor):
        raise DataError(f"model input: modality must be a long tensor [B] (0 visible, 1 infrared); "
                        f"got {type(modality).__name__}")
    integer = not (modality.dtype.is_floating_point or modality.is_complex())
    if modality.dim() != 1 or modality.shape[0] != x.shape[0] or not integer:
        raise DataError(
            f"model input: modality must be an integer tensor [B] with B = {x.shape[0]} (0 visible, 1 infrared); "
            f"got dtype {modality.dtype}, shape {tuple(modality.shape)}"
        )
    return modality.to(device=x.device, dtype=torch.long)


def _preview(m: torch.Tensor, n: int = 8) -> str:
    values = m[:n].tolist()
    return str(values)[:-1] + (", ...]" if m.numel() > n else "]")

