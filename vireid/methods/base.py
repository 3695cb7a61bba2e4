"""What every training method provides to the trainer: batches, named loss terms, optimiser parameter groups.

A method (AGW, CAJ, MSCLNet, ...) owns its model, its batch augmentation and its losses; the trainer
(:mod:`vireid.engine`) owns the loop. See docs/training_interfaces.md.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Batch:
    """One training batch, already augmented and normalised, on the training device."""

    images: torch.Tensor      # float [B, 3, H, W]
    labels: torch.Tensor      # long [B]
    modalities: torch.Tensor  # long [B], 0 visible / 1 infrared
    camids: torch.Tensor      # long [B], -1 when unknown

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> "Batch":
        images = self.images.to(device, non_blocking=True)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        return Batch(images, self.labels.to(device), self.modalities.to(device), self.camids.to(device))


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
        """Forward + losses. Returns the weighted terms by name; key ``"loss"`` is their sum (what is back-propagated)."""

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups. Default (AGW family): head at ``lr``, backbone at ``backbone_lr_mult * lr``."""
        head = list(self.model.head_parameters())
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
