"""ADCA (Yang, Ye, Chen, Wu, ACM MM 2022), unsupervised, as a registered method; recipe card docs/recipes/adca.md.

The AGW-style two-stream network (modality-specific stems, shared ResNet stages, GeM p = 3, BNNeck, no classifier)
trained without any identity label, in two stages of ``train.epochs`` epochs each (the published recipe: 50 + 50),
each with its own Adam optimiser and step schedule from the ``train:`` section. Every epoch starts by re-clustering:

1. clustering features of every training image through its own stem (eval mode, resize only): the mean of the
   L2-normalised BN features of the image and of its mirror image, **not** renormalised;
2. per modality, the clustering Jaccard distance (k1 30, k2 6, on the un-renormalised features) and DBSCAN
   (eps 0.6 on SYSU-MM01, 0.3 on RegDB; min_samples 4); outliers (-1) sit the epoch out;
3. two cluster memories (:class:`vireid.losses.adca.DualClusterMemory`, tau 0.05, momentum 0.1), each initialised
   with its modality's L2-normalised cluster means;
4. stage 2 only: Cross-modality Memory Aggregation (:func:`vireid.losses.adca.cma_match` with threshold 0.5, then
   ``M_rgb[r] <- 0.1 M_rgb[r] + 0.9 M_ir[c]`` for every matched pair).

A step draws ``rgb_ids`` RGB pseudo-identities and ``ir_ids`` IR pseudo-identities (``num_instances`` images each,
anchor + other-camera images), the RGB images as two views (CAJ's view and its channel-exchanged twin, labels
repeated), the IR images with adaptive gray; one forward of the concatenated batch, loss
``CE_mem_rgb + CE_mem_ir``. YAML::

    method: {name: adca, eps: 0.6, rgb_ids: 8, ir_ids: 16, num_instances: 16}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from vireid.clustering import (
    Association,
    cluster_centroids,
    clustering_diagnostics,
    dbscan_sparse,
    jaccard_distance_sparse,
)
from vireid.clustering.plots import plot_clustering
from vireid.data.cache import ImageCache
from vireid.data.pools import PoolFetch
from vireid.data.sampling import AnchorCrossCameraSampler
from vireid.data.transforms import CAJViews
from vireid.engine import distributed as dist
from vireid.errors import ConfigError, DataError
from vireid.losses.adca import CMAMatch, DualClusterMemory, cma_match
from vireid.methods.base import Batch, Method, Phase, PhasePlan, PhaseRun, RunContext
from vireid.methods.registry import MethodSettings, MethodSpec, register_method
from vireid.methods.supervised import make_optimizer, make_schedule
from vireid.settings import check

__all__ = ["ADCA", "ADCASettings", "ADCAReclusterer", "DualPseudoLabelSampler", "adca_plan", "oracle_cma"]


@dataclass
class ADCASettings(MethodSettings):
    """``method:`` of ADCA (values: the official run scripts, docs/recipes/adca.md)."""

    name: str = "adca"
    stages: int = 2
    """2 = stage 1 (dual contrastive learning) then stage 2 (with CMA), the published recipe; 1 = stage 1 only."""
    temperature: float = 0.05
    momentum: float = 0.1
    """Memory update ``M <- momentum * M + (1 - momentum) * f`` (run scripts: 0.1)."""
    eps: float = 0.6
    """DBSCAN radius on the Jaccard distance (SYSU-MM01 0.6, RegDB 0.3: hard-coded in the reference scripts)."""
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    cma_threshold: float = 0.5
    """CMA: a cross-modal sample pair votes when its clustering-feature similarity is >= this."""
    cma_weight: float = 0.1
    """CMA: ``M_rgb[r] <- cma_weight * M_rgb[r] + (1 - cma_weight) * M_ir[c]``."""
    rgb_ids: int = 8
    """RGB pseudo-identities per step (the reference's RGB batch of 128 = 8 x 16, two views each)."""
    ir_ids: int = 16
    """IR pseudo-identities per step (``-b 256`` = 16 x 16)."""
    num_instances: int = 16
    neck_init_std: float = 0.01
    """BNNeck weight ~ N(1, std) when ``model.neck_init: normal`` (the reference's kaiming init: std 0.01)."""
    diagnostics_truth: bool = True
    """Log ARI / CMA match precision against the dataset's identity column when it has one (synthetic data, a
    labelled dataset trained without labels). Never used for training or model selection."""

    def validate(self, key: str) -> None:
        check(self.stages in (1, 2), f"{key}.stages", self.stages, "1 (stage 1 only) or 2 (stage 1, then CMA)")
        check(self.temperature > 0, f"{key}.temperature", self.temperature, "a positive number")
        check(0 <= self.momentum < 1, f"{key}.momentum", self.momentum, "a value in [0, 1)")
        check(self.eps > 0 and self.min_samples >= 1, f"{key}.eps/min_samples", (self.eps, self.min_samples),
              "eps > 0 and min_samples >= 1")
        check(self.k1 >= 1 and self.k2 >= 1, f"{key}.k1/k2", (self.k1, self.k2), "integers >= 1")
        check(-1.0 <= self.cma_threshold <= 1.0, f"{key}.cma_threshold", self.cma_threshold, "a cosine in [-1, 1]")
        check(0.0 <= self.cma_weight <= 1.0, f"{key}.cma_weight", self.cma_weight, "a weight in [0, 1]")
        check(self.rgb_ids >= 1 and self.ir_ids >= 1 and self.num_instances >= 2, f"{key}.rgb_ids/ir_ids/num_instances",
              (self.rgb_ids, self.ir_ids, self.num_instances), "rgb_ids >= 1, ir_ids >= 1 and num_instances >= 2")
        check(self.neck_init_std >= 0, f"{key}.neck_init_std", self.neck_init_std, "a number >= 0")


class ADCA(Method):
    """ADCA's training step (see the module docstring): dual cluster memories over the BN features.

    The pseudo labels of the current clustering live in the state dict (``labels_rgb``, ``labels_ir``,
    ``labels_epoch``), as do the memories, so a resumed run continues with exactly what it was trained with.
    """

    labels_rgb: torch.Tensor  # buffers (register_buffer in __init__)
    labels_ir: torch.Tensor
    labels_epoch: torch.Tensor

    def __init__(self, model: nn.Module, memory: DualClusterMemory, *, num_rgb: int, num_ir: int, height: int,
                 width: int, pad: int = 10, flip: float = 0.5, erasing: float = 0.5,
                 erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 adaptive_gray: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.memory = memory
        self.views = CAJViews(height, width, pad=pad, flip=flip, erasing=erasing, erasing_area=erasing_area,
                              erasing_ratio=erasing_ratio, adaptive_gray=adaptive_gray)
        self.register_buffer("labels_rgb", torch.full((num_rgb,), -1, dtype=torch.long))
        self.register_buffer("labels_ir", torch.full((num_ir,), -1, dtype=torch.long))
        self.register_buffer("labels_epoch", torch.tensor(-1, dtype=torch.long))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """One group: Adam with one lr and weight decay on every parameter (the reference's per-parameter groups all
        share them)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay, "name": "all"}]

    def adapt_to_state(self, state: dict[str, torch.Tensor]) -> None:
        """Resize both memories to a saved state's cluster counts (the trainer calls this before resuming)."""
        for name in ("rgb", "ir"):
            saved = state.get(f"memory.{name}.memory")
            mem = getattr(self.memory, name)
            if saved is not None and saved.shape != mem.memory.shape:
                mem.reset(torch.ones(saved.shape, device=mem.memory.device))

    def set_pseudo_labels(self, labels_rgb: torch.Tensor, labels_ir: torch.Tensor, epoch: int) -> None:
        self.labels_rgb.copy_(labels_rgb.to(self.labels_rgb.device))
        self.labels_ir.copy_(labels_ir.to(self.labels_ir.device))
        self.labels_epoch.fill_(int(epoch))

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        """``[rgb view; channel-exchanged view; ir]`` (trainers.py:132-136: both RGB views through the visible stem,
        labels repeated)."""
        rgb, exchanged, ir = self.views(rgb_u8, ir_u8, generator)
        return Batch.of_parts([rgb, exchanged, ir], [rgb_labels, rgb_labels, ir_labels], [0, 0, 1],
                              [rgb_cams, rgb_cams, ir_cams])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.model(batch.images, batch.modalities)
        is_ir = batch.modalities == 1
        terms = self.memory(out.bn[~is_ir], batch.labels[~is_ir], out.bn[is_ir], batch.labels[is_ir])
        terms["loss"] = terms["mem_ir"] + terms["mem_rgb"]
        return terms


# --------------------------------------------------------------------------------------------------------------------
# sampling: each modality on its own pseudo labels


class DualPseudoLabelSampler:
    """Per step ``rgb_ids`` RGB and ``ir_ids`` IR pseudo-identities, ``num_instances`` images each, drawn as ADCA's
    two loaders draw them (cluster-contrast ``RandomMultipleGallerySampler``: anchor + other-camera images, see
    :class:`vireid.data.sampling.AnchorCrossCameraSampler`), each modality over its own label space.

    Yields ``(rgb_positions, ir_positions)`` among the pool's RGB rows and IR rows. An epoch is ``steps`` batches
    (``train.steps_per_epoch``, the reference's ``--iters``); a stream that runs out of identities starts a new
    shuffled pass, as the reference's ``IterLoader`` does.
    """

    def __init__(self, camids_rgb: np.ndarray, camids_ir: np.ndarray, rgb_ids: int, ir_ids: int,
                 num_instances: int, seed: int, rank: int, world_size: int) -> None:
        self.camids = (np.asarray(camids_rgb), np.asarray(camids_ir))
        self.num_ids = (rgb_ids, ir_ids)
        self.num_instances, self.seed = num_instances, seed
        self.rank, self.world_size = rank, world_size
        self.inner: tuple[AnchorCrossCameraSampler, AnchorCrossCameraSampler] | None = None
        self.steps, self.epoch = 0, 0

    def set_labels(self, labels_rgb: np.ndarray, labels_ir: np.ndarray, steps: int | None) -> None:
        """This epoch's pseudo labels (-1 = outlier, never drawn); ``steps`` None = one pass over the IR clusters."""
        samplers = []
        for m, (labels, name) in enumerate(((labels_rgb, "RGB"), (labels_ir, "IR"))):
            clusters = len(np.unique(labels[labels >= 0]))
            if clusters < self.num_ids[m]:
                raise DataError(f"ADCA: the {name} clustering kept {clusters} pseudo identities "
                                f"({int((labels >= 0).sum())} images), fewer than the {self.num_ids[m]} of a batch; "
                                f"the features do not cluster at these settings (lower method."
                                f"{'rgb_ids' if m == 0 else 'ir_ids'}, raise method.eps, or start from "
                                "pretrained weights)")
            samplers.append(AnchorCrossCameraSampler(labels, self.camids[m], self.num_ids[m], self.num_instances,
                                                     seed=self.seed + 7919 * m, rank=self.rank,
                                                     world_size=self.world_size))
        self.inner = (samplers[0], samplers[1])
        self.steps = int(steps) if steps is not None else max(1, len(samplers[1]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def _stream(self, sampler: AnchorCrossCameraSampler):
        rnd = 0
        while True:
            sampler.set_epoch(self.epoch * 100_000 + rnd)  # deterministic per (epoch, pass)
            yield from sampler
            rnd += 1

    def __iter__(self):
        if self.inner is None:
            raise RuntimeError("DualPseudoLabelSampler: set_labels() before iterating")
        rgb, ir = self._stream(self.inner[0]), self._stream(self.inner[1])
        for _ in range(self.steps):
            yield np.asarray(next(rgb)), np.asarray(next(ir))


# --------------------------------------------------------------------------------------------------------------------
# re-clustering (the epoch hook)


class _Mirrored(nn.Module):
    """``model(mirror(x))``, to average the normalised features of an image and its mirror image un-renormalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, modality: torch.Tensor):
        return self.model(torch.flip(x, dims=[3]), modality)


def cma_association(labels_rgb: np.ndarray, labels_ir: np.ndarray, match: CMAMatch | None) -> Association:
    """The epoch's labels as one :class:`~vireid.clustering.Association` for the diagnostics: IR clusters keep their
    ids, an RGB cluster matched by CMA takes its IR cluster's id, unmatched RGB clusters get ids after them."""
    c_rgb = int(labels_rgb.max()) + 1 if (labels_rgb >= 0).any() else 0
    c_ir = int(labels_ir.max()) + 1 if (labels_ir >= 0).any() else 0
    to_shared = np.full(c_rgb, -1, dtype=np.int64)
    if match is not None and len(match):
        to_shared[match.rgb] = match.ir
    free = np.flatnonzero(to_shared < 0)
    to_shared[free] = c_ir + np.arange(len(free))
    shared_rgb = np.where(labels_rgb >= 0, to_shared[np.clip(labels_rgb, 0, None)], -1)
    return Association(labels_rgb=shared_rgb, labels_ir=labels_ir.copy(), num_clusters=c_ir + len(free),
                       clusters_rgb=c_rgb, clusters_ir=c_ir, raw_labels_rgb=labels_rgb, raw_labels_ir=labels_ir)


class ADCAReclusterer:
    """The epoch hook: extract, cluster each modality, reset the memories, CMA (stage 2), set the sampler's labels."""

    def __init__(self, method: ADCA, sampler: DualPseudoLabelSampler, fetch: PoolFetch, cache: ImageCache,
                 modalities: np.ndarray, truth: np.ndarray | None, settings: ADCASettings, *, cma: bool,
                 steps: int | None, phase: str, device: torch.device,
                 extract: Callable[..., np.ndarray]) -> None:
        self.method, self.sampler, self.fetch, self.cache = method, sampler, fetch, cache
        self.modalities, self.truth, self.settings, self.cma = modalities, truth, settings, cma
        self.steps, self.phase, self.device, self.extract = steps, phase, device, extract
        self.rgb, self.ir = np.flatnonzero(modalities == 0), np.flatnonzero(modalities == 1)
        self.log: Callable[[dict[str, Any]], None] = lambda row: None
        self.global_step: Callable[[], int] = lambda: 0

    def bind(self, log: Callable[[dict[str, Any]], None], global_step: Callable[[], int]) -> None:
        self.log, self.global_step = log, global_step

    def __call__(self, epoch: int) -> None:
        method = self.method
        if int(method.labels_epoch) == epoch:  # resumed mid-epoch: the labels (and memories) it was trained with
            lr, li = method.labels_rgb.cpu().numpy(), method.labels_ir.cpu().numpy()
        else:
            payload: list[Any] = [None]
            if dist.is_main():
                payload = [self._cluster()]
            if dist.world_size() > 1:
                torch.distributed.broadcast_object_list(payload, src=0)
            lr, li, c_rgb, c_ir, match, diag = payload[0]
            method.memory.reset(c_rgb.to(self.device), c_ir.to(self.device))
            if match is not None:
                method.memory.aggregate(match, self.settings.cma_weight)
            method.set_pseudo_labels(torch.from_numpy(lr), torch.from_numpy(li), epoch)
            self.log({"kind": "cluster", "phase": self.phase, "epoch": epoch, "global_step": self.global_step(),
                      **diag})
        labels = np.full(len(self.modalities), -1, dtype=np.int64)
        labels[self.rgb], labels[self.ir] = lr, li
        self.fetch.labels = labels
        self.sampler.set_labels(lr, li, self.steps)

    def features(self) -> np.ndarray:
        """Clustering features of every pool image (its own stem, eval mode): the mean of the L2-normalised BN
        features of the image and its mirror image, not renormalised (the reference's flip average)."""
        model = self.method.model
        a = self.extract(model, self.cache, self.modalities, flip=False, feature="bn")
        b = self.extract(_Mirrored(model), self.cache, self.modalities, flip=False, feature="bn")
        self.method.train()
        return (a + b) / 2

    def _cluster(self):
        s = self.settings
        f = self.features()
        f_rgb, f_ir = f[self.rgb], f[self.ir]
        labels = []
        for part in (f_rgb, f_ir):
            graph = jaccard_distance_sparse(part, s.k1, s.k2, s.eps, normalize=False, device=self.device)
            labels.append(dbscan_sparse(graph, s.eps, s.min_samples))
        lr, li = labels
        (_, c_rgb), (_, c_ir) = cluster_centroids(f_rgb, lr), cluster_centroids(f_ir, li)
        match = cma_match(f_rgb, f_ir, lr, li, s.cma_threshold) if self.cma else None
        t_rgb, t_ir = (None, None) if self.truth is None else (self.truth[self.rgb], self.truth[self.ir])
        diag = {k: float(v) for k, v in clustering_diagnostics(cma_association(lr, li, match), t_rgb, t_ir).items()}
        diag["cma_pairs"] = float(len(match)) if match is not None else 0.0
        if t_rgb is not None and t_ir is not None:
            diag.update(oracle_cma(f_rgb, f_ir, t_rgb, t_ir, s.cma_threshold))
        return lr, li, torch.from_numpy(c_rgb), torch.from_numpy(c_ir), match, diag


def oracle_cma(features_rgb: np.ndarray, features_ir: np.ndarray, true_rgb: np.ndarray, true_ir: np.ndarray,
               threshold: float = 0.5) -> dict[str, float]:
    """CMA on *perfect* per-modality clusters (the true ids; diagnostics only): ``oracle_cma_pairs`` (pairs made) and
    ``oracle_cma_precision`` (the fraction of them that pair an identity with itself; NaN without pairs).

    Low precision here means no per-modality clustering can make CMA's pairs right with these features: the
    cross-modal association, not the clustering, is the bottleneck.
    """
    ids_rgb, yr = np.unique(true_rgb, return_inverse=True)
    ids_ir, yi = np.unique(true_ir, return_inverse=True)
    match = cma_match(features_rgb, features_ir, yr, yi, threshold)
    pairs = len(match)
    right = float((ids_rgb[match.rgb] == ids_ir[match.ir]).mean()) if pairs else float("nan")
    return {"oracle_cma_pairs": float(pairs), "oracle_cma_precision": right}


# --------------------------------------------------------------------------------------------------------------------
# the plan


def _build_model(settings: ADCASettings, ctx: RunContext) -> nn.Module:
    torch.manual_seed(ctx.seed)  # the same draw as the untrained model that is tested
    model = ctx.build_model(0)
    neck = getattr(model, "neck", None)
    if ctx.model.neck_init == "normal" and hasattr(neck, "bn"):
        nn.init.normal_(neck.bn.weight, 1.0, settings.neck_init_std)  # type: ignore[union-attr]
    return model


def _stage(settings: ADCASettings, cma: bool, name: str, ctx: RunContext) -> PhaseRun:
    ds = ctx.dataset
    pool = [replace(x, label=-1) for x in ctx.train_samples]  # unsupervised: identity labels never reach training
    mods = np.array([x.modality for x in pool], dtype=np.int64)
    if not ((mods == 0).any() and (mods == 1).any()):
        raise ConfigError(f"data.dataset={ds.name}: ADCA needs RGB and IR training images; this training set has "
                          f"{int((mods == 0).sum())} RGB and {int((mods == 1).sum())} IR")
    truth: np.ndarray | None = np.array([x.pid for x in pool], dtype=np.int64) if settings.diagnostics_truth else None
    if truth is not None and (truth < 0).all():
        truth = None
    model = _build_model(settings, ctx)
    memory = DualClusterMemory(cast(Any, model).feature_dim, settings.temperature, settings.momentum)
    a, d = ctx.augment, ctx.data
    method = ADCA(model, memory, num_rgb=int((mods == 0).sum()), num_ir=int((mods == 1).sum()), height=d.height,
                  width=d.width, pad=a.pad, flip=a.flip, erasing=a.erasing, erasing_area=a.erasing_area,
                  erasing_ratio=a.erasing_ratio, adaptive_gray=a.adaptive_gray)
    optimizer = make_optimizer(ctx.train, method)
    cache = ctx.open_cache(ds.root, pool)
    cams = np.array([x.camid for x in pool], dtype=np.int64)
    sampler = DualPseudoLabelSampler(cams[mods == 0], cams[mods == 1], settings.rgb_ids, settings.ir_ids,
                                     settings.num_instances, ctx.seed + 31, ctx.rank, ctx.world_size)
    fetch = PoolFetch(cache, mods, cams)
    hook = ADCAReclusterer(method, sampler, fetch, cache, mods, truth, settings, cma=cma,
                           steps=ctx.train.steps_per_epoch, phase=name, device=ctx.device, extract=ctx.extract)
    return PhaseRun(method=method, sampler=sampler, fetch=fetch, optimizer=optimizer, schedule=make_schedule(ctx.train),
                    epochs=ctx.train.epochs, num_classes=0, on_epoch_start=hook,
                    validate=ctx.validator(ctx.val_samples), meta={"stage": 2 if cma else 1})


def _from_stage1(method: Method, state: dict[str, torch.Tensor], source: Phase) -> None:
    """Stage 2 starts from stage 1's final network (memories and labels are rebuilt at its first epoch)."""
    weights = {k: v for k, v in state.items() if k.startswith("model.")}
    result = method.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("model.")]
    if missing:
        raise ConfigError(f"adca stage2: {source.name}'s last.pt lacks network weights ({', '.join(missing[:3])}); "
                          "was it written with another model: section?")


def adca_plan(settings: ADCASettings, ctx: RunContext) -> PhasePlan:
    """Stage 1 into ``<output_dir>/stage1/``, then (``stages: 2``) stage 2 with CMA into ``stage2/``, starting from
    stage 1's last epoch; the untrained model and the model after stage 1 are tested too; ``clustering.png`` plots
    every re-clustering at the end."""
    phases = [Phase("stage1", partial(_stage, settings, False, "stage1"), test_after="stage1" if settings.stages == 2
                    else None, info={"stage": 1})]
    if settings.stages == 2:
        phases.append(Phase("stage2", partial(_stage, settings, True, "stage2"), init="stage1",
                            init_from=_from_stage1, info={"stage": 2}))
    names = [p.name for p in phases]
    return PhasePlan(phases, test_untrained=True, untrained_model=partial(_build_model, settings, ctx),
                     on_finish=lambda out: plot_clustering(out, names))


register_method(MethodSpec(
    "adca", ADCASettings, adca_plan,
    summary="ADCA (ACM MM 2022), unsupervised: dual cluster memories, channel-augmented RGB, CMA in stage 2",
    augment_keys=frozenset({"pad", "flip", "erasing", "erasing_area", "erasing_ratio", "adaptive_gray"}),
    uses_sampler=False, checkpoint_dirs=lambda s: ["stage1", "stage2"][:s.stages]))
