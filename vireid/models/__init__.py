"""Models: a two-stream ResNet backbone, pooling, BNNeck and classifier behind one uniform interface.

Quick start (the contract is docs/training_interfaces.md)::

    import torch
    from vireid.models import build_model

    model = build_model("resnet18_half", num_classes=10, pretrained="none")
    x = torch.randn(4, 3, 96, 48)
    modality = torch.tensor([0, 1, 1, 0])          # 0 visible, 1 infrared; any order
    out = model(x, modality)                        # train mode: TrainOutput(feature_map, pooled, bn, logits)
    model.eval()
    feats = model(x, modality)                      # eval mode: EvalOutput(bn, pooled), both L2-normalised

Backbones are looked up in :data:`BACKBONES`, a plain dict from a name to a :class:`BackboneDef`; add your own
torchvision-layout ResNet with :func:`register_backbone`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.resnet import ResNet

from vireid.errors import ConfigError
from vireid.models.backbones import (
    TwoStreamResNet,
    resnet18_half_random,
    resnet18_random,
    resnet50_random,
)
from vireid.models.layers import BNNeck, CircleClassifier, GeM, GlobalAvgPool, LinearClassifier, NonLocal
from vireid.models.weights import (
    LoadReport,
    fetch_imagenet_state_dict,
    load_torchvision_state_dict,
    read_state_dict_file,
    torchvision_state_of_vireid_model,
)

__all__ = [
    "BACKBONES",
    "BackboneDef",
    "register_backbone",
    "get_backbone",
    "build_model",
    "VIReIDModel",
    "TrainOutput",
    "EvalOutput",
    "TwoStreamResNet",
    "GeM",
    "GlobalAvgPool",
    "BNNeck",
    "LinearClassifier",
    "CircleClassifier",
    "NonLocal",
    "LoadReport",
]


# --------------------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class BackboneDef:
    """How to build one backbone architecture.

    Attributes:
        build: returns a randomly initialised torchvision-layout ResNet (``conv1, bn1, relu, maxpool, layer1..4``).
        imagenet_weights: torchvision weights enum member used for ``pretrained="imagenet"`` (None: not available).
        non_local_after: AGW's non-local positions for this depth, ``{stage: block indices}`` (0-based).
        description: one line for listings.
    """

    build: Callable[[], ResNet]
    imagenet_weights: WeightsEnum | None
    non_local_after: Mapping[str, tuple[int, ...]]
    description: str = ""


BACKBONES: dict[str, BackboneDef] = {}
"""Backbone name -> definition. Add entries with :func:`register_backbone` (duplicates are an error)."""


def register_backbone(name: str, definition: BackboneDef) -> None:
    """Add a backbone under ``name``; registering a name twice is an error (remove it from BACKBONES first)."""
    if name in BACKBONES:
        raise ConfigError(f"backbone {name!r} is already registered; choose another name "
                          f"(registered: {', '.join(sorted(BACKBONES))})")
    BACKBONES[name] = definition


def get_backbone(name: str) -> BackboneDef:
    """The definition registered under ``name``; unknown names list the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"model.arch: unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


# AGW: non-local after the last 2 bottlenecks of layer2 and the last 3 of layer3 (ResNet-50 has 3-4-6-3 blocks).
# ResNet-18 (2-2-2-2 blocks) has no published positions; we use the analogous "last block of layer2 and of layer3".
register_backbone("resnet50", BackboneDef(resnet50_random, ResNet50_Weights.IMAGENET1K_V1,
                                          {"layer2": (2, 3), "layer3": (3, 4, 5)},
                                          "torchvision ResNet-50, 2048-d (AGW, AML)"))
register_backbone("resnet18", BackboneDef(resnet18_random, ResNet18_Weights.IMAGENET1K_V1,
                                          {"layer2": (1,), "layer3": (1,)},
                                          "torchvision ResNet-18, 512-d"))
register_backbone("resnet18_half", BackboneDef(resnet18_half_random, None,
                                               {"layer2": (1,), "layer3": (1,)},
                                               "ResNet-18 at half width, 256-d, random init only (CPU demo)"))


# --------------------------------------------------------------------------------------------------------------------
# outputs and model


@dataclass
class TrainOutput:
    """What the losses need in training mode.

    ``feature_map`` is the layer4 map (in the autocast dtype when autocast is on); ``pooled``, ``bn`` and ``logits``
    are float32 (the head always runs in float32). ``logits`` is None without a classifier; for the circle
    classifier it holds cosines in [-1, 1].
    """

    feature_map: torch.Tensor   # [B, C, h, w]
    pooled: torch.Tensor        # [B, C]
    bn: torch.Tensor            # [B, C]
    logits: torch.Tensor | None  # [B, num_classes]


@dataclass
class EvalOutput:
    """Retrieval features in eval mode, both L2-normalised float32 ``[B, C]``; ``bn`` is the reported one."""

    bn: torch.Tensor
    pooled: torch.Tensor


class VIReIDModel(nn.Module):
    """Two-stream backbone -> pooling -> neck -> classifier, with the uniform interface of the training contract.

    ``model(x, modality)`` returns :class:`TrainOutput` in training mode and :class:`EvalOutput` in eval mode.
    ``x`` is a normalised float ``[B, 3, H, W]`` batch (channels_last is fine), ``modality`` a long ``[B]`` tensor
    (0 visible, 1 infrared) in any order.
    """

    def __init__(
        self,
        backbone: TwoStreamResNet,
        pooling: nn.Module,
        neck: nn.Module | None = None,
        classifier: nn.Module | None = None,
        build_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.neck = neck if neck is not None else nn.Identity()
        self.classifier = classifier
        self.feature_dim: int = backbone.out_channels
        weight = getattr(classifier, "weight", None) if classifier is not None else None
        self.num_classes: int = int(weight.shape[0]) if weight is not None else 0
        self.build_kwargs: dict[str, Any] = dict(build_kwargs or {})
        """The :func:`build_model` arguments of this model (for checkpoints; rebuild with pretrained='none')."""
        self.pretrained_report: LoadReport | None = None

    def forward_features(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """The layer4 feature map ``[B, C, h, w]``, samples in the input order."""
        return self.backbone(x, modality)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> TrainOutput | EvalOutput:
        feature_map = self.forward_features(x, modality)
        pooled = self.pooling(feature_map)
        bn = self.neck(pooled)
        if not self.training:
            return EvalOutput(bn=F.normalize(bn.float(), dim=1), pooled=F.normalize(pooled.float(), dim=1))
        logits = self.classifier(bn) if self.classifier is not None else None
        return TrainOutput(feature_map=feature_map, pooled=pooled, bn=bn, logits=logits)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """BNNeck + classifier parameters (AGW trains them at 10x the backbone's learning rate).

        Frozen parameters (the BNNeck bias) are included so that head and backbone parameters partition
        ``model.parameters()``; filter on ``requires_grad`` when building optimiser groups.
        """
        yield from self.neck.parameters()
        if self.classifier is not None:
            yield from self.classifier.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter not in :meth:`head_parameters`: backbone, non-local blocks and a learnable GeM ``p``."""
        head = {id(p) for p in self.head_parameters()}
        for p in self.parameters():
            if id(p) not in head:
                yield p


# --------------------------------------------------------------------------------------------------------------------
# factory


def _choice(field_name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"model.{field_name}: {value!r} is not allowed; expected one of "
                          f"{', '.join(repr(a) for a in allowed)}")


def build_model(
    arch: str = "resnet50",
    num_classes: int = 0,
    pretrained: str | os.PathLike | None = "imagenet",
    specific_stages: int = 0,
    last_stride: int = 1,
    non_local: bool = True,
    non_local_width: Literal["faithful", "half"] = "faithful",
    pooling: Literal["gem", "avg"] = "gem",
    gem_p: float = 3.0,
    gem_learnable: bool = False,
    neck: Literal["bnneck", "none"] = "bnneck",
    neck_init: Literal["ones", "normal"] = "ones",
    neck_init_std: float = 0.02,
    classifier: Literal["linear", "circle", "none"] = "linear",
) -> VIReIDModel:
    """Build a :class:`VIReIDModel`. Defaults are AGW's (SPEC 3); AML (SPEC 6) is ``non_local=False,
    gem_learnable=True, neck_init="normal", classifier="circle"``.

    Args:
        arch: a name in :data:`BACKBONES` (``resnet50``, ``resnet18``, ``resnet18_half``).
        num_classes: identities of the classifier; 0 = no classifier (feature extractor only).
        pretrained: ``"imagenet"`` (torchvision weights API; raises CheckpointError offline), ``"none"``/None
            (random init), a path to a local torchvision-format ``.pth``/``.safetensors`` state dict, or a vireid
            checkpoint (or model state dict) with a one-stream backbone (``specific_stages=-1``). Weights go
            into both modality streams and the shared stages; non-local blocks, neck and classifier keep their init.
        specific_stages: 0 = modality-specific stem only (AGW); k = stem + layer1..k (0..4); -1 = one stream for
            both modalities (AML / fast-reid).
        last_stride: layer4 stride, 1 (AGW, AML) or 2 (torchvision).
        non_local: insert non-local blocks at AGW's positions (see :data:`BACKBONES`).
        non_local_width: ``"faithful"`` = 1 inner channel (AGW code), ``"half"`` = C/2.
        pooling, gem_p, gem_learnable: ``"gem"`` (fixed p: AGW formula; learnable p: AML) or ``"avg"``.
        neck: ``"bnneck"`` or ``"none"`` (then ``bn`` is the pooled feature).
        neck_init, neck_init_std: BNNeck weight init, 1 or N(1, std) (AML: std 0.02).
        classifier: ``"linear"`` (no bias, N(0, 0.001)), ``"circle"`` (cosines) or ``"none"``.
    """
    kwargs = dict(arch=arch, num_classes=num_classes, pretrained=None if pretrained is None else str(pretrained),
                  specific_stages=specific_stages, last_stride=last_stride, non_local=non_local,
                  non_local_width=non_local_width, pooling=pooling, gem_p=gem_p, gem_learnable=gem_learnable,
                  neck=neck, neck_init=neck_init, neck_init_std=neck_init_std, classifier=classifier)
    definition = get_backbone(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"model.num_classes: {num_classes!r} is not allowed; "
                          f"expected an integer >= 0 (0 = no classifier)")
    if isinstance(specific_stages, bool) or not isinstance(specific_stages, int) or not -1 <= specific_stages <= 4:
        raise ConfigError(f"model.specific_stages: {specific_stages!r} is not allowed; "
                          f"expected an integer in -1..4 (-1 = single stream)")
    _choice("last_stride", last_stride, (1, 2))
    _choice("non_local", non_local, (True, False))
    _choice("non_local_width", non_local_width, ("faithful", "half"))
    _choice("pooling", pooling, ("gem", "avg"))
    _choice("neck", neck, ("bnneck", "none"))
    _choice("neck_init", neck_init, ("ones", "normal"))
    _choice("classifier", classifier, ("linear", "circle", "none"))
    if not (isinstance(gem_p, (int, float)) and gem_p > 0):
        raise ConfigError(f"model.gem_p: {gem_p!r} is not allowed; expected a positive number")

    template = definition.build()
    report = _load_pretrained(template, pretrained, arch, definition)
    backbone = TwoStreamResNet(
        template,
        specific_stages=specific_stages,
        last_stride=last_stride,
        non_local_after=definition.non_local_after if non_local else None,
        non_local_width=non_local_width,
    )
    dim = backbone.out_channels
    pool: nn.Module = GeM(float(gem_p), learnable=gem_learnable) if pooling == "gem" else GlobalAvgPool()
    neck_module = BNNeck(dim, weight_init=neck_init, weight_std=neck_init_std) if neck == "bnneck" else None
    head: nn.Module | None = None
    if num_classes > 0 and classifier == "linear":
        head = LinearClassifier(dim, num_classes)
    elif num_classes > 0 and classifier == "circle":
        head = CircleClassifier(dim, num_classes)
    model = VIReIDModel(backbone, pool, neck_module, head, build_kwargs=kwargs)
    model.pretrained_report = report
    return model


def _load_pretrained(
    template: ResNet, pretrained: str | os.PathLike | None, arch: str, definition: BackboneDef
) -> LoadReport | None:
    """Load the requested weights into the torchvision-layout ``template`` (before it is split into streams)."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none"):
        return None
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        if definition.imagenet_weights is None:
            raise ConfigError(f"model.pretrained: {arch} has no ImageNet weights; use pretrained=none "
                              f"or a path to a torchvision-format {arch} weights file")
        state = fetch_imagenet_state_dict(arch, definition.imagenet_weights)
        source = f"ImageNet weights {definition.imagenet_weights!r}"
    else:
        path = Path(pretrained)
        state = read_state_dict_file(path)
        source = str(path)
        backbone = torchvision_state_of_vireid_model(state, source)
        if backbone is not None:
            state, source = backbone, f"{path} (the backbone of a vireid model)"
    return load_torchvision_state_dict(template, state, source, arch)
