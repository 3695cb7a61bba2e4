"""What every training method provides: batches, named loss terms, optimiser parameter groups, and its phases.

A method (AGW, CAJ, MSCLNet, AML, ...) owns its model, its batch augmentation and its losses (:class:`Method`); the
trainer (:mod:`vireid.engine`) owns the loop. How a method trains is a :class:`PhasePlan`: one :class:`Phase` for
supervised methods, several for AML. Each phase's ``setup(ctx)`` returns a :class:`PhaseRun` (method, sampler,
fetch, optimiser, schedule, hook) that :mod:`vireid.training` runs with the generic trainer; the
:class:`RunContext` gives a phase the run's shared settings and services (datasets, caches, models, validation,
feature extraction) instead of the global config. See docs/adding_a_method.md and docs/training_interfaces.md.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import torch
from torch import nn

from vireid.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from vireid.data.cache import ImageCache
    from vireid.data.records import CrossModalDataset, Sample
    from vireid.settings import AugmentConfig, DataConfig, EvalConfig, ModelConfig, SamplerConfig, TrainConfig


@dataclass
class Batch:
    """One training batch, already augmented and normalised, on the training device."""

    images: torch.Tensor      # float [B, 3, H, W]
    labels: torch.Tensor      # long [B]
    modalities: torch.Tensor  # long [B], 0 visible / 1 infrared
    camids: torch.Tensor      # long [B], -1 when unknown

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def of_parts(cls, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], modalities: Sequence[int],
                 cams: Sequence[torch.Tensor | None]) -> Batch:
        """The one way to assemble a batch: parts (views) in order, each with its labels, modality tag (0/1) and
        cameras (None = unknown, -1); e.g. AGW ``[rgb, ir]``, CAJ ``[rgb, exchanged, ir]``."""
        device = images[0].device
        sizes = [int(x.shape[0]) for x in images]
        return cls(
            images=torch.cat(list(images)),
            labels=torch.cat([lab.to(device=device, dtype=torch.long) for lab in labels]),
            modalities=torch.cat([torch.full((n,), int(m), dtype=torch.long, device=device)
                                  for m, n in zip(modalities, sizes)]),
            camids=torch.cat([cams_or_unknown(c, n, device) for c, n in zip(cams, sizes)]),
        )


class _HeadSplitModel(Protocol):
    """A model whose head parameters are set apart (e.g. :class:`vireid.models.VIReIDModel`)."""

    def head_parameters(self) -> Iterator[nn.Parameter]: ...


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base class: subclasses set ``self.model`` and implement :meth:`make_batch` and :meth:`training_step`."""

    model: nn.Module
    backbone_lr_mult: float = 0.1
    """Backbone learning rate as a multiple of the head's (AGW family: 0.1)."""

    @abc.abstractmethod
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
        """Augment uint8 [B,3,H,W] RGB and IR batches into one :class:`Batch` (RGB first, as the reference)."""

    @abc.abstractmethod
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Forward + losses. Returns the weighted terms by name; key ``"loss"`` is their sum (what is
        back-propagated)."""

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups. Default (AGW family): head at ``lr``, backbone at ``backbone_lr_mult * lr``."""
        head = list(cast(_HeadSplitModel, self.model).head_parameters())
        head_ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        head = [p for p in head if p.requires_grad]
        return [
            {"params": rest, "lr": self.backbone_lr_mult * lr, "weight_decay": weight_decay, "name": "backbone"},
            {"params": head, "lr": lr, "weight_decay": weight_decay, "name": "head"},
        ]


def cams_or_unknown(cams: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Camera ids as a long tensor, or -1 for every sample when the caller has none."""
    if cams is None:
        return torch.full((n,), -1, dtype=torch.long, device=device)
    return cams.to(device=device, dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------------
# phases


class EpochHook(Protocol):
    """``hook(epoch)`` before every epoch (e.g. re-clustering); ``bind`` gives it the trainer's log and step."""

    def __call__(self, epoch: int) -> None: ...

    def bind(self, log: Callable[[dict[str, Any]], None], global_step: Callable[[], int]) -> None: ...


@dataclass
class PhaseRun:
    """Everything the generic trainer needs for one phase (returned by :attr:`Phase.setup`).

    ``schedule`` maps the 0-based epoch (``schedule_unit="epoch"``) or optimiser step (``"step"``) to a factor of
    each parameter group's initial lr. ``max_steps`` stops an iteration-based phase; ``epochs`` bounds it.
    """

    method: Method
    sampler: Any
    fetch: Callable[..., tuple]
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float] | None
    epochs: int
    num_classes: int
    schedule_unit: Literal["epoch", "step"] = "epoch"
    max_steps: int | None = None
    on_epoch_start: EpochHook | None = None
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra provenance for the checkpoints (e.g. ``{"stage": 2}``)."""


@dataclass
class Phase:
    """One training phase. ``name`` is its sub-folder of ``output_dir`` ("" = ``output_dir`` itself, the one phase of
    a supervised plan). ``init`` names an earlier phase whose final method state it starts from, through
    ``init_from(method, state, source_phase)`` (None: every matching key). ``test_after`` names a results key under
    which the model after this phase is tested on the target protocol (e.g. AML's ``"stage1"``)."""

    name: str
    setup: Callable[[RunContext], PhaseRun]
    init: str = ""
    init_from: Callable[[Method, dict[str, torch.Tensor], Phase], None] | None = None
    total_steps: int | None = None
    """Optimiser steps that finish the phase (iteration-based phases): a resumed run skips a finished phase."""
    test_after: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhasePlan:
    """A method's phases in order. ``test_untrained`` also tests the untrained model first (multi-phase recipes show
    what each stage adds), built by ``untrained_model()`` (None: the ``model:`` section's network drawn with
    ``torch.manual_seed(seed)``; give the method's own builder when its first phase initialises more than that);
    ``on_finish(output_dir)`` runs on rank 0 after the final test (e.g. plots)."""

    phases: list[Phase]
    test_untrained: bool = False
    untrained_model: Callable[[], nn.Module] | None = None
    on_finish: Callable[[Path], Any] | None = None


class RunContext(Protocol):
    """What a phase may use (given by :mod:`vireid.training`): the shared settings sections and services."""

    data: DataConfig
    sampler: SamplerConfig
    augment: AugmentConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    seed: int
    device: torch.device
    rank: int
    world_size: int
    main: bool
    progress: bool
    output_dir: Path
    dataset: CrossModalDataset
    train_samples: list[Sample]
    """The training pool of ``train.validation`` (labels relabelled 0..C-1; -1 on unlabeled datasets)."""
    val_samples: list[Sample]
    """Held-out validation identities (label -1), or [] (``train.validation: none``, unlabeled data)."""

    def build_model(self, num_classes: int) -> nn.Module: ...

    def load_dataset(self, data: DataConfig) -> CrossModalDataset: ...

    def open_cache(self, root: Path, samples: Sequence[Sample]) -> ImageCache: ...

    def validator(self, samples: Sequence[Sample]) -> Callable[[nn.Module], dict[str, float]] | None: ...

    def extract(self, model: nn.Module, cache: ImageCache, modalities: np.ndarray, *, flip: bool,
                feature: str) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------------------------
# loss terms: one way to resolve weights and to combine terms


def resolve_weights(method: str, defaults: Mapping[str, float],
                    overrides: Mapping[str, float] | None) -> dict[str, float]:
    """Published default loss weights updated by the config's ``method.weights``; unknown names and negative or
    non-finite values are a ConfigError that lists the method's terms."""
    weights = dict(defaults)
    for name, value in (overrides or {}).items():
        if name not in weights:
            raise ConfigError(f"method.weights.{name}: {method} has no loss term {name!r}; its terms are "
                              f"{', '.join(weights)} (set a weight to 0 to switch a term off)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"method.weights.{name}={value!r} is invalid; expected a finite number >= 0")
        weights[name] = float(value)
    return weights


def weighted_terms(raw: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """What ``training_step`` returns: each computed term times its weight (1 when ``weights`` has none), and
    ``"loss"``, their sum in the order computed (what is back-propagated)."""
    terms = {name: float(weights.get(name, 1.0)) * value for name, value in raw.items()}
    device = next(iter(raw.values())).device if raw else torch.device("cpu")
    terms["loss"] = sum(terms.values(), torch.zeros((), device=device))
    return terms
