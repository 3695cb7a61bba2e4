"""CAJ channel augmentation (ICCV 2021; SPEC 4), as a registered method.

The AGW model on three views per step (RGB, channel-exchanged RGB through the visible stem, IR with adaptive gray),
channel random erasing, labels repeated; flip averaging at test time (``eval.flip``). YAML::

    method: {name: caj, weights: {ce: 1, wrt: 1}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from vireid.data.transforms import CAJViews
from vireid.methods.agw import AGW, ReIDSettings
from vireid.methods.base import Batch, RunContext
from vireid.methods.registry import MethodSpec, register_method
from vireid.methods.supervised import supervised_plan
from vireid.models import VIReIDModel

__all__ = ["CAJ", "CAJSettings"]


@dataclass
class CAJSettings(ReIDSettings):
    """``method:`` of CAJ."""

    name: str = "caj"
    triplet_margin: float = 0.3


class CAJ(AGW):
    """CAJ channel augmentation (SPEC 4): three views per sample, labels repeated; AGW losses on all of them."""

    def __init__(self, model: VIReIDModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 erasing: float = 0.5, erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 adaptive_gray: float = 0.5, weights: Mapping[str, float] | None = None,
                 label_smoothing: float = 0.0, triplet_margin: float = 0.3, backbone_lr_mult: float = 0.1) -> None:
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


def build_caj(settings: CAJSettings, ctx: RunContext, num_classes: int) -> CAJ:
    a, d = ctx.augment, ctx.data
    return CAJ(ctx.build_model(num_classes), height=d.height, width=d.width, pad=a.pad, flip=a.flip,
               erasing=a.erasing, erasing_area=a.erasing_area, erasing_ratio=a.erasing_ratio,
               adaptive_gray=a.adaptive_gray, weights=settings.weights, label_smoothing=settings.label_smoothing,
               triplet_margin=settings.triplet_margin, backbone_lr_mult=ctx.train.backbone_lr_mult)


register_method(MethodSpec(
    "caj", CAJSettings, supervised_plan(build_caj),
    summary="CAJ channel augmentation (three views: RGB, channel-exchanged RGB, IR; flip test)",
    augment_keys=frozenset({"pad", "flip", "erasing", "erasing_area", "erasing_ratio", "adaptive_gray"})))
