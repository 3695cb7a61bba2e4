"""Training any registered method from a config: its phase plan run by the generic trainer, then the test.

``train(cfg)`` looks up ``cfg.method.name`` in the method registry, asks the method for its
:class:`~vireid.methods.base.PhasePlan` (one phase for supervised methods, several for AML) and runs each phase in
order: the phase's ``setup`` gets a :class:`Context` (the run's shared settings and services), returns a
:class:`~vireid.methods.base.PhaseRun`, and the :class:`~vireid.engine.trainer.Trainer` trains it (resumable). The
selected model is then tested with the dataset's protocol: ``results.json``, ``test_features.npz`` and ``cmc.png``
in ``output_dir``. No method is named here.

A one-phase plan trains into ``output_dir`` itself; a multi-phase plan trains each phase into
``<output_dir>/<phase>/``, skips finished phases on ``--resume``, starts a phase from an earlier one's final
weights (``Phase.init``) and reports the untrained model, the model after phases marked ``test_after`` and the
final one. Model selection never looks at the test set: ``train.validation: holdout`` keeps ``best.pt`` by
validation mAP on held-out identities; ``none`` (the published recipes) keeps the last epoch.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vireid import build
from vireid.checkpoints import TestSettings, load_trained_model
from vireid.config import Config, DataConfig, dump_yaml
from vireid.data.cache import ImageCache
from vireid.data.pools import split_train_val
from vireid.data.records import CrossModalDataset, Sample
from vireid.engine import distributed as dist
from vireid.engine.checkpoint import load_checkpoint, make_meta
from vireid.engine.seeding import seed_everything
from vireid.engine.trainer import Trainer
from vireid.errors import ConfigError
from vireid.evaluation.validation import validation_plan
from vireid.inference.evaluate import evaluate_samples
from vireid.inference.extract import extract_features
from vireid.methods.base import Phase, PhasePlan
from vireid.methods.registry import get_method
from vireid.testing import evaluate_on_test_set, open_cache, test_checkpoint

__all__ = ["Context", "train"]


# --------------------------------------------------------------------------------------------------------------------
# the context a method's phases see


@dataclass
class Context:
    """The run's shared settings and services (see :class:`vireid.methods.base.RunContext`)."""

    cfg: Config
    device: torch.device
    dataset: CrossModalDataset
    train_samples: list[Sample]
    val_samples: list[Sample]
    progress: bool = True
    _validation_caches: dict[int, ImageCache] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.cfg
        self.data, self.sampler, self.augment, self.model = c.data, c.sampler, c.augment, c.model
        self.train, self.eval, self.seed = c.train, c.eval, c.seed
        self.rank, self.world_size, self.main = dist.rank(), dist.world_size(), dist.is_main()
        self.output_dir = Path(c.output_dir)

    def build_model(self, num_classes: int) -> nn.Module:
        return build.model_from_config(self.cfg.model, num_classes)

    def load_dataset(self, data: DataConfig) -> CrossModalDataset:
        return build.dataset_from_config(data)

    def open_cache(self, root: Path, samples: Sequence[Sample]) -> ImageCache:
        """Every rank opens the same cache; rank 0 builds it first so that the others only read it."""
        if self.main:
            cache = open_cache(self.cfg, root, samples, self.progress and self.main)
        dist.barrier()
        if not self.main:
            cache = open_cache(self.cfg, root, samples, False)
        return cache

    def validator(self, samples: Sequence[Sample]) -> Callable[[nn.Module], dict[str, float]] | None:
        """``validate(model) -> {rank1, mAP, mINP}`` on held-out samples (IR -> RGB), or None without any.

        Every rank gets the same answer (a function or None); only rank 0 builds the cache, since only it validates.
        """
        if not samples:
            return None
        cache = open_cache(self.cfg, self.dataset.root, samples, self.progress) if self.main else None
        plan = validation_plan(samples)
        settings, device, mods = TestSettings.of(self.cfg), self.device, [s.modality for s in samples]

        def validate(model: nn.Module) -> dict[str, float]:
            assert cache is not None  # called on rank 0 only
            summary, _ = evaluate_samples(model, cache, mods, plan, settings, device)
            return {k: summary[k] for k in ("rank1", "mAP", "mINP")}

        return validate

    def extract(self, model: nn.Module, cache: ImageCache, modalities: np.ndarray, *, flip: bool,
                feature: str) -> np.ndarray:
        return extract_features(model, cache, modalities, batch_size=self.cfg.eval.batch_size, device=self.device,
                                flip=flip, feature=feature)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# training


def train(cfg: Config, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` (every RegDB trial in ``data.trials`` in turn, each into ``trial_<t>/``) and test; returns the
    results summary."""
    if cfg.data.dataset == "regdb" and cfg.data.trials:
        per_trial = []
        for t in cfg.data.trials:
            sub = copy.deepcopy(cfg)
            sub.data.trial, sub.data.trials = t, []
            sub.output_dir = str(Path(cfg.output_dir) / f"trial_{t}")
            result = train(sub, resume=resume, progress=progress)
            per_trial.append(result.get("final", result))  # multi-phase plans: the final test of each trial
        return _regdb_mean(cfg, per_trial)
    return _train_one(cfg, resume=resume, progress=progress)


def _phase_dir(out: Path, phase: Phase) -> Path:
    return out / phase.name if phase.name else out


def _train_one(cfg: Config, *, resume: bool, progress: bool) -> dict[str, Any]:
    spec = get_method(cfg.method.name)
    out = Path(cfg.output_dir)
    ds = None
    seed_everything(cfg.seed, threads=cfg.train.threads)
    device = build.device_from_config(cfg.train.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join the process group
        device = dist.init_distributed()
    main = dist.is_main()
    show = progress and main

    ds = build.dataset_from_config(cfg.data)
    train_samples, val_samples = split_train_val(ds, cfg.train.validation, cfg.train.holdout_ids, cfg.seed)
    ctx = Context(cfg, device, ds, train_samples, val_samples, progress=show)
    plan: PhasePlan = spec.plan(cfg.method, ctx)
    started = [_phase_dir(out, p) for p in plan.phases if (_phase_dir(out, p) / "last.pt").is_file()]
    if started and not resume:
        raise ConfigError(f"{started[0]}/last.pt exists: pass --resume to continue that run, or choose another "
                          "output_dir (--set output_dir=...)")
    single = len(plan.phases) == 1 and not plan.phases[0].name and not plan.test_untrained

    results: dict[str, Any] = {"method": spec.name, "dataset": cfg.data.dataset, "phases": []}
    results_path = out / "results.json"
    if not single and resume and results_path.is_file():
        kept = {"untrained"} | {p.test_after for p in plan.phases if p.test_after}
        results.update({k: v for k, v in json.loads(results_path.read_text()).items() if k in kept})
    if not single and plan.test_untrained and main and "untrained" not in results:
        # the untrained model on the target test set (the baseline each phase must beat)
        if plan.untrained_model is not None:
            untrained = plan.untrained_model().to(device)
        else:
            torch.manual_seed(cfg.seed)
            untrained = ctx.build_model(0).to(device)
        results["untrained"] = evaluate_on_test_set(untrained, cfg, ds, device, show)[0]
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))

    fit: dict[str, Any] = {}
    by_name = {p.name: p for p in plan.phases}
    for phase in plan.phases:
        phase_dir = _phase_dir(out, phase)
        if resume and phase.total_steps is not None and _finished(phase_dir / "last.pt", phase.total_steps):
            if show:
                print(f"phase {phase.name}: finished, skipped")
        else:
            fit = _run_phase(cfg, spec.name, phase, by_name, phase_dir, ctx, resume=resume)
            results["phases"].append({"name": phase.name, "fit": fit})
        if main and phase.test_after and phase.test_after not in results:
            model, _, _ = load_trained_model(phase_dir / "last.pt", device=str(device))
            results[phase.test_after] = evaluate_on_test_set(model, cfg, ds, device, show)[0]
            results_path.write_text(json.dumps(results, indent=2))
    if not main:
        return {"fit": fit}

    final_dir = _phase_dir(out, plan.phases[-1])
    chosen = final_dir / ("best.pt" if (final_dir / "best.pt").is_file() else "last.pt")
    final = test_checkpoint(chosen, out_dir=out, progress=show, dataset=ds, device=str(device))
    if single:
        results = final
        results["fit"] = fit
        results["selected_checkpoint"] = chosen.name
    else:
        results["final"] = final
        results["selected_checkpoint"] = str(chosen.relative_to(out))
        results["selection"] = "validation mAP (best.pt)" if chosen.name == "best.pt" else \
            "final weights (no labelled validation data on this target)"
    results_path.write_text(json.dumps(results, indent=2))
    if plan.on_finish is not None:
        plan.on_finish(out)
    return results


def _finished(path: Path, total_steps: int) -> bool:
    """Whether ``path`` (a phase's last.pt) records the phase's full optimiser-step count."""
    return path.is_file() and int(load_checkpoint(path)["progress"]["global_step"]) >= total_steps


def _run_phase(cfg: Config, method_name: str, phase: Phase, phases: dict[str, Phase], phase_dir: Path, ctx: Context,
               *, resume: bool) -> dict[str, Any]:
    run = phase.setup(ctx)
    if phase.init and not (resume and (phase_dir / "last.pt").is_file()):
        source = phases[phase.init]
        state = load_checkpoint(_phase_dir(Path(cfg.output_dir), source) / "last.pt")["method"]
        if phase.init_from is not None:
            phase.init_from(run.method, state, source)
        else:
            own = run.method.state_dict()
            run.method.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    model = getattr(run.method, "model", run.method)
    extra = {"phase": phase.name} if phase.name else {}
    meta = make_meta(config_yaml=dump_yaml(cfg), dataset=cfg.data.dataset,
                     trial=cfg.data.trial if cfg.data.dataset == "regdb" else None, method=method_name,
                     num_classes=run.num_classes, model=dict(getattr(model, "build_kwargs", {})), **extra, **run.meta)
    t = cfg.train
    # every rank passes the same validate (or None): the trainer calls it on rank 0 and the others wait at a
    # barrier, so a rank without it would skip that barrier and deadlock the next collective
    trainer = Trainer(run.method, run.optimizer, run.schedule, run.sampler, run.fetch, epochs=run.epochs,
                      device=ctx.device, amp=build.amp_from_config(t.amp, ctx.device),  # type: ignore[arg-type]
                      channels_last=t.channels_last, grad_accum_steps=t.grad_accum, out_dir=phase_dir, seed=cfg.seed,
                      checkpoint_every_steps=t.checkpoint_every, validate=run.validate,
                      validate_every_epochs=t.eval_every, select_metric="mAP", log_every=t.log_every,
                      progress=ctx.progress, meta=meta, schedule_unit=run.schedule_unit, max_steps=run.max_steps,
                      on_epoch_start=run.on_epoch_start)
    if run.on_epoch_start is not None:
        run.on_epoch_start.bind(trainer.logger.log, lambda: trainer.global_step)
    if resume and not trainer.resume() and ctx.main and not phase.name:
        print(f"no checkpoint in {phase_dir}: starting a new run")
    return trainer.fit()


def _regdb_mean(cfg: Config, per_trial: list[dict[str, Any]]) -> dict[str, Any]:
    from vireid.evaluation.report import SCALARS

    keys = [k for k in SCALARS if all(k in r for r in per_trial)]
    summary: dict[str, Any] = {"protocol": "regdb", "direction": cfg.eval.direction, "trials": len(per_trial),
                               "per_trial": per_trial}
    for k in keys:
        summary[k] = float(np.mean([r[k] for r in per_trial]))
        summary.setdefault("std", {})[k] = float(np.std([r[k] for r in per_trial]))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
