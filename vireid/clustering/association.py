"""Cross-modal pseudo-labels for AML stage 2 (SPEC 6): cluster RGB and IR separately, then put both in one label space.

The steps, each a plain function so it can be tested and reused:

1. :func:`cluster_centroids` -- mean feature of every cluster of a modality (outliers ``-1`` ignored);
2. :func:`ward_merge` -- the modality with more clusters merges its centroids by Ward linkage down to the other
   modality's count (exactly that many groups);
3. :func:`hungarian_match` -- one-to-one map between the (now equally many) RGB and IR clusters: L2-normalised
   centroids, squared Euclidean cost, ``scipy.optimize.linear_sum_assignment``;
4. :func:`associate` -- chains 1-3: IR clusters (after any merge) are numbered 0..C-1 and RGB clusters take the label
   of their matched IR cluster; outliers stay ``-1`` (the trainer drops them for that epoch).

:func:`cluster_cross_modal` is the whole re-clustering step the AML trainer calls every epoch: per modality either
the clustering Jaccard distance + DBSCAN (run A) or cosine k-means (run B), then :func:`associate`.

After a Ward merge, the centroid of a merged group is recomputed as the mean of all its samples (= the size-weighted
mean of the merged centroids) before matching; SPEC 6 does not say which, and this is the centroid the group's
samples actually have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.cluster.hierarchy import linkage
from scipy.optimize import linear_sum_assignment

from vireid.clustering.dbscan import dbscan_sparse
from vireid.clustering.jaccard import jaccard_distance_sparse
from vireid.clustering.kmeans import (
    ClusteringError,
    cosine_kmeans,
    normalized_features,
    reference_kmeans,
)

__all__ = [
    "Association",
    "associate",
    "cluster_centroids",
    "cluster_cross_modal",
    "hungarian_match",
    "ward_merge",
]

log = logging.getLogger(__name__)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_pair(features: np.ndarray, labels: np.ndarray, name: str) -> None:
    if features.ndim != 2:
        raise ClusteringError(f"{name}: features must be [N, D], got shape {features.shape}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ClusteringError(
            f"{name}: labels must be [N] with N = {features.shape[0]} (one per feature row), got shape {labels.shape}"
        )
    if labels.size and labels.min() < -1:
        raise ClusteringError(f"{name}: labels must be >= 0, or -1 for outliers; got {int(labels.min())}")


def cluster_centroids(
    features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [C], centroids float32 [C, D])``: the distinct non-negative labels, ascending, and the mean
    feature of each. Samples labelled ``-1`` (outliers) are ignored. Means are accumulated in float64.
    """
    x = _to_numpy(features)
    y = _to_numpy(labels).astype(np.int64, copy=False)
    _check_pair(x, y, "cluster_centroids")
    keep = y >= 0
    ids, inverse = np.unique(y[keep], return_inverse=True)
    c = ids.shape[0]
    if c == 0:
        return ids.astype(np.int64), np.zeros((0, x.shape[1]), dtype=np.float32)
    onehot = sp.csr_matrix(
        (np.ones(inverse.shape[0]), (inverse, np.flatnonzero(keep))), shape=(c, x.shape[0])
    )
    sums = np.asarray(onehot @ x.astype(np.float64, copy=False))
    counts = np.bincount(inverse, minlength=c).astype(np.float64)
    return ids.astype(np.int64), (sums / counts[:, None]).astype(np.float32)


def ward_merge(centroids: np.ndarray, n_clusters: int) -> np.ndarray:
    """Group ``centroids`` [C, D] into exactly ``n_clusters`` groups by Ward linkage; returns each centroid's group [C].

    The first ``C - n_clusters`` merges of ``scipy.cluster.hierarchy.linkage(method="ward")`` are applied (a cut
    of the dendrogram that always yields exactly ``n_clusters`` groups, even where merge heights tie, unlike
    ``fcluster(..., "maxclust")``). Groups are numbered 0..n_clusters-1 in order of their smallest member.
    """
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2:
        raise ClusteringError(f"ward_merge: centroids must be [C, D], got shape {c.shape}")
    n = c.shape[0]
    if int(n_clusters) != n_clusters or not 1 <= n_clusters <= n:
        raise ClusteringError(f"ward_merge: n_clusters must be an integer in 1..{n} (the number of centroids), "
                              f"got {n_clusters!r}")
    if n_clusters == n:
        return np.arange(n, dtype=np.int64)
    z = linkage(c, method="ward")
    parent = np.arange(2 * n - 1)  # union-find over linkage nodes: node n+i is the i-th merge
    for i in range(n - int(n_clusters)):
        a, b = int(z[i, 0]), int(z[i, 1])
        parent[a] = parent[b] = n + i

    def root(j: int) -> int:
        while parent[j] != j:
            j = parent[j]
        return j

    roots = np.array([root(j) for j in range(n)])
    _, first, group = np.unique(roots, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by smallest member
    return order[group].astype(np.int64)


def hungarian_match(centroids_a: np.ndarray, centroids_b: np.ndarray) -> np.ndarray:
    """For each row of ``centroids_a`` [C, D], the index of its match in ``centroids_b`` [C, D] (a permutation).

    Both sets are L2-normalised; the cost is the squared Euclidean distance (``2 - 2 cos``, computed in float64);
    the assignment minimising the total cost comes from ``scipy.optimize.linear_sum_assignment``.
    """
    a = np.asarray(centroids_a, dtype=np.float64)
    b = np.asarray(centroids_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ClusteringError(
            f"hungarian_match: both centroid sets must be [C, D] with the same C and D, got {a.shape} and {b.shape}; "
            "equalise the counts first (ward_merge)"
        )
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cost = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
    rows, cols = linear_sum_assignment(cost)
    match = np.empty(a.shape[0], dtype=np.int64)
    match[rows] = cols
    return match


@dataclass
class Association:
    """RGB and IR pseudo-labels in one shared label space 0..num_clusters-1 (``-1`` = outlier, dropped this epoch).

    ``rgb_cluster_map`` / ``ir_cluster_map`` give, for each cluster a modality found (its ``raw_ids`` order), the
    shared label it ended up with; ``merged`` names the modality whose clusters were Ward-merged (None if the
    counts were already equal). ``raw_labels_*`` are the per-modality clusterings before association.
    """

    labels_rgb: np.ndarray
    labels_ir: np.ndarray
    num_clusters: int
    clusters_rgb: int
    clusters_ir: int
    merged: Literal["rgb", "ir"] | None = None
    rgb_cluster_map: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ir_cluster_map: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    raw_labels_rgb: np.ndarray | None = None
    raw_labels_ir: np.ndarray | None = None

    @property
    def outliers_rgb(self) -> int:
        return int((self.labels_rgb < 0).sum())

    @property
    def outliers_ir(self) -> int:
        return int((self.labels_ir < 0).sum())


def _compact(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Cluster index (position in ``ids``) of every sample, -1 for outliers."""
    out = np.full(labels.shape[0], -1, dtype=np.int64)
    keep = labels >= 0
    out[keep] = np.searchsorted(ids, labels[keep])
    return out


def associate(
    features_rgb: np.ndarray | torch.Tensor,
    labels_rgb: np.ndarray | torch.Tensor,
    features_ir: np.ndarray | torch.Tensor,
    labels_ir: np.ndarray | torch.Tensor,
) -> Association:
    """Put per-modality cluster labels into one shared space (SPEC 6).

    The modality with more clusters merges its centroids by Ward linkage (:func:`ward_merge`) down to the other's
    count C; the IR clusters (after any merge) become labels 0..C-1 in ascending order of their original ids (a
    merged group takes its position in :func:`ward_merge`'s numbering); each RGB cluster takes the label of the IR
    cluster that :func:`hungarian_match` pairs it with. Outliers (``-1``) stay ``-1``. If either modality has no
    cluster at all, nothing can be paired: every label becomes ``-1`` and a warning is logged.
    """
    xr, xi = _to_numpy(features_rgb), _to_numpy(features_ir)
    yr = _to_numpy(labels_rgb).astype(np.int64)
    yi = _to_numpy(labels_ir).astype(np.int64)
    _check_pair(xr, yr, "associate (RGB)")
    _check_pair(xi, yi, "associate (IR)")
    if xr.shape[1] != xi.shape[1]:
        raise ClusteringError(f"associate: RGB and IR features differ in dimension ({xr.shape[1]} vs {xi.shape[1]})")
    ids_r, cent_r = cluster_centroids(xr, yr)
    ids_i, cent_i = cluster_centroids(xi, yi)
    nr, ni = ids_r.shape[0], ids_i.shape[0]
    if nr == 0 or ni == 0:
        log.warning("associate: %d RGB and %d IR clusters; no cross-modal pairs, every sample is an outlier "
                    "this epoch", nr, ni)
        return Association(np.full(yr.shape[0], -1, dtype=np.int64), np.full(yi.shape[0], -1, dtype=np.int64),
                           0, nr, ni, None, np.full(nr, -1, dtype=np.int64), np.full(ni, -1, dtype=np.int64), yr, yi)
    group_r, group_i = np.arange(nr, dtype=np.int64), np.arange(ni, dtype=np.int64)
    merged: Literal["rgb", "ir"] | None = None
    cr, ci = _compact(yr, ids_r), _compact(yi, ids_i)
    if nr > ni:
        merged = "rgb"
        group_r = ward_merge(cent_r, ni)
        _, cent_r = cluster_centroids(xr, np.where(cr >= 0, group_r[cr], -1))
    elif ni > nr:
        merged = "ir"
        group_i = ward_merge(cent_i, nr)
        _, cent_i = cluster_centroids(xi, np.where(ci >= 0, group_i[ci], -1))
    match = hungarian_match(cent_r, cent_i)  # RGB group g <-> IR group match[g]
    rgb_map = match[group_r]
    out_r = np.where(cr >= 0, rgb_map[np.maximum(cr, 0)], -1).astype(np.int64)
    out_i = np.where(ci >= 0, group_i[np.maximum(ci, 0)], -1).astype(np.int64)
    return Association(out_r, out_i, int(min(nr, ni)), nr, ni, merged, rgb_map, group_i, yr, yi)


def _as_features(x: np.ndarray | torch.Tensor, device: torch.device | None, normalize: bool) -> torch.Tensor:
    """float32 tensor of ``x`` (L2-normalised rows when ``normalize``), checked for shape and finiteness."""
    if normalize:
        return normalized_features(x, device, "cluster_cross_modal")
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ClusteringError(f"cluster_cross_modal: features must be a non-empty [N, D] array, got shape "
                              f"{tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ClusteringError("cluster_cross_modal: features contain NaN or inf; fix the feature extraction first")
    return t


def cluster_cross_modal(
    features_rgb: np.ndarray | torch.Tensor,
    features_ir: np.ndarray | torch.Tensor,
    *,
    method: Literal["dbscan", "kmeans"] = "dbscan",
    eps: float = 0.4,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    k: int = 400,
    seed: int = 0,
    device: str | torch.device | None = None,
    normalize: bool = True,
    kmeans_init: Literal["random", "kmeans++"] = "random",
    kmeans_max_iter: int = 100,
    kmeans_tol: float = 1e-4,
    kmeans_niter: int = 20,
    kmeans_backend: Literal["auto", "faiss", "torch"] = "auto",
    kmeans_n_init: int = 1,
) -> Association:
    """AML's per-epoch re-clustering (SPEC 6): cluster RGB and IR features separately, then :func:`associate`.

    ``normalize=True`` L2-normalises the rows first (general use). AML passes ``normalize=False``: its reference
    clusters the flip-averaged 4,096-d ``[model1 || model2]`` concatenation of two unit halves as it is (norm about
    √2), so the Jaccard neighbour weights are ``softmax(-(2 - 2 x.y))`` on those vectors (SPEC 2.6 / 6, corrected;
    wuancong/CMAM @ 21d258fb, fastreid/utils/faiss_rerank.py:79 with no normalisation on the way from
    tools/train_stage2.py:211-234), and the Ward merge and centroids use the same vectors
    (train_stage2.py:276-286; the Hungarian cost normalises the centroids, :119-129). Per modality:

    * ``method="dbscan"`` (run A): clustering Jaccard distance (``k1``, ``k2``) + DBSCAN (``eps`` 0.4 in AML,
      ``min_samples`` 4) on the sparse radius graph (labels equal DBSCAN on the dense Jaccard matrix);
    * ``method="kmeans"`` (run B), ``k`` clusters (400 in AML) clamped to the modality's sample count with a logged
      note, no outliers. ``kmeans_init="random"`` (default, the reference): :func:`reference_kmeans` (random rows,
      at most ``kmeans_max_iter`` rounds, ``kmeans_tol``; empty clusters may occur and are simply absent);
      ``kmeans_init="kmeans++"``: vireid's earlier :func:`cosine_kmeans` (k-means++ seeding, ``kmeans_niter``
      spherical Lloyd rounds on ``kmeans_backend``, best of ``kmeans_n_init``).

    ``device`` is where the Jaccard kNN / torch k-means run (default: the features' device, else CUDA if present).
    """
    if method not in ("dbscan", "kmeans"):
        raise ClusteringError(f"cluster_cross_modal: method must be 'dbscan' or 'kmeans', got {method!r}")
    if kmeans_init not in ("random", "kmeans++"):
        raise ClusteringError(f"cluster_cross_modal: kmeans_init must be 'random' or 'kmeans++', got {kmeans_init!r}")
    dev = torch.device(device) if device is not None else None
    xs = {"rgb": _as_features(features_rgb, dev, normalize), "ir": _as_features(features_ir, dev, normalize)}
    if xs["rgb"].shape[1] != xs["ir"].shape[1]:
        raise ClusteringError(f"cluster_cross_modal: RGB and IR features differ in dimension "
                              f"({xs['rgb'].shape[1]} vs {xs['ir'].shape[1]})")
    labels: dict[str, np.ndarray] = {}
    for name, x in xs.items():
        if method == "dbscan":
            # used as given: already normalised above, or AML's un-renormalised concatenation
            graph = jaccard_distance_sparse(x, k1, k2, eps, normalize=False, device=device)
            labels[name] = dbscan_sparse(graph, eps, min_samples)
            del graph
        else:
            kk = int(k)
            if kk > x.shape[0]:
                log.warning("cluster_cross_modal: k = %d > %d %s samples; using k = %d", kk, x.shape[0], name,
                            x.shape[0])
                kk = x.shape[0]
            if kmeans_init == "random":
                labels[name], _ = reference_kmeans(x, kk, max_iter=kmeans_max_iter, tol=kmeans_tol, seed=seed)
            else:
                labels[name], _ = cosine_kmeans(x, kk, niter=kmeans_niter, seed=seed, backend=kmeans_backend,
                                                n_init=kmeans_n_init)
    return associate(xs["rgb"], labels["rgb"], xs["ir"], labels["ir"])
