"""AML (asymmetric mutual learning, TCSVT 2024; SPEC 6): the two training stages as :class:`Method` s.

Two independent single-stream networks: ``model1`` ("RGB-gray") and ``model2`` ("gray"), each ResNet + GeM
(learnable p) + BNNeck (weight N(1, 0.02)) + circle classifier. ``self.model`` is model1: checkpoints, validation
and testing use it alone (SPEC 6: "test with model1 only"); the method's state dict (saved for resuming) holds both.

**Stage 1** (:class:`AMLStage1`, auxiliary source: Market-1501 originals + fake-IR twins, pseudo labels). Per sample
an RGB view ``x`` and a target-style view ``x_t = 0.2 * fakeIR + 0.8 * gray(x)`` (built by
:class:`vireid.data.transforms.AMLStage1Transform`). Three outputs::

    o1 = model1(x)
    o2 = model1(x_t)  [the SAME head as o1: CMAM model_backbone.py:71-72 "use the same head" (SPEC 6, corrected)]
    o3 = model2(x_t)

Each output: label-smoothed (fast-reid convention, eps 0.1) cross-entropy on circle-softmax logits (scale 64,
margin 0.35) + soft-margin batch-hard triplet on the post-BN features: the six ID terms, weight 1 each. Mutual
terms with the teacher detached, knowledge flowing model1-RGB -> model2-gray -> model1-on-gray only (asymmetric):
``kl_weight * [KL_sym(o3 <- o1) + KL_sym(o2 <- o3)]`` on the head's returned logits, the margin-adjusted Circle
logits with the targets (SPEC 6, corrected; mutual_framework.py:180-181 at wuancong/CMAM@21d258fb) and
``sim_weight * [S(o3 <- o1) + S(o2 <- o3)]`` (similarity structure of the post-BN batch features).

Stage 2 starts from the backbones (GeM/BNNeck re-initialised).

**Stage 2** (:class:`AMLStage2`, unlabeled target, pseudo labels from re-clustering). Batch images of both
modalities with pseudo labels; ``f1 = model1(x)``, ``f2 = model2(gray(x))`` (post-BN features). Two cluster
memories (one per model, tau 0.05, momentum 0.2): ``CE_mem1 + CE_mem2 + kl_weight * [KL(p1||p2) + KL(p2||p1)]``
(no 1/2, nothing detached, weight 0.01; :func:`vireid.losses.aml.two_way_kl`) ``+ dist_weight * sum (D1 - D2)^2``
(weight 0.05, nothing detached). The pseudo labels of the current clustering live in the state dict
(``pseudo_labels``, ``labels_epoch``), so a resumed run continues with exactly the labels it was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from torch import nn

from vireid.clustering import cluster_centroids, cluster_cross_modal, clustering_diagnostics
from vireid.clustering.plots import plot_clustering
from vireid.data.cache import ImageCache
from vireid.data.pools import PairFetch, PoolFetch, PseudoLabelSampler, TwinPairSampler
from vireid.data.transforms import (
    AMLStage1Transform,
    RandomChannelGray,
    aml_stage1_transform,
    aml_train_transform,
)
from vireid.engine import distributed as dist
from vireid.engine.schedules import WarmupHoldCosine
from vireid.errors import ConfigError, DataError
from vireid.losses import batch_hard_triplet, circle_logits, cross_entropy
from vireid.losses.aml import distance_structure, similarity_structure, symmetric_kl, two_way_kl
from vireid.losses.memory import ClusterMemory
from vireid.methods.base import Batch, Method, Phase, PhasePlan, PhaseRun, RunContext, cams_or_unknown
from vireid.methods.registry import MethodSettings, MethodSpec, register_method
from vireid.settings import DataConfig, check

if TYPE_CHECKING:  # annotations only
    from vireid.models import VIReIDModel


def _modality(value: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long, device=device)


class _FlipView(nn.Module):
    """``model(mirror(x))``: feature extraction of the mirror images (for the reference's un-renormalised flip
    average)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, modality: torch.Tensor):
        return self.model(torch.flip(x, dims=[3]), modality)


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

    def _id_terms(self, bn: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = cross_entropy(logits, y, self.label_smoothing, convention="fastreid")
        return ce, batch_hard_triplet(bn, y, margin=None)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = len(batch) // 2
        x, x_t, y = batch.images[:n], batch.images[n:], batch.labels[:n]
        m0 = _modality(0, n, x.device)  # single-stream networks: the modality tag routes nothing
        out1 = self.model(x, m0)
        # one shared head for model1's RGB and blended inputs (CMAM model_backbone.py:71-72 "use the same head")
        out2 = self.model(x_t, m0)
        bn2 = out2.bn
        out3 = self.model2(x_t, m0)
        # the head's returned logits: margin-adjusted Circle logits with the targets (circle.py:27-42); CE and the
        # mutual KL both use them (mutual_framework.py:180-181)
        p1, p2, p3 = (circle_logits(o.logits, y, self.scale, self.margin) for o in (out1, out2, out3))
        terms: dict[str, torch.Tensor] = {}
        for k, (bn, lg) in enumerate(((out1.bn, p1), (bn2, p2), (out3.bn, p3)), start=1):
            terms[f"id{k}"], terms[f"tri{k}"] = self._id_terms(bn, lg, y)
        if self.kl_weight > 0:  # KL_sym(o3 <- o1) + KL_sym(o2 <- o3), teachers detached
            terms["kl"] = self.kl_weight * (symmetric_kl(p3, p1) + symmetric_kl(p2, p3))
        if self.sim_weight > 0:
            terms["sim"] = self.sim_weight * (similarity_structure(out3.bn, out1.bn)
                                              + similarity_structure(bn2, out3.bn))
        terms["loss"] = cast(torch.Tensor, sum(terms.values()))
        return terms


class AMLStage2(_AMLMethod):
    """AML stage 2: cross-modality self-training with two cluster memories (see the module docstring).

    ``memory1`` / ``memory2`` are :class:`vireid.losses.memory.ClusterMemory` modules; the pipeline resets them
    (and :meth:`set_pseudo_labels`) after every re-clustering.
    """

    pseudo_labels: torch.Tensor  # buffers (register_buffer in __init__)
    labels_epoch: torch.Tensor

    def __init__(self, model1: nn.Module, model2: nn.Module, memory1: ClusterMemory, memory2: ClusterMemory, *,
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
            terms["kl"] = self.kl_weight * two_way_kl(logits1, logits2)
        if self.dist_weight > 0:
            terms["dist"] = self.dist_weight * distance_structure(f1, f2, detach_teacher=False)
        terms["loss"] = sum(terms.values())
        return terms


# --------------------------------------------------------------------------------------------------------------------
# the plug-in: settings (the ``method:`` YAML section), phases, registration


@dataclass
class AMLPhase:
    """One phase of the AML recipe (stage-1 runs 1 and 2, stage-2 runs A and B; SPEC 6).

    A phase trains for ``iterations`` optimiser steps with Adam and a per-iteration warm-up / hold / cosine schedule
    into ``<output_dir>/<name>/``, starting from the final weights of phase ``init`` ("" = the model's
    ``pretrained`` weights). A finished phase is skipped on ``--resume``; an interrupted one continues.
    """

    name: str = "phase"
    stage: int = 1
    """1 = RGB-gray mutual learning on the auxiliary source; 2 = cross-modality self-training on the target."""
    iterations: int = 15000
    lr: float = 3.5e-4
    init: str = ""
    warmup: int = 2000
    warmup_factor: float = 0.01
    hold_until: int | None = None
    """Constant lr until this iteration, then cosine to ``final_lr`` (None: stage 1 9,000; stage 2 = warmup)."""
    final_lr: float = 7.7e-7
    kl_weight: float = 0.0
    """Mutual KL weight (stage 1: 0 in run 1, 0.1 in run 2; stage 2: 0.01)."""
    clustering: Literal["dbscan", "kmeans"] = "dbscan"
    """Stage 2: Jaccard + DBSCAN (run A) or cosine k-means (run B)."""
    recluster_every: int | None = None
    """Stage 2: re-cluster every this many iterations (RegDB: 200); None = once the samples trained since the last
    clustering exceed the number of kept (non-outlier) samples (an "epoch")."""
    num_ids: int = 4
    num_instances: int = 16

    def validate(self, key: str) -> None:
        check(self.stage in (1, 2), f"{key}.stage", self.stage, "1 or 2")
        check(self.iterations >= 1, f"{key}.iterations", self.iterations, "an integer >= 1")
        check(self.lr > 0, f"{key}.lr", self.lr, "a positive number")
        check(0 <= self.warmup < self.iterations, f"{key}.warmup", self.warmup, "0 <= warmup < iterations")
        hold = self.hold_until
        check(hold is None or self.warmup <= hold < self.iterations, f"{key}.hold_until", hold,
              "null or warmup <= hold_until < iterations")
        check(self.kl_weight >= 0, f"{key}.kl_weight", self.kl_weight, "a weight >= 0")
        check(self.recluster_every is None or self.recluster_every >= 1, f"{key}.recluster_every",
              self.recluster_every, "null or an integer >= 1")
        check(self.num_ids >= 1 and self.num_instances >= 2, f"{key}.num_ids/num_instances",
              (self.num_ids, self.num_instances), "num_ids >= 1 and num_instances >= 2")


@dataclass
class AMLSettings(MethodSettings):
    """``method:`` of AML (SPEC 6): the auxiliary source data, the phases in order, loss weights, clustering, and
    AML's own augmentation knobs (the shared ``augment:`` section gives pad, flip and erasing)."""

    name: str = "aml"
    source: DataConfig = field(default_factory=lambda: DataConfig(dataset="market1501_gen", root="data/market1501_gen"))
    """Stage-1 data: market1501_gen with the fake-IR twins of ``source.target`` and pplr pseudo labels."""
    phases: list[AMLPhase] = field(default_factory=list)
    label_smoothing: float = 0.1
    circle_scale: float = 64.0
    circle_margin: float = 0.35
    sim_weight: float = 0.5
    """Stage 1: similarity-structure terms (o1 -> o3, o3 -> o2)."""
    dist_weight: float = 0.05
    """Stage 2: distance-structure term between the two models."""
    temperature: float = 0.05
    memory_momentum: float = 0.2
    eps: float = 0.4
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    kmeans_k: int = 400
    kmeans_init: str = "random"
    """Run-B k-means: "random" = as the reference runs it (fast_pytorch_kmeans cosine, random rows, <= 100 rounds,
    tol 1e-4; vireid.clustering.reference_kmeans); "kmeans++" = vireid's earlier k-means++ spherical Lloyd."""
    diagnostics_truth: bool = True
    """Log ARI/NMI/match precision against the dataset's identity column when it has one (synthetic data, a labelled
    dataset run unsupervised). Never used for training or model selection."""
    color_jitter: tuple[float, float] = (0.2, 0.15)
    """(brightness, contrast) of ColorJitter; (0, 0) disables it."""
    color_jitter_p: float = 1.0
    """Probability of applying the colour jitter to a sample (1 = always, as transforms.ColorJitter)."""
    fake_ir_alpha: float = 0.2
    """Stage 1: x_t = alpha * norm(fake IR) + (1 - alpha) * gray(norm(x))."""
    aligned_twin: bool = False
    """Stage 1: give the fake-IR twin the same crop/flip/erasing box as x (the reference does not)."""

    def validate(self, key: str) -> None:
        names = [p.name for p in self.phases]
        check(len(names) > 0, f"{key}.phases", names, "at least one phase (see configs/aml/*.yaml)")
        check(len(set(names)) == len(names), f"{key}.phases", names, "distinct phase names")
        for i, p in enumerate(self.phases):
            check(p.init == "" or p.init in names[:i], f"{key}.phases[{i}].init", p.init,
                  f"'' or the name of an earlier phase ({', '.join(names[:i]) or 'none'})")
        check(self.temperature > 0, f"{key}.temperature", self.temperature, "a positive number")
        check(0 <= self.memory_momentum < 1, f"{key}.memory_momentum", self.memory_momentum, "a value in [0, 1)")
        check(self.eps > 0 and self.min_samples >= 1, f"{key}.eps/min_samples", (self.eps, self.min_samples),
              "eps > 0 and min_samples >= 1")
        check(self.kmeans_k >= 2, f"{key}.kmeans_k", self.kmeans_k, "an integer >= 2")
        check(self.kmeans_init in ("random", "kmeans++"), f"{key}.kmeans_init", self.kmeans_init,
              "'random' (the reference) or 'kmeans++'")
        for name in ("color_jitter_p", "fake_ir_alpha"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"{key}.{name}", v, "a probability in [0, 1]")
        check(min(self.color_jitter) >= 0.0, f"{key}.color_jitter", self.color_jitter, "[brightness, contrast] >= 0")


def _schedule(phase: AMLPhase) -> WarmupHoldCosine:
    hold = phase.hold_until if phase.hold_until is not None else (
        min(9000, phase.iterations - 1) if phase.stage == 1 else phase.warmup)
    hold = max(hold, phase.warmup)
    return WarmupHoldCosine(phase.lr, warmup=phase.warmup, warmup_factor=phase.warmup_factor, hold_until=hold,
                            total=phase.iterations, final_lr=phase.final_lr)


def _models(ctx: RunContext, num_classes: int) -> tuple[VIReIDModel, VIReIDModel]:
    """model1 and model2, each from ``ctx.seed`` (the same random draw as the untrained model that is tested)."""
    torch.manual_seed(ctx.seed)
    return cast("VIReIDModel", ctx.build_model(num_classes)), cast("VIReIDModel", ctx.build_model(num_classes))


def _init_from(phase: AMLPhase, method: Method, state: dict[str, torch.Tensor], source: Phase) -> None:
    """Start ``method`` from a finished phase's method state: everything that fits (same stage), or only the
    backbones (stage 1 -> 2: GeM/BNNeck re-initialised and no classifier, SPEC 6)."""
    previous_stage = int(source.info["stage"])
    if phase.stage == 2 and previous_stage == 1:
        keep = {k: v for k, v in state.items() if k.startswith(("model.backbone.", "model2.backbone."))}
    elif phase.stage == previous_stage:
        own = method.state_dict()
        keep = {k: v for k, v in state.items() if k in own and not k.startswith(("memory", "pseudo_labels",
                                                                                 "labels_epoch"))}
    else:
        raise ConfigError(f"aml phase {phase.name}: cannot start a stage-{phase.stage} phase from a stage-"
                          f"{previous_stage} phase")
    missing = method.load_state_dict(keep, strict=False)
    wanted = [k for k in missing.missing_keys if k.startswith(("model.backbone.", "model2.backbone."))]
    if wanted:
        raise ConfigError(f"aml phase {phase.name}: phase {source.name}'s last.pt lacks backbone weights "
                          f"({', '.join(wanted[:3])}); was it written by another architecture?")


def _stage1(s: AMLSettings, phase: AMLPhase, ctx: RunContext) -> PhaseRun:
    src = ctx.load_dataset(replace(s.source, height=ctx.data.height, width=ctx.data.width,
                                   cache_dir=ctx.data.cache_dir))
    samples = [x for x in src.train if x.label >= 0 and x.twin]
    if not samples:
        raise DataError(f"{src.root}: no source training image has both a pseudo label and a fake-IR twin")
    labels = np.unique([x.label for x in samples], return_inverse=True)[1].astype(np.int64)
    num_classes = int(labels.max()) + 1
    camids = np.array([x.camid for x in samples], dtype=np.int64)
    originals = ctx.open_cache(src.root, samples)
    twins = ctx.open_cache(src.root, [replace(x, path=cast(str, x.twin)) for x in samples])  # all have a twin
    m1, m2 = _models(ctx, num_classes)
    aug, d = ctx.augment, ctx.data
    transform = aml_stage1_transform(d.height, d.width, pad=aug.pad, flip=aug.flip, brightness=s.color_jitter[0],
                                     contrast=s.color_jitter[1], jitter_p=s.color_jitter_p, erasing=aug.erasing,
                                     erasing_area=aug.erasing_area, erasing_ratio=aug.erasing_ratio,
                                     alpha=s.fake_ir_alpha, aligned=s.aligned_twin)
    method = AMLStage1(m1, m2, transform=transform, kl_weight=phase.kl_weight, sim_weight=s.sim_weight,
                       label_smoothing=s.label_smoothing, circle_scale=s.circle_scale, circle_margin=s.circle_margin)
    sampler = TwinPairSampler(labels, camids, phase.num_ids, phase.num_instances, ctx.seed + 17, ctx.rank,
                              ctx.world_size)
    return _phase_run(phase, method, sampler, PairFetch(originals, twins, labels, camids), ctx, num_classes,
                      steps_per_epoch=max(1, len(sampler)))


def _stage2(s: AMLSettings, phase: AMLPhase, ctx: RunContext) -> PhaseRun:
    pool = [replace(x, label=-1) for x in ctx.train_samples]  # unlabeled target: the labels are never used
    # identities (where the pool has them: SYSU-MM02's pid column, synthetic data) only for the diagnostics
    truth: np.ndarray | None = np.array([x.pid for x in pool], dtype=np.int64) if s.diagnostics_truth else None
    if truth is not None and (truth < 0).all():
        truth = None
    m1, m2 = _models(ctx, 0)
    mems = [ClusterMemory(m1.feature_dim, 1, temperature=s.temperature, momentum=s.memory_momentum)
            for _ in range(2)]
    aug, d = ctx.augment, ctx.data
    method = AMLStage2(m1, m2, mems[0], mems[1], num_samples=len(pool), height=d.height, width=d.width,
                       kl_weight=phase.kl_weight, dist_weight=s.dist_weight, pad=aug.pad, flip=aug.flip,
                       erasing=aug.erasing, erasing_area=aug.erasing_area, erasing_ratio=aug.erasing_ratio,
                       brightness=s.color_jitter[0], contrast=s.color_jitter[1])
    cache = ctx.open_cache(ctx.dataset.root, pool)
    mods = np.array([x.modality for x in pool], dtype=np.int64)
    cams = np.array([x.camid for x in pool], dtype=np.int64)
    sampler = PseudoLabelSampler(cams, mods, phase.num_ids, phase.num_instances, ctx.seed + 29, ctx.rank,
                                 ctx.world_size)
    fetch = PoolFetch(cache, mods, cams)
    hook = Reclusterer(method, sampler, fetch, cache, mods, truth, phase, s, seed=ctx.seed, device=ctx.device,
                       extract=ctx.extract)
    steps = max(1, phase.recluster_every or math.ceil(len(pool) / (phase.num_ids * phase.num_instances)))
    return _phase_run(phase, method, sampler, fetch, ctx, 0, steps_per_epoch=steps, hook=hook,
                      validate=ctx.validator(ctx.val_samples))


def _phase_run(phase: AMLPhase, method: Method, sampler: Any, fetch: Any, ctx: RunContext, num_classes: int, *,
               steps_per_epoch: int, hook: Reclusterer | None = None, validate: Any = None) -> PhaseRun:
    optimizer = torch.optim.Adam(method.param_groups(phase.lr, ctx.train.weight_decay), lr=phase.lr,
                                 weight_decay=ctx.train.weight_decay)
    # epochs: enough for the iterations (stage 2's epochs may be shorter than the estimate: max_steps stops it)
    epochs = 10 * math.ceil(phase.iterations / steps_per_epoch) + 10
    return PhaseRun(method=method, sampler=sampler, fetch=fetch, optimizer=optimizer, schedule=_schedule(phase),
                    schedule_unit="step", epochs=epochs, max_steps=phase.iterations, num_classes=num_classes,
                    on_epoch_start=hook, validate=validate, meta={"stage": phase.stage})


def aml_plan(s: AMLSettings, ctx: RunContext) -> PhasePlan:
    """Every phase of ``method.phases`` in order; the untrained model and the model after the last stage-1 phase
    are tested too (what each stage adds); ``clustering.png`` plots the stage-2 re-clusterings at the end."""
    last_stage1 = max((i for i, p in enumerate(s.phases) if p.stage == 1), default=None)
    phases = []
    for i, p in enumerate(s.phases):
        setup = partial(_stage1 if p.stage == 1 else _stage2, s, p)
        phases.append(Phase(p.name, setup, init=p.init, init_from=partial(_init_from, p), total_steps=p.iterations,
                            test_after="stage1" if i == last_stage1 else None, info={"stage": p.stage}))
    stage2 = [p.name for p in s.phases if p.stage == 2]
    return PhasePlan(phases, test_untrained=True, on_finish=lambda out: plot_clustering(out, stage2))


register_method(MethodSpec(
    "aml", AMLSettings, aml_plan,
    summary="AML (TCSVT 2024), unsupervised transferable: stage 1 on Market-1501 + fake IR, stage 2 re-clustering",
    augment_keys=frozenset({"pad", "flip", "erasing", "erasing_area", "erasing_ratio"}), uses_sampler=False,
    checkpoint_dirs=lambda s: [p.name for p in s.phases]))


# --------------------------------------------------------------------------------------------------------------------
# stage 2: re-clustering


class GrayView(nn.Module):
    """``model(gray(x))`` for feature extraction: model2 sees the gray view (a random channel copied to all three),
    drawn from a seeded generator so that an extraction is reproducible."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        self.model, self.seed, self.gray = model, seed, RandomChannelGray()
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor, modality: torch.Tensor):
        if self.generator is None or self.generator.device != x.device:
            self.generator = torch.Generator(device=x.device)
            self.generator.manual_seed(self.seed)
        return self.model(self.gray(x, self.generator), modality)


class Reclusterer:
    """The stage-2 epoch hook: extract, cluster per modality, associate, reset memories, set the sampler's labels."""

    def __init__(self, method: AMLStage2, sampler: PseudoLabelSampler, fetch: PoolFetch, cache: ImageCache,
                 modalities: np.ndarray, truth: np.ndarray | None, phase: AMLPhase, settings: AMLSettings, *,
                 seed: int, device: torch.device, extract: Callable[..., np.ndarray]) -> None:
        self.method, self.sampler, self.fetch, self.cache = method, sampler, fetch, cache
        self.modalities, self.truth, self.phase, self.settings = modalities, truth, phase, settings
        self.seed, self.device, self.extract = seed, device, extract
        self.log: Callable[[dict[str, Any]], None] = lambda row: None
        self.global_step: Callable[[], int] = lambda: 0

    def bind(self, log: Callable[[dict[str, Any]], None], global_step: Callable[[], int]) -> None:
        """The trainer's log (for the ``kind: cluster`` rows) and step counter."""
        self.log, self.global_step = log, global_step

    def steps_for(self, labels: np.ndarray) -> int:
        if self.phase.recluster_every is not None:
            return self.phase.recluster_every
        batch = self.phase.num_ids * self.phase.num_instances
        return max(1, math.ceil(int((labels >= 0).sum()) / batch))

    def __call__(self, epoch: int) -> None:
        method = self.method
        if int(method.labels_epoch) == epoch:  # resumed mid-epoch: the labels this epoch was trained with
            labels = method.pseudo_labels.cpu().numpy()
        else:
            payload: list[Any] = [None]
            if dist.is_main():
                payload = [self._cluster(epoch)]
            if dist.world_size() > 1:
                torch.distributed.broadcast_object_list(payload, src=0)
            labels, c1, c2, diag = payload[0]
            method.memory1.reset(c1.to(self.device))
            method.memory2.reset(c2.to(self.device))
            method.set_pseudo_labels(torch.from_numpy(labels), epoch)
            self.log({"kind": "cluster", "phase": self.phase.name, "epoch": epoch,
                      "global_step": self.global_step(), **diag})
        self.fetch.labels = labels
        self.sampler.set_labels(labels, self.steps_for(labels))

    def _cluster(self, epoch: int):
        a = self.settings
        f1, f2 = self._extract_both(self.seed + epoch)
        feats = np.concatenate([f1, f2], axis=1)
        rgb, ir = np.flatnonzero(self.modalities == 0), np.flatnonzero(self.modalities == 1)
        # the un-renormalised concatenation of two unit halves (norm ~sqrt 2), as the reference clusters it
        assoc = cluster_cross_modal(feats[rgb], feats[ir], method=self.phase.clustering, eps=a.eps,
                                    min_samples=a.min_samples, k1=a.k1, k2=a.k2, k=a.kmeans_k, seed=self.seed + epoch,
                                    normalize=False, kmeans_init=a.kmeans_init)  # type: ignore[arg-type]
        labels = np.full(len(self.modalities), -1, dtype=np.int64)
        labels[rgb], labels[ir] = assoc.labels_rgb, assoc.labels_ir
        truth = self.truth
        diag = clustering_diagnostics(assoc, None if truth is None else truth[rgb],
                                      None if truth is None else truth[ir])
        # memory initialisation: each model's half, centroids over both modalities (labels are 0..C-1, all used)
        (_, c1), (_, c2) = cluster_centroids(f1, labels), cluster_centroids(f2, labels)
        return labels, torch.from_numpy(c1), torch.from_numpy(c2), {k: float(v) for k, v in diag.items()}

    def _extract_both(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """model1(x) and model2(gray(x)) for every pool image: the mean of the L2-normalised features of the image
        and of its mirror image, NOT renormalised (CMAM evaluator.py:117-120 averages the two normalised outputs)."""
        g = GrayView(self.method.model2, seed)

        def both(model: nn.Module) -> np.ndarray:
            a = self.extract(model, self.cache, self.modalities, flip=False, feature="bn")
            b = self.extract(_FlipView(model), self.cache, self.modalities, flip=False, feature="bn")
            return (a + b) / 2

        f1, f2 = both(self.method.model), both(g)
        self.method.train()
        return f1, f2
