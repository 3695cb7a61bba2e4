"""DEEN (Zhang & Wang, CVPR 2023) as a registered method; recipe card docs/recipes/deen.md.

The network is :class:`vireid.models.deen.DEENModel` (MFA blocks, DEE expansion along the batch); losses: identity
cross-entropy on all expanded rows, batch-hard triplet (margin 0.3) on their pooled features, center-guided pair
mining (0.8) and the orthogonality term (0.01) between the expansions (:mod:`vireid.losses.deen`). Augmentation:
pad 10 + crop, flip, random grayscale 0.5 (both modalities), random erasing 0.5 with DEEN's fill. YAML::

    method: {name: deen, stages: 4, weights: {ce: 1, triplet: 1, cpm: 0.8, ort: 0.01}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vireid.data.transforms import (
    CheckSize,
    Compose,
    Op,
    Params,
    RandomErasing,
    RandomHorizontalFlip,
    RandomPadCrop,
    ToFloatNormalize,
)
from vireid.errors import ConfigError
from vireid.losses import batch_hard_triplet, cross_entropy, enabled
from vireid.losses.deen import deen_expansion_terms
from vireid.methods.base import Batch, Method, RunContext, resolve_weights, weighted_terms
from vireid.methods.registry import MethodSettings, MethodSpec, register_method
from vireid.methods.supervised import supervised_plan
from vireid.models.deen import DEENModel, build_deen_model
from vireid.settings import check

__all__ = ["DEEN", "DEENSettings", "RandomGrayscaleU8", "deen_train_transform"]

DEEN_ERASING_FILL = (0.485, 0.456, 0.406)
"""DEEN/train.py:112 RandomErasing(mean=[0.485, 0.456, 0.406]), written into the normalised tensor."""


@dataclass
class DEENSettings(MethodSettings):
    """``method:`` of DEEN."""

    name: str = "deen"
    weights: dict[str, float] = field(default_factory=dict)
    """Overrides of the published weights {ce: 1, triplet: 1, cpm: 0.8, ort: 0.01}; 0 switches a term off."""
    stages: int = 4
    """4 (SYSU-MM01, LLCM) or 3 (RegDB: no MFA3, no layer4)."""
    mfa: bool = True
    pnl_layout: str = "reference"
    expansions: int = 2
    dee_dropout: float = 0.01
    triplet_margin: float = 0.3
    cpm_margin: float = 0.2
    grayscale: float = 0.5
    eval_branches: str = "all"
    eval_pool_weight: float = 0.5

    def validate(self, key: str) -> None:
        check(self.stages in (3, 4), f"{key}.stages", self.stages, "3 or 4")
        check(self.pnl_layout in ("reference", "positions"), f"{key}.pnl_layout", self.pnl_layout,
              "reference or positions")
        check(self.expansions >= 1, f"{key}.expansions", self.expansions, "an integer >= 1")
        check(0.0 <= self.dee_dropout < 1.0, f"{key}.dee_dropout", self.dee_dropout, "a value in [0, 1)")
        check(0.0 <= self.grayscale <= 1.0, f"{key}.grayscale", self.grayscale, "a probability in [0, 1]")
        check(self.eval_branches in ("all", "original"), f"{key}.eval_branches", self.eval_branches, "all or original")
        check(0.0 <= self.eval_pool_weight <= 1.0, f"{key}.eval_pool_weight", self.eval_pool_weight,
              "a value in [0, 1]")
        check(self.triplet_margin >= 0 and self.cpm_margin >= 0, f"{key}.triplet_margin/cpm_margin",
              (self.triplet_margin, self.cpm_margin), "margins >= 0")


class RandomGrayscaleU8(Op):
    """torchvision ``RandomGrayscale(p)`` on a PIL RGB image, on a uint8 batch: with probability ``p`` every pixel
    becomes ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16`` (PIL's ``convert("L")``) in all three channels.
    Per-pixel, so it commutes exactly with pad (black stays black), crop and flip."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"grayscale probability must be in [0, 1], got {p}")
        self.p = p

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {"mask": torch.rand(x.shape[0], generator=generator) < self.p}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise ValueError("RandomGrayscaleU8 expects a uint8 batch")
        xi = x.to(torch.int32)
        gray = ((19595 * xi[:, 0] + 38470 * xi[:, 1] + 7471 * xi[:, 2] + 32768) >> 16).to(torch.uint8)
        gray = gray.unsqueeze(1).expand_as(x)
        mask = params["mask"].to(x.device).view(-1, 1, 1, 1)
        return torch.where(mask, gray, x)


def deen_train_transform(height: int, width: int, pad: int = 10, flip: float = 0.5, grayscale: float = 0.5,
                         erasing: float = 0.5, erasing_area: tuple[float, float] = (0.2, 0.8),
                         erasing_ratio: float = 0.3) -> Compose:
    """DEEN/train.py:104-133: pad + crop, flip, random grayscale, normalise, random erasing (DEEN's fill)."""
    ops: list[Op] = [CheckSize(height, width), RandomPadCrop(pad), RandomHorizontalFlip(flip)]
    if grayscale > 0:
        ops.append(RandomGrayscaleU8(grayscale))
    ops.append(ToFloatNormalize())
    if erasing > 0:
        ops.append(RandomErasing(erasing, erasing_area, erasing_ratio, DEEN_ERASING_FILL, "uniform"))
    return Compose(ops)


class DEEN(Method):
    """DEEN. Loss terms: ``ce`` (1), ``triplet`` (1), ``cpm`` (0.8), ``ort`` (0.01)."""

    DEFAULT_WEIGHTS = {"ce": 1.0, "triplet": 1.0, "cpm": 0.8, "ort": 0.01}
    model: DEENModel

    def __init__(self, model: DEENModel, *, height: int, width: int, pad: int = 10, flip: float = 0.5,
                 grayscale: float = 0.5, erasing: float = 0.5, erasing_area: tuple[float, float] = (0.2, 0.8),
                 erasing_ratio: float = 0.3, weights: Mapping[str, float] | None = None,
                 triplet_margin: float = 0.3, cpm_margin: float = 0.2, backbone_lr_mult: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.weights = resolve_weights("deen", self.DEFAULT_WEIGHTS, weights)
        self.triplet_margin, self.cpm_margin = triplet_margin, cpm_margin
        self.backbone_lr_mult = backbone_lr_mult
        self.transform = deen_train_transform(height, width, pad, flip, grayscale, erasing, erasing_area,
                                              erasing_ratio)

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        views = [self.transform(rgb_u8, generator), self.transform(ir_u8, generator)]
        return Batch.of_parts(views, [rgb_labels, ir_labels], [0, 1], [rgb_cams, ir_cams])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.model(batch.images, batch.modalities)
        branches = self.model.branches
        labels = batch.labels.repeat(branches)
        w = self.weights
        raw: dict[str, torch.Tensor] = {}
        if enabled(w, "ce"):
            raw["ce"] = cross_entropy(out.logits, labels)
        if enabled(w, "triplet"):
            raw["triplet"] = batch_hard_triplet(out.pooled, labels, margin=self.triplet_margin)
        if enabled(w, "cpm") or enabled(w, "ort"):
            extra = deen_expansion_terms(out.pooled, batch.labels, batch.modalities, branches, self.cpm_margin)
            raw.update({k: v for k, v in extra.items() if enabled(w, k)})
        return weighted_terms(raw, w)


def _model(settings: DEENSettings, arch: str, pretrained: Any, num_classes: int) -> DEENModel:
    return build_deen_model(arch, num_classes, pretrained, stages=settings.stages, mfa=settings.mfa,
                            pnl_layout=settings.pnl_layout, expansions=settings.expansions,  # type: ignore[arg-type]
                            dee_dropout=settings.dee_dropout, eval_branches=settings.eval_branches,  # type: ignore[arg-type]
                            eval_pool_weight=settings.eval_pool_weight)


def build_deen(settings: DEENSettings, ctx: RunContext, num_classes: int) -> DEEN:
    a, d = ctx.augment, ctx.data
    per_rank = ctx.sampler.num_ids // max(1, ctx.world_size)
    if settings.weights.get("cpm", 0.8) > 0 and per_rank < 2:
        raise ConfigError(f"sampler.num_ids={ctx.sampler.num_ids} over {ctx.world_size} processes leaves {per_rank} "
                          "identity per process batch; DEEN's center-guided pair mining needs at least 2: raise "
                          "sampler.num_ids to 2 x the number of processes (or set method.weights.cpm=0)")
    model = _model(settings, ctx.model.arch, ctx.model.pretrained, num_classes)
    return DEEN(model, height=d.height, width=d.width, pad=a.pad, flip=a.flip, grayscale=settings.grayscale,
                erasing=a.erasing, erasing_area=tuple(a.erasing_area), erasing_ratio=a.erasing_ratio,  # type: ignore[arg-type]
                weights=settings.weights, triplet_margin=settings.triplet_margin, cpm_margin=settings.cpm_margin,
                backbone_lr_mult=ctx.train.backbone_lr_mult)


def eval_deen(settings: DEENSettings, model_config: Any, num_classes: int) -> nn.Module:
    return _model(settings, model_config.arch, "none", num_classes)


register_method(MethodSpec(
    "deen", DEENSettings, supervised_plan(build_deen),
    summary="DEEN: MFA blocks + diverse embedding expansion, CPM and orthogonality losses (CVPR 2023)",
    augment_keys=frozenset({"pad", "flip", "erasing", "erasing_area", "erasing_ratio"}),
    model_keys=frozenset({"arch", "pretrained"}), eval_model=eval_deen))
