"""AML (asymmetric mutual learning, TCSVT 2024; SPEC 6): the two training stages as :class:`Method` s.

Two independent single-stream networks: ``model1`` ("RGB-gray") and ``model2`` ("gray"), each ResNet + GeM
(learnable p) + BNNeck (weight N(1, 0.02)) + circle classifier. ``self.model`` is model1: checkpoints, validation
and testing use it alone (SPEC 6: "test with model1 only"); the method's state dict (saved for resuming) holds both.

**Stage 1** (:class:`AMLStage1`, auxiliary source: Market-1501 originals + fake-IR twins, pseudo labels). Per sample
an RGB view ``x`` and a target-style view ``x_t = 0.2 * fakeIR + 0.8 * gray(x)`` (built by
:class:`vireid.data.transforms.AMLStage1Transform`). Three outputs::

    o1 = model1(x)    [head 1: model1's own GeM/BNNeck/classifier]
    o2 = model1(x_t)  [head 2: a second GeM/BNNeck/classifier on model1's backbone]
    o3 = model2(x_t)

Each output: label-smoothed (fast-reid convention, eps 0.1) cross-entropy on circle-softmax logits (scale 64,
margin 0.35) + soft-margin batch-hard triplet on the post-BN features: the six ID terms, weight 1 each. Mutual
terms with the teacher detached, knowledge flowing model1-RGB -> model2-gray -> model1-on-gray only (asymmetric):
``kl_weight * [KL_sym(o3 <- o1) + KL_sym(o2 <- o3)]`` on the scaled cosines (scale x cosine, no margin: the
classifier's plain prediction) and ``sim_weight * [S(o3 <- o1) + S(o2 <- o3)]`` (similarity structure of the
post-BN batch features).

Reading we chose where SPEC 6 says only "[head 2]": head 2 is a second GeM + BNNeck + circle classifier on model1's
shared backbone (same initialisation as head 1). It is used only in stage 1; stage 2 starts from the backbones.

**Stage 2** (:class:`AMLStage2`, unlabeled target, pseudo labels from re-clustering). Batch images of both
modalities with pseudo labels; ``f1 = model1(x)``, ``f2 = model2(gray(x))`` (post-BN features). Two cluster
memories (one per model, tau 0.05, momentum 0.2): ``CE_mem1 + CE_mem2 + kl_weight * KL_sym(logits1, logits2)``
(nothing detached, weight 0.01) ``+ dist_weight * sum (D1 - D2)^2`` (weight 0.05, nothing detached). The pseudo
labels of the current clustering live in the state dict (``pseudo_labels``, ``labels_epoch``), so a resumed run
continues with exactly the labels it was trained with.
"""

from __future__ import annotations

import torch
from torch import nn

from vireid.data.transforms import (
    AMLStage1Transform,
    RandomChannelGray,
    aml_train_transform,
)
from vireid.losses import batch_hard_triplet, circle_logits, cross_entropy
from vireid.losses.aml import distance_structure, similarity_structure, symmetric_kl
from vireid.methods.base import Batch, Method, cams_or_unknown

def _modality(value: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long, device=device)


class SecondHead(nn.Module):
    """Model1's head 2 (stage 1): its own GeM, BNNeck and circle classifier on model1's backbone feature map,
    freshly initialised like head 1 (same build arguments, own random draw)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from vireid.models.layers import BNNeck, CircleClassifier, GeM

        kw = model.build_kwargs
        self.pooling = GeM(float(kw.get("gem_p", 3.0)), learnable=bool(kw.get("gem_learnable", True)))
        self.neck = BNNeck(model.feature_dim, weight_init=kw.get("neck_init", "normal"),
                           weight_std=float(kw.get("neck_init_std", 0.02)))
        self.classifier = CircleClassifier(model.feature_dim, model.num_classes)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.neck(self.pooling(feature_map))
        return bn, self.classifier(bn)


class _AMLMethod(Method):
    """What both AML stages share: one Adam parameter group for everything (SPEC 6: weight decay on biases too)."""

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay, "name": "all"}]


class AMLStage1(_AMLMethod):
    """AML stage 1: RGB-gray asymmetric mutual learning on the auxiliary source (see the module docstring).

    ``make_batch`` takes the RGB originals as ``rgb_u8`` and their fake-IR twins (same order) as ``ir_u8``.
    """

    def __init__(self, model1: nn.Module, model2: nn.Module, *, transform: AMLStage1Transform,
                 kl_weight: float = 0.0, sim_weight: float = 0.5, label_smoothing: float = 0.1,
                 circle_scale: float = 64.0, circle_margin: float = 0.35) -> None:
        super().__init__()
        if model1.num_classes == 0 or model1.num_classes != model2.num_classes:
            raise ValueError(f"AML stage 1 needs two classifiers over the same pseudo classes; got "
                             f"{model1.num_classes} and {model2.num_classes}")
        self.model = model1
        self.model2 = model2
        self.head2 = SecondHead(model1)
        self.transform = transform
        self.kl_weight, self.sim_weight = float(kl_weight), float(sim_weight)
        self.label_smoothing = float(label_smoothing)
        self.scale, self.margin = float(circle_scale), float(circle_margin)

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        x, x_t = self.transform(rgb_u8, ir_u8, generator)
        n, dev = x.shape[0], x.device
        cams = cams_or_unknown(rgb_cams, n, dev)
        return Batch(torch.cat([x, x_t]), torch.cat([rgb_labels, rgb_labels]),
                     torch.cat([_modality(0, n, dev), _modality(1, n, dev)]), torch.cat([cams, cams]))

    def _id_terms(self, bn: torch.Tensor, cosine: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = circle_logits(cosine, y, self.scale, self.margin)
        ce = cross_entropy(logits, y, self.label_smoothing, convention="fastreid")
        return ce, batch_hard_triplet(bn, y, margin=None)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = len(batch) // 2
        x, x_t, y = batch.images[:n], batch.images[n:], batch.labels[:n]
        m0 = _modality(0, n, x.device)  # single-stream networks: the modality tag routes nothing
        out1 = self.model(x, m0)
        bn2, cos2 = self.head2(self.model.forward_features(x_t, m0))
        out3 = self.model2(x_t, m0)
        terms: dict[str, torch.Tensor] = {}
        for k, (bn, cos) in enumerate(((out1.bn, out1.logits), (bn2, cos2), (out3.bn, out3.logits)), start=1):
            terms[f"id{k}"], terms[f"tri{k}"] = self._id_terms(bn, cos, y)
        if self.kl_weight > 0:  # KL_sym(o3 <- o1) + KL_sym(o2 <- o3), teachers detached
            p1, p2, p3 = (self.scale * c for c in (out1.logits, cos2, out3.logits))
            terms["kl"] = self.kl_weight * (symmetric_kl(p3, p1) + symmetric_kl(p2, p3))
        if self.sim_weight > 0:
            terms["sim"] = self.sim_weight * (similarity_structure(out3.bn, out1.bn) + similarity_structure(bn2, out3.bn))
        terms["loss"] = sum(terms.values())
        return terms


class AMLStage2(_AMLMethod):
    """AML stage 2: cross-modality self-training with two cluster memories (see the module docstring).

    ``memory1`` / ``memory2`` are :class:`vireid.losses.memory.ClusterMemory` modules; the pipeline resets them
    (and :meth:`set_pseudo_labels`) after every re-clustering.
    """

    def __init__(self, model1: nn.Module, model2: nn.Module, memory1: nn.Module, memory2: nn.Module, *,
                 num_samples: int, height: int, width: int, kl_weight: float = 0.01, dist_weight: float = 0.05,
                 pad: int = 10, flip: float = 0.5, erasing: float = 0.5,
                 erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 brightness: float = 0.2, contrast: float = 0.15) -> None:
        super().__init__()
        self.model = model1
        self.model2 = model2
        self.memory1, self.memory2 = memory1, memory2
        self.transform = aml_train_transform(height, width, pad, flip, brightness, contrast, 1.0, erasing,
                                             erasing_area, erasing_ratio)
        self.gray = RandomChannelGray()
        self.kl_weight, self.dist_weight = float(kl_weight), float(dist_weight)
        self.register_buffer("pseudo_labels", torch.full((num_samples,), -1, dtype=torch.long))
        self.register_buffer("labels_epoch", torch.tensor(-1, dtype=torch.long))

    def adapt_to_state(self, state: dict[str, torch.Tensor]) -> None:
        """Resize the cluster memories to a saved state's cluster count (called by the trainer before resuming)."""
        for name in ("memory1", "memory2"):
            saved = state.get(f"{name}.memory")
            memory = getattr(self, name)
            if saved is not None and saved.shape != memory.memory.shape:
                memory.reset(torch.ones(saved.shape, device=memory.memory.device))

    def set_pseudo_labels(self, labels: torch.Tensor, epoch: int) -> None:
        self.pseudo_labels.copy_(labels.to(self.pseudo_labels.device))
        self.labels_epoch.fill_(int(epoch))

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        """Augmented images of both modalities (RGB first), then the gray view of each: ``images = [x; gray(x)]``."""
        parts = [(u8, lab, cams, m) for u8, lab, cams, m in ((rgb_u8, rgb_labels, rgb_cams, 0),
                                                              (ir_u8, ir_labels, ir_cams, 1)) if u8.shape[0]]
        x = torch.cat([self.transform(u8, generator) for u8, *_ in parts])
        dev = x.device
        labels = torch.cat([lab for _, lab, _, _ in parts])
        mods = torch.cat([_modality(m, u8.shape[0], dev) for u8, _, _, m in parts])
        cams = torch.cat([cams_or_unknown(c, u8.shape[0], dev) for u8, _, c, _ in parts])
        return Batch(torch.cat([x, self.gray(x, generator)]), torch.cat([labels, labels]), torch.cat([mods, mods]),
                     torch.cat([cams, cams]))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = len(batch) // 2
        x, x_gray, y = batch.images[:n], batch.images[n:], batch.labels[:n]
        m0 = _modality(0, n, x.device)  # single-stream networks: the modality tag routes nothing
        f1 = self.model(x, m0).bn
        f2 = self.model2(x_gray, m0).bn
        ce1, logits1 = self.memory1(f1, y, return_logits=True)
        ce2, logits2 = self.memory2(f2, y, return_logits=True)
        terms = {"mem1": ce1, "mem2": ce2}
        if self.kl_weight > 0:
            terms["kl"] = self.kl_weight * symmetric_kl(logits1, logits2, detach_teacher=False)
        if self.dist_weight > 0:
            terms["dist"] = self.dist_weight * distance_structure(f1, f2, detach_teacher=False)
        terms["loss"] = sum(terms.values())
        return terms
