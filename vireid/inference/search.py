"""Nearest-neighbour search of probes in a gallery: exact top-K (faiss or torch) with deterministic ties, or IVF.

Ranking contract (what :func:`search` returns, whichever backend):

- features are L2-normalised (float64) and compared with the Euclidean distance ``||q - g||`` (the same ranking as
  cosine similarity, SPEC 2);
- each probe's gallery rows are sorted by ascending distance, ties by ascending gallery row (a stable sort), and
  the first ``top`` are returned -- exactly what a brute-force ``np.lexsort((rows, distances))`` gives.

How: a fast float32 pass (faiss ``IndexFlatIP`` on the normalised features, or a chunked torch matrix product when
faiss is not installed) proposes ``k' > top`` candidates per probe; their distances are recomputed in float64 and
sorted with the tie rule. The candidates are enough when the top-th exact squared distance is below the smallest
float32 squared distance left out (minus a bound on float32 rounding); otherwise ``k'`` doubles. So the exact
result does not depend on the backend or on float32 rounding.

``index="ivf"`` (faiss ``IndexIVFFlat``, inner product) is approximate: only the ``nprobe`` nearest of ``nlist``
clusters are scanned, so a true neighbour can be missed (a probe may even get fewer than ``top`` results; missing
entries have row -1 and distance inf). It is for galleries of millions of images; its candidates are re-scored and
tie-sorted like the exact ones. Without faiss, ``ivf`` falls back to the exact torch search (with a note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from vireid.errors import ConfigError
from vireid.evaluation.features import check_feature_rows

IndexKind = Literal["exact", "ivf"]


def _faiss() -> Any | None:
    """The faiss module, or None when it is not installed (e.g. GPU images without faiss-cpu)."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class SearchResult:
    """Top-K of each probe: ``rows`` int64 [P, K] gallery rows (-1 = none), ``distances`` float64 [P, K] (inf)."""

    rows: np.ndarray
    distances: np.ndarray
    backend: str
    """``faiss-flat``, ``faiss-ivf`` or ``torch``."""
    index: str
    """``exact`` or ``ivf``."""
    params: dict[str, int]
    """IVF: nlist, nprobe; exact: candidates (the final k')."""


def normalize64(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def normalize32(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """A new float32 array of the L2-normalised rows of ``x`` (computed in chunks: no float64 copy of ``x``)."""
    out = np.empty(x.shape, dtype=np.float32)
    for a in range(0, x.shape[0], chunk):
        out[a:a + chunk] = normalize64(x[a:a + chunk])
    return out


def _rescore(q: np.ndarray, g: np.ndarray, cand: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 distances of candidate rows ``cand`` [P, k'] (-1 = none), sorted (distance, row); first ``top``.

    ``q`` is the float64-normalised probes; ``g`` the raw gallery features (only the candidates are normalised).
    """
    p, k = cand.shape
    d = np.full((p, k), np.inf)
    for i in range(p):
        ok = cand[i] >= 0
        diff = normalize64(g[cand[i, ok]]) - q[i]
        d[i, ok] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    rows_key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((rows_key, d), axis=1)[:, :top]
    rows = np.take_along_axis(cand, order, axis=1)
    dist = np.take_along_axis(d, order, axis=1)
    rows[~np.isfinite(dist)] = -1
    if rows.shape[1] < top:  # fewer candidates than asked (gallery smaller than top is handled by the caller)
        pad = top - rows.shape[1]
        rows = np.concatenate([rows, np.full((p, pad), -1, np.int64)], axis=1)
        dist = np.concatenate([dist, np.full((p, pad), np.inf)], axis=1)
    return rows.astype(np.int64), dist


def _torch_candidates(q32: np.ndarray, g32: np.ndarray, k: int, device: str,
                      memory_mb: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each probe over the whole gallery: (rows [P, k], scores [P, k]) in float32."""
    dev = torch.device(device)
    g = torch.from_numpy(g32).to(dev)
    q = torch.from_numpy(q32).to(dev)
    per_row = max(1, g.shape[0] * 4)
    chunk = max(1, int(memory_mb * 2**20 // per_row))
    rows, scores = [], []
    for a in range(0, q.shape[0], chunk):
        s = q[a:a + chunk] @ g.T
        val, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
        rows.append(idx.cpu().numpy().astype(np.int64))
        scores.append(val.cpu().numpy())
    return np.concatenate(rows), np.concatenate(scores)


def search(
    probe_features: np.ndarray,
    gallery_features: np.ndarray,
    top: int = 10,
    *,
    index: str = "exact",
    nprobe: int = 8,
    nlist: int | None = None,
    use_faiss: bool = True,
    device: str = "cpu",
    memory_mb: float = 256.0,
) -> SearchResult:
    """The ``top`` nearest gallery rows of each probe (module docstring: the ranking contract).

    Args:
        probe_features: [P, D]; gallery_features: [G, D] (any float dtype; normalised here).
        top: K; capped at G.
        index: ``exact`` or ``ivf`` (approximate, faiss only).
        nprobe, nlist: IVF clusters scanned / built (nlist default ``clamp(sqrt(G), 1, G // 39)``: faiss wants
            about 39 training points per cluster).
        use_faiss: False forces the torch backend (the results are the same for ``exact``).
        device: torch device of the fallback backend.
        memory_mb: bound of the torch backend's [chunk, G] score matrix.
    """
    if index not in ("exact", "ivf"):
        raise ConfigError(f"--index {index!r}: unknown index; use exact or ivf")
    g = np.asarray(gallery_features)
    if np.ndim(probe_features) != 2 or g.ndim != 2 or np.shape(probe_features)[1] != g.shape[1]:
        raise ConfigError(f"probe features {np.shape(probe_features)} and gallery features {g.shape} must be "
                          "[N, D] with one D")
    check_feature_rows(probe_features, "probe features", "the probe set", identical=False)
    q = normalize64(probe_features)
    n_gallery = g.shape[0]
    if n_gallery == 0:
        raise ConfigError("the gallery is empty; nothing to search")
    if top < 1:
        raise ConfigError(f"--top {top}: must be at least 1")
    top = min(int(top), n_gallery)
    check_feature_rows(g, "gallery features", "the gallery", identical=False)  # a zero row would tie with every probe
    q32 = q.astype(np.float32)
    g32 = normalize32(g)  # the only gallery-sized copy (float32)
    faiss = _faiss() if use_faiss else None

    if index == "ivf" and faiss is not None:
        if nprobe < 1:
            raise ConfigError(f"--nprobe {nprobe}: must be at least 1")
        nl = nlist if nlist is not None else max(1, min(int(round(math.sqrt(n_gallery))), n_gallery // 39))
        if not 1 <= nl <= n_gallery:
            raise ConfigError(f"--nlist {nl}: must be between 1 and the gallery size {n_gallery}")
        quantizer = faiss.IndexFlatIP(g32.shape[1])
        ivf = faiss.IndexIVFFlat(quantizer, g32.shape[1], nl, faiss.METRIC_INNER_PRODUCT)
        ivf.train(g32)
        ivf.add(g32)
        ivf.nprobe = min(int(nprobe), nl)
        _, cand = ivf.search(q32, top)
        rows, dist = _rescore(q, g, cand.astype(np.int64), top)
        return SearchResult(rows, dist, "faiss-ivf", "ivf", {"nlist": nl, "nprobe": int(ivf.nprobe)})

    flat = None
    if faiss is not None:
        flat = faiss.IndexFlatIP(g32.shape[1])
        flat.add(g32)
    # float32 squared-distance error bound: |2 - 2 s32 - d64^2| <= ~2 D eps32 (dot product rounding)
    tol = 2.0 * g32.shape[1] * float(np.finfo(np.float32).eps) + 1e-6
    k = min(n_gallery, max(2 * top, top + 16))
    while True:
        if flat is not None:
            scores, cand = flat.search(q32, k)
            cand = cand.astype(np.int64)
        else:
            cand, scores = _torch_candidates(q32, g32, k, device, memory_mb)
        rows, dist = _rescore(q, g, cand, top)
        if k >= n_gallery:
            break
        worst_left_out = 2.0 - 2.0 * scores[:, -1].astype(np.float64)  # every row not proposed is at least this far
        if bool(np.all(dist[:, -1] ** 2 < worst_left_out - tol)):
            break
        k = min(n_gallery, 2 * k)
    return SearchResult(rows, dist, "faiss-flat" if flat is not None else "torch", "exact", {"candidates": k})
