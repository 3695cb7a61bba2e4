"""MSCLNet (Zhang et al., ECCV 2022; SPEC 5): AGW* plus modality synergy, modality complement and cascaded
aggregation losses computed by training-only modules.

MSCLNet has no public code; this is the first open implementation. Every interpretation of the paper is written
down in the docstrings below and in docs/methods/msclnet.md, and every alternative we considered is a constructor
argument. At test time only ``self.model`` (the two-stream backbone + BNNeck) is used; the instance normalisation
and the synergistic encoder live beside it in this method, so the model's ``state_dict`` holds none of their
weights and its eval output does not depend on them.

Example::

    model = build_model("resnet50", num_classes=395)
    method = MSCLNetMethod(model, 395)                       # paper weights, AGW* erasing
    batch = method.make_batch(rgb_u8, ir_u8, y_rgb, y_ir, generator, cam_rgb, cam_ir)
    terms = method.training_step(batch)                      # {"ce": .., "wrt": .., "div": .., ..., "loss": ..}
    terms["loss"].backward()
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from vireid.data.transforms import AGW_ERASING, MSCLNET_PAPER_ERASING, Compose, agw_train_transform
from vireid.errors import ConfigError, DataError
from vireid.losses import (
    cross_entropy,
    global_complement,
    inter_center,
    intra_center,
    local_complement,
    modality_diversity,
    subclass_center,
    weighted_regularized_triplet,
)
from vireid.methods.agw import ReIDSettings
from vireid.methods.base import Batch, Method, RunContext, resolve_weights, weighted_terms
from vireid.methods.registry import MethodSpec, register_method
from vireid.methods.supervised import supervised_plan
from vireid.models.msclnet_modules import (
    FeatureInstanceNorm,
    ModalityIdentityClassifier,
    SynergyEncoder,
    horizontal_parts,
    pair_by_identity,
    subclass_labels,
)
from vireid.settings import check

if TYPE_CHECKING:  # annotations only
    from vireid.models import VIReIDModel

__all__ = ["MSCLNetMethod", "MSCLNetSettings", "DEFAULT_WEIGHTS", "TERMS"]

DEFAULT_WEIGHTS: dict[str, float] = {
    "ce": 1.0,       # AGW*: identity cross-entropy on the model's logits
    "wrt": 1.0,      # AGW*: weighted regularised triplet on the pooled feature
    "div": 0.5,      # lambda_div: modality diversity -KL(softmax f^v || softmax f^r)
    "t": 1.25,       # lambda_t: identity cross-entropy on each modality's logits
    "local": 0.8,    # lambda_local: fine-grained complement over 6 parts (f^v vs f^s)
    "global": 1.5,   # lambda_global: coarse-grained complement (identity centres of f^s vs f^r)
    "sub": 1.0,      # cascaded aggregation: samples -> sub-class centres
    "intra": 1.0,    # cascaded aggregation: sub-class centres -> identity centre
    "inter": 1.0,    # cascaded aggregation: identity centres apart
}
"""The paper's weights (SPEC 5), on top of AGW*'s CE + WRT at 1:1. Set a weight to 0 to switch a term off."""

TERMS = tuple(DEFAULT_WEIGHTS)
_SYNERGY_TERMS = ("local", "global", "sub", "intra", "inter")
_ERASING = {"agw": AGW_ERASING, "paper": MSCLNET_PAPER_ERASING}


class MSCLNetMethod(Method):
    """MSCLNet training: AGW* batches and losses plus the MSCLNet terms.

    Args:
        model: a :class:`~vireid.models.VIReIDModel` (two-stream backbone, GeM, BNNeck, linear classifier) whose
            training forward returns ``TrainOutput(feature_map, pooled, bn, logits)``.
        num_classes: number of training identities (checked against the classifier's width).
        weights: overrides of :data:`DEFAULT_WEIGHTS` by name (unknown names are an error). A zero weight switches
            the term off: it is neither computed nor reported. With every MSCLNet weight at 0 this is AGW*.
        local_variant: ``"as_printed"`` (default): ``cos + sqrt(2 - 2 cos)`` per part, exactly the paper's formula,
            whose cos term *rewards* dissimilar parts while the distance term rewards similar ones;
            ``"corrected"``: ``(1 - cos) + sqrt(2 - 2 cos)``, both terms pulling f^s parts towards f^v parts.
        inter_margin: L_inter as a hinge ``mean max(0, m - ||C_i - C_j||^2)`` over identity pairs (default m = 1.0,
            in squared units of the L2-normalised features, whose squared distances lie in [0, 4]). ``None`` is the
            printed ``-mean ||C_i - C_j||^2``; still bounded (by -4) with ``feature_norm="l2"``, refused with
            ``feature_norm="none"`` where it is unbounded.
        label_smoothing: for ``ce`` and ``t`` (0 in the paper and in AGW).
        div_direction, div_max_kl: L_div's KL direction (``"v_r"`` as printed, ``"r_v"``, ``"symmetric"``) and an
            optional clamp of each pair's KL (None = as printed; the instance normalisation already bounds it).
        erasing: random-erasing preset: ``"agw"`` (p 0.5, area 0.02-0.4; the AGW* default), ``"paper"`` (as printed
            in MSCLNet: p 0.8, area 0.2-0.8), ``"none"``, or a dict with keys p, area, ratio and optionally fill,
            aspect (the :class:`~vireid.data.transforms.RandomErasing` arguments; e.g. from the augment config).
        hidden_size, rounds, mogrifier_rank, fusion: the synergistic encoder S (see
            :class:`~vireid.models.msclnet_modules.SynergyEncoder`): LSTM width (default 512), Mogrifier rounds r
            (default 5), optional low-rank factorisation of the mogrifier matrices, and how paired parts enter it.
        parts: number of horizontal stripes (6 in the paper). part_pool: pooling inside a stripe, ``"avg"``/``"max"``.
        instance_norm_affine: Eq. 1's learnable gamma, beta after the instance normalisation (default, as printed);
            False: parameter-free.
        t_classifier: L_t's own bias-free classifier on the instance-normalised part descriptor (Eq. 4), never
            AGW's: ``"shared"`` (one for both modalities, default) or ``"per_modality"``.
        feature_norm: ``"l2"`` (default) L2-normalises the descriptors entering L_global and the cascade terms;
            ``"none"`` uses them raw (their squared distances then scale with the feature dimension).
        complement_grad: ``"synergy"`` (default; the paper: "L_com ... updating theta_s"): L_local and L_global train
            the encoder only -- S runs on detached inputs and the f^v / f^r targets are detached; ``"all"``: their
            gradients also reach the backbone.
        cascade_on: ``"synergy"`` (default, as printed: f^s with sub-class (identity, visible camera, infrared
            camera)); ``"modality"``: the model's pooled features of all images with sub-class (identity, camera).
        synergy_subclass: with ``cascade_on="synergy"``, the cameras that define a synergistic feature's sub-class:
            ``"pair"`` (default; both images' cameras -- in a SYSU batch many such sub-classes hold one pair, where
            L_sub is 0), ``"visible"`` or ``"infrared"`` (coarser sub-classes, more samples each).
        height, width, pad: training image size and crop padding.
        backbone_lr_mult: backbone lr = this x lr. 0.1 (default) keeps AGW's split that AGW* (the paper's baseline)
            was trained with; 1.0 is the paper's literal single lr 0.1 for everything.
        synergy_lr_mult: lr multiplier for the training-only modules (fresh weights: default 1.0, like the head).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        weights: Mapping[str, float] | None = None,
        local_variant: Literal["as_printed", "corrected"] = "as_printed",
        inter_margin: float | None = 1.0,
        label_smoothing: float = 0.0,
        div_direction: Literal["v_r", "r_v", "symmetric"] = "v_r",
        div_max_kl: float | None = None,
        erasing: Literal["agw", "paper", "none"] | Mapping[str, object] = "paper",
        hidden_size: int = 512,
        rounds: int = 5,
        mogrifier_rank: int | None = None,
        fusion: Literal["concat", "interleave"] = "concat",
        parts: int = 6,
        part_pool: Literal["avg", "max"] = "avg",
        instance_norm_affine: bool = True,
        t_classifier: Literal["shared", "per_modality"] = "shared",
        feature_norm: Literal["l2", "none"] = "l2",
        complement_grad: Literal["synergy", "all"] = "synergy",
        cascade_on: Literal["synergy", "modality"] = "synergy",
        synergy_subclass: Literal["pair", "visible", "infrared"] = "pair",
        height: int = 288,
        width: int = 144,
        pad: int = 10,
        backbone_lr_mult: float = 0.1,
        synergy_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(num_classes)
        merged = resolve_weights("MSCLNet", DEFAULT_WEIGHTS, weights)
        self.weights = merged
        _choice("local_variant", local_variant, ("as_printed", "corrected"))
        _choice("t_classifier", t_classifier, ("shared", "per_modality"))
        _choice("feature_norm", feature_norm, ("l2", "none"))
        _choice("complement_grad", complement_grad, ("synergy", "all"))
        _choice("cascade_on", cascade_on, ("synergy", "modality"))
        _choice("synergy_subclass", synergy_subclass, ("pair", "visible", "infrared"))
        self.synergy_subclass = synergy_subclass
        if inter_margin is None and feature_norm == "none" and merged["inter"] > 0:
            raise ConfigError("MSCLNet: L_inter without a margin (inter_margin=None) is unbounded on raw features "
                              "(feature_norm='none'); set inter_margin or use feature_norm='l2'")
        _choice("div_direction", div_direction, ("v_r", "r_v", "symmetric"))
        self.local_variant, self.inter_margin = local_variant, inter_margin
        self.div_direction, self.div_max_kl = div_direction, div_max_kl
        self.label_smoothing = float(label_smoothing)
        self.feature_norm, self.complement_grad, self.cascade_on = feature_norm, complement_grad, cascade_on
        self.parts, self.part_pool = parts, part_pool
        self.backbone_lr_mult, self.synergy_lr_mult = float(backbone_lr_mult), float(synergy_lr_mult)

        channels = getattr(model, "feature_dim", None)
        if not isinstance(channels, int):
            raise ConfigError("MSCLNetMethod needs model.feature_dim (the channel count of the feature map)")
        # Training-only modules: attributes of the method, never of self.model.
        self.instance_norm = FeatureInstanceNorm(channels, affine=instance_norm_affine)
        self.synergy = SynergyEncoder(channels, hidden_size, rounds, mogrifier_rank, fusion)
        # L_t's own classifier on the instance-normalised part descriptor (Eq. 4), training-only.
        self.t_classifier = ModalityIdentityClassifier(channels, self.num_classes, parts=parts,
                                                       per_modality=t_classifier == "per_modality")

        preset = _erasing_preset(erasing)
        self.height, self.width = height, width
        self.transform: Compose = agw_train_transform(
            height, width, pad=pad, flip=0.5, erasing=float(preset["p"]),  # type: ignore[arg-type]
            erasing_area=tuple(preset["area"]), erasing_ratio=float(preset["ratio"]),  # type: ignore[arg-type]
            erasing_fill=preset.get("fill", "imagenet_mean"),  # type: ignore[arg-type]
            erasing_aspect=preset.get("aspect", "uniform"),  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------------------------------------------------
    # Batches

    def make_batch(
        self,
        rgb_u8: torch.Tensor,
        ir_u8: torch.Tensor,
        rgb_labels: torch.Tensor,
        ir_labels: torch.Tensor,
        generator: torch.Generator,
        rgb_cams: torch.Tensor | None = None,
        ir_cams: torch.Tensor | None = None,
    ) -> Batch:
        """AGW* augmentation (pad-crop, flip, normalise, random erasing) of the RGB then the IR batch, concatenated
        RGB first; labels and cameras concatenated in the same order."""
        rgb = self.transform(rgb_u8, generator)
        ir = self.transform(ir_u8, generator)
        return Batch.of_parts([rgb, ir], [rgb_labels, ir_labels], [0, 1], [rgb_cams, ir_cams])

    # ------------------------------------------------------------------------------------------------------------
    # Losses

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Forward the model, compute every term whose weight is non-zero; returns weighted terms and ``"loss"``."""
        w = self.weights
        out = self.model(batch.images, batch.modalities)
        labels, mods, cams = batch.labels, batch.modalities, batch.camids
        raw: dict[str, torch.Tensor] = {}

        if w["ce"] > 0 or w["t"] > 0:
            if out.logits is None:
                raise ConfigError("MSCLNet's identity losses need a classifier; build the model with num_classes > 0")
            if out.logits.shape[1] != self.num_classes:
                raise ConfigError(f"the model classifies {out.logits.shape[1]} identities, the method expects "
                                  f"{self.num_classes}")
        if w["ce"] > 0:
            raw["ce"] = cross_entropy(out.logits, labels, label_smoothing=self.label_smoothing)
        if w["wrt"] > 0:
            raw["wrt"] = weighted_regularized_triplet(out.pooled, labels)

        vis = torch.nonzero(mods == 0).flatten()
        ir = torch.nonzero(mods == 1).flatten()
        if w["t"] > 0:
            # L_t (Eq. 4): identity CE on the logits p^(f^) of each modality's *instance-normalised* map, read in
            # its 6 stripes by L_t's own per-stripe classifiers -- never AGW's logits, which would only re-weight
            # AGW's CE. Per modality the mean over samples and stripes; the two modalities summed.
            terms_t = []
            for modality, idx in ((0, vis), (1, ir)):
                if idx.numel():
                    parts = horizontal_parts(self.instance_norm(out.feature_map[idx]), self.parts, self.part_pool)
                    logits = self.t_classifier(parts, modality)                   # [n, parts, classes]
                    terms_t.append(cross_entropy(logits.flatten(0, 1), labels[idx].repeat_interleave(self.parts),
                                                 label_smoothing=self.label_smoothing))   # mean over stripes
            raw["t"] = sum(terms_t, out.feature_map.new_zeros(()))

        need_div = w["div"] > 0
        need_syn = any(w[k] > 0 for k in _SYNERGY_TERMS)
        if need_div or need_syn:
            raw.update(self._msclnet_terms(out, labels, cams, vis, ir, need_div))

        return weighted_terms(raw, w)

    def _msclnet_terms(self, out, labels: torch.Tensor, cams: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor,
                       need_div: bool) -> dict[str, torch.Tensor]:
        """The MS, MC and CA terms from the instance-normalised feature maps (unweighted)."""
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        fmap = out.feature_map
        # f^v, f^r as part sequences [N, T, C] of the instance-normalised maps of each modality.
        parts_v = horizontal_parts(self.instance_norm(fmap[vis]), self.parts, self.part_pool)
        parts_r = horizontal_parts(self.instance_norm(fmap[ir]), self.parts, self.part_pool)
        y_v, y_r = labels[vis], labels[ir]
        iv, jr = pair_by_identity(y_v, y_r)
        if iv.numel() == 0:
            raise DataError("MSCLNet needs at least one identity with both an RGB and an IR image in the batch "
                            "(use the cross-modality identity sampler)")
        pv, pr, y_pair = parts_v[iv], parts_r[jr], y_v[iv]

        if need_div:
            # L_div on the paired, concatenated part descriptors (softmax over their T*C entries).
            terms["div"] = modality_diversity(pv.flatten(1), pr.flatten(1), direction=self.div_direction,
                                              max_kl=self.div_max_kl)

        need_com = w["local"] > 0 or w["global"] > 0
        need_cas = any(w[k] > 0 for k in ("sub", "intra", "inter"))
        synergy_needs_grad_path = need_cas and self.cascade_on == "synergy"
        parts_s = self.synergy(pv, pr) if (synergy_needs_grad_path or (need_com and self.complement_grad == "all")) \
            else None

        if need_com:
            if self.complement_grad == "synergy":
                # "updating theta_s": S sees detached inputs, targets are detached -> only S learns from L_com.
                s_com = self.synergy(pv.detach(), pr.detach())
                tv, tr = pv.detach(), parts_r.detach()
            else:
                assert parts_s is not None  # need_com and complement_grad "all": computed above
                s_com, tv, tr = parts_s, pv, parts_r
            if w["local"] > 0:
                terms["local"] = local_complement(tv, s_com, variant=self.local_variant)
            if w["global"] > 0:
                terms["global"] = global_complement(self._norm(s_com.flatten(1)), self._norm(tr.flatten(1)),
                                                    y_pair, y_r)

        if need_cas:
            if self.cascade_on == "synergy":
                assert parts_s is not None  # synergy_needs_grad_path: computed above
                feats, ids = self._norm(parts_s.flatten(1)), y_pair
                cam_v, cam_r = cams[vis][iv], cams[ir][jr]
                known = bool((cam_v >= 0).all() and (cam_r >= 0).all())
                # Sub-class of a synergistic feature: (identity, visible camera, infrared camera) by default, encoded
                # as one non-negative key per sample (the loss groups by (identity, key)).
                which = {"pair": (cam_v, cam_r), "visible": (cam_v,), "infrared": (cam_r,)}[self.synergy_subclass]
                sub_key = subclass_labels(ids, *which) if known else None
            else:
                feats, ids = self._norm(out.pooled), labels
                known = bool((cams >= 0).all())
                sub_key = cams if known else None
            if (w["sub"] > 0 or w["intra"] > 0) and sub_key is None:
                raise DataError("MSCLNet's sub-class terms (sub, intra) need camera ids, but some are -1 (unknown); "
                                "pass rgb_cams/ir_cams to make_batch, or set method.weights sub=0 and intra=0")
            if w["sub"] > 0:
                assert sub_key is not None  # refused above
                terms["sub"] = subclass_center(feats, ids, sub_key)
            if w["intra"] > 0:
                assert sub_key is not None  # refused above
                terms["intra"] = intra_center(feats, ids, sub_key)
            if w["inter"] > 0:
                # Identity centres = mean of sub-class centres when cameras are known (the cascade), else of samples.
                terms["inter"] = inter_center(feats, ids, sub_key, margin=self.inter_margin)
        return terms

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) if self.feature_norm == "l2" else x

    # ------------------------------------------------------------------------------------------------------------
    # Optimiser

    def training_only_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the modules that exist only for training (instance norm affine, synergy encoder)."""
        yield from self.instance_norm.parameters()
        yield from self.synergy.parameters()
        yield from self.t_classifier.parameters()

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Three groups: model head (BNNeck + classifier) at ``lr``; the rest of the model at
        ``backbone_lr_mult * lr`` (0.1 = AGW's split, 1.0 = the paper's single lr); training-only modules at
        ``synergy_lr_mult * lr``."""
        head = [p for p in cast("VIReIDModel", self.model).head_parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head_ids]
        extra = [p for p in self.training_only_parameters() if p.requires_grad]
        groups = [
            {"params": backbone, "lr": self.backbone_lr_mult * lr, "weight_decay": weight_decay, "name": "backbone"},
            {"params": head, "lr": lr, "weight_decay": weight_decay, "name": "head"},
            {"params": extra, "lr": self.synergy_lr_mult * lr, "weight_decay": weight_decay, "name": "msclnet"},
        ]
        return [g for g in groups if g["params"]]


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"MSCLNet: {name}={value!r} is unknown; expected one of {', '.join(allowed)}")


def _erasing_preset(erasing: str | Mapping[str, object]) -> Mapping[str, object]:
    if isinstance(erasing, Mapping):
        missing = {"p", "area", "ratio"} - set(erasing)
        if missing:
            raise ConfigError(f"MSCLNet: erasing dict lacks {', '.join(sorted(missing))}; expected keys p, area, "
                              "ratio (and optionally fill, aspect)")
        return erasing
    if erasing == "none":
        return {"p": 0.0, "area": (0.02, 0.4), "ratio": 0.3}
    if erasing not in _ERASING:
        raise ConfigError(f"MSCLNet: erasing={erasing!r} is unknown; expected 'agw', 'paper', 'none' or a dict")
    return _ERASING[erasing]


# --------------------------------------------------------------------------------------------------------------------
# the plug-in: settings (the ``method:`` YAML section) and registration


@dataclass
class MSCLNetSettings(ReIDSettings):
    """``method:`` of MSCLNet: every :class:`MSCLNetMethod` option (see its docstring for what each one means).
    Random erasing comes from the ``augment:`` section (``augment.erasing: 0`` switches it off)."""

    name: str = "msclnet"
    local_variant: Literal["as_printed", "corrected"] = "as_printed"
    """L_local: the formula as printed in the paper, or with the sign of the cosine term corrected."""
    inter_margin: float | None = 1.0
    """L_inter: hinge margin that bounds the push-apart of identity centres (null: unbounded, needs l2 features)."""
    div_direction: Literal["v_r", "r_v", "symmetric"] = "v_r"
    div_max_kl: float | None = None
    hidden_size: int = 512
    rounds: int = 5
    mogrifier_rank: int | None = None
    fusion: Literal["concat", "interleave"] = "concat"
    parts: int = 6
    part_pool: Literal["avg", "max"] = "avg"
    instance_norm_affine: bool = True
    """Eq. 1's learnable gamma, beta after the instance norm (the paper's); false: parameter-free."""
    t_classifier: Literal["shared", "per_modality"] = "shared"
    """L_t's own classifier (Eq. 4) on the instance-normalised descriptors: one for both modalities, or one each."""
    feature_norm: Literal["l2", "none"] = "l2"
    complement_grad: Literal["synergy", "all"] = "synergy"
    cascade_on: Literal["synergy", "modality"] = "synergy"
    synergy_subclass: Literal["pair", "visible", "infrared"] = "pair"
    synergy_lr_mult: float = 1.0

    def validate(self, key: str) -> None:
        super().validate(key)
        check(self.hidden_size >= 1 and self.rounds >= 0 and self.parts >= 1, f"{key}.hidden_size/rounds/parts",
              (self.hidden_size, self.rounds, self.parts), "hidden_size >= 1, rounds >= 0, parts >= 1")
        check(self.synergy_lr_mult > 0, f"{key}.synergy_lr_mult", self.synergy_lr_mult, "a positive number")


def build_msclnet(settings: MSCLNetSettings, ctx: RunContext, num_classes: int) -> MSCLNetMethod:
    a, d = ctx.augment, ctx.data
    erasing = {"p": a.erasing, "area": a.erasing_area, "ratio": a.erasing_ratio, "fill": a.erasing_fill,
               "aspect": a.erasing_aspect}
    options = {f.name: getattr(settings, f.name) for f in fields(settings)
               if f.name not in ("name", "weights")}
    try:
        return MSCLNetMethod(ctx.build_model(num_classes), num_classes, weights=settings.weights,
                             erasing=erasing if a.erasing > 0 else "none", height=d.height, width=d.width,
                             pad=a.pad, backbone_lr_mult=ctx.train.backbone_lr_mult, **options)
    except ValueError as exc:  # bad options, reported by the method
        raise ConfigError(f"method: {exc}") from None


register_method(MethodSpec(
    "msclnet", MSCLNetSettings, supervised_plan(build_msclnet),
    summary="MSCLNet (ECCV 2022), first open implementation: AGW* + synergy, complement, cascaded aggregation",
    augment_keys=frozenset({"pad", "erasing", "erasing_area", "erasing_ratio", "erasing_fill", "erasing_aspect"})))
