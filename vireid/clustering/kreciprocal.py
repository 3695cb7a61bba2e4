"""Sparse torch building blocks of the clustering Jaccard distance (k-reciprocal encoding, SPEC 2.6).

:func:`vireid.clustering.jaccard_distance` (the faiss-kNN variant used by cluster-contrast style methods) and the
test-time re-ranking :func:`vireid.evaluation.rerank.k_reciprocal_rerank` (Zhong et al. 2017, SPEC 2.5; NumPy, in
the published float16 arithmetic, no torch) follow the same recipe:

1. exact k nearest neighbours of every sample (ordered by squared Euclidean distance, ties broken by
   the lower index, i.e. a stable argsort);
2. k-reciprocal sets ``R(i)`` and ``R_half(i)`` and the 2/3 expansion rule;
3. a weight row ``V[i]`` over the expanded set (the two variants weight differently);
4. local query expansion: ``V[i] <- mean of V over i's k2 nearest``;
5. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])``.

The reference formulations hold dense N x N matrices (distances, argsort ranks, V, V_qe, ...). Here only
what is needed is kept: the top-K neighbour lists come from a blocked, symmetric GEMM pass (each block of
``X X^T`` is computed once and used for both its rows and its columns), V is a scipy CSR matrix with a few
dozen non-zeros per row, and the sum of minima is computed by joining V's rows with V's columns
(inverted index), chunked so that peak memory stays bounded.

Everything numeric runs in torch on the requested device; the set logic (a few sparse boolean
products, :mod:`vireid.evaluation.neighbors`, shared with the NumPy re-ranking) runs in scipy on the CPU
because it is cheap (O(N k^2)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from vireid.evaluation.neighbors import (
    concat_ranges as _concat_ranges,
)
from vireid.evaluation.neighbors import (
    expanded_reciprocal_sets,
    half_k,
    pattern_values,
    query_expansion,
)

__all__ = [
    "blocked_knn",
    "expanded_reciprocal_sets",
    "half_k",
    "min_sums_symmetric_upper",
    "pattern_values",
    "query_expansion",
    "resolve_device",
]

BlockSink = Callable[[int, int, int, int, torch.Tensor], None]


def resolve_device(device: str | torch.device | None, like: object = None) -> torch.device:
    """The device to compute on: the one given, else the input tensor's, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(like, torch.Tensor):
        return like.device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _stable_topk_from_candidates(
    vals: torch.Tensor, idx: torch.Tensor, gram: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort candidate (value, index) pairs by value then index; return the first k and a boundary-tie mask.

    The mask marks rows whose k-th and (k+1)-th candidates have equal values: for those rows the candidate
    pool may not contain every element tied at the boundary, so the caller recomputes them exactly.
    """
    order = torch.argsort(idx, dim=1, stable=True)
    vals, idx, gram = (torch.gather(t, 1, order) for t in (vals, idx, gram))
    order = torch.argsort(vals, dim=1, stable=True)
    vals, idx, gram = (torch.gather(t, 1, order) for t in (vals, idx, gram))
    if vals.shape[1] > k:
        tie = vals[:, k - 1] == vals[:, k]
    else:
        tie = torch.zeros(vals.shape[0], dtype=torch.bool, device=vals.device)
    return vals[:, :k], idx[:, :k], gram[:, :k], tie


def _sq_dist_block(sq_i: torch.Tensor, sq_j: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(|x|^2 + |y|^2) - 2 x.y`` clamped at 0, in that rounding order."""
    d = sq_i[:, None] + sq_j[None, :]
    d.sub_(gram, alpha=2.0)
    return d.clamp_(min=0.0)


@torch.no_grad()
def blocked_knn(
    x: torch.Tensor,
    k: int,
    *,
    block_size: int = 2048,
    sink: BlockSink | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of ``x`` among all rows, by squared Euclidean distance.

    Returns ``(indices [N, k] int64, squared distances [N, k], inner products [N, k], row maxima [N])``
    (float32 arrays), neighbours
    in ascending distance with ties broken by the lower index (what a stable argsort of the full row gives);
    the first neighbour is normally the sample itself. The row maximum is the largest squared distance of
    the row, which re-ranking uses to normalise.

    The Gram matrix is computed block by block over the upper triangle only (``X_I X_J^T`` for J >= I,
    then reused transposed for the rows of J), which halves the dominant GEMM cost and makes the distance
    matrix exactly symmetric. ``sink(i0, i1, j0, j1, d)`` is called with every block of squared distances
    (rows i0:i1, columns j0:j1, j0 >= i0) so callers can keep the parts they need.
    """
    n = x.shape[0]
    k = min(k, n)
    kk = k + 1
    sq = (x * x).sum(dim=1)
    starts = list(range(0, n, block_size))
    nb = len(starts)
    cand_v: list[list[torch.Tensor]] = [[] for _ in range(nb)]
    cand_i: list[list[torch.Tensor]] = [[] for _ in range(nb)]
    cand_g: list[list[torch.Tensor]] = [[] for _ in range(nb)]
    rowmax = torch.full((n,), -float("inf"), dtype=x.dtype, device=x.device)
    for bi, i0 in enumerate(starts):
        i1 = min(i0 + block_size, n)
        xi = x[i0:i1]
        for bj in range(bi, nb):
            j0 = starts[bj]
            j1 = min(j0 + block_size, n)
            gram = xi @ x[j0:j1].T
            d = _sq_dist_block(sq[i0:i1], sq[j0:j1], gram)
            if sink is not None:
                sink(i0, i1, j0, j1, d)
            m = min(kk, j1 - j0)
            v, ix = torch.topk(d, m, dim=1, largest=False, sorted=False)
            cand_v[bi].append(v)
            cand_g[bi].append(torch.gather(gram, 1, ix))
            cand_i[bi].append(ix + j0)
            rowmax[i0:i1] = torch.maximum(rowmax[i0:i1], d.amax(dim=1))
            if bj > bi:
                m = min(kk, i1 - i0)
                dt = d.T.contiguous()
                v, ix = torch.topk(dt, m, dim=1, largest=False, sorted=False)
                cand_v[bj].append(v)
                cand_g[bj].append(torch.gather(gram.T, 1, ix))
                cand_i[bj].append(ix + i0)
                rowmax[j0:j1] = torch.maximum(rowmax[j0:j1], dt.amax(dim=1))
                del dt
            del d, gram
    out_i = np.empty((n, k), dtype=np.int64)
    out_v = np.empty((n, k), dtype=np.float32)
    out_g = np.empty((n, k), dtype=np.float32)
    for bi, i0 in enumerate(starts):
        i1 = min(i0 + block_size, n)
        vals, idx, gram, tie = _stable_topk_from_candidates(
            torch.cat(cand_v[bi], dim=1), torch.cat(cand_i[bi], dim=1), torch.cat(cand_g[bi], dim=1), k
        )
        cand_v[bi] = cand_i[bi] = cand_g[bi] = []  # free as we go
        for r in torch.nonzero(tie).flatten().tolist():
            # Rare (exact ties at the k-th place, e.g. duplicated features): redo the row in full.
            row = i0 + r
            g_row = (x[row : row + 1] @ x.T)[0]
            full = _sq_dist_block(sq[row : row + 1], sq, g_row[None])[0]
            order = torch.argsort(full, stable=True)[:k]
            idx[r] = order
            vals[r] = full[order]
            gram[r] = g_row[order]
        out_i[i0:i1] = idx.cpu().numpy()
        out_v[i0:i1] = vals.cpu().numpy()
        out_g[i0:i1] = gram.cpu().numpy()
    return out_i, out_v, out_g, rowmax.cpu().numpy()


@torch.no_grad()
def _gather_dots(x: torch.Tensor, pattern: sp.csr_matrix, max_elements: int = 1 << 23) -> np.ndarray:
    """``x_i . x_j`` for every stored (i, j) of a CSR pattern by batched mat-vec over gathered rows."""
    n, dim = x.shape
    lengths = np.diff(pattern.indptr)
    out = np.empty(pattern.nnz, dtype=np.float32)
    if pattern.nnz == 0:
        return out
    indices = torch.from_numpy(pattern.indices.astype(np.int64)).to(x.device)
    rows = np.nonzero(lengths)[0]
    a = 0
    while a < len(rows):
        longest = int(lengths[rows[a]])
        b = a + 1
        while b < len(rows) and (b + 1 - a) * max(longest, int(lengths[rows[b]])) * dim <= max_elements:
            longest = max(longest, int(lengths[rows[b]]))
            b += 1
        chunk = rows[a:b]
        seg = torch.from_numpy(lengths[chunk]).to(x.device)
        pos = torch.arange(longest, device=x.device)[None, :]
        valid = pos < seg[:, None]
        start = torch.from_numpy(pattern.indptr[chunk]).to(x.device)[:, None]
        cols = indices[(start + pos).clamp_(max=pattern.nnz - 1)]
        gathered = x[cols.reshape(-1)].reshape(len(chunk), longest, dim)
        dots = torch.bmm(gathered, x[torch.from_numpy(chunk).to(x.device)].unsqueeze(2)).squeeze(2)
        out[_concat_ranges(pattern.indptr[chunk], pattern.indptr[chunk + 1])] = dots[valid].cpu().numpy()
        a = b
    return out


def _join(
    ent_row: torch.Tensor,
    ent_val: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    col_rows: torch.Tensor,
    col_vals: torch.Tensor,
    nrows: int,
    ncols: int,
) -> torch.Tensor:
    """Dense ``[nrows, ncols]`` block of ``sum min(v_e, col_vals[p])`` over ``p in [start_e, end_e)``.

    Entry e (a stored V[i, k] of a query row) meets the slice ``[start_e, end_e)`` of column k's list of
    (row, value) pairs; every meeting adds ``min`` to ``out[ent_row_e, col_rows[p]]``. Accumulated in
    float32 like the references.
    """
    out = torch.zeros(nrows * ncols, dtype=torch.float32, device=ent_val.device)
    cnt = end - start
    total = int(cnt.sum())
    if total == 0:
        return out.view(nrows, ncols)
    shift = start - (torch.cumsum(cnt, 0) - cnt)
    pos = torch.repeat_interleave(shift, cnt)
    pos += torch.arange(total, device=pos.device)
    mins = torch.minimum(torch.repeat_interleave(ent_val, cnt), col_vals[pos])
    key = torch.repeat_interleave(ent_row * ncols, cnt)
    key += col_rows[pos]
    out.index_add_(0, key, mins)
    return out.view(nrows, ncols)


def _chunks(weights: np.ndarray, max_rows: int, max_pairs: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges holding at most max_rows rows and (unless one row alone exceeds it) max_pairs."""
    n = len(weights)
    r0 = 0
    cum = np.concatenate([[0], np.cumsum(weights)])
    while r0 < n:
        r1 = int(np.searchsorted(cum, cum[r0] + max_pairs, side="right")) - 1
        r1 = min(max(r1, r0 + 1), r0 + max_rows, n)
        yield r0, r1
        r0 = r1


@torch.no_grad()
def min_sums_symmetric_upper(
    v: sp.csr_matrix,
    *,
    device: torch.device,
    max_pairs: int = 1 << 23,
    max_buffer: int = 1 << 22,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(r0, r1, S)`` with ``S[a, j] = sum_k min(V[r0 + a, k], V[j, k])`` (float32) for ``j >= r0 + a``
    (the rest is zero).

    The Jaccard numerator, computed through an inverted index: every stored ``V[i, k]`` meets the stored entries
    of column k, so the work is the number of co-occurring pairs, not N^2. S is symmetric, so half the meetings
    suffice: with each column's rows sorted, the partners j >= i of a stored V[i, k] are the suffix of column k's
    list that starts at i's own entry.
    """
    n = v.shape[0]
    vr = v.tocsr()
    vr.sort_indices()
    ids = sp.csr_matrix((np.arange(1, vr.nnz + 1, dtype=np.float64), vr.indices, vr.indptr), shape=v.shape)
    idc = ids.tocsc()
    idc.sort_indices()
    csc_pos = np.empty(vr.nnz, dtype=np.int64)
    csc_pos[idc.data.astype(np.int64) - 1] = np.arange(vr.nnz, dtype=np.int64)
    col_ptr_np = idc.indptr.astype(np.int64)
    col_rows = torch.from_numpy(idc.indices.astype(np.int64)).to(device)
    col_vals = torch.from_numpy(vr.data[idc.data.astype(np.int64) - 1].astype(np.float32)).to(device)
    end_np = col_ptr_np[vr.indices + 1]
    meet = end_np - csc_pos
    row_pairs = np.add.reduceat(meet, vr.indptr[:-1]) if vr.nnz else np.zeros(n)
    row_pairs = np.where(np.diff(vr.indptr) > 0, row_pairs, 0)
    for r0, r1 in _chunks(row_pairs, max(1, max_buffer // max(n, 1)), max_pairs):
        e0, e1 = vr.indptr[r0], vr.indptr[r1]
        ent_v = torch.from_numpy(vr.data[e0:e1].astype(np.float32)).to(device)
        ent_row = torch.from_numpy(
            np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(vr.indptr[r0 : r1 + 1]))
        ).to(device)
        start = torch.from_numpy(csc_pos[e0:e1]).to(device)
        end = torch.from_numpy(end_np[e0:e1]).to(device)
        yield r0, r1, _join(ent_row, ent_v, start, end, col_rows, col_vals, r1 - r0, n)
