"""Spherical (cosine) k-means for pseudo-labels: AML's stage-2 run B clusters each modality into K = 400 groups.

Two backends share one initialisation, so they agree on a partition wherever Lloyd's iterations do:

* ``"faiss"``: ``faiss.Kmeans(..., spherical=True)`` started from our seeded initial centroids (CPU);
* ``"torch"``: our own Lloyd iterations in torch, on the features' device (a CUDA tensor runs on the GPU);
* ``"auto"``: torch for a CUDA tensor (faiss-cpu would copy it to the host), else faiss if importable, else torch.

What the AML reference does (SPEC 6, corrected): wuancong/CMAM @ 21d258fb, tools/train_stage2.py:24 and :239-242
calls ``fast_pytorch_kmeans.KMeans(n_clusters=K, mode='cosine', verbose=1).fit_predict(features)`` -- not faiss.
:func:`reference_kmeans` reproduces that algorithm (read from fast_pytorch_kmeans 0.1.9 and 0.2.2,
``kmeans.py``): K random rows of the data as initial centroids, then at most ``max_iter=100`` rounds of: assign
every row to the centroid of largest cosine similarity, replace each centroid by the plain mean of its rows (an
empty cluster's centroid becomes the zero vector, which then never wins), stop when the summed squared centroid
change is ``<= tol = 1e-4``; the labels returned are the assignment of the last round. It works on the features as
given (AML's un-renormalised 4,096-d concatenation: only the cosine assignment normalises).

:func:`cosine_kmeans` (k-means++ seeding, spherical Lloyd, faiss or torch) is vireid's earlier implementation, kept
as the ``kmeans_init: kmeans++`` option of the AML recipe.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vireid.errors import VireidError

__all__ = ["ClusteringError", "cosine_kmeans", "kmeans_plusplus", "reference_kmeans"]

log = logging.getLogger(__name__)


class ClusteringError(VireidError, ValueError):
    """A clustering call got arguments it cannot work with (k larger than N, wrong shapes, unknown method)."""


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalized_features(features: np.ndarray | torch.Tensor, device: torch.device | None = None,
                        what: str = "cosine_kmeans") -> torch.Tensor:
    """Features as an L2-normalised float32 tensor (on ``device``, else where they already are); ``what`` names the
    caller in the one-line error for an empty, non-2-D or non-finite input."""
    x = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ClusteringError(f"{what}: features must be a non-empty [N, D] array, got shape {tuple(x.shape)}")
    x = x.to(device=device if device is not None else x.device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ClusteringError(f"{what}: features contain NaN or inf; fix the feature extraction first")
    return F.normalize(x, dim=1)


def kmeans_plusplus(
    x: torch.Tensor, k: int, seed: int = 0, trials: int | None = None, project_dim: int | None = 256
) -> torch.Tensor:
    """Indices [k] of greedy k-means++ seeds of the rows of ``x``, seeded.

    Each step draws ``trials`` candidates (default ``2 + int(ln k)``, as Arthur & Vassilvitskii suggest) with
    probability proportional to the squared distance to the nearest seed so far, and keeps the candidate that lowers
    the total squared distance most; plain one-candidate k-means++ lands in a poor local optimum far more often.

    The k steps are sequential passes over all rows, memory-bound on a CPU (about 50 s for 12k x 4,096 and k = 400
    on 2 cores). Rows wider than ``project_dim`` are therefore first mapped by a seeded Gaussian random projection to
    ``project_dim`` dimensions (Johnson-Lindenstrauss: squared distances kept to within a few percent), which only
    changes the sampling weights slightly; the seeds are still rows of ``x``. ``project_dim=None`` disables it.

    The random draws come from a CPU generator, so the same seed picks the same rows on any device up to float
    rounding of the distances. A row identical to a chosen seed has weight 0 and is only drawn when nothing else is
    left.
    """
    n = x.shape[0]
    trials = trials if trials is not None else 2 + int(math.log(k))
    gen = torch.Generator().manual_seed(seed)
    if project_dim is not None and x.shape[1] > project_dim:
        proj = torch.randn(x.shape[1], project_dim, generator=gen) / math.sqrt(project_dim)
        x = x @ proj.to(device=x.device, dtype=x.dtype)
    chosen = torch.empty(k, dtype=torch.long)
    sq = (x * x).sum(1)

    def dist2(rows: torch.Tensor) -> torch.Tensor:  # [len(rows), N], exactly 0 at the rows themselves
        d = (sq[None, :] + sq[rows][:, None] - 2.0 * (x[rows] @ x.T)).clamp_(min=0.0)
        d[torch.arange(rows.numel(), device=x.device), rows] = 0.0
        return d

    first = int(torch.randint(n, (1,), generator=gen))
    chosen[0] = first
    d2 = dist2(torch.tensor([first], device=x.device))[0]
    for i in range(1, k):
        w = d2.double()
        total = float(w.sum())
        if total <= 0.0:  # every remaining row duplicates a seed: take the first row not chosen yet
            mask = torch.ones(n, dtype=torch.bool)
            mask[chosen[:i]] = False
            nxt = int(torch.nonzero(mask)[0])
            chosen[i] = nxt
            d2 = torch.minimum(d2, dist2(torch.tensor([nxt], device=x.device))[0])
            continue
        u = torch.rand(trials, generator=gen, dtype=torch.float64).to(w.device) * total
        cum = torch.cumsum(w, 0)
        cand = torch.searchsorted(cum, u, right=True).clamp_(max=n - 1)  # first row with cum > u: weight > 0
        cand = torch.where(w[cand] > 0, cand, torch.nonzero(w > 0).flatten()[-1])  # u rounded past the end
        cand_d2 = torch.minimum(d2[None, :], dist2(cand))
        best = int(torch.argmin(cand_d2.double().sum(1)))
        chosen[i] = int(cand[best])
        d2 = cand_d2[best]
    return chosen


def _initial_centroids(x: torch.Tensor, k: int, seed: int, init: str) -> torch.Tensor:
    if init == "kmeans++":
        idx = kmeans_plusplus(x, k, seed)
    elif init == "random":
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:k]
    else:
        raise ClusteringError(f"cosine_kmeans: init must be 'kmeans++' or 'random', got {init!r}")
    return x[idx.to(x.device)].clone()


def _assign(x: torch.Tensor, c: torch.Tensor, spherical: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row (squared Euclidean) and that squared distance."""
    sim = x @ c.T
    if spherical:  # unit-norm centroids: nearest = most similar, d^2 = 2 - 2 cos
        best, labels = sim.max(1)
        return labels, (2.0 - 2.0 * best).clamp_(min=0.0)
    d2 = (c * c).sum(1)[None, :] - 2.0 * sim
    best, labels = d2.min(1)
    return labels, (best + 1.0).clamp_(min=0.0)  # rows have unit norm


def _torch_lloyd(x: torch.Tensor, c: torch.Tensor, niter: int, spherical: bool) -> torch.Tensor:
    """``niter`` Lloyd iterations from centroids ``c``; an empty cluster takes the row farthest from its centroid."""
    k = c.shape[0]
    for _ in range(niter):
        labels, d2 = _assign(x, c, spherical)
        onehot = F.one_hot(labels, k).to(x.dtype)  # sums by GEMM: deterministic on GPU, unlike index_add_
        sums = onehot.T @ x
        counts = onehot.sum(0)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            far = torch.argsort(d2, descending=True, stable=True)
            for j, row in zip(empty, far[: len(empty)].tolist()):
                sums[j] = x[row]
                counts[j] = 1.0
        c = sums / counts[:, None]
        if spherical:
            c = F.normalize(c, dim=1)
    return c


def _faiss_lloyd(x: torch.Tensor, c: torch.Tensor, niter: int, spherical: bool, seed: int) -> torch.Tensor:
    import faiss

    xn = np.ascontiguousarray(x.cpu().numpy())
    n, d = xn.shape
    k = c.shape[0]
    km = faiss.Kmeans(d, k, niter=niter, spherical=spherical, seed=seed, verbose=False,
                      max_points_per_centroid=n + 1,  # never subsample: same points as the torch backend
                      min_points_per_centroid=1)  # small N per centroid is fine (silences faiss's warning)
    if niter > 0:
        km.train(xn, init_centroids=np.ascontiguousarray(c.cpu().numpy()))
        return torch.from_numpy(np.asarray(km.centroids).copy()).to(x.device)
    return c


def cosine_kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    init: Literal["kmeans++", "random"] = "kmeans++",
    spherical: bool = True,
    n_init: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of ``features`` [N, D] (L2-normalised inside):
    ``(labels int64 [N], centroids float32 [k, D])``.

    Labels are in 0..k-1 (every row gets the nearest centroid: no outliers); centroids are L2-normalised. Both
    backends start from the same seeded initial centroids (``init``: k-means++ seeding, or k distinct random rows)
    and run ``niter`` Lloyd iterations, so they find the same partition up to float rounding (faiss splits an
    empty cluster differently from us; on well-spread data that does not happen). The same seed on the same
    device gives the same result. AML's reference uses 300 iterations (see the module docstring); we default to 20
    (a few tenths of a second each with faiss for 12k x 4,096 and K = 400 on 2 CPU cores; pass ``niter=300`` to
    follow the reference).

    ``n_init`` > 1 restarts from seeds ``seed, seed + 1, ...`` and keeps the run with the lowest total squared
    distance to the centroids: even greedy k-means++ seeding occasionally puts two seeds in one true cluster and
    none in another (about 1 run in 40 on the well-separated 12-cluster test set), which Lloyd cannot repair.

    ``spherical=False`` keeps plain Euclidean centroid means between iterations (faiss's default, the reference's
    call); the returned centroids are normalised either way.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([np.eye(4)[i] + 0.01 * rng.random((5, 4)) for i in range(3)])
        >>> labels, centroids = cosine_kmeans(x, 3, backend="torch")
        >>> sorted(np.bincount(labels).tolist())
        [5, 5, 5]
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ClusteringError(f"cosine_kmeans: backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if int(k) != k or k < 1:
        raise ClusteringError(f"cosine_kmeans: k must be a positive integer, got {k!r}")
    if niter < 0:
        raise ClusteringError(f"cosine_kmeans: niter must be >= 0, got {niter}")
    x = normalized_features(features)
    n = x.shape[0]
    if k > n:
        raise ClusteringError(f"cosine_kmeans: k = {k} clusters asked for only N = {n} samples; use k <= N")
    if backend == "auto":
        backend = "torch" if x.device.type != "cpu" or not _faiss_available() else "faiss"
    if int(n_init) != n_init or n_init < 1:
        raise ClusteringError(f"cosine_kmeans: n_init must be a positive integer, got {n_init!r}")
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for r in range(int(n_init)):
        c0 = _initial_centroids(x, int(k), seed + r, init)
        if backend == "faiss":
            c = _faiss_lloyd(x, c0, niter, spherical, seed + r)
        else:
            c = _torch_lloyd(x, c0, niter, spherical)
        labels, d2 = _assign(x, c, spherical)
        inertia = float(d2.double().sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, c)
    assert best is not None
    _, labels, c = best
    c = F.normalize(c, dim=1)
    return labels.cpu().numpy().astype(np.int64), c.cpu().numpy().astype(np.float32)


def reference_kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means as AML's code runs it (``fast_pytorch_kmeans.KMeans(K, mode='cosine')``, see the module docstring):
    ``(labels int64 [N], centroids float32 [k, D])``.

    1. initial centroids: ``k`` distinct rows of ``features`` chosen at random (seeded; fast_pytorch_kmeans 0.1.x
       draws them with ``np.random.choice(N, k, replace=False)``; 0.2.x may repeat a row);
    2. round ``i`` (at most ``max_iter``): ``labels = argmax_j cos(x, c_j)`` (a zero centroid has cosine 0), new
       ``c_j`` = mean of the rows labelled ``j`` (zero vector when none), ``error = sum ||c_new - c||^2``; stop after
       the round whose ``error <= tol``.

    The returned labels are those of the last round's assignment (computed before its centroid update, as the
    reference returns ``closest``); labels of empty clusters simply do not occur. The returned centroids are the
    last update's means (not normalised). Features are used as given: no L2 normalisation of the rows (the
    cosine assignment is scale-free, the means are not). Runs in float32 on the features' device.
    """
    x = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ClusteringError(f"reference_kmeans: features must be a non-empty [N, D] array, "
                              f"got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ClusteringError("reference_kmeans: features contain NaN or inf; fix the feature extraction first")
    n = x.shape[0]
    if int(k) != k or not 1 <= k <= n:
        raise ClusteringError(f"reference_kmeans: k must be an integer in 1..{n} (the number of samples), got {k!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ClusteringError(f"reference_kmeans: max_iter must be a positive integer, got {max_iter!r}")
    k = int(k)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k].to(x.device)
    c = x[idx].clone()
    xn = F.normalize(x, dim=1)
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(int(max_iter)):
        labels = (xn @ F.normalize(c, dim=1).T).argmax(dim=1)
        onehot = F.one_hot(labels, k).to(x.dtype)  # sums by GEMM: deterministic on GPU
        counts = onehot.sum(0)
        new = (onehot.T @ x) / counts.clamp(min=1.0)[:, None]  # empty cluster: zero row (the reference's NaN -> 0)
        error = float((new - c).pow(2).sum())
        c = new
        if error <= tol:
            break
    return labels.cpu().numpy().astype(np.int64), c.cpu().numpy().astype(np.float32)
