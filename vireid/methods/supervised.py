"""The one-phase plan of supervised cross-modality methods (AGW, CAJ, MSCLNet, ...).

A supervised method gives :func:`supervised_plan` one function, ``build(settings, ctx, num_classes) -> Method``;
the plan does the rest the same way for every such method: the labelled training pool of ``train.validation``,
its image cache, the P x K cross-modal sampler of the ``sampler:`` section (cut to ``train.steps_per_epoch``),
the optimiser and per-epoch schedule of the ``train:`` section, and validation on the held-out identities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vireid.data.pools import LimitedSampler, TrainArrays
from vireid.data.sampling import CrossModalIdentitySampler
from vireid.engine import schedules
from vireid.errors import ConfigError
from vireid.methods.base import Method, Phase, PhasePlan, PhaseRun, RunContext
from vireid.settings import TrainConfig

__all__ = ["make_optimizer", "make_schedule", "supervised_plan"]

BuildMethod = Callable[[Any, RunContext, int], Method]
"""``build(settings, ctx, num_classes) -> Method``: the method (with its model) of a supervised plan."""


def make_optimizer(train: TrainConfig, method: Method) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or Adam over ``method.param_groups(train.lr, train.weight_decay)``."""
    groups = method.param_groups(train.lr, train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               nesterov=True)
    return torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay)


def make_schedule(train: TrainConfig) -> Callable[[int], float]:
    """Per-epoch learning-rate factor (of ``train.lr``)."""
    if train.schedule == "agw":
        return schedules.warmup_multistep(train.warmup_epochs, train.milestones, train.gamma)
    if train.schedule == "step":
        return schedules.warmup_multistep(0, train.milestones, train.gamma)
    return schedules.msclnet_factor


def _check_supervised(ctx: RunContext) -> None:
    ds = ctx.dataset
    mods = {s.modality for s in ds.train}
    if not ds.info.get("labeled", True) or mods != {0, 1}:
        raise ConfigError(f"data.dataset={ds.name}: supervised cross-modality training needs labelled RGB and IR "
                          "training images (sysu_mm01, regdb, llcm); SYSU-MM02 training data is unlabeled (use the "
                          "AML recipe)")


def supervised_plan(build: BuildMethod) -> Callable[[Any, RunContext], PhasePlan]:
    """The plan function of a supervised method whose method object ``build`` makes (see the module docstring)."""

    def plan(settings: Any, ctx: RunContext) -> PhasePlan:
        def setup(ctx: RunContext) -> PhaseRun:
            _check_supervised(ctx)
            samples = ctx.train_samples
            num_classes = len({s.label for s in samples})
            # the method (and its model) first: a bad option or missing weights fails before minutes of caching
            method = build(settings, ctx, num_classes)
            optimizer = make_optimizer(ctx.train, method)
            arrays = TrainArrays.build(ctx.open_cache(ctx.dataset.root, samples), samples)
            sampler: Any = CrossModalIdentitySampler(arrays.labels[arrays.rgb_rows], arrays.labels[arrays.ir_rows],
                                                     ctx.sampler.num_ids, ctx.sampler.num_instances, seed=ctx.seed,
                                                     rank=ctx.rank, world_size=ctx.world_size)
            if ctx.train.steps_per_epoch is not None:
                sampler = LimitedSampler(sampler, ctx.train.steps_per_epoch)
            return PhaseRun(method=method, sampler=sampler, fetch=arrays.fetch, optimizer=optimizer,
                            schedule=make_schedule(ctx.train), epochs=ctx.train.epochs, num_classes=num_classes,
                            validate=ctx.validator(ctx.val_samples))

        return PhasePlan([Phase("", setup)])

    return plan
