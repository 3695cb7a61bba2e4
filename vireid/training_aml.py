"""AML end to end (SPEC 6): the phases of the published scripts in order, each resumable, each kept.

``train(cfg)`` with ``method.name: aml`` lands here. ``cfg.aml.phases`` lists the phases, e.g. (SYSU-MM02)::

    stage1_run1  stage 1, 15,000 it, KL weight 0      (auxiliary source: market1501_gen + fake-IR twins)
    stage1_run2  stage 1, 15,000 it, KL weight 0.1    init: stage1_run1 (new optimiser and schedule)
    stage2_A     stage 2, 12,000 it, Jaccard + DBSCAN init: stage1_run2 (backbones; GeM/BNNeck re-initialised)
    stage2_B     stage 2, 12,000 it, k-means K = 400  init: stage2_A

Each phase trains into ``<output_dir>/<phase>/`` (``last.pt``, ``log.jsonl``, and ``best.pt`` where validation data
exists). ``--resume`` skips finished phases and continues an interrupted one at the iteration it reached, with the
pseudo labels and cluster memories it had (they are part of the method state in ``last.pt``).

Model selection never looks at the test set: stage-2 phases validate model1 on held-out identities of the target
when the target has labelled training identities (SYSU-MM01's val ids, a RegDB hold-out), and keep ``best.pt`` by
validation mAP. SYSU-MM02's training set is unlabeled: there is nothing to validate on, so the final weights are
tested (the reference instead picks the best of periodic *test* evaluations; we do not).

``results.json`` reports the target test protocol for the untrained model, after stage 1 and at the end, so the
contribution of each stage is visible; every re-clustering logs its diagnostics (clusters per modality, outliers,
matched pairs and, where ground-truth ids exist, ARI/NMI and match precision) as ``kind: cluster`` rows, plotted in
``clustering.png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vireid import build
from vireid.config import Config, PhaseConfig, dump_yaml
from vireid.data.cache import ImageCache, batch_to_tensor
from vireid.data.records import Sample
from vireid.errors import ConfigError, DataError
from vireid.training import evaluate_samples, make_validator, open_cache, split_train_val, test_checkpoint, test_plan

# --------------------------------------------------------------------------------------------------------------------
# samplers: the trainer draws (rgb_idx, ir_idx) per step


class TwinPairSampler:
    """Stage 1: AML's anchor + cross-camera P x K batches over the source; yields ``(idx, idx)``: the RGB originals
    and their fake-IR twins are the same rows of two aligned caches."""

    def __init__(self, labels: np.ndarray, camids: np.ndarray, num_ids: int, num_instances: int, seed: int,
                 rank: int, world_size: int) -> None:
        from vireid.data.sampling import AnchorCrossCameraSampler

        self.inner = AnchorCrossCameraSampler(labels, camids, num_ids, num_instances, seed=seed, rank=rank,
                                              world_size=world_size)
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for flat in self.inner:
            yield flat, flat


class PseudoLabelSampler:
    """Stage 2: P x K anchor + cross-camera batches over the pseudo-labelled target pool (both modalities).

    An "epoch" is ``steps`` batches (set with the labels after every clustering): enough for the samples trained
    to exceed the kept samples (SPEC 6), or a fixed count (RegDB: 200). Each batch's flat pool indices are split
    into positions among the RGB rows and among the IR rows, as the trainer's ``fetch`` expects.
    """

    def __init__(self, camids: np.ndarray, modalities: np.ndarray, num_ids: int, num_instances: int, seed: int,
                 rank: int, world_size: int) -> None:
        self.camids, self.modalities = np.asarray(camids), np.asarray(modalities)
        self.position = np.zeros(len(self.modalities), dtype=np.int64)  # index among its modality's rows
        for m in (0, 1):
            rows = np.flatnonzero(self.modalities == m)
            self.position[rows] = np.arange(len(rows))
        self.num_ids, self.num_instances, self.seed = num_ids, num_instances, seed
        self.rank, self.world_size = rank, world_size
        self.inner: Any = None
        self.steps, self.epoch = 0, 0

    def set_labels(self, labels: np.ndarray, steps: int) -> None:
        from vireid.data.sampling import AnchorCrossCameraSampler

        kept = int((labels >= 0).sum())
        clusters = len(np.unique(labels[labels >= 0]))
        if clusters < self.num_ids:
            raise DataError(f"AML stage 2: the clustering kept {clusters} pseudo identities ({kept} samples), fewer "
                            f"than the {self.num_ids} identities of a batch; the features do not cluster at these "
                            "settings (lower the phase's num_ids, raise aml.eps, or train stage 1 longer)")
        self.inner = AnchorCrossCameraSampler(labels, self.camids, self.num_ids, self.num_instances,
                                              seed=self.seed, rank=self.rank, world_size=self.world_size)
        self.steps = int(steps)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        done, rnd = 0, 0
        while done < self.steps:
            self.inner.set_epoch(self.epoch * 100_000 + rnd)  # deterministic per (epoch, round)
            for flat in self.inner:
                flat = np.asarray(flat)
                ir = self.modalities[flat] == 1
                yield self.position[flat[~ir]], self.position[flat[ir]]
                done += 1
                if done == self.steps:
                    return
            rnd += 1


# --------------------------------------------------------------------------------------------------------------------
# data


class PairFetch:
    """Stage 1 ``fetch``: rows of the originals cache and of the aligned fake-IR twin cache."""

    def __init__(self, originals: ImageCache, twins: ImageCache, labels: np.ndarray, camids: np.ndarray) -> None:
        self.originals, self.twins, self.labels, self.camids = originals, twins, labels, camids

    def __call__(self, rgb_idx: Sequence[int], ir_idx: Sequence[int]) -> tuple:
        rows = np.asarray(rgb_idx)
        lab, cam = torch.from_numpy(self.labels[rows]), torch.from_numpy(self.camids[rows])
        return (batch_to_tensor(self.originals.batch(rows)).contiguous(),
                batch_to_tensor(self.twins.batch(rows)).contiguous(), lab, lab, cam, cam)


class PoolFetch:
    """Stage 2 ``fetch``: positions among the RGB rows / IR rows of the target pool -> images, pseudo labels."""

    def __init__(self, cache: ImageCache, modalities: np.ndarray, camids: np.ndarray) -> None:
        self.cache, self.camids = cache, camids
        self.rows = [np.flatnonzero(modalities == 0), np.flatnonzero(modalities == 1)]
        self.labels = np.full(len(modalities), -1, dtype=np.int64)

    def _part(self, m: int, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.rows[m][np.asarray(idx, dtype=np.int64)]
        if len(rows) == 0:
            h, w = self.cache.height, self.cache.width
            return torch.zeros(0, 3, h, w, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), \
                torch.zeros(0, dtype=torch.long)
        return (batch_to_tensor(self.cache.batch(rows)).contiguous(), torch.from_numpy(self.labels[rows]),
                torch.from_numpy(self.camids[rows]))

    def __call__(self, rgb_idx: Sequence[int], ir_idx: Sequence[int]) -> tuple:
        (rgb, lr, cr), (ir, li, ci) = self._part(0, rgb_idx), self._part(1, ir_idx)
        return rgb, ir, lr, li, cr, ci


class GrayView(nn.Module):
    """``model(gray(x))`` for feature extraction: model2 sees the gray view (a random channel copied to all three),
    drawn from a seeded generator so that an extraction is reproducible."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        from vireid.data.transforms import RandomChannelGray

        self.model, self.seed, self.gray = model, seed, RandomChannelGray()
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor, modality: torch.Tensor):
        if self.generator is None or self.generator.device != x.device:
            self.generator = torch.Generator(device=x.device)
            self.generator.manual_seed(self.seed)
        return self.model(self.gray(x, self.generator), modality)


# --------------------------------------------------------------------------------------------------------------------
# phases


def _schedule(phase: PhaseConfig):
    from vireid.engine.schedules import WarmupHoldCosine

    hold = phase.hold_until if phase.hold_until is not None else (
        min(9000, phase.iterations - 1) if phase.stage == 1 else phase.warmup)
    hold = max(hold, phase.warmup)
    return WarmupHoldCosine(phase.lr, warmup=phase.warmup, warmup_factor=phase.warmup_factor, hold_until=hold,
                            total=phase.iterations, final_lr=phase.final_lr)


def phase_finished(path: Path, phase: PhaseConfig) -> bool:
    """Whether ``path`` (a phase's last.pt) records the phase's full iteration count."""
    if not path.is_file():
        return False
    from vireid.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["progress"]["global_step"]) >= phase.iterations


def _init_from(method: nn.Module, source: Path, phase: PhaseConfig, previous_stage: int) -> None:
    """Start ``method`` from a finished phase's weights: everything that fits (same stage), or only the backbones
    (stage 1 -> 2: GeM/BNNeck re-initialised and no classifier, SPEC 6)."""
    from vireid.engine.checkpoint import load_checkpoint

    state = load_checkpoint(source)["method"]
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
        raise ConfigError(f"aml phase {phase.name}: {source} lacks backbone weights ({', '.join(wanted[:3])}); "
                          "was it written by another architecture?")


def _models(cfg: Config, num_classes: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(cfg.seed)
    m1 = build.model_from_config(cfg.model, num_classes)
    m2 = build.model_from_config(cfg.model, num_classes)
    return m1, m2


def _extract_concat(method, cache: ImageCache, modalities: np.ndarray, cfg: Config, device: torch.device,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip-averaged, L2-normalised features of model1(x) and model2(gray(x)) for every pool image."""
    from vireid.inference.extract import extract_features

    kw = dict(batch_size=cfg.eval.batch_size, device=device, flip=True, feature="bn")
    f1 = extract_features(method.model, cache, modalities, **kw)
    f2 = extract_features(GrayView(method.model2, seed), cache, modalities, **kw)
    method.train()
    return f1, f2


class Reclusterer:
    """The stage-2 epoch hook: extract, cluster per modality, associate, reset memories, set the sampler's labels."""

    def __init__(self, method, sampler: PseudoLabelSampler, fetch: PoolFetch, cache: ImageCache,
                 modalities: np.ndarray, truth: np.ndarray | None, phase: PhaseConfig, cfg: Config,
                 device: torch.device, log) -> None:
        self.method, self.sampler, self.fetch, self.cache = method, sampler, fetch, cache
        self.modalities, self.truth, self.phase, self.cfg, self.device = modalities, truth, phase, cfg, device
        self.log = log
        self.global_step = lambda: 0

    def steps_for(self, labels: np.ndarray) -> int:
        if self.phase.recluster_every is not None:
            return self.phase.recluster_every
        batch = self.phase.num_ids * self.phase.num_instances
        return max(1, math.ceil(int((labels >= 0).sum()) / batch))

    def __call__(self, epoch: int) -> None:
        from vireid.engine import distributed as dist

        method = self.method
        if int(method.labels_epoch) == epoch:  # resumed mid-epoch: the labels this epoch was trained with
            labels = method.pseudo_labels.cpu().numpy()
        else:
            payload = [None]
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
        from vireid.clustering import cluster_centroids, cluster_cross_modal, clustering_diagnostics

        a, cfg = self.cfg.aml, self.cfg
        f1, f2 = _extract_concat(self.method, self.cache, self.modalities, cfg, self.device, cfg.seed + epoch)
        feats = np.concatenate([f1, f2], axis=1)
        rgb, ir = np.flatnonzero(self.modalities == 0), np.flatnonzero(self.modalities == 1)
        assoc = cluster_cross_modal(feats[rgb], feats[ir], method=self.phase.clustering, eps=a.eps,
                                    min_samples=a.min_samples, k1=a.k1, k2=a.k2, k=a.kmeans_k, seed=cfg.seed + epoch)
        labels = np.full(len(self.modalities), -1, dtype=np.int64)
        labels[rgb], labels[ir] = assoc.labels_rgb, assoc.labels_ir
        truth = self.truth
        diag = clustering_diagnostics(assoc, None if truth is None else truth[rgb], None if truth is None else truth[ir])
        # memory initialisation: each model's half, centroids over both modalities (labels are 0..C-1, all used)
        (_, c1), (_, c2) = cluster_centroids(f1, labels), cluster_centroids(f2, labels)
        return labels, torch.from_numpy(c1), torch.from_numpy(c2), {k: float(v) for k, v in diag.items()}


# --------------------------------------------------------------------------------------------------------------------
# the pipeline


def _target_pool(cfg: Config, ds) -> tuple[list[Sample], list[Sample]]:
    """Unlabeled target training samples (labels -1) and labelled validation samples (or none)."""
    labelled = ds.info.get("labeled", True) and cfg.train.validation == "holdout"
    if labelled:
        train, val = split_train_val(ds, "holdout", cfg.train.holdout_ids, cfg.seed)
    else:
        train, val = list(ds.train), []
    return [replace(s, label=-1) for s in train], val


def _evaluate_test(model: nn.Module, cfg: Config, ds, device: torch.device, progress: bool) -> dict[str, Any]:
    plan = test_plan(cfg, ds)
    summary, _ = evaluate_samples(model, ds.root, ds.test, plan, cfg, device, progress=progress)
    return summary


def train_aml(cfg: Config, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every phase of ``cfg.aml.phases`` in order (resumable) and test model1 on the target's protocol."""
    from vireid.engine import distributed as dist
    from vireid.engine.seeding import seed_everything

    if cfg.aml is None or not cfg.aml.phases:
        raise ConfigError("method.name=aml needs an 'aml' section with its phases (see configs/aml/*.yaml)")
    out = Path(cfg.output_dir)
    started = [p.name for p in cfg.aml.phases if (out / p.name / "last.pt").is_file()]
    if started and not resume:
        raise ConfigError(f"{out}/{started[0]}/last.pt exists: pass --resume to continue that run, or choose another "
                          "output_dir (--set output_dir=...)")
    seed_everything(cfg.seed, threads=cfg.train.threads)
    device = build.device_from_config(cfg.train.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = dist.init_distributed()
    main, show = dist.is_main(), progress and dist.is_main()

    ds = build.dataset_from_config(cfg.data)
    pool, val = _target_pool(cfg, ds)
    # identities (where the pool has them: SYSU-MM02's pid column, synthetic data) only for the diagnostics
    truth = np.array([s.pid for s in pool], dtype=np.int64) if cfg.aml.diagnostics_truth else None
    if truth is not None and (truth < 0).all():
        truth = None
    results: dict[str, Any] = {"method": "aml", "dataset": cfg.data.dataset, "phases": []}
    results_path = out / "results.json"
    if results_path.is_file() and resume:
        results.update({k: v for k, v in json.loads(results_path.read_text()).items() if k in ("untrained", "stage1")})

    # the untrained model1 on the target test set (the baseline each stage must beat)
    if main and "untrained" not in results:
        m1, _ = _models(cfg, 0)
        results["untrained"] = _evaluate_test(m1.to(device), cfg, ds, device, show)
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))

    stages = {p.name: p.stage for p in cfg.aml.phases}
    last_stage1 = max((i for i, p in enumerate(cfg.aml.phases) if p.stage == 1), default=None)
    final_dir = None
    for i, phase in enumerate(cfg.aml.phases):
        phase_dir = out / phase.name
        final_dir = phase_dir
        if resume and phase_finished(phase_dir / "last.pt", phase):
            if show:
                print(f"phase {phase.name}: finished, skipped")
        else:
            fit = _run_phase(cfg, phase, phase_dir, ds, pool, val, truth, device,
                             init=(out / phase.init / "last.pt", stages[phase.init]) if phase.init else None,
                             resume=resume, progress=show)
            results["phases"].append({"name": phase.name, "fit": fit})
        if main and i == last_stage1 and "stage1" not in results:
            from vireid.training import load_trained_model

            model, _, _ = load_trained_model(phase_dir / "last.pt", device=str(device))
            results["stage1"] = _evaluate_test(model, cfg, ds, device, show)
            results_path.write_text(json.dumps(results, indent=2))
    if not main or final_dir is None:
        return results
    chosen = final_dir / ("best.pt" if (final_dir / "best.pt").is_file() else "last.pt")
    results["final"] = test_checkpoint(chosen, out_dir=out, progress=show, dataset=ds, device=str(device))
    results["selected_checkpoint"] = str(chosen.relative_to(out))
    results["selection"] = "validation mAP (best.pt)" if chosen.name == "best.pt" else \
        "final weights (no labelled validation data on this target)"
    results_path.write_text(json.dumps(results, indent=2))
    plot_clustering(out, [p.name for p in cfg.aml.phases if p.stage == 2])
    return results


def _run_phase(cfg: Config, phase: PhaseConfig, phase_dir: Path, ds, pool: list[Sample], val: list[Sample],
               truth: np.ndarray | None, device: torch.device, *, init: tuple[Path, int] | None, resume: bool,
               progress: bool) -> dict[str, Any]:
    from vireid.engine import distributed as dist
    from vireid.engine.checkpoint import make_meta
    from vireid.engine.trainer import Trainer

    a = cfg.aml
    main = dist.is_main()
    validate = None
    if phase.stage == 1:
        src_cfg = replace(a.source, height=cfg.data.height, width=cfg.data.width, cache_dir=cfg.data.cache_dir)
        src = build.dataset_from_config(src_cfg)
        samples = [s for s in src.train if s.label >= 0 and s.twin]
        if not samples:
            raise DataError(f"{src.root}: no source training image has both a pseudo label and a fake-IR twin")
        labels = np.unique([s.label for s in samples], return_inverse=True)[1].astype(np.int64)
        num_classes = int(labels.max()) + 1
        camids = np.array([s.camid for s in samples], dtype=np.int64)
        originals = open_cache(src.root, samples, cfg, progress)
        twins = open_cache(src.root, [replace(s, path=s.twin) for s in samples], cfg, progress)
        m1, m2 = _models(cfg, num_classes)
        method = build.aml_method_from_config(cfg, phase, m1, m2)
        sampler: Any = TwinPairSampler(labels, camids, phase.num_ids, phase.num_instances, cfg.seed + 17,
                                       dist.rank(), dist.world_size())
        fetch: Any = PairFetch(originals, twins, labels, camids)
        hook = None
        steps_per_epoch = max(1, len(sampler))
    else:
        from vireid.losses.memory import ClusterMemory

        num_classes = 0
        m1, m2 = _models(cfg, 0)
        mems = [ClusterMemory(m1.feature_dim, 1, temperature=a.temperature, momentum=a.memory_momentum)
                for _ in range(2)]
        method = build.aml_method_from_config(cfg, phase, m1, m2, memories=mems, num_samples=len(pool))
        cache = open_cache(ds.root, pool, cfg, progress)
        mods = np.array([s.modality for s in pool], dtype=np.int64)
        cams = np.array([s.camid for s in pool], dtype=np.int64)
        sampler = PseudoLabelSampler(cams, mods, phase.num_ids, phase.num_instances, cfg.seed + 29,
                                     dist.rank(), dist.world_size())
        fetch = PoolFetch(cache, mods, cams)
        hook = Reclusterer(method, sampler, fetch, cache, mods, truth, phase, cfg, device, log=lambda row: None)
        steps_per_epoch = max(1, phase.recluster_every or math.ceil(len(pool) / (phase.num_ids * phase.num_instances)))
        validate = make_validator(ds.root, val, cfg, device, main=main, progress=progress)

    if init is not None and not (resume and (phase_dir / "last.pt").is_file()):
        _init_from(method, init[0], phase, init[1])
    optimizer = torch.optim.Adam(method.param_groups(phase.lr, cfg.train.weight_decay), lr=phase.lr,
                                 weight_decay=cfg.train.weight_decay)
    meta = make_meta(config_yaml=dump_yaml(cfg), dataset=cfg.data.dataset,
                     trial=cfg.data.trial if cfg.data.dataset == "regdb" else None, method="aml",
                     num_classes=num_classes, model=dict(m1.build_kwargs), phase=phase.name, stage=phase.stage)
    # epochs: enough for the iterations (stage 2's epochs may be shorter than the estimate: max_steps stops it)
    epochs = 10 * math.ceil(phase.iterations / steps_per_epoch) + 10
    trainer = Trainer(method, optimizer, _schedule(phase), sampler, fetch, epochs=epochs, device=device,
                      amp=build.amp_from_config(cfg.train.amp, device),  # type: ignore[arg-type]
                      channels_last=cfg.train.channels_last, out_dir=phase_dir, seed=cfg.seed,
                      checkpoint_every_steps=cfg.train.checkpoint_every, validate=validate,
                      validate_every_epochs=cfg.train.eval_every, select_metric="mAP",
                      log_every=cfg.train.log_every, progress=progress, meta=meta, schedule_unit="step",
                      max_steps=phase.iterations, on_epoch_start=hook)
    if hook is not None:
        hook.log = trainer.logger.log
        hook.global_step = lambda: trainer.global_step
    if resume:
        trainer.resume()
    return trainer.fit()


# --------------------------------------------------------------------------------------------------------------------
# report


def cluster_rows(out: Path, phases: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for name in phases:
        log = out / name / "log.jsonl"
        if log.is_file():
            rows += [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "cluster"]
    return rows


def plot_clustering(out: Path, phases: Sequence[str]) -> Path | None:
    """``clustering.png``: clusters, outlier fraction and (with ground truth) ARI/NMI/match precision per clustering."""
    rows = cluster_rows(out, phases)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("clusters_rgb", "clusters_ir", "num_clusters"):
        axes[0].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[0].set_title("clusters")
    for key in ("outlier_fraction_rgb", "outlier_fraction_ir"):
        axes[1].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[1].set_title("outlier fraction")
    for key in ("ari", "nmi", "match_precision"):
        if any(key in r for r in rows):
            axes[2].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[2].set_title("agreement with ground truth")
    starts = [i for i in range(1, len(rows)) if rows[i]["phase"] != rows[i - 1]["phase"]]
    for ax in axes:
        for s in starts:
            ax.axvline(s - 0.5, color="gray", ls=":")
        ax.set_xlabel("re-clustering (phases separated by dotted lines)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "clustering.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
