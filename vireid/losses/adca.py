"""ADCA (ACM MM 2022): dual modality-specific cluster memories and Cross-modality Memory Aggregation (CMA).

What the official code (yangbincv/ADCA @ 8d0a8cb, ``adca_sysu_train.py``; recipe card docs/recipes/adca.md) does,
written from its behaviour:

**Dual memories.** RGB and IR are clustered separately (Jaccard + DBSCAN, :mod:`vireid.clustering`); each modality
keeps its own cluster memory (the cluster-contrast memory, :class:`vireid.losses.ClusterMemory`, temperature 0.05,
momentum 0.1 -- the new feature weighs 0.9) initialised from its L2-normalised cluster means. The loss is
``CE_mem_rgb(rgb features, rgb pseudo-labels) + CE_mem_ir(ir features, ir pseudo-labels)``, weight 1 each; the RGB
features are those of both RGB views (original and channel-exchanged), labels repeated.

**CMA** (stage 2 only, once per epoch right after the memories are rebuilt), from the clustering features
(flip-averaged, un-renormalised) of all training images:

1. ``S = F_rgb · F_irᵀ``; every cross-modal *sample* pair with ``S_ij >= threshold`` (0.5) casts one vote for its
   (RGB cluster, IR cluster) pair; pairs involving an outlier (-1) are ignored.
2. Cluster pairs are visited by descending vote count; the reference sorts a ``Counter`` whose keys were inserted in
   descending-similarity order, so among equal counts the pair holding the most similar sample pair comes first
   (here: ties on votes broken by the larger maximal similarity, then by the smaller RGB id, then IR id).
3. Greedy one-to-one: a pair is accepted unless its RGB or its IR cluster was already accepted.
4. For each accepted pair ``(r, c)``: ``M_rgb[r] <- w · M_rgb[r] + (1 - w) · M_ir[c]`` with ``w`` = 0.1, **not**
   renormalised (the next momentum update of that row renormalises it). The IR memory is left unchanged: the
   reference also writes ``M_ir[c] <- w · M_ir[c] + (1 - w) · M_ir[c]`` (its ``update_memory`` is a view of the
   IR row), which is the identity.

Nothing here touches the label spaces: RGB and IR samples keep their own pseudo-labels and memories; CMA only moves
RGB centroids onto their matched IR centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vireid.losses.memory import ClusterMemory

__all__ = ["CMAMatch", "DualClusterMemory", "aggregate_memories", "cma_match", "cma_votes"]


@dataclass(frozen=True)
class CMAMatch:
    """Accepted (RGB cluster, IR cluster) pairs in the order CMA accepted them.

    ``rgb`` / ``ir``: int64 [M] cluster ids (memory rows); ``votes``: int64 [M] sample pairs at or above the
    threshold that linked them; ``similarity``: float32 [M] the largest such sample similarity.
    """

    rgb: np.ndarray
    ir: np.ndarray
    votes: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


def _features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"CMA: {name} must be a non-empty [N, D] array, got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"CMA: {name} contain NaN or inf; fix the feature extraction first")
    return t


def _labels(y: np.ndarray | torch.Tensor, n: int, name: str) -> torch.Tensor:
    t = y.detach().cpu().long() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y)).long()
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"CMA: {name} must be [N] with N = {n} (one per feature row), got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < -1:
        raise ValueError(f"CMA: {name} must be >= 0, or -1 for outliers; got {int(t.min())}")
    return t


def cma_votes(
    features_rgb: np.ndarray | torch.Tensor,
    features_ir: np.ndarray | torch.Tensor,
    labels_rgb: np.ndarray | torch.Tensor,
    labels_ir: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    *,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """CMA's vote matrix: ``votes[r, c]`` = #{(i, j): label_rgb[i] = r, label_ir[j] = c, F_rgb[i]·F_ir[j] >= threshold}
    (int64 [C_rgb, C_ir], C = max label + 1) and ``best[r, c]`` = the largest such similarity (float32, -inf where
    there is no vote). Outliers (-1) vote for nothing.

    The N_rgb x N_ir similarity matrix is computed ``block_size`` RGB rows at a time on the features' device
    (float32), so memory stays O(block_size x N_ir) however large the training set.
    """
    fr, fi = _features(features_rgb, "features_rgb"), _features(features_ir, "features_ir")
    if fr.shape[1] != fi.shape[1]:
        raise ValueError(f"CMA: RGB features are {fr.shape[1]}-d but IR features {fi.shape[1]}-d")
    fi = fi.to(fr.device)
    lr, li = _labels(labels_rgb, fr.shape[0], "labels_rgb"), _labels(labels_ir, fi.shape[0], "labels_ir")
    c_rgb, c_ir = int(lr.max()) + 1 if lr.numel() else 0, int(li.max()) + 1 if li.numel() else 0
    votes = torch.zeros((c_rgb, c_ir), dtype=torch.int64)
    best = torch.full((c_rgb, c_ir), -float("inf"), dtype=torch.float32)
    if c_rgb == 0 or c_ir == 0:
        return votes.numpy(), best.numpy()
    dev = fr.device
    # IR outliers go to an extra column c_ir that is dropped at the end
    cols = torch.where(li >= 0, li, c_ir).to(dev)
    for r0 in range(0, fr.shape[0], block_size):
        rows = lr[r0:r0 + block_size].to(dev)
        keep = rows >= 0
        if not bool(keep.any()):
            continue
        s = fr[r0:r0 + block_size][keep] @ fi.T  # [b, N_ir]
        rows = rows[keep]
        hit = s >= threshold
        cols_b = cols.expand(s.shape[0], -1)
        per_row = torch.zeros((s.shape[0], c_ir + 1), dtype=torch.float32, device=dev)
        per_row.scatter_add_(1, cols_b, hit.to(torch.float32))  # exact: counts <= N_ir < 2^24
        row_best = torch.full((s.shape[0], c_ir + 1), -float("inf"), dtype=torch.float32, device=dev)
        row_best.scatter_reduce_(1, cols_b, torch.where(hit, s, -float("inf")), reduce="amax")
        votes.index_add_(0, rows.cpu(), per_row[:, :c_ir].round().to(torch.int64).cpu())
        best.scatter_reduce_(0, rows.cpu()[:, None].expand(-1, c_ir), row_best[:, :c_ir].cpu(), reduce="amax")
    return votes.numpy(), best.numpy()


def cma_match(
    features_rgb: np.ndarray | torch.Tensor,
    features_ir: np.ndarray | torch.Tensor,
    labels_rgb: np.ndarray | torch.Tensor,
    labels_ir: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    *,
    block_size: int = 4096,
) -> CMAMatch:
    """CMA's one-to-one cluster pairs: greedy over (RGB cluster, IR cluster) pairs by descending votes (see the
    module docstring and :func:`cma_votes`); a pair whose RGB or IR cluster is already taken is skipped.

    Example::

        >>> m = cma_match(f_rgb, f_ir, y_rgb, y_ir)      # clustering features and DBSCAN labels of an epoch
        >>> aggregate_memories(mem_rgb.memory, mem_ir.memory, m, weight=0.1)
    """
    votes, best = cma_votes(features_rgb, features_ir, labels_rgb, labels_ir, threshold, block_size=block_size)
    r, c = np.nonzero(votes > 0)
    v, s = votes[r, c], best[r, c]
    order = np.lexsort((c, r, -s.astype(np.float64), -v))
    used_r = np.zeros(votes.shape[0], dtype=bool)
    used_c = np.zeros(votes.shape[1], dtype=bool)
    picked: list[int] = []
    for k in order:
        if used_r[r[k]] or used_c[c[k]]:
            continue
        used_r[r[k]] = used_c[c[k]] = True
        picked.append(int(k))
    idx = np.asarray(picked, dtype=np.int64)
    return CMAMatch(rgb=r[idx].astype(np.int64), ir=c[idx].astype(np.int64), votes=v[idx].astype(np.int64),
                    similarity=s[idx].astype(np.float32))


@torch.no_grad()
def aggregate_memories(rgb_memory: torch.Tensor, ir_memory: torch.Tensor, match: CMAMatch, weight: float = 0.1) -> None:
    """In place: ``rgb_memory[r] <- weight · rgb_memory[r] + (1 - weight) · ir_memory[c]`` for every matched
    ``(r, c)``; not renormalised; ``ir_memory`` unchanged (the reference's IR update is the identity)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"CMA: weight must be in [0, 1], got {weight}")
    if len(match) == 0:
        return
    r = torch.as_tensor(match.rgb, dtype=torch.long, device=rgb_memory.device)
    c = torch.as_tensor(match.ir, dtype=torch.long, device=ir_memory.device)
    if int(r.max()) >= rgb_memory.shape[0] or int(c.max()) >= ir_memory.shape[0]:
        raise ValueError(f"CMA: match refers to cluster {int(r.max())} (RGB) / {int(c.max())} (IR) but the memories "
                         f"hold {rgb_memory.shape[0]} / {ir_memory.shape[0]} rows; reset them with this epoch's "
                         "centroids first")
    rows = ir_memory[c].to(device=rgb_memory.device, dtype=rgb_memory.dtype)
    rgb_memory[r] = weight * rgb_memory[r] + (1.0 - weight) * rows


class DualClusterMemory(nn.Module):
    """ADCA's two modality-specific cluster memories (``rgb`` and ``ir``, each a :class:`ClusterMemory`).

    ``reset(rgb_centroids, ir_centroids)`` every epoch (rows = cluster ids 0..C-1 of that modality), optionally
    ``aggregate(match)`` (CMA, stage 2), then ``forward`` gives the two contrastive terms; each memory is updated
    in the backward pass (momentum update, renormalised) by its own modality's features only.

    Example::

        >>> mem = DualClusterMemory(2048)                        # tau 0.05, momentum 0.1 (ADCA's run scripts)
        >>> mem.reset(centroids_rgb, centroids_ir)
        >>> terms = mem(f_rgb, y_rgb, f_ir, y_ir)                # {"mem_rgb": ..., "mem_ir": ...}
        >>> (terms["mem_rgb"] + terms["mem_ir"]).backward()
    """

    def __init__(self, dim: int, temperature: float = 0.05, momentum: float = 0.1) -> None:
        super().__init__()
        self.rgb = ClusterMemory(dim, 0, temperature, momentum)
        self.ir = ClusterMemory(dim, 0, temperature, momentum)

    def reset(self, rgb_centroids: torch.Tensor | np.ndarray, ir_centroids: torch.Tensor | np.ndarray) -> None:
        """Replace both memories by the L2-normalised centroids (their row counts may change every epoch)."""
        self.rgb.reset(rgb_centroids)
        self.ir.reset(ir_centroids)

    def aggregate(self, match: CMAMatch, weight: float = 0.1) -> None:
        """CMA step 4 on these memories (see :func:`aggregate_memories`)."""
        aggregate_memories(self.rgb.memory, self.ir.memory, match, weight)

    def forward(self, features_rgb: torch.Tensor, labels_rgb: torch.Tensor, features_ir: torch.Tensor,
                labels_ir: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"mem_rgb": CE of the RGB features against the RGB memory, "mem_ir": same for IR}`` (unweighted)."""
        return {"mem_rgb": self.rgb(features_rgb, labels_rgb), "mem_ir": self.ir(features_ir, labels_ir)}
