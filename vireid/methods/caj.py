"""CAJ channel augmentation (ICCV 2021; SPEC 4), as a registered method.

The AGW model on three views per step (RGB, channel-exchanged RGB through the visible stem, IR with adaptive gray),
channel random erasing, labels repeated; flip averaging at test time (``eval.flip``). YAML::

    method: {name: caj, metric_loss: esd, weights: {ce: 1, wrt: 1}}

Metric loss (``metric_loss``): ``esd`` (default) is the official run's TripletLoss_ADP with alpha 1, gamma 1,
square 1, the paper's "enhanced squared difference" (:func:`vireid.losses.enhanced_squared_difference`;
mangye16/Cross-Modal-Re-ID-baseline@e817a26 ICCV21_CAJ/train_ext.py:71-76, 229-230, loss.py:108-161), on the
pooled feature with the plain Euclidean distance; its squared gap is clamped at 88, so anchors violating by more
than ~9.4 get no gradient (known saturation, see the loss). ``wrt`` is AGW's weighted regularised triplet.
``weights.wrt`` weighs the metric term whichever loss ``metric_loss`` chooses; it is logged as ``esd`` or ``wrt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch

from vireid.data.transforms import CAJViews
from vireid.losses import enabled, enhanced_squared_difference
from vireid.methods.agw import AGW, ReIDSettings, reid_terms
from vireid.methods.base import Batch, RunContext, weighted_terms
from vireid.methods.registry import MethodSpec, register_method
from vireid.methods.supervised import supervised_plan
from vireid.models import VIReIDModel
from vireid.settings import check

__all__ = ["CAJ", "CAJSettings"]

METRIC_LOSSES = ("esd", "wrt")


@dataclass
class CAJSettings(ReIDSettings):
    """``method:`` of CAJ."""

    name: str = "caj"
    metric_loss: str = "esd"
    """``esd`` (the official CAJ run: TripletLoss_ADP, alpha 1, gamma 1, square 1; clamp at 88) or ``wrt`` (AGW's)."""
    triplet_margin: float = 0.3

    def validate(self, key: str) -> None:
        super().validate(key)
        check(self.metric_loss in METRIC_LOSSES, f"{key}.metric_loss", self.metric_loss, "esd or wrt")


class CAJ(AGW):
    """CAJ channel augmentation (SPEC 4): three views per sample, labels repeated; AGW losses on all of them."""

    def __init__(self, model: VIReIDModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 erasing: float = 0.5, erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 adaptive_gray: float = 0.5, weights: Mapping[str, float] | None = None,
                 label_smoothing: float = 0.0, triplet_margin: float = 0.3, backbone_lr_mult: float = 0.1,
                 metric_loss: str = "esd") -> None:
        if metric_loss not in METRIC_LOSSES:
            raise ValueError(f"CAJ: metric_loss must be 'esd' or 'wrt', got {metric_loss!r}")
        self.metric_loss = metric_loss
        super().__init__(model, height=height, width=width, pad=pad, flip=flip, weights=weights,
                         label_smoothing=label_smoothing, triplet_margin=triplet_margin,
                         backbone_lr_mult=backbone_lr_mult)
        self.views = CAJViews(height, width, pad=pad, flip=flip, erasing=erasing, erasing_area=erasing_area,
                              erasing_ratio=erasing_ratio, adaptive_gray=adaptive_gray)

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        rgb, exchanged, ir = self.views(rgb_u8, ir_u8, generator)
        # the channel-exchanged view is an RGB image: it goes through the visible stem, as in the reference
        return Batch.of_parts([rgb, exchanged, ir], [rgb_labels, rgb_labels, ir_labels], [0, 0, 1],
                              [rgb_cams, rgb_cams, ir_cams])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.metric_loss == "wrt":
            return super().training_step(batch)
        out = self.model(batch.images, batch.modalities)
        w = self.weights
        raw = reid_terms(out, batch.labels, {**w, "wrt": 0.0}, label_smoothing=self.label_smoothing,
                         triplet_margin=self.triplet_margin)
        if enabled(w, "wrt"):
            raw["esd"] = enhanced_squared_difference(out.pooled, batch.labels, alpha=1.0, gamma=1.0, square=True)
        return weighted_terms(raw, {**w, "esd": w["wrt"]})


def build_caj(settings: CAJSettings, ctx: RunContext, num_classes: int) -> CAJ:
    a, d = ctx.augment, ctx.data
    return CAJ(cast(VIReIDModel, ctx.build_model(num_classes)), height=d.height, width=d.width, pad=a.pad, flip=a.flip,
               erasing=a.erasing, erasing_area=a.erasing_area, erasing_ratio=a.erasing_ratio,
               adaptive_gray=a.adaptive_gray, weights=settings.weights, label_smoothing=settings.label_smoothing,
               triplet_margin=settings.triplet_margin, backbone_lr_mult=ctx.train.backbone_lr_mult,
               metric_loss=settings.metric_loss)


register_method(MethodSpec(
    "caj", CAJSettings, supervised_plan(build_caj),
    summary="CAJ channel augmentation (three views: RGB, channel-exchanged RGB, IR; flip test)",
    augment_keys=frozenset({"pad", "flip", "erasing", "erasing_area", "erasing_ratio", "adaptive_gray"})))
