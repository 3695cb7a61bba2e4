"""Learning-rate schedules of the published recipes, as plain functions ``t -> factor`` (SPEC 3, 5, 6).

A schedule maps an epoch index (AGW, CAJ, MSCLNet) or an optimiser-step index (AML) — both 0-based — to a
multiplicative *factor* on each parameter group's initial learning rate. The trainer sets
``group["lr"] = group["initial_lr"] * factor(t)`` before every epoch or every step. Being stateless, a schedule
needs nothing in a checkpoint: the epoch / step counter already says where we are.

Every schedule is a small frozen dataclass with ``__call__`` so that it has a readable ``repr`` for logs and
compares by value in tests.

Example::

    factor = warmup_multistep(warmup_epochs=10, milestones=(20, 50), gamma=0.1)   # = AGW
    [factor(e) for e in (0, 9, 10, 19, 20, 49, 50)]  # [0.1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LRLambda = Callable[[int], float]
"""A schedule: 0-based epoch or step index -> factor on the initial learning rate."""


@dataclass(frozen=True)
class WarmupMultiStep:
    """Linear warm-up ``(t+1)/warmup`` over ``t < warmup``, then ``gamma ** (#milestones <= t)``.

    This is the AGW family schedule: with ``warmup=10, milestones=(20, 50), gamma=0.1`` the factor is
    (e+1)/10 for epochs 0-9, 1 for 10-19, 0.1 for 20-49 and 0.01 from 50 on. Warm-up and milestones multiply, so a
    milestone inside the warm-up also scales it (not the case in any published recipe).
    """

    warmup: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be ascending, got {self.milestones}")

    def __call__(self, t: int) -> float:
        factor = (t + 1) / self.warmup if t < self.warmup else 1.0
        return factor * self.gamma ** bisect.bisect_right(self.milestones, t)


def warmup_multistep(warmup_epochs: int, milestones: Sequence[int], gamma: float) -> WarmupMultiStep:
    """The generic warm-up + step-decay schedule, built from the ``train:`` section of a recipe config."""
    return WarmupMultiStep(int(warmup_epochs), tuple(int(m) for m in milestones), float(gamma))


AGW = WarmupMultiStep(warmup=10, milestones=(20, 50), gamma=0.1)
"""AGW (SPEC 3), per epoch: warm-up (e+1)/10 over 0-9, 1 until 19, 0.1 until 49, 0.01 after. Also CAJ."""


def agw_factor(epoch: int) -> float:
    """AGW's per-epoch factor on the base learning rate (see :data:`AGW`)."""
    return AGW(epoch)


@dataclass(frozen=True)
class PiecewiseConstant:
    """``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]`` (``len(values) == len(boundaries) + 1``)."""

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"need one more value than boundaries, got {len(self.values)} values for "
                             f"{len(self.boundaries)} boundaries")
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"boundaries must be ascending, got {self.boundaries}")

    def __call__(self, t: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, t)]


MSCLNET_BASE_LR = 0.1
MSCLNET_LR = PiecewiseConstant(boundaries=(20, 50, 100), values=(0.1, 0.05, 0.01, 0.001))
"""MSCLNet (SPEC 5), absolute lr per 0-based epoch: 0.1, then 0.05 from the 21st epoch (index 20), 0.01 from the
51st (index 50), 0.001 from the 101st (index 100) to the 200th. The paper numbers epochs from 1 ("from epoch 101
to 200" = 100 epochs), so its "epoch 21" is our index 20 — which also lines up with AGW's milestones."""

MSCLNET = PiecewiseConstant(MSCLNET_LR.boundaries, tuple(v / MSCLNET_BASE_LR for v in MSCLNET_LR.values))
"""MSCLNet as factors on the base lr 0.1: 1, 0.5, 0.1, 0.01."""


def msclnet_lr(epoch: int) -> float:
    """MSCLNet's absolute learning rate at a 0-based epoch (see :data:`MSCLNET_LR`)."""
    return MSCLNET_LR(epoch)


def msclnet_factor(epoch: int) -> float:
    """MSCLNet's factor on the base lr 0.1 at a 0-based epoch."""
    return MSCLNET(epoch)


@dataclass(frozen=True)
class WarmupHoldCosine:
    """Per-iteration: linear warm-up from ``warmup_factor``, constant, then cosine down to an absolute ``final_lr``.

    - ``t < warmup``: ``warmup_factor + (1 - warmup_factor) * t / warmup`` (factor 0.01 at t = 0, 1 at t = warmup);
    - ``warmup <= t < hold_until``: 1;
    - ``hold_until <= t <= total``: ``f + (1 - f) * (1 + cos(pi * (t - hold_until) / (total - hold_until))) / 2``
      with ``f = final_lr / base_lr``, so the lr is exactly ``final_lr`` at ``t = total``;
    - ``t > total``: ``f``.

    The factor is relative to ``base_lr``, the initial lr of the optimiser's groups (SPEC 6 uses one lr for all).
    """

    base_lr: float
    warmup: int
    warmup_factor: float
    hold_until: int
    total: int
    final_lr: float

    def __post_init__(self) -> None:
        if not 0 <= self.warmup <= self.hold_until < self.total:
            raise ValueError(f"need 0 <= warmup ({self.warmup}) <= hold_until ({self.hold_until}) < total "
                             f"({self.total})")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return self.warmup_factor + (1.0 - self.warmup_factor) * t / self.warmup
        if t < self.hold_until:
            return 1.0
        floor = self.final_lr / self.base_lr
        progress = min(1.0, (t - self.hold_until) / (self.total - self.hold_until))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


AML_FINAL_LR = 7.7e-7


def aml_stage1(base_lr: float = 3.5e-4) -> WarmupHoldCosine:
    """AML stage 1 (SPEC 6), per iteration: warm-up 2,000 from 0.01, constant until 9,000, cosine to 7.7e-7 at
    15,000."""
    return WarmupHoldCosine(base_lr, warmup=2000, warmup_factor=0.01, hold_until=9000, total=15000,
                            final_lr=AML_FINAL_LR)


def aml_stage2(base_lr: float = 1e-4) -> WarmupHoldCosine:
    """AML stage 2 (SPEC 6), per iteration: warm-up 2,000 from 0.01, then cosine to 7.7e-7 at 12,000.

    SPEC 6 does not give stage 2's warm-up start factor; we use stage 1's (0.01, the code base's default).
    """
    return WarmupHoldCosine(base_lr, warmup=2000, warmup_factor=0.01, hold_until=2000, total=12000,
                            final_lr=AML_FINAL_LR)
