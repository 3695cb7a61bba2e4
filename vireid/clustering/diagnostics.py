"""How good are an epoch's cross-modal pseudo-labels? Counts always; agreement with true ids when they are known.

On synthetic data (or a labelled target set used for analysis) the true identities say how well clustering and
cross-modal association worked; the AML trainer can log these numbers every epoch. True ids of the two modalities
live in one space (the same person has the same id in RGB and IR), like the shared pseudo-labels.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from vireid.clustering.association import Association
from vireid.clustering.kmeans import ClusteringError

__all__ = ["clustering_diagnostics", "feature_diagnostics"]


def _ids(x: np.ndarray | torch.Tensor, n: int, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or a.shape[0] != n:
        raise ClusteringError(f"clustering_diagnostics: {name} must be [N] with N = {n} (one id per sample), "
                              f"got shape {a.shape}")
    return a.astype(np.int64)


def _majority(true: np.ndarray, pseudo: np.ndarray, num: int) -> np.ndarray:
    """Most frequent true id of each pseudo-label 0..num-1 (ties: the smallest id; -1 where the label is empty)."""
    out = np.full(num, -1, dtype=np.int64)
    keep = pseudo >= 0
    if not keep.any():
        return out
    pairs, counts = np.unique(np.stack([pseudo[keep], true[keep]]), axis=1, return_counts=True)
    # pairs are sorted by (pseudo, true): for each pseudo label keep the first pair with the maximal count
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    p_sorted = pairs[0][order]
    first = np.r_[True, p_sorted[1:] != p_sorted[:-1]]
    out[p_sorted[first]] = pairs[1][order][first]
    return out


def clustering_diagnostics(
    assoc: Association,
    true_rgb: np.ndarray | torch.Tensor | None = None,
    true_ir: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Numbers describing one association (all floats, ready for a JSON log).

    Always: ``clusters_rgb``, ``clusters_ir`` (per modality, before equalising), ``num_clusters`` (shared),
    ``outlier_fraction_rgb`` / ``_ir`` (fraction labelled -1), ``matched_pairs`` (shared labels used by both
    modalities).

    With the true ids of both modalities (``true_rgb`` [N_rgb], ``true_ir`` [N_ir], one id space):
    ``ari`` / ``nmi`` (scikit-learn ``adjusted_rand_score`` / ``normalized_mutual_info_score``, pseudo vs true, over
    the non-outlier samples of both modalities together; NaN if there are none), ``ari_all`` (every sample, each
    outlier its own singleton cluster), ``ari_rgb`` / ``ari_ir`` (within one modality, non-outliers, final shared
    labels, i.e. after any Ward merge), ``ari_rgb_raw`` / ``ari_ir_raw`` (the same for the per-modality clustering
    before the merge, when ``assoc`` carries it), ``match_precision``: the fraction of matched (RGB cluster, IR
    cluster) pairs -- the RGB and the IR samples of one shared label -- whose majority true ids agree (ties broken
    towards the smaller id; NaN without pairs), and ``match_accuracy_rgb``: the fraction of non-outlier RGB samples
    whose own true id is the majority true id of the IR samples sharing their label (what the memory loss is told
    across modalities, per sample; NaN without such samples).

    Reading them: per-modality ARI low -> the clustering of a modality is the bottleneck; per-modality ARI fine but
    match precision low -> the cross-modal association (the features' modality gap) is.
    """
    lr, li = np.asarray(assoc.labels_rgb, dtype=np.int64), np.asarray(assoc.labels_ir, dtype=np.int64)
    num = int(assoc.num_clusters)
    used_r = np.zeros(num, dtype=bool)
    used_i = np.zeros(num, dtype=bool)
    used_r[lr[lr >= 0]] = True
    used_i[li[li >= 0]] = True
    paired = used_r & used_i
    out: dict[str, float] = {
        "clusters_rgb": float(assoc.clusters_rgb),
        "clusters_ir": float(assoc.clusters_ir),
        "num_clusters": float(num),
        "outlier_fraction_rgb": float((lr < 0).mean()) if lr.size else 0.0,
        "outlier_fraction_ir": float((li < 0).mean()) if li.size else 0.0,
        "matched_pairs": float(paired.sum()),
    }
    if true_rgb is None and true_ir is None:
        return out
    if true_rgb is None or true_ir is None:
        raise ClusteringError("clustering_diagnostics: pass the true ids of both modalities (true_rgb and true_ir) "
                              "or of neither")
    tr, ti = _ids(true_rgb, lr.shape[0], "true_rgb"), _ids(true_ir, li.shape[0], "true_ir")
    pseudo = np.concatenate([lr, li])
    true = np.concatenate([tr, ti])
    keep = pseudo >= 0
    nan = float("nan")
    if keep.any():
        out["ari"] = float(adjusted_rand_score(true[keep], pseudo[keep]))
        out["nmi"] = float(normalized_mutual_info_score(true[keep], pseudo[keep]))
    else:
        out["ari"] = out["nmi"] = nan
    singletons = pseudo.copy()
    singletons[~keep] = num + np.arange(int((~keep).sum()))
    out["ari_all"] = float(adjusted_rand_score(true, singletons)) if pseudo.size else nan
    for name, p, t in (("rgb", lr, tr), ("ir", li, ti)):
        k = p >= 0
        out[f"ari_{name}"] = float(adjusted_rand_score(t[k], p[k])) if k.any() else nan
    for name, raw, t in (("rgb", assoc.raw_labels_rgb, tr), ("ir", assoc.raw_labels_ir, ti)):
        if raw is not None:
            p = np.asarray(raw, dtype=np.int64)
            k = p >= 0
            out[f"ari_{name}_raw"] = float(adjusted_rand_score(t[k], p[k])) if k.any() else nan
    maj_r, maj_i = _majority(tr, lr, num), _majority(ti, li, num)
    out["match_precision"] = float((maj_r[paired] == maj_i[paired]).mean()) if paired.any() else nan
    k = (lr >= 0) & (paired[np.clip(lr, 0, None)] if num else False)
    out["match_accuracy_rgb"] = float((maj_i[lr[k]] == tr[k]).mean()) if k.any() else nan
    return out


def feature_diagnostics(
    features_rgb: np.ndarray | torch.Tensor,
    features_ir: np.ndarray | torch.Tensor,
    true_rgb: np.ndarray | torch.Tensor,
    true_ir: np.ndarray | torch.Tensor,
) -> dict[str, float]:
    """How cross-modal the clustering features themselves are, independent of any clustering (true ids needed).

    ``xmodal_rank1``: fraction of RGB samples whose nearest IR sample (cosine) has their true id.
    ``oracle_match_precision``: with *perfect* per-modality clusters (the true ids present in both modalities), the
    fraction of identities that the association step (centroids -> :func:`~vireid.clustering.hungarian_match`) pairs
    correctly. If this is low, no per-modality clustering can give good cross-modal pseudo labels: the features'
    modality gap is the bottleneck.
    """
    from vireid.clustering.association import cluster_centroids, hungarian_match

    xr = features_rgb.detach().cpu().numpy() if isinstance(features_rgb, torch.Tensor) else np.asarray(features_rgb)
    xi = features_ir.detach().cpu().numpy() if isinstance(features_ir, torch.Tensor) else np.asarray(features_ir)
    if xr.ndim != 2 or xi.ndim != 2 or xr.shape[1] != xi.shape[1]:
        raise ClusteringError(f"feature_diagnostics: features must be [N, D] with the same D, got {xr.shape} and "
                              f"{xi.shape}")
    tr, ti = _ids(true_rgb, xr.shape[0], "true_rgb"), _ids(true_ir, xi.shape[0], "true_ir")
    nan = float("nan")
    out: dict[str, float] = {}
    if xr.shape[0] and xi.shape[0]:
        a = xr / np.maximum(np.linalg.norm(xr, axis=1, keepdims=True), 1e-12)
        b = xi / np.maximum(np.linalg.norm(xi, axis=1, keepdims=True), 1e-12)
        out["xmodal_rank1"] = float((ti[(a @ b.T).argmax(1)] == tr).mean())
    else:
        out["xmodal_rank1"] = nan
    common = np.intersect1d(tr, ti)
    if common.size:
        _, cr = cluster_centroids(xr, np.where(np.isin(tr, common), np.searchsorted(common, tr), -1))
        _, ci = cluster_centroids(xi, np.where(np.isin(ti, common), np.searchsorted(common, ti), -1))
        out["oracle_match_precision"] = float((hungarian_match(cr, ci) == np.arange(common.size)).mean())
    else:
        out["oracle_match_precision"] = nan
    return out
