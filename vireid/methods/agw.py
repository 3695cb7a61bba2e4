"""AGW (SPEC 3) and CAJ (SPEC 4): the cross-modality baseline and its channel-augmented variant.

AGW: two-stream ResNet-50 with non-local blocks, GeM, BNNeck; cross-entropy on the logits + weighted regularised
triplet on the pooled feature, 1:1; pad-crop + flip. CAJ: the same model and losses on three views per step
(RGB, channel-exchanged RGB through the visible stem, IR with adaptive gray), channel random erasing, and flip
averaging at test time (``eval.flip``).
"""

from __future__ import annotations

from typing import Mapping

import torch

from vireid.data.transforms import CAJViews, agw_train_transform
from vireid.errors import ConfigError
from vireid.losses import combine, cross_entropy, enabled, weighted_regularized_triplet
from vireid.losses import batch_hard_triplet
from vireid.methods.base import Batch, Method, cams_or_unknown
from vireid.models import VIReIDModel


def resolve_weights(method: str, defaults: Mapping[str, float], overrides: Mapping[str, float] | None) -> dict[str, float]:
    """Published default loss weights updated by the config's ``method.weights``; unknown names are an error."""
    weights = dict(defaults)
    for name, value in (overrides or {}).items():
        if name not in weights:
            raise ConfigError(f"method.weights.{name}: {method} has no loss term {name!r}; its terms are "
                              f"{', '.join(weights)} (set a weight to 0 to switch a term off)")
        weights[name] = float(value)
    return weights


class AGW(Method):
    """AGW baseline. Loss terms: ``ce`` (1), ``wrt`` (1), ``triplet`` (batch-hard, 0 = off by default)."""

    DEFAULT_WEIGHTS = {"ce": 1.0, "wrt": 1.0, "triplet": 0.0}

    def __init__(self, model: VIReIDModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 erasing: float = 0.0, erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 erasing_fill: str = "imagenet_mean", erasing_aspect: str = "uniform",
                 weights: Mapping[str, float] | None = None, label_smoothing: float = 0.0,
                 triplet_margin: float = 0.3) -> None:
        super().__init__()
        self.model = model
        self.weights = resolve_weights(type(self).__name__, self.DEFAULT_WEIGHTS, weights)
        self.label_smoothing = label_smoothing
        self.triplet_margin = triplet_margin
        self.transform = agw_train_transform(height, width, pad, flip, erasing, erasing_area, erasing_ratio,
                                             erasing_fill, erasing_aspect)  # type: ignore[arg-type]

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        images = torch.cat([self.transform(rgb_u8, generator), self.transform(ir_u8, generator)])
        return _batch(images, [rgb_labels, ir_labels], [0, 1], [rgb_cams, ir_cams], [len(rgb_u8), len(ir_u8)])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.model(batch.images, batch.modalities)
        return self.reid_terms(out, batch.labels)

    def reid_terms(self, out, labels: torch.Tensor, extra: dict[str, torch.Tensor] | None = None,
                   extra_weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
        """The AGW terms (ce, wrt, triplet) of a model output, plus any method-specific ``extra`` terms, weighted."""
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if enabled(w, "ce"):
            terms["ce"] = cross_entropy(out.logits, labels, label_smoothing=self.label_smoothing)
        if enabled(w, "wrt"):
            terms["wrt"] = weighted_regularized_triplet(out.pooled, labels)
        if enabled(w, "triplet"):
            terms["triplet"] = batch_hard_triplet(out.pooled, labels, margin=self.triplet_margin)
        total, _ = combine(terms, w, return_logs=False)
        result = {name: w[name] * value for name, value in terms.items()}
        result["loss"] = total
        return result


class CAJ(AGW):
    """CAJ channel augmentation (SPEC 4): three views per sample, labels repeated; AGW losses on all of them."""

    def __init__(self, model: VIReIDModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 erasing: float = 0.5, erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 adaptive_gray: float = 0.5, weights: Mapping[str, float] | None = None,
                 label_smoothing: float = 0.0, triplet_margin: float = 0.3) -> None:
        super().__init__(model, height=height, width=width, pad=pad, flip=flip, weights=weights,
                         label_smoothing=label_smoothing, triplet_margin=triplet_margin)
        self.views = CAJViews(height, width, pad=pad, flip=flip, erasing=erasing, erasing_area=erasing_area,
                              erasing_ratio=erasing_ratio, adaptive_gray=adaptive_gray)

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        rgb, exchanged, ir = self.views(rgb_u8, ir_u8, generator)
        n, m = len(rgb_u8), len(ir_u8)
        # the channel-exchanged view is an RGB image: it goes through the visible stem, as in the reference
        return _batch(torch.cat([rgb, exchanged, ir]), [rgb_labels, rgb_labels, ir_labels], [0, 0, 1],
                      [rgb_cams, rgb_cams, ir_cams], [n, n, m])


def _batch(images: torch.Tensor, labels: list[torch.Tensor], modality: list[int], cams: list, sizes: list[int]) -> Batch:
    device = images.device
    return Batch(
        images=images,
        labels=torch.cat([lab.to(device=device, dtype=torch.long) for lab in labels]),
        modalities=torch.cat([torch.full((n,), mod, dtype=torch.long, device=device) for mod, n in zip(modality, sizes)]),
        camids=torch.cat([cams_or_unknown(c, n, device) for c, n in zip(cams, sizes)]),
    )
