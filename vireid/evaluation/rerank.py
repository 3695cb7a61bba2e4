"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in the published arithmetic, sparse and chunked (NumPy/SciPy).

SPEC 2.5. This is the *test-time re-ranking* variant. It is not the clustering Jaccard distance
(:func:`vireid.clustering.jaccard_distance`, SPEC 2.6), which takes one fewer neighbour for the same k1
and weights neighbours by a softmax of ``2 - 2 x.y``; the two are kept under different names on purpose.

What is computed (over all Q + G samples, queries first), step by step as the reference ``re_ranking`` of
michuanhaohao/reid-strong-baseline (utils/re_ranking.py @ 061be381, the code behind published "+re-ranking" numbers;
line numbers below are that file's):

* ``A`` = squared Euclidean distances ``(|x|^2 + |y|^2) - 2 x.y`` (float32, clamped at 0);
  ``M[i, j] = A[i, j] / max_k A[i, k]`` (line 46 divides each column of the symmetric A by its maximum, then
  transposes);
* initial ranks = argsort of M's rows (line 48; we break ties by the lower index, a stable sort -- the reference's
  quicksort leaves the order of exactly equal distances unspecified: that is its *tie range*);
* ``R(i)`` = k-reciprocal set within the first ``k1 + 1`` ranks, expanded by ``R_half(j)`` (first
  ``round(k1 / 2) + 1`` ranks) of each member j when ``|R_half(j) ∩ R(i)| > 2/3 |R_half(j)|`` (lines 51-69);
* ``V[i, j] = exp(-M[i, j]) / sum`` over the expanded set, in float32 (``np.sum``'s own summation), then **stored
  as float16** (lines 47, 70-71);
* local query expansion ``V[i] <- mean of V over i's first k2 ranks`` (lines 73-78): summed in float32 in rank
  order, divided by k2, **stored as float16** (NumPy's float16 mean);
* ``s(i, g) = sum_k min(V[i, k], V[g, k])`` **accumulated in float16**, k ascending (lines 86-92), then
  ``d_J = 1 - s / (2 - s)`` in float16 (line 93);
* result = ``f16(d_J * f16(1 - lambda)) + M * f32(lambda)`` in float32, query rows x gallery columns (line 95).

``precision="float16"`` (the default) reproduces that arithmetic operation by operation, so our result equals the
reference's whenever both order exactly tied distances the same way. ``precision="float32"`` keeps V, the sums and
the Jaccard distance in float32 (the arithmetic of the original paper's description; 0.05-0.2 pp Rank-1 away from
the published numbers on our cases).

How: the kNN lists come from a blocked symmetric GEMM (each block of ``X X^T`` computed once, used for its rows and
its columns) with a stable top-k -- ordered by M, as the reference orders, checked exactly at the k-th place; the
few M values outside the kNN lists are recomputed by GEMM on row blocks (bit-identical to the full product). V is a
CSR matrix (a few dozen non-zeros per row), the query expansion is a sum of row-gathered CSR matrices in rank
order, and the Jaccard numerator is an inverted-index join, processed entry rank by entry rank so that every
(query, gallery) sum is accumulated in the reference's k order. Memory: O(N D + Q G + N k^2); no (Q + G)^2 matrix.

NumPy on the CPU throughout (no torch import). ``device="cuda"`` (or torch tensors on a GPU) computes the GEMM and
the top-k candidates there; the rest stays on the CPU.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from vireid.evaluation.neighbors import (
    concat_ranges,
    expanded_reciprocal_sets,
    half_k,
    pattern_values,
)

__all__ = ["PRECISIONS", "k_reciprocal_rerank", "k_reciprocal_rerank_distances"]

PRECISIONS = ("float16", "float32")
_MIN_MACS = 1 << 22  # GEMM blocks are padded past this many multiply-adds (see _Gram)


def _check_params(k1: int, k2: int, lambda_value: float, precision: str) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# ----------------------------------------------------------------------------------------------------------------
# float16 arithmetic on float32 arrays


def round_f16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest float16 (ties to even), kept as float32, in place (``x`` is returned).

    The same as ``x.astype(np.float16).astype(np.float32)`` for finite values below 65504, about twice as fast:
    mantissa rounding on the bits for normal float16 values, the cast for the (rare) subnormal ones.
    """
    b = x.view(np.int32)
    small = (b & 0x7FFFFFFF) < 0x38800000  # |x| < 2**-14: float16 subnormals (and zero)
    sub = x[small].astype(np.float16).astype(np.float32) if small.any() else None
    lsb = b >> 13
    lsb &= 1
    lsb += 0xFFF
    b += lsb
    b &= ~0x1FFF
    if sub is not None:
        x[small] = sub
    return x


# ----------------------------------------------------------------------------------------------------------------
# stage 1: squared distances, kNN ordered by M, row maxima


def _sq_dist(sq_i: np.ndarray, sq_j: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``(|x|^2 + |y|^2) - 2 x.y`` clamped at 0, in that rounding order (in place on ``gram``)."""
    gram *= np.float32(-2.0)
    gram += sq_i[:, None] + sq_j[None, :]
    return np.maximum(gram, np.float32(0.0), out=gram)


class _Gram:
    """Blocks of A (squared distances), from ``X_I X_J^T`` on the CPU (NumPy BLAS) or on a torch device.

    On the CPU every block is computed by BLAS's general GEMM kernel, which gives each entry the bits the full
    product ``X X^T`` gives it. Tiny products take other kernels (OpenBLAS: GEMV for one row or column, a
    "small-matrix" kernel below about 2^20 multiply-adds), with other bits; blocks are padded with neighbouring rows
    and columns past :data:`_MIN_MACS` multiply-adds so that they never do.
    """

    def __init__(self, x: np.ndarray, device: Any) -> None:
        self.x = x
        self.n = x.shape[0]
        self.sq = np.einsum("ij,ij->i", x, x)
        self.xt: Any = None
        if device is not None:
            torch = sys.modules["torch"]
            self.xt = torch.from_numpy(x).to(device)

    def _gemm(self, rows: slice, cols: slice | np.ndarray) -> np.ndarray:
        if self.xt is not None:
            torch = sys.modules["torch"]
            c = cols if isinstance(cols, slice) else torch.from_numpy(cols).to(self.xt.device)
            return (self.xt[rows] @ self.xt[c].T).cpu().numpy()
        return self.x[rows] @ self.x[cols].T

    def block(self, i0: int, i1: int, cols: slice | np.ndarray) -> np.ndarray:
        """A[i0:i1, cols] (``cols`` a slice with step 1, or sorted distinct indices), float32."""
        n, width = self.n, max(self.x.shape[1], 1)
        ncols = (cols.stop - cols.start) if isinstance(cols, slice) else cols.size
        need = -(-_MIN_MACS // width)  # rows x columns the padded product must reach
        m2 = min(n, max(i1 - i0, 2, -(-need // max(ncols, 1))))
        lo = max(0, min(i0, n - m2))
        hi = max(lo + m2, i1)
        c2 = min(n, max(ncols, 2, -(-need // (hi - lo))))
        if isinstance(cols, slice):
            j0 = max(0, min(cols.start, n - c2))
            j1 = max(j0 + c2, cols.stop)
            a = _sq_dist(self.sq[lo:hi], self.sq[j0:j1], self._gemm(slice(lo, hi), slice(j0, j1)))
            return a[i0 - lo:i1 - lo, cols.start - j0:cols.stop - j0]
        if c2 > ncols:
            pad = np.setdiff1d(np.arange(min(n, c2 + ncols)), cols)[: c2 - ncols]
            all_cols = np.union1d(cols, pad)
        else:
            all_cols = cols
        a = _sq_dist(self.sq[lo:hi], self.sq[all_cols], self._gemm(slice(lo, hi), all_cols))
        return a[i0 - lo:i1 - lo][:, np.searchsorted(all_cols, cols)]


def _full_rows(gram: _Gram, rows: np.ndarray) -> np.ndarray:
    """Full rows of A (squared distances to every sample), as the blocked pass computes them."""
    out = np.empty((rows.size, gram.n), dtype=np.float32)
    for k, r in enumerate(rows.tolist()):
        out[k] = gram.block(r, r + 1, slice(0, gram.n))[0]
    return out


class _Candidates:
    """The ``kc`` nearest samples (by A) seen so far by each row of one row block: values, indices, and a threshold.

    Invariant: every sample offered to a row and not kept is at least as far as all of the row's kept candidates.
    Each offered block is screened against a per-row bound on the kc-th smallest value (the kept set's maximum; on
    a row's first offer, the kc-th smallest of the block's first few columns) so that only the entries below it are
    merged.
    """

    def __init__(self, rows: int, kc: int) -> None:
        self.kc = kc
        self.v = np.full((rows, kc), np.inf, dtype=np.float32)
        self.i = np.full((rows, kc), -1, dtype=np.int64)
        self.empty = True

    def offer(self, d: np.ndarray, offset: int) -> None:
        kc = self.kc
        thr = self.v.max(axis=1)
        if self.empty and d.shape[1] > kc:
            # the rows' first offer: the kc-th smallest of the first few columns bounds the kc-th smallest of all
            m = min(d.shape[1], max(8 * kc, 256))
            thr = np.partition(d[:, :m], kc - 1, axis=1)[:, kc - 1]
        self.empty = False
        r, c = np.nonzero(d <= thr[:, None])
        if r.size == 0:
            return
        cnt = np.bincount(r, minlength=d.shape[0])
        rr = np.nonzero(cnt)[0]
        c_rr = cnt[rr]
        local = np.repeat(np.arange(rr.size), c_rr)
        slot = np.arange(r.size) - np.repeat(np.cumsum(c_rr) - c_rr, c_rr)
        width = int(c_rr.max())
        pv = np.full((rr.size, width), np.inf, dtype=np.float32)
        pi = np.full((rr.size, width), -1, dtype=np.int64)
        pv[local, slot] = d[r, c]
        pi[local, slot] = c + offset
        allv = np.concatenate([self.v[rr], pv], axis=1)
        alli = np.concatenate([self.i[rr], pi], axis=1)
        sel = np.argpartition(allv, kc - 1, axis=1)[:, :kc]
        self.v[rr] = np.take_along_axis(allv, sel, 1)
        self.i[rr] = np.take_along_axis(alli, sel, 1)


def _knn(gram: _Gram, k: int, kc: int, block_size: int,
         sink: Callable[[int, int, int, int, np.ndarray], None]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first k neighbours in the reference's order -- by M = A / row max, ties by the lower index.

    Returns (indices [N, k] int64, their A values [N, k], the row maxima [N], and the ``kc`` (>= k) nearest
    candidates' indices and A values [N, kc], unordered, for value look-ups). ``sink(i0, i1, j0, j1, A)`` sees
    every computed block of A (j0 >= i0; the block below the diagonal is its transpose).

    M is monotone in A, so every sample left out of a row's candidates has an M at least that of the row's farthest
    candidate; the first k by (M, index) among the candidates are the row's first k overall unless the k-th ties
    with that bound -- such rows (exact ties at the boundary, e.g. duplicated features) are recomputed in full.
    """
    n = gram.n
    k = min(k, n)
    kc = min(max(kc, k + 2), n)
    starts = list(range(0, n, block_size))
    cands = [_Candidates(min(i0 + block_size, n) - i0, kc) for i0 in starts]
    rowmax = np.full(n, -np.inf, dtype=np.float32)

    for bi, i0 in enumerate(starts):
        i1 = min(i0 + block_size, n)
        for bj in range(bi, len(starts)):
            j0 = starts[bj]
            j1 = min(j0 + block_size, n)
            d = gram.block(i0, i1, slice(j0, j1))
            sink(i0, i1, j0, j1, d)
            cands[bi].offer(d, j0)
            np.maximum(rowmax[i0:i1], d.max(axis=1), out=rowmax[i0:i1])
            if bj > bi:
                cands[bj].offer(d.T, i0)
                np.maximum(rowmax[j0:j1], d.max(axis=0), out=rowmax[j0:j1])
    vals = np.concatenate([c.v for c in cands])
    idx = np.concatenate([c.i for c in cands])
    del cands
    m = vals / rowmax[:, None]  # M as the reference computes it: a float32 division
    order = np.lexsort((idx, m), axis=-1)[:, :k]
    nn = np.take_along_axis(idx, order, 1)
    nn_a = np.take_along_axis(vals, order, 1)
    if kc < n:
        # the farthest candidate bounds every sample left out
        bound = vals.max(axis=1) / rowmax
        redo = np.nonzero(np.take_along_axis(m, order[:, k - 1:k], 1)[:, 0] >= bound)[0]
        for r, a_row in zip(redo.tolist(), _full_rows(gram, redo)):
            full_order = np.argsort(a_row / rowmax[r], kind="stable")[:k]
            nn[r] = full_order
            nn_a[r] = a_row[full_order]
    return nn, nn_a, rowmax, idx, vals


def _pair_sq_dist(gram: _Gram, pattern: sp.csr_matrix, rows_per_block: int = 32) -> np.ndarray:
    """A at every stored (i, j) of a CSR pattern (in CSR order), from GEMMs of row blocks x the columns they need.

    Small row blocks keep the GEMMs cheap (only the columns the block needs); :meth:`_Gram.block` pads them so that
    each value has the bits of the full product.
    """
    n = pattern.shape[0]
    out = np.empty(pattern.nnz, dtype=np.float32)
    rows_with = np.nonzero(np.diff(pattern.indptr))[0]
    a = 0
    while a < rows_with.size:
        i0 = int(rows_with[a])
        i1 = min(i0 + rows_per_block, n)
        e0, e1 = pattern.indptr[i0], pattern.indptr[i1]
        cols = np.unique(pattern.indices[e0:e1])
        block = gram.block(i0, i1, cols)
        r = np.repeat(np.arange(i1 - i0), np.diff(pattern.indptr[i0:i1 + 1]))
        out[e0:e1] = block[r, np.searchsorted(cols, pattern.indices[e0:e1])]
        a = int(np.searchsorted(rows_with, i1))
    return out


# ----------------------------------------------------------------------------------------------------------------
# stage 2: V, query expansion, Jaccard


def _weights(expanded: sp.csr_matrix, m_vals: np.ndarray, precision: str) -> sp.csr_matrix:
    """V: ``exp(-M)`` over each expanded set divided by its sum (float32, ``np.sum`` per row as the reference sums),
    rounded to float16 values for ``precision="float16"`` (kept in a float32 CSR matrix)."""
    n = expanded.shape[0]
    w = np.exp(-m_vals)
    ptr = expanded.indptr
    sums = np.ones(n, dtype=np.float32)
    for i in np.nonzero(np.diff(ptr))[0].tolist():
        sums[i] = w[ptr[i]:ptr[i + 1]].sum()  # NumPy's pairwise float32 sum of the row, like the reference's
    w /= np.repeat(sums, np.diff(ptr))
    if precision == "float16":
        round_f16(w)
    v = sp.csr_matrix((w, expanded.indices, ptr), shape=(n, n))
    v.eliminate_zeros()
    return v


def _expand(v: sp.csr_matrix, nn: np.ndarray, k2: int, precision: str) -> sp.csr_matrix:
    """Local query expansion: ``V[i] <- (sum over t < k2 of V[nn[i, t]]) / k2``.

    Summed in float32 in rank order t = 0, 1, ... (one CSR addition per t: each stored sum is the previous sum plus
    the new term, exactly NumPy's float32 reduction over the rows of ``V[ranks]`` in the reference's float16 mean),
    divided by k2 in float32, then rounded to float16 values for ``precision="float16"``. k2 == 1 skips the step.
    """
    if k2 == 1:
        return v
    k2 = min(k2, nn.shape[1])
    acc = v[nn[:, 0]]
    for t in range(1, k2):
        acc = acc + v[nn[:, t]]
    acc = acc.tocsr()
    acc.data /= np.float32(k2)
    if precision == "float16":
        round_f16(acc.data)
    acc.eliminate_zeros()
    acc.sort_indices()
    return acc


def _jaccard_sums(v: sp.csr_matrix, nq: int, precision: str, max_pairs: int = 1 << 22,
                  max_buffer: int = 1 << 24) -> np.ndarray:
    """``S[i, g] = sum_k min(V[i, k], V[g, k])`` for query rows i < nq and gallery rows g >= nq ([Q, G] float32).

    The reference adds the terms of each (i, g) in ascending k, rounding every partial sum to float16. Here the
    stored entries of each query row (sorted by k) meet the gallery entries of their column through a CSC index;
    meetings are processed in rounds -- round e holds every query row's e-th entry -- so that within a round each
    (i, g) receives at most one term and the terms of a pair arrive in ascending k. float16: each partial sum is
    rounded to float16; float32: plain float32 partial sums, same order.
    """
    n = v.shape[0]
    ng = n - nq
    vq = v[:nq].tocsr()
    vq.sort_indices()
    vg = v[nq:].tocsc()
    vg.sort_indices()
    col_ptr = vg.indptr.astype(np.int64)
    col_rows = vg.indices.astype(np.int64)
    col_vals = vg.data.astype(np.float32)
    out = np.zeros((nq, ng), dtype=np.float32)
    if vq.nnz == 0 or ng == 0:
        return out
    ent_k = vq.indices.astype(np.int64)
    ent_cnt = col_ptr[ent_k + 1] - col_ptr[ent_k]
    row_pairs = np.add.reduceat(ent_cnt, vq.indptr[:-1]) * (np.diff(vq.indptr) > 0)
    cum = np.concatenate([[0], np.cumsum(row_pairs)])
    f16 = precision == "float16"
    r0 = 0
    while r0 < nq:
        r1 = int(np.searchsorted(cum, cum[r0] + max_pairs, side="right")) - 1
        r1 = min(max(r1, r0 + 1), r0 + max(1, max_buffer // max(ng, 1)), nq)
        e0, e1 = vq.indptr[r0], vq.indptr[r1]
        lens = np.diff(vq.indptr[r0:r1 + 1])
        rank = np.arange(e1 - e0) - np.repeat(vq.indptr[r0:r1] - e0, lens)  # entry's position in its row
        order = np.argsort(rank, kind="stable")  # round by round; rows in order within a round
        ent = e0 + order
        cnt = ent_cnt[ent]
        pos = concat_ranges(col_ptr[ent_k[ent]], col_ptr[ent_k[ent] + 1])
        target = np.repeat((np.repeat(np.arange(r0, r1), lens)[order] - r0) * ng, cnt) + col_rows[pos]
        terms = np.minimum(np.repeat(vq.data[ent].astype(np.float32), cnt), col_vals[pos])
        bounds = np.concatenate([[0], np.cumsum(np.bincount(rank[order], weights=cnt, minlength=int(lens.max()))
                                                .astype(np.int64))])
        acc = out[r0:r1].reshape(-1)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            t = target[a:b]
            s = acc[t]
            s += terms[a:b]
            acc[t] = round_f16(s) if f16 else s
        r0 = r1
    return out


def _combine(s: np.ndarray, m_qg: np.ndarray, lambda_value: float, precision: str) -> np.ndarray:
    """``(1 - lambda) d_J + lambda M`` from the Jaccard sums ``s`` (in place on ``m_qg``).

    float16: ``d_J = f16(1 - f16(s / f16(2 - s)))`` and ``f16(d_J * f16(1 - lambda))``, every step one float16
    operation (reference lines 93 and 95: float16 arrays with Python scalars stay float16), plus ``M * f32(lambda)``
    in float32. float32: the same formula in float32.
    """
    m_qg *= np.float32(lambda_value)
    if precision == "float16":
        jac = round_f16(np.float32(2.0) - s)
        np.divide(s, jac, out=jac)
        round_f16(jac)
        np.subtract(np.float32(1.0), jac, out=jac)
        round_f16(jac)
        jac *= np.float32(np.float16(1.0 - lambda_value))
        round_f16(jac)
    else:
        jac = np.float32(1.0) - s / (np.float32(2.0) - s)
        jac *= np.float32(1.0 - lambda_value)
    m_qg += jac
    return m_qg


def _rerank(gram: _Gram, nq: int, k1: int, k2: int, lambda_value: float, precision: str,
            block_size: int) -> np.ndarray:
    n = gram.n
    original_qg = np.empty((nq, n - nq), dtype=np.float32)

    def keep_query_gallery(i0: int, i1: int, j0: int, j1: int, d: np.ndarray) -> None:
        # rows i0:i1 x cols j0:j1, and (j0 >= i0) its transpose: keep the query-row, gallery-column parts.
        for a0, a1, b0, b1, block in ((i0, i1, j0, j1, d), (j0, j1, i0, i1, d.T)):
            r1, c0 = min(a1, nq), max(b0, nq)
            if a0 < r1 and c0 < b1:
                original_qg[a0:r1, c0 - nq:b1 - nq] = block[: r1 - a0, c0 - b0:]

    # the expanded sets reach a little beyond the k1 + 1 nearest: 2 (k1 + 1) candidates answer most value look-ups
    nn, _, rowmax, cand_i, cand_a = _knn(gram, max(k1 + 1, k2), 2 * (k1 + 1), block_size, keep_query_gallery)
    expanded = expanded_reciprocal_sets(nn, min(k1 + 1, n), min(half_k(k1) + 1, n))
    a_vals = pattern_values(expanded, cand_i, cand_a, lambda missing: _pair_sq_dist(gram, missing))
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))
    v = _weights(expanded, a_vals / rowmax[rows], precision)
    v = _expand(v, nn, k2, precision)
    original_qg /= rowmax[:nq, None]  # M, query rows x gallery columns
    return _combine(_jaccard_sums(v, nq, precision), original_qg, lambda_value, precision)


def _as_numpy_features(x: Any) -> tuple[np.ndarray, Any]:
    """float32 NumPy features and the torch device they live on (None for NumPy or CPU tensors)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        dev = x.device if x.device.type != "cpu" else None
        return x.detach().float().cpu().numpy(), dev
    return np.asarray(x, dtype=np.float32), None


def k_reciprocal_rerank(
    query_features: Any,
    gallery_features: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    precision: str = "float16",
    normalize: bool = True,
    device: Any = None,
    block_size: int = 2048,
) -> np.ndarray:
    """Re-ranked query x gallery distance [Q, G] (float32 NumPy), from features (NumPy arrays or torch tensors).

    ``precision``: "float16" (default) reproduces the published re-ranking's float16 V and Jaccard arithmetic (see
    the module docstring), "float32" keeps them in float32. ``normalize=True`` (default) L2-normalises the features
    first (``x / max(||x||, 1e-12)``), as every protocol in SPEC 2 does before taking Euclidean distances, so raw
    model outputs can be passed; with ``normalize=False`` the features are used as given. ``device``: None/"cpu"
    computes everything with NumPy; a torch device (or tensors on a GPU) computes the GEMM blocks there. Peak memory
    is about ``(Q + G) x D`` features + the ``Q x G`` output + a few ``block_size^2`` blocks.

    Example::

        >>> q = np.random.rand(5, 8).astype("float32"); g = np.random.rand(30, 8).astype("float32")
        >>> k_reciprocal_rerank(q, g, k1=5, k2=2).shape
        (5, 30)
    """
    _check_params(k1, k2, lambda_value, precision)
    q, qdev = _as_numpy_features(query_features)
    g, gdev = _as_numpy_features(gallery_features)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or len(q) == 0 or len(g) == 0:
        raise ValueError(
            f"query and gallery features must be non-empty [Q, D] and [G, D], got {tuple(q.shape)} and {tuple(g.shape)}"
        )
    x = np.concatenate([q, g], axis=0)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    dev = device if device is not None and str(device).split(":")[0] != "cpu" else (qdev or gdev)
    if dev is not None:
        import torch

        dev = torch.device(dev)
    return _rerank(_Gram(np.ascontiguousarray(x), dev), len(q), k1, k2, lambda_value, precision, block_size)


def k_reciprocal_rerank_distances(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    precision: str = "float16",
) -> np.ndarray:
    """Re-ranking from precomputed (non-squared) Euclidean distances, the original paper's signature.

    The distances are squared (float32) and assembled into the (Q + G)^2 matrix the caller already holds the parts
    of; then the same steps as :func:`k_reciprocal_rerank` (``precision`` likewise).
    """
    _check_params(k1, k2, lambda_value, precision)
    nq, ng = q_g_dist.shape
    if q_q_dist.shape != (nq, nq) or g_g_dist.shape != (ng, ng):
        raise ValueError(
            f"distance shapes disagree: q_g {q_g_dist.shape}, q_q {q_q_dist.shape}, g_g {g_g_dist.shape}"
        )
    a = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    a = np.power(a, 2).astype(np.float32)
    n = a.shape[0]
    rowmax = a.max(axis=1)
    k = min(max(k1 + 1, k2), n)
    m = a / rowmax[:, None]
    nn = np.argsort(m, axis=1, kind="stable")[:, :k]
    expanded = expanded_reciprocal_sets(nn, min(k1 + 1, n), min(half_k(k1) + 1, n))
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))
    v = _weights(expanded, m[rows, expanded.indices], precision)
    v = _expand(v, nn, k2, precision)
    return _combine(_jaccard_sums(v, nq, precision), np.ascontiguousarray(m[:nq, nq:]), lambda_value, precision)
