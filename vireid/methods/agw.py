"""AGW (SPEC 3): the cross-modality baseline, as a registered method.

Two-stream ResNet-50 with non-local blocks, GeM, BNNeck; cross-entropy on the logits + weighted regularised triplet
on the pooled feature, 1:1; pad-crop + flip. Trained by the supervised one-phase plan
(:func:`vireid.methods.supervised.supervised_plan`). YAML::

    method: {name: agw, weights: {ce: 1, wrt: 1, triplet: 0}, label_smoothing: 0.0, triplet_margin: 0.3}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch

from vireid.data.transforms import agw_train_transform
from vireid.losses import batch_hard_triplet, cross_entropy, enabled, weighted_regularized_triplet
from vireid.methods.base import Batch, Method, RunContext, resolve_weights, weighted_terms
from vireid.methods.registry import MethodSettings, MethodSpec, register_method
from vireid.methods.supervised import supervised_plan
from vireid.models import VIReIDModel
from vireid.settings import check

__all__ = ["AGW", "AGWSettings", "ReIDSettings", "reid_terms"]

ERASING_KEYS = frozenset({"erasing", "erasing_area", "erasing_ratio", "erasing_fill", "erasing_aspect"})


@dataclass
class ReIDSettings(MethodSettings):
    """What the AGW family's settings share: loss weights over the published defaults, label smoothing."""

    weights: dict[str, float] = field(default_factory=dict)
    """Loss-term weights overriding the method's published defaults, e.g. {wrt: 0}; 0 switches a term off.
    Unknown term names are an error that lists the method's terms."""
    label_smoothing: float = 0.0

    def validate(self, key: str) -> None:
        check(0.0 <= self.label_smoothing < 1.0, f"{key}.label_smoothing", self.label_smoothing, "a value in [0, 1)")
        for name, w in self.weights.items():
            check(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"{key}.weights.{name}", w,
                  "a weight >= 0")


@dataclass
class AGWSettings(ReIDSettings):
    """``method:`` of AGW."""

    name: str = "agw"
    triplet_margin: float = 0.3
    """Margin of the optional batch-hard triplet term (``weights.triplet``, off by default)."""


def reid_terms(out, labels: torch.Tensor, weights: Mapping[str, float], *, label_smoothing: float,
               triplet_margin: float) -> dict[str, torch.Tensor]:
    """The AGW identity terms (ce on the logits, wrt and the optional batch-hard triplet on the pooled feature) whose
    weight is non-zero, unweighted."""
    raw: dict[str, torch.Tensor] = {}
    if enabled(weights, "ce"):
        raw["ce"] = cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
    if enabled(weights, "wrt"):
        raw["wrt"] = weighted_regularized_triplet(out.pooled, labels)
    if enabled(weights, "triplet"):
        raw["triplet"] = batch_hard_triplet(out.pooled, labels, margin=triplet_margin)
    return raw


class AGW(Method):
    """AGW baseline. Loss terms: ``ce`` (1), ``wrt`` (1), ``triplet`` (batch-hard, 0 = off by default)."""

    DEFAULT_WEIGHTS = {"ce": 1.0, "wrt": 1.0, "triplet": 0.0}

    def __init__(self, model: VIReIDModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 erasing: float = 0.0, erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 erasing_fill: str = "imagenet_mean", erasing_aspect: str = "uniform",
                 weights: Mapping[str, float] | None = None, label_smoothing: float = 0.0,
                 triplet_margin: float = 0.3, backbone_lr_mult: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.weights = resolve_weights(type(self).__name__, self.DEFAULT_WEIGHTS, weights)
        self.label_smoothing = label_smoothing
        self.triplet_margin = triplet_margin
        self.backbone_lr_mult = float(backbone_lr_mult)
        self.transform = agw_train_transform(height, width, pad, flip, erasing, erasing_area, erasing_ratio,
                                             erasing_fill, erasing_aspect)  # type: ignore[arg-type]

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        rgb = self.transform(rgb_u8, generator)
        ir = self.transform(ir_u8, generator)
        return Batch.of_parts([rgb, ir], [rgb_labels, ir_labels], [0, 1], [rgb_cams, ir_cams])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.model(batch.images, batch.modalities)
        raw = reid_terms(out, batch.labels, self.weights, label_smoothing=self.label_smoothing,
                         triplet_margin=self.triplet_margin)
        return weighted_terms(raw, self.weights)


def build_agw(settings: AGWSettings, ctx: RunContext, num_classes: int) -> AGW:
    a, d = ctx.augment, ctx.data
    return AGW(cast(VIReIDModel, ctx.build_model(num_classes)), height=d.height, width=d.width, pad=a.pad, flip=a.flip,
               erasing=a.erasing, erasing_area=a.erasing_area, erasing_ratio=a.erasing_ratio,
               erasing_fill=a.erasing_fill, erasing_aspect=a.erasing_aspect, weights=settings.weights,
               label_smoothing=settings.label_smoothing, triplet_margin=settings.triplet_margin,
               backbone_lr_mult=ctx.train.backbone_lr_mult)


register_method(MethodSpec(
    "agw", AGWSettings, supervised_plan(build_agw),
    summary="AGW baseline (two-stream ResNet-50, non-local, GeM, BNNeck; CE + WRT)",
    augment_keys=frozenset({"pad", "flip"}) | ERASING_KEYS))
