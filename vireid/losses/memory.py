"""Cluster memory of AML stage 2 (SPEC 6; the cluster-contrast memory): one L2-normalised centroid per pseudo-label.

The loss is a cross-entropy over the similarities to every centroid, ``CE((f̂ · Mᵀ) / τ, y)`` with ``f̂`` the
L2-normalised features. The memory is not a parameter: it is refreshed from the batch *during the backward pass*,
sample by sample in batch order,

    ``M[y_i] ← m · M[y_i] + (1 − m) · f̂_i``,  then ``M[y_i] ← M[y_i] / ‖M[y_i]‖``,

(``m`` = ``momentum`` = 0.2 in AML, so the new feature weighs 0.8), and the gradient that reaches ``f̂`` is
``grad_logits · M`` with the memory *before* this update (the memory is a constant of the forward expression).
Doing the update in a custom ``autograd.Function`` puts it after every term that uses the logits (CE and AML's
mutual KL) has contributed its gradient, exactly once per optimisation step.

Under DDP (``torch.distributed`` initialised, world size > 1) the normalised features and labels of all ranks are
gathered in the forward pass (ordered by rank, then batch position) and every rank applies the same sequence of
updates, so the memories stay identical without a broadcast.

Samples that share a label in one batch are applied one after another (the renormalisation makes the order
matter); the implementation processes "the r-th occurrence of every label" together, which equals the sequential
loop because distinct labels touch distinct rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._util import as_float, full_precision

__all__ = ["ClusterMemory", "memory_update"]


def memory_update(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float) -> None:
    """In place: for each i in order, ``M[y_i] ← normalize(m·M[y_i] + (1−m)·f_i)`` (``features`` already normalised)."""
    if labels.numel() == 0:
        return
    f = features.to(memory.dtype)
    y = labels.to(device=memory.device, dtype=torch.long)
    # occurrence index of every sample among the samples with its label, in batch order
    order = torch.argsort(y, stable=True)
    ys = y[order]
    starts = torch.ones_like(ys, dtype=torch.bool)
    starts[1:] = ys[1:] != ys[:-1]
    pos = torch.arange(ys.numel(), device=ys.device)
    group_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    occurrence = torch.empty_like(y)
    occurrence[order] = pos - group_start
    for r in range(int(occurrence.max()) + 1):
        idx = torch.nonzero(occurrence == r).flatten()
        rows = y[idx]  # distinct labels within one round
        memory[rows] = F.normalize(momentum * memory[rows] + (1.0 - momentum) * f[idx], dim=1)


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [n_r, ...] of every rank in rank order (batch sizes may differ between ranks)."""
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    big = max(counts)
    pad = t.new_zeros((big - t.shape[0], *t.shape[1:]))
    parts = [t.new_empty((big, *t.shape[1:])) for _ in range(world)]
    dist.all_gather(parts, torch.cat([t, pad]).contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _MemoryLogits(torch.autograd.Function):
    """``logits = f̂ · Mᵀ``; backward: ``grad_f̂ = grad_logits · M`` (M before the update), then the memory update."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor,  # type: ignore[override]
                momentum: float) -> torch.Tensor:
        ctx.memory = memory
        ctx.momentum = momentum
        feats, labs = inputs.detach(), labels
        if _distributed():
            feats, labs = _gather(feats), _gather(labs)
        ctx.save_for_backward(feats, labs)
        return inputs.mm(memory.t().to(inputs.dtype))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        feats, labs = ctx.saved_tensors
        grad = grad_output.mm(ctx.memory.to(grad_output.dtype)) if ctx.needs_input_grad[0] else None
        with torch.no_grad():
            memory_update(ctx.memory, feats, labs, ctx.momentum)
        return grad, None, None, None


class ClusterMemory(nn.Module):
    """Shared cluster memory and its contrastive CE loss (AML stage 2: τ = 0.05, momentum 0.2).

    Call :meth:`reset` with the new centroids every time the pseudo-labels change (the cluster count may change
    with them). The memory is a buffer: it is saved in ``state_dict`` and loading a checkpoint restores its size
    too. The update happens in the backward pass, so a forward without backward (evaluation, ``no_grad``, or
    features that do not require grad) leaves the memory untouched.

    Example::

        >>> mem = ClusterMemory(4, 3)
        >>> mem.reset(torch.eye(3, 4))
        >>> f = torch.randn(5, 4, requires_grad=True)
        >>> loss, logits = mem(f, torch.tensor([0, 1, 2, 0, 1]), return_logits=True)
        >>> loss.backward()  # gradient into f, then the memory moves towards the batch
    """

    memory: torch.Tensor

    def __init__(self, dim: int, num_clusters: int, temperature: float = 0.05, momentum: float = 0.2) -> None:
        super().__init__()
        if dim < 1 or num_clusters < 0:
            raise ValueError(f"ClusterMemory: dim must be >= 1 and num_clusters >= 0, got {dim}, {num_clusters}")
        if not temperature > 0:
            raise ValueError(f"ClusterMemory: temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ClusterMemory: momentum must be in [0, 1], got {momentum}")
        self.dim = int(dim)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.register_buffer("memory", torch.zeros(num_clusters, dim))

    @property
    def num_clusters(self) -> int:
        return int(self.memory.shape[0])

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_clusters={self.num_clusters}, temperature={self.temperature}, "
                f"momentum={self.momentum}")

    @torch.no_grad()
    def reset(self, centroids: torch.Tensor | np.ndarray) -> None:
        """Replace the memory by an L2-normalised float32 copy of ``centroids`` [C, dim] (C may differ from before;
        a NumPy array, e.g. from :func:`vireid.clustering.cluster_centroids`, is accepted too)."""
        c = torch.as_tensor(centroids).detach()
        if c.dim() != 2 or c.shape[1] != self.dim:
            raise ValueError(f"ClusterMemory.reset: centroids must be [C, {self.dim}], got {tuple(c.shape)}")
        c = F.normalize(c.to(device=self.memory.device, dtype=torch.float32), dim=1)
        self.memory = c.clone()  # assigning a tensor to a registered buffer name keeps it a buffer

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "memory"
        if key in state_dict and state_dict[key].shape != self.memory.shape:
            if state_dict[key].dim() == 2 and state_dict[key].shape[1] == self.dim:
                # the checkpoint was taken with another epoch's cluster count: adopt its size
                self.memory = torch.empty_like(state_dict[key], device=self.memory.device, dtype=self.memory.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, return_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean CE of ``(normalize(features) · Mᵀ) / τ`` against ``labels`` (in 0..C-1; drop outliers first).

        With ``return_logits=True`` also returns those logits [B, C] (AML's mutual KL between the two models'
        memories uses them); their gradient flows through the same backward, so the memory is updated once.
        Computed in float32 whatever the autocast state.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"ClusterMemory: features must be [B, {self.dim}], got {tuple(features.shape)}")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"ClusterMemory: labels must be [B] with B = {features.shape[0]}, "
                             f"got {tuple(labels.shape)}")
        labels = labels.to(device=features.device, dtype=torch.long)
        c = self.num_clusters
        if labels.device.type == "cpu":
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
                raise ValueError(f"ClusterMemory: labels must lie in 0..{c - 1} (outliers -1 must be dropped before "
                                 f"the loss), got {int(labels.min())}..{int(labels.max())}")
        else:  # no host sync on accelerators
            torch._assert_async(((labels >= 0) & (labels < c)).all())
        with full_precision(features.device):
            f = F.normalize(as_float(features), dim=1)
            logits = _MemoryLogits.apply(f, labels, self.memory, self.momentum) / self.temperature
            loss = F.cross_entropy(logits, labels)
        return (loss, logits) if return_logits else loss
