"""Vectorised retrieval metrics: standard and identity-level CMC, AP, INP (SPEC section 2).

Arrays in, arrays out. One entry point, :func:`evaluate_ranking`, takes a query x gallery distance matrix (or a
callable that produces it chunk by chunk), the query and gallery identities, and a *removal rule*, and returns the
per-query ranks/AP/INP plus the aggregated CMC curve, mAP and mINP.

Definitions (SPEC 2), for one query with the gallery sorted by ascending distance (stable: ties keep gallery index
order) and the removed entries dropped ("kept" list):

- the query is *invalid* when no kept entry has its pid; invalid queries are excluded from mAP, mINP and the CMC
  divisor;
- standard CMC: ``cmc[k] = 1`` when a match is among kept ranks ``0..k``;
- identity-level CMC: keep only the first occurrence of every pid in the kept list, then ``cmc[k] = 1`` when the
  query pid is among the first ``k + 1`` distinct pids (equivalently: rank identities by their minimum distance);
- AP: mean over the matches of (#matches up to this rank) / (1-based rank in the kept list);
- INP: (#matches) / (1-based rank of the last match in the kept list).

Removal rule: gallery entry ``j`` is removed for query ``i`` when ``query_remove_keys[i] == gallery_remove_keys[j]``
(int64 keys). That single rule covers the SYSU cam3-loses-cam2 rule, the official location rule and
"same pid and same camera" (key = a code of the (pid, cam) pair); use disjoint keys (e.g. -1 vs -2) to remove
nothing.

How it is computed (and why it is exact): in the stable order, a match at gallery column ``j`` with distance ``t``
sits at kept rank ``#{kept l: d_l < t} + #{kept l: d_l == t, l < j}``. So per chunk of queries we sort only the
distance *values* (removed entries set to +inf so they sort last and are never counted) and binary-search the
matches' distances in them -- no argsort, no gathering of pids. The second term (exact ties, common with float32
distances) is computed only for the (query, match) pairs whose value occurs more than once in the row, from the few
equal entries. The identity rank of the query is the number of distinct ids among the kept entries that come
before its first match (smaller distance, or equal distance and lower column) -- usually a handful of entries.
``method="sort"`` implements the definitions with one full stable argsort per row instead; both are tested
against the per-query loop of :mod:`vireid.evaluation.reference`, and "fast" measured 2-4x faster (benchmarks/).

Backends: NumPy arrays (and callables returning them) are evaluated with NumPy on the CPU -- the value sort runs on
row blocks in threads, the binary search is one ``searchsorted`` over the block's rows laid end to end as int64
keys. This module does not import torch. Torch tensors, or a non-CPU ``device`` (a GPU), go to the same steps in
torch (:mod:`vireid.evaluation._metrics_torch`, imported only then).

Several trials with the same queries (SYSU-MM01's ten galleries drawn from one test pool): :func:`evaluate_trials`
takes the queries x union-of-galleries distances and each trial's gallery columns. Its union path sorts each query's
union row once -- int64 keys ``distance bits << b | tie rank`` -- instead of once per trial, and reads every trial's
ranks from running sums of packed per-trial membership counters along the sorted row. The tie rank is one order of
the union columns that agrees, on entries of different identities, with every trial's own gallery order (the
trial's stable tie-break); swapping equally distant entries of one identity changes no metric, so the result is the
per-trial definition exactly. When no such order exists it evaluates trial by trial. Small galleries (SYSU-MM01
single-shot, LLCM, RegDB) go the blocked path instead of the per-trial one: blocks of query rows, every trial of a
block at once -- each trial's gallery laid out as a grid of identities, its int32 distance keys sorted, the matches
found by binary search, exact ties recounted with the gallery positions: the per-trial numbers, to the bit.

Max rank: the CMC curve always has ``max_rank`` entries. When the gallery (or, identity-level, the number of
distinct gallery identities) is shorter than ``max_rank``, the curve is padded with its last value -- a query found
at the last rank stays found -- instead of being truncated as the reference code does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Union

import numpy as np

from vireid.errors import FeaturesError
from vireid.evaluation.gallery_index import GalleryIndex, prepare_gallery

if TYPE_CHECKING:
    import torch

CmcKind = Literal["standard", "identity"]
Method = Literal["fast", "sort"]
DistanceChunkFn = Callable[[int, int], Any]
DistanceInput = Union[np.ndarray, "torch.Tensor", DistanceChunkFn]
DeviceLike = Union[str, "torch.device", None]

__all__ = [
    "RankingResult",
    "evaluate_ranking",
    "evaluate_trials",
    "feature_distance_fn",
    "l2_normalize",
    "pair_keys",
    "pairwise_distance",
    "prepare_gallery",
]


@dataclass(frozen=True)
class RankingResult:
    """Metrics of one query set against one gallery.

    Fractions are in 0..1 here; :meth:`summary` gives the percent values the reports use.

    Attributes:
        cmc: [max_rank] CMC curve (standard or identity-level, see ``cmc_kind``).
        mAP: mean AP over valid queries.
        mINP: mean INP over valid queries.
        num_query: number of queries (valid or not).
        num_valid: number of valid queries (with at least one kept match).
        num_gallery: gallery size (before removal).
        rank: [Q] 0-based rank of the first match (standard CMC) or of the query identity (identity-level) in the
            kept list; -1 for invalid queries.
        ap: [Q] per-query AP, NaN for invalid queries.
        inp: [Q] per-query INP, NaN for invalid queries.
        cmc_kind: "standard" or "identity".
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_query: int
    num_valid: int
    num_gallery: int
    rank: np.ndarray = field(repr=False)
    ap: np.ndarray = field(repr=False)
    inp: np.ndarray = field(repr=False)
    cmc_kind: str = "standard"

    @property
    def valid(self) -> np.ndarray:
        """[Q] bool: which queries have at least one kept match."""
        return self.rank >= 0

    def summary(self) -> dict[str, float | int | list[float]]:
        """Rank-1/5/10/20, mAP, mINP in percent, the CMC curve in percent, and the counts."""
        pct = [float(v) * 100.0 for v in self.cmc]

        def at(k: int) -> float:
            return pct[min(k, len(pct)) - 1]

        return {
            "rank1": at(1), "rank5": at(5), "rank10": at(10), "rank20": at(20),
            "mAP": self.mAP * 100.0, "mINP": self.mINP * 100.0, "cmc": pct,
            "num_query": self.num_query, "num_valid": self.num_valid, "num_gallery": self.num_gallery,
        }


# ----------------------------------------------------------------------------------------------------------------
# backends


def is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor -- answered without importing torch (no tensor exists unless it is loaded)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(x, torch_mod.Tensor)


def _on_accelerator(device: DeviceLike) -> bool:
    """A device other than the CPU was asked for (the torch backend computes there)."""
    return device is not None and str(device).split(":")[0] != "cpu"


def _num_threads() -> int:
    """CPU threads for the NumPy block loops: OMP_NUM_THREADS when set, else the CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def progress_bar(iterable: Any, **kwargs: Any) -> Any:
    """``tqdm(iterable, leave=False, disable=None, **kwargs)``: a progress bar where stderr is a terminal.

    Elsewhere tqdm would disable itself (``disable=None``) and only pass the items through; then the iterable is
    returned as is, without importing tqdm (tens of milliseconds of a short command).
    """
    stream = sys.stderr
    if hasattr(stream, "isatty") and not stream.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, leave=False, disable=None, **kwargs)


def _run_blocks(block: Callable[[int], None], starts: range, progress: bool) -> None:
    """``block(a)`` for every start of a block of rows, in parallel threads (NumPy releases the GIL).

    Each block runs in a copy of the caller's context, so the caller's ``np.errstate`` holds in the threads too.
    """
    workers = max(1, min(_num_threads(), len(starts)))
    with ThreadPoolExecutor(workers) as pool:
        done: Any = pool.map(lambda ctx_a: ctx_a[0].run(block, ctx_a[1]), [(copy_context(), a) for a in starts])
        if progress:
            done = progress_bar(done, total=len(starts), desc="query blocks", unit="block")
        for _ in done:
            pass


# ----------------------------------------------------------------------------------------------------------------
# distances


def l2_normalize(x: Any, eps: float = 1e-12) -> Any:
    """Row-wise L2 normalisation (a zero row stays zero instead of becoming NaN); NumPy in, NumPy out (float32).

    A torch tensor is normalised in torch on its device. The NumPy formula is the one the re-ranking reference uses
    (``x / max(||x||, eps)``), so both see bit-identical unit vectors.
    """
    if is_tensor(x):
        from vireid.evaluation._metrics_torch import l2_normalize_torch

        return l2_normalize_torch(x, eps)
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(eps))


def feature_distance_fn(
    query_features: Any,
    gallery_features: Any,
    *,
    normalize: bool = True,
    device: DeviceLike = None,
) -> DistanceChunkFn:
    """A chunk callable ``f(start, stop) -> [stop-start, G]`` of Euclidean distances between the features.

    With ``normalize`` the features are L2-normalised first, so the distance is ``sqrt(max(2 - 2 cos, 0))`` (the
    same ranking as cosine similarity). Nothing of size Q x G is allocated here; :func:`evaluate_ranking` asks for
    as many query rows at a time as its memory budget allows. NumPy features give NumPy float32 rows; torch tensors
    or a non-CPU ``device`` give torch rows computed on that device.
    """
    if is_tensor(query_features) or is_tensor(gallery_features) or _on_accelerator(device):
        from vireid.evaluation._metrics_torch import feature_distance_fn_torch

        return feature_distance_fn_torch(query_features, gallery_features, normalize=normalize, device=device)
    qf = np.ascontiguousarray(query_features, dtype=np.float32)
    gf = np.ascontiguousarray(gallery_features, dtype=np.float32)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise FeaturesError(
            f"query features {tuple(qf.shape)} and gallery features {tuple(gf.shape)} must be 2-D with the same "
            "feature dimension"
        )
    for name, f in (("query", qf), ("gallery", gf)):
        finite = np.isfinite(f).all(1)
        if not finite.all():
            _raise_nonfinite(name, int((~finite).sum()))
    if normalize:
        qf, gf = l2_normalize(qf), l2_normalize(gf)
        qsq = gsq = None
    else:
        qsq, gsq = np.einsum("ij,ij->i", qf, qf), np.einsum("ij,ij->i", gf, gf)
    return _distance_chunks(qf, gf, qsq, gsq)


def _raise_nonfinite(name: str, rows: int) -> NoReturn:
    raise FeaturesError(f"{name} features have NaN or infinite values in {rows} rows; expected finite numbers")


def _distance_chunks(qf: np.ndarray, gf: np.ndarray, qsq: np.ndarray | None, gsq: np.ndarray | None,
                     sim: np.ndarray | None = None) -> DistanceChunkFn:
    """The NumPy chunk callable of :func:`feature_distance_fn` for checked float32 features: with the rows'
    squared norms ``sqrt(max(qsq + gsq - 2 q.g, 0))``, without them (unit rows) ``sqrt(max(2 - 2 q.g, 0))``.

    ``sim``: the whole ``qf @ gf.T``, computed once by the caller (one BLAS call for all rows); a chunk then reads
    its rows of it (the same bits: BLAS computes every row block of a product alike) into a fresh array.
    """
    gt = gf.T  # a view: BLAS reads it transposed, no copy

    def chunk(start: int, stop: int) -> np.ndarray:
        if sim is None:
            d = qf[start:stop] @ gt
            d *= np.float32(-2.0)
        else:
            d = np.multiply(sim[start:stop], np.float32(-2.0))
        if qsq is None or gsq is None:
            d += np.float32(2.0)
        else:
            d += gsq[None, :]
            d += qsq[start:stop, None]
        np.maximum(d, np.float32(0.0), out=d)
        return np.sqrt(d, out=d)

    chunk.shape = (qf.shape[0], gf.shape[0])  # type: ignore[attr-defined]
    # fresh, finite (features are checked above), >= +0.0 arrays: evaluate_ranking may skip its checks
    chunk.fresh_finite = True  # type: ignore[attr-defined]
    return chunk


def unit_rows(x: np.ndarray, rows: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """``l2_normalize(x[rows])`` bit for bit, and its rows' float32 squared norms ``einsum("ij,ij->i")`` (NaN or inf
    exactly for the rows that are not finite), computed by blocks of rows that stay in cache, in parallel threads.

    ``x``: a C-contiguous float32 [N, D] array; ``rows``: [n] row indices.
    """
    rows = np.asarray(rows, dtype=np.intp)
    n, dim = rows.size, x.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    sq = np.empty(n, dtype=np.float32)
    step = max(1, 2**20 // max(4 * dim, 1))  # blocks of ~1 MB

    def block(a: int) -> None:
        b = min(n, a + step)
        blk = out[a:b]
        np.take(x, rows[a:b], axis=0, out=blk)
        # the per-row reductions do not depend on the other rows of the block: the same bits as on the whole array
        np.divide(blk, np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), np.float32(eps)), out=blk)
        sq[a:b] = np.einsum("ij,ij->i", blk, blk)

    _run_blocks(block, range(0, n, step), progress=False)
    return out, sq


def feature_rows_distance_fn(features: np.ndarray, query_rows: np.ndarray, gallery_rows: np.ndarray
                             ) -> DistanceChunkFn:
    """``feature_distance_fn(l2_normalize(features[query_rows]), l2_normalize(features[gallery_rows]),
    normalize=False)`` bit for bit (NumPy, float32 C-contiguous ``features``), gathering, normalising and checking
    the rows in one pass over them (:func:`unit_rows`). Unlike :func:`feature_distance_fn` it computes all the
    [Q, G] products at once (one BLAS call, float32): for callers that evaluate the whole matrix anyway.

    Raises:
        FeaturesError: NaN or infinite values, with the same message as :func:`feature_distance_fn`.
    """
    qf, qsq = unit_rows(features, query_rows)
    gf, gsq = unit_rows(features, gallery_rows)
    for name, sq in (("query", qsq), ("gallery", gsq)):
        bad = ~np.isfinite(sq)  # a row's squared norm is finite exactly when the (unit) row is
        if bad.any():
            _raise_nonfinite(name, int(bad.sum()))
    # the products once, with every BLAS thread; chunks (blocks of queries evaluated in parallel threads) turn their
    # rows into distances where they are used
    return _distance_chunks(qf, gf, qsq, gsq, sim=qf @ gf.T)


def pairwise_distance(
    query_features: Any,
    gallery_features: Any,
    *,
    normalize: bool = True,
    device: DeviceLike = None,
) -> Any:
    """The full [Q, G] distance matrix of :func:`feature_distance_fn` (float32; NumPy, or torch for tensor input)."""
    fn = feature_distance_fn(query_features, gallery_features, normalize=normalize, device=device)
    q, _ = fn.shape  # type: ignore[attr-defined]
    return fn(0, q)


def pair_keys(*columns: np.ndarray) -> np.ndarray:
    """One int64 code per distinct tuple of the given columns (e.g. (pid, camid)) -- a removal key.

    ``pair_keys(pids, camids)`` for query and gallery *concatenated* gives keys that are equal exactly when pid and
    camera are equal: the "same pid and same camera" removal rule.
    """
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)
    _, inverse = np.unique(stacked, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# ranking (NumPy backend)


def _sort_rows(x: np.ndarray) -> np.ndarray:
    """Ascending sort of each row's values (a new array): NumPy's SIMD sort on row blocks in parallel threads.

    NumPy releases the GIL while sorting, so blocks of rows sort in parallel. Values only: stability is irrelevant.
    """
    out = x.copy()
    n_threads = max(1, min(_num_threads(), out.shape[0]))
    if n_threads == 1 or out.size < 200_000:
        out.sort(axis=1)
        return out
    bounds = np.linspace(0, out.shape[0], n_threads + 1).astype(int)

    def work(i: int) -> None:
        out[bounds[i]:bounds[i + 1]].sort(axis=1)

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(work, range(n_threads)))
    return out


def _order_keys32(x: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the float32 values: equal keys for equal values (-0.0 and +0.0 too)."""
    bits = x.view(np.int32)
    if bits.size == 0 or bits.min() >= 0:  # no negative value (distances): the bits are in order already
        return bits.astype(np.int64)
    keys = bits.astype(np.int64)
    return np.where(keys < 0, (keys ^ 0x7FFFFFFF) + 1, keys)  # -0.0 -> 0, like +0.0


def _rowwise_searchsorted(s: np.ndarray, t: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``left[r, k] = searchsorted(s[r], t[r, k], 'left')`` for the first ``n[r]`` entries of each row of ``t``.

    Rows of sorted ``s`` that are short (float32, fewer than 1,024 columns: many rows per chunk) are laid end to end
    as int64 keys ``row << 32 | order bits`` -- one sorted array, one search; long rows (or float64) are searched
    row by row, only their first ``n[r]`` values (the rest of ``t`` is padding: its result is G - 1).
    """
    c, G = s.shape
    if s.dtype == np.float32 and t.dtype == np.float32 and G < 1024:
        base = np.arange(c, dtype=np.int64)[:, None] << 32
        flat = (_order_keys32(s) + base).reshape(-1)
        pos = np.searchsorted(flat, (_order_keys32(t) + base).reshape(-1), side="left").reshape(t.shape)
        return np.minimum(pos - np.arange(c, dtype=np.int64)[:, None] * G, G - 1)
    out = np.full(t.shape, G - 1, dtype=np.int64)
    for r in np.nonzero(n)[0].tolist():
        out[r, : n[r]] = np.searchsorted(s[r], t[r, : n[r]], side="left")
    return out


RowMetrics = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _rows_sorted(d: np.ndarray, removed: np.ndarray | None, q_idx: np.ndarray, prep: GalleryIndex) -> RowMetrics:
    """Exact metrics of a block of rows from a full stable argsort: the SPEC definitions, vectorised.

    Returns (first-match rank, identity rank, AP, INP), ranks -1 and AP/INP NaN for invalid rows.
    """
    c = d.shape[0]
    order = np.argsort(d, axis=1, kind="stable")
    gp = prep.g_idx[order]
    kept = np.ones_like(gp, dtype=bool) if removed is None else ~np.take_along_axis(removed, order, 1)
    match = (gp == q_idx[:, None]) & kept
    pos = np.cumsum(kept, axis=1, dtype=np.int64) - 1  # 0-based rank within the kept list
    n = match.sum(1)
    valid = n > 0
    first = np.where(match, pos, np.iinfo(np.int64).max).min(1)
    last = np.where(match, pos, -1).max(1)
    cm = np.cumsum(match, axis=1, dtype=np.float64)
    ap_sum = np.where(match, cm / np.maximum(pos + 1, 1), 0.0).sum(1)
    ap = np.where(valid, ap_sum / np.maximum(n, 1), np.nan)
    inp = np.where(valid, n / np.maximum(last + 1, 1), np.nan)
    # identity rank: distinct other ids among kept entries ranked before the first match
    before = kept & (pos < first[:, None]) & (gp != q_idx[:, None])
    seen = np.zeros((c, max(prep.n_ids, 1)), dtype=bool)
    rr, cc = np.nonzero(before)
    seen[rr, gp[rr, cc]] = True
    id_rank = seen.sum(1).astype(np.int64)
    return np.where(valid, first, -1), np.where(valid, id_rank, -1), ap, inp


def _rows_fast(d: np.ndarray, removed: np.ndarray | None, q_idx: np.ndarray, prep: GalleryIndex,
               need_identity: bool) -> RowMetrics:
    """Same outputs as :func:`_rows_sorted`, from a value sort + binary search, ties corrected exactly.

    A match at gallery column ``j`` with distance ``t`` sits at kept rank ``#{kept l: d_l < t}`` plus
    ``#{kept l: d_l == t, l < j}`` (stable order). The first term is a binary search in the sorted values; the second
    is only computed for the (row, match) pairs whose value occurs more than once in the row. ``d`` is modified in
    place (removed entries become +inf): callers pass a private copy without -0.0.
    """
    c, G = d.shape
    dk = d
    if removed is not None:
        dk[removed] = np.inf
    has_id = q_idx >= 0
    cols = prep.id_cols[np.maximum(q_idx, 0)]  # [c, M], ascending columns, padded with G
    col_ok = (cols < G) & has_id[:, None]
    cols_c = np.minimum(cols, G - 1)
    md = np.take_along_axis(dk, cols_c, 1)
    md[~col_ok] = np.inf
    perm = np.argsort(md, axis=1, kind="stable")  # by (distance, column): the stable order of the matches
    t = np.take_along_axis(md, perm, 1)
    tcol = np.take_along_axis(cols_c, perm, 1)
    finite = np.isfinite(t)
    n = finite.sum(1)
    valid = n > 0
    s = _sort_rows(dk)
    left = _rowwise_searchsorted(s, t, n)
    # s[left] is t itself (or an equal value); t is tied with another kept entry iff the next value is equal too
    nxt = np.take_along_axis(s, np.minimum(left + 1, G - 1), 1)
    tied = (nxt == t) & (left + 1 < G) & finite
    rank = left
    pr, pk = np.nonzero(tied)
    step = max(1, (64 << 20) // (G + 1))
    for a in range(0, pr.size, step):
        r, k = pr[a:a + step], pk[a:a + step]
        # the few entries equal to each tied match distance, before the match's column: counted per pair
        eq = (dk[r] == t[r, k][:, None]) & (np.arange(G)[None, :] < tcol[r, k][:, None])
        rank[r, k] += eq.sum(1)
    id_rank = rank[:, 0]
    if need_identity:
        # identity rank = number of distinct ids among the kept entries ranked before the first match: those with
        # a smaller distance, plus (ties) those with the same distance and a lower column. The query's own id never
        # qualifies, and removed entries are +inf. Rows whose first match is at kept rank 0 have identity rank 0.
        need = np.nonzero(valid & (rank[:, 0] > 0))[0]
        id_rank = np.zeros(c, dtype=np.int64)
        if need.size:
            sub = dk[need]
            t0, j0 = t[need, :1], tcol[need, :1]
            before = sub < t0
            tie_rows = np.nonzero(tied[need, 0])[0]
            if tie_rows.size:
                before[tie_rows] |= (sub[tie_rows] == t0[tie_rows]) & (np.arange(G)[None, :] < j0[tie_rows])
            r_b, c_b = np.nonzero(before)
            seen = np.zeros((need.size, prep.n_ids), dtype=bool)  # (row, identity) met before the first match
            seen[r_b, prep.g_idx[c_b]] = True
            id_rank[need] = seen.sum(axis=1)
    k1 = np.arange(1, t.shape[1] + 1, dtype=np.float64)
    ap = np.where(finite, k1 / (rank + 1), 0.0).sum(1) / np.maximum(n, 1)
    last = np.take_along_axis(rank, np.maximum(n - 1, 0)[:, None], 1)[:, 0]
    inp = n / (last + 1)
    return (np.where(valid, rank[:, 0], -1), np.where(valid, id_rank, -1), np.where(valid, ap, np.nan),
            np.where(valid, inp, np.nan))


def _check_ids(name: str, a: Any, n: int) -> np.ndarray | None:
    if a is None:
        return None
    arr = a.detach().cpu().numpy() if is_tensor(a) else np.asarray(a)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise FeaturesError(f"{name} must be a 1-D array of length {n}, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise FeaturesError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _numpy_of(x: Any) -> np.ndarray:
    """A NumPy array of ``x``; a tensor is copied to the CPU (float16/bfloat16 upcast to float32, exact)."""
    if is_tensor(x):
        x = x.detach().cpu()
        if x.is_floating_point() and x.itemsize < 4:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_float_array(d: Any) -> np.ndarray:
    """A NumPy float32/float64 view or copy of a distance block (integers -> float64; float16 -> float32, exact)."""
    arr = np.asarray(d)
    if arr.dtype.kind != "f":
        return arr.astype(np.float64)
    if arr.dtype not in (np.float32, np.float64):
        return arr.astype(np.float32)  # float16 -> float32 is exact: same order, same ties
    return arr


def evaluate_ranking(
    distances: DistanceInput,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_remove_keys: np.ndarray | None = None,
    gallery_remove_keys: np.ndarray | None = None,
    *,
    cmc: CmcKind = "standard",
    invalid_query_quirk: bool = False,
    max_rank: int = 20,
    memory_budget_mb: float = 512.0,
    device: DeviceLike = None,
    method: Method = "fast",
    num_gallery: int | None = None,
) -> RankingResult:
    """CMC, mAP and mINP of a query set against a gallery (SPEC 2 definitions; see the module docstring).

    Args:
        distances: [Q, G] distances (NumPy or torch), or a callable ``f(start, stop)`` returning rows
            ``start:stop`` (e.g. :func:`feature_distance_fn`; it must carry ``.shape = (Q, G)``). Smaller = closer.
        query_pids, gallery_pids: [Q], [G] integer identities.
        query_remove_keys, gallery_remove_keys: [Q], [G] int64; gallery j is removed for query i when the keys are
            equal. None: nothing removed.
        cmc: "standard" or "identity" (identity-level, first occurrence of each pid).
        invalid_query_quirk: reproduce the AGW SYSU code: invalid queries add their (all-zero) identity-level CMC row
            to the numerator while the divisor counts valid queries only. Because those rows are all zero this gives
            the same curve as ignoring invalid queries; the flag documents that the procedure is the reference's.
        max_rank: CMC length (padded with the last value when the gallery is shorter).
        memory_budget_mb: approximate cap on the working memory of one chunk of query rows.
        device: where to compute: None or "cpu" with NumPy distances = NumPy on the CPU; torch distances, or a
            non-CPU device ("cuda", ...), are computed in torch (there, or where the tensors live).
        method: "fast" (value sort + binary search, ties corrected exactly) or "sort" (full stable argsort).
        num_gallery: gallery size to report, when ``distances`` is a column selection of a larger pool.

    Raises:
        FeaturesError: mismatched lengths, non-integer pids, NaN distances, or no valid query.
    """
    if cmc not in ("standard", "identity"):
        raise ValueError(f"cmc must be 'standard' or 'identity', got {cmc!r}")
    if method not in ("fast", "sort"):
        raise ValueError(f"method must be 'fast' or 'sort', got {method!r}")
    if callable(distances) and not isinstance(distances, np.ndarray) and not is_tensor(distances):
        shape = getattr(distances, "shape", None)
        if shape is None:
            raise TypeError("a distance callable must carry .shape = (num_query, num_gallery)")
        Q, G = int(shape[0]), int(shape[1])
        fn: Callable[[int, int], Any] = distances
        use_torch = _on_accelerator(device) or is_tensor(fn(0, 1) if Q and G else None)
    else:
        dmat: Any = distances if is_tensor(distances) else np.asarray(distances)
        if dmat.ndim != 2:
            raise FeaturesError(f"distance matrix must be 2-D [num_query, num_gallery], got shape {tuple(dmat.shape)}")
        Q, G = int(dmat.shape[0]), int(dmat.shape[1])
        use_torch = is_tensor(dmat) or _on_accelerator(device)

        def fn(a: int, b: int) -> Any:
            return dmat[a:b]

    q_pids = _check_ids("query pids", query_pids, Q)
    g_pids = _check_ids("gallery pids", gallery_pids, G)
    q_keys = _check_ids("query removal keys", query_remove_keys, Q)
    g_keys = _check_ids("gallery removal keys", gallery_remove_keys, G)
    if (q_keys is None) != (g_keys is None):
        raise ValueError("give both query and gallery removal keys, or neither")
    if Q == 0 or G == 0:
        raise FeaturesError(f"empty query set or gallery (Q={Q}, G={G}): nothing to evaluate")
    assert q_pids is not None and g_pids is not None
    trusted = bool(getattr(fn, "fresh_finite", False))
    prep, uniq = prepare_gallery(g_pids, g_keys, q_keys)
    pos_in = np.clip(np.searchsorted(uniq, q_pids), 0, len(uniq) - 1)
    q_idx_all = np.where(uniq[pos_in] == q_pids, pos_in, -1).astype(np.int64)
    need_identity = cmc == "identity"

    if use_torch:
        from vireid.evaluation._metrics_torch import rank_chunks_torch

        first, id_rank, ap, inp = rank_chunks_torch(
            fn, Q, G, q_idx_all, g_pids, q_keys, g_keys, device=device, method=method,
            need_identity=need_identity, memory_budget_mb=memory_budget_mb, trusted=trusted)
    else:
        bytes_per_row = G * (40 if method == "sort" else 24) + prep.n_ids + 64
        chunk = max(1, min(Q, int(memory_budget_mb * 2**20 // bytes_per_row)))
        first = np.empty(Q, np.int64)
        id_rank = np.empty(Q, np.int64)
        ap = np.empty(Q, np.float64)
        inp = np.empty(Q, np.float64)
        for a in range(0, Q, chunk):
            b = min(Q, a + chunk)
            raw = fn(a, b)
            d = _as_float_array(_numpy_of(raw))
            if d.shape != (b - a, G):
                raise FeaturesError(f"distance rows {a}:{b} have shape {tuple(d.shape)}, expected {(b - a, G)}")
            if not trusted:
                if not np.isfinite(d).all():
                    raise FeaturesError(
                        f"distance matrix has NaN or infinite values in query rows {a}:{b}; expected finite "
                        "distances (check the features for NaN/inf)"
                    )
                d = d + d.dtype.type(0.0)  # a private copy (modified below); -0.0 becomes +0.0 (ties with 0.0)
            removed = None if prep.g_key is None else (q_keys[a:b, None] == prep.g_key[None, :])  # type: ignore[index]
            if method == "sort":
                out = _rows_sorted(d, removed, q_idx_all[a:b], prep)
            else:
                out = _rows_fast(d, removed, q_idx_all[a:b], prep, need_identity=need_identity)
            for dst, src in zip((first, id_rank, ap, inp), out):
                dst[a:b] = src

    rank = id_rank if need_identity else first
    return _result(rank, ap, inp, cmc=cmc, invalid_query_quirk=invalid_query_quirk, max_rank=max_rank,
                   num_gallery=int(num_gallery if num_gallery is not None else G))


def _result(rank: np.ndarray, ap: np.ndarray, inp: np.ndarray, *, cmc: str, invalid_query_quirk: bool,
            max_rank: int, num_gallery: int, where: str = "") -> RankingResult:
    """Aggregate per-query ranks (-1 = invalid), AP and INP into the CMC curve, mAP and mINP (SPEC 2).

    Raises:
        FeaturesError: when no query is valid (``where`` names the trial, if any).
    """
    Q = rank.shape[0]
    valid = rank >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise FeaturesError(
            f"{where}no valid query: none of the {Q} queries has a gallery image of its identity after removal; "
            "check that query and gallery share pids and that the right protocol was chosen"
        )
    ks = np.arange(max_rank)
    rows_hit = (rank[:, None] <= ks[None, :]) & valid[:, None]
    if invalid_query_quirk:
        # reference: every query appends its row (invalid ones: all zeros); divisor = #valid
        curve = rows_hit.astype(np.float64).sum(0) / num_valid
    else:
        curve = rows_hit[valid].astype(np.float64).sum(0) / num_valid
    return RankingResult(
        cmc=curve,
        mAP=float(np.mean(ap[valid])),
        mINP=float(np.mean(inp[valid])),
        num_query=Q,
        num_valid=num_valid,
        num_gallery=num_gallery,
        rank=rank,
        ap=ap,
        inp=inp,
        cmc_kind=cmc,
    )


# ----------------------------------------------------------------------------------------------------------------
# several trials with the same queries (SYSU-MM01 / LLCM: 10 galleries drawn from one test pool)

TrialMethod = Literal["auto", "union", "blocked", "per-trial"]
_INF_KEY = 0xFF800000  # key32 of float32 +inf: removed entries sort after every finite distance
_PAD_KEY = 0xFFFFFFFF  # above +inf: the key of a padding "match", after everything in its row


@dataclass
class _UnionTables:
    """Per-union lookups of the union path, built once per call (NumPy arrays).

    Each query row of the union is sorted by the int64 key ``row << (32 + rank_bits) | key32(distance) << rank_bits |
    tie_rank[column]``, where key32 maps float32 values to uint32 in the same order (the bits, sign handled), and
    ``tie_rank`` is a permutation of 0..U-1 that orders, in every trial, entries of
    different identities as the trial lists them (see :func:`_tie_ranks`), so the restriction of the sorted union to a
    trial is that trial's stable order up to swaps of equally distant entries of one identity -- which change no
    metric. The row number in the top bits makes a block of sorted rows one sorted flat array (one searchsorted).
    """

    tie_rank: np.ndarray  # [U] tie rank of each union column
    col_of_rank: np.ndarray  # [U] the inverse permutation
    rank_bits: int
    packed: np.ndarray  # [L, U] uint64 by tie rank: memberships, ``width`` bits per trial, ``per_lane`` trials a lane
    width: int
    per_lane: int
    member: np.ndarray  # [U, T] bool by column: is the column in trial t's gallery
    g_idx: np.ndarray  # [U] identity index of each column
    id_cols: np.ndarray  # [n_ids, M] union columns of each identity, padded with U
    n_ids: int
    g_key: np.ndarray | None  # [U] removal keys, or None when nothing can be removed


def _tie_ranks(trial_columns: Sequence[np.ndarray], g_idx: np.ndarray) -> np.ndarray | None:
    """A tie rank per union column that agrees with every trial's order on entries of different identities.

    Needed because the union is sorted once with one tie-break, while each trial's stable sort breaks ties by its own
    gallery order. Two entries of the *same* identity may be swapped freely: every metric depends only on the sequence
    of identities in the kept list, and the positions each identity occupies do not change under such swaps. So the
    union order is exact for a trial when, cutting the trial's gallery into maximal runs of one identity, the tie
    ranks of each run all lie below those of the next run.

    Candidates: (run index in the first trial holding the column, column) -- what the SYSU-MM01 and LLCM galleries
    (one fixed folder order, per-trial picks inside each folder) satisfy -- then the plain column order. Returns None
    when neither is consistent or a trial lists a column twice: the caller then evaluates trial by trial.
    """
    U = g_idx.shape[0]
    runs: list[np.ndarray] = []
    for cols in trial_columns:
        if np.unique(cols).size != cols.size:
            return None
        p = g_idx[cols]
        runs.append(np.concatenate([[0], np.cumsum(p[1:] != p[:-1])]))
    primary = np.full(U, np.iinfo(np.int64).max, dtype=np.int64)
    for cols, run in zip(reversed(trial_columns), reversed(runs)):  # the first trial holding a column wins
        primary[cols] = run
    for order in (np.lexsort((np.arange(U), primary)), np.arange(U)):
        rank = np.empty(U, dtype=np.int64)
        rank[order] = np.arange(U)
        ok = True
        for cols, run in zip(trial_columns, runs):
            r = rank[cols]
            starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
            if starts.size > 1 and not np.all(np.maximum.reduceat(r, starts)[:-1] < np.minimum.reduceat(r, starts)[1:]):
                ok = False
                break
        if ok:
            return rank
    return None


def _union_tables(trial_columns: Sequence[np.ndarray], tie_rank: np.ndarray, g_pids: np.ndarray,
                  g_keys: np.ndarray | None, q_keys: np.ndarray | None) -> _UnionTables:
    U, T = tie_rank.shape[0], len(trial_columns)
    member = np.zeros((U, T), dtype=bool)
    for t, cols in enumerate(trial_columns):
        member[cols, t] = True
    # a trial's count of members before a position is at most its gallery size: ``width`` bits hold it
    width = max(int(max(c.size for c in trial_columns)).bit_length(), 1)
    per_lane = max(64 // width, 1)  # unsigned lanes: the fields may fill all 64 bits
    packed = np.zeros((-(-T // per_lane), U), dtype=np.uint64)
    col_of_rank = np.argsort(tie_rank)
    for t in range(T):
        packed[t // per_lane] |= member[col_of_rank, t].astype(np.uint64) << np.uint64(width * (t % per_lane))
    prep, _ = prepare_gallery(g_pids, g_keys, q_keys)
    return _UnionTables(
        tie_rank=tie_rank, col_of_rank=col_of_rank, rank_bits=max(int(U - 1).bit_length(), 1), packed=packed,
        width=width, per_lane=per_lane, member=member, g_idx=prep.g_idx, id_cols=prep.id_cols,
        n_ids=prep.n_ids, g_key=prep.g_key,
    )


def _rows_union(d: np.ndarray, removed: np.ndarray | None, q_idx: np.ndarray, tab: _UnionTables,
                need_identity: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, identity rank, AP, INP of a block of query rows in every trial at once: [c, T] each.

    One sort of the union row (int64 keys, see :class:`_UnionTables`) replaces one sort per trial. A match's rank in
    trial t is the number of trial-t members before it in the sorted union (removed entries sort last): a running sum
    along the sorted row of the members' packed trial counters (``width`` bits per trial, several trials per int64),
    read at the matches' positions. Only the prefix of the row up to its last kept match is sorted. The identity
    rank counts the distinct other identities among the trial-t members before the trial's first match. NumPy only
    (no intra-op threads, whose spinning costs a lot on a loaded machine): blocks run in parallel threads.
    """
    c, U = d.shape
    T = tab.member.shape[1]
    rb = tab.rank_bits
    bits = (d + np.float32(0.0)).view(np.int32)  # a copy; -0.0 becomes +0.0 (ties with 0.0, as in a stable sort)
    keys = bits.astype(np.int64)
    del bits
    # float32 order as integers: non-negative values keep their bits, negative ones count down from -1
    np.bitwise_xor(keys, 0x7FFFFFFF, out=keys, where=keys < 0)
    keys += 1 << 31
    if removed is not None:
        keys[removed] = _INF_KEY
    row_base = np.arange(c, dtype=np.int64)[:, None] << (32 + rb)
    keys <<= rb
    keys |= tab.tie_rank
    keys |= row_base
    # the query identity's union columns, ordered by key = by position in the sorted union row
    cols = tab.id_cols[np.maximum(q_idx, 0)]
    col_ok = (cols < U) & (q_idx >= 0)[:, None]
    cols = np.minimum(cols, U - 1)
    mkey = np.where(col_ok, np.take_along_axis(keys, cols, 1), row_base | (_PAD_KEY << rb))
    order = np.argsort(mkey, axis=1)
    mkey = np.take_along_axis(mkey, order, 1)
    mcols = np.take_along_axis(cols, order, 1)
    kept = ((mkey >> rb) & _PAD_KEY) < _INF_KEY  # neither removed nor padding
    # entries after a row's last kept match never count: only the prefix up to it is sorted (about half the row
    # when the model is any good). The prefixes of the block are packed into one flat array, row after row.
    last_key = np.where(kept, mkey, -1).max(1, initial=-1)
    sel = keys <= np.maximum(last_key, row_base[:, 0] - 1)[:, None]
    lens = sel.sum(1)
    starts = np.cumsum(lens) - lens
    flat = keys[sel]
    del keys, sel
    for a, b in zip(starts.tolist(), (starts + lens).tolist()):
        flat[a:b].sort()
    K = mkey.shape[1]
    before = np.zeros((c, K, T), dtype=np.int64)
    gpos = np.minimum(np.searchsorted(flat, mkey), max(flat.size - 1, 0))  # flat position of each kept match
    pos = gpos - starts[:, None]  # its position in the sorted row
    low = np.bitwise_and(flat, (1 << rb) - 1, out=flat)  # tie rank at each sorted position
    if flat.size:
        mask = np.uint64((1 << tab.width) - 1)
        for lane in range(tab.packed.shape[0]):
            # packed member counters along the sorted rows, summed: members up to each position, every trial of
            # the lane at once. The sum runs across rows (unsigned, wrapping); a row's own counts are the
            # difference to the sum before its start, exact because they fit.
            run = np.take(tab.packed[lane], low)
            np.cumsum(run, out=run)
            row0 = np.where(starts > 0, run[np.maximum(starts - 1, 0)], np.uint64(0))
            cnt = np.where(pos > 0, run[np.maximum(gpos - 1, 0)] - row0[:, None], np.uint64(0))
            del run
            t0, t1 = lane * tab.per_lane, min(T, (lane + 1) * tab.per_lane)
            shifts = np.arange(t1 - t0, dtype=np.uint64) * np.uint64(tab.width)
            before[:, :, t0:t1] = ((cnt[:, :, None] >> shifts) & mask).astype(np.int64)
    member = tab.member[mcols] & kept[:, :, None]  # [c, K, T]
    n = member.sum(1)
    valid = n > 0
    j = np.cumsum(member, axis=1)  # matches up to and including this one
    ap = np.where(member, j / (before + 1), 0.0).sum(1) / np.maximum(n, 1)
    first = np.where(member, before, np.iinfo(np.int64).max).min(1)
    last = np.where(member, before, -1).max(1)
    inp = n / np.maximum(last + 1, 1)
    id_rank = first
    if need_identity:
        id_rank = np.zeros((c, T), dtype=np.int64)
        need = valid & (first > 0)  # found at rank 0: identity rank 0
        rows_all = np.flatnonzero(need.any(1))
        step = max(1, (1 << 24) // (T * tab.n_ids))
        for a in range(0, rows_all.size, step):
            rows = rows_all[a:a + step]
            R = rows.size
            # sorted-union position of each trial's first match; the members of other identities before it count
            fpos = np.where(need[rows], np.where(member[rows], pos[rows][:, :, None], U).min(1), 0)
            span = fpos.max(1)
            r = np.repeat(np.arange(R), span)
            k = np.arange(r.size) - np.repeat(np.cumsum(span) - span, span)
            col = tab.col_of_rank[low[starts[rows[r]] + k]]
            pid = tab.g_idx[col]
            inc = tab.member[col] & (k[:, None] < fpos[r]) & (pid != q_idx[rows[r]])[:, None]
            pr, pt = np.nonzero(inc)
            seen = np.zeros(R * T * tab.n_ids, dtype=bool)
            seen[(r[pr] * T + pt) * tab.n_ids + pid[pr]] = True  # (row, trial, identity) seen before the match
            id_rank[rows] = seen.reshape(R, T, tab.n_ids).sum(2)
    return (np.where(valid, first, -1), np.where(valid, id_rank, -1), np.where(valid, ap, np.nan),
            np.where(valid, inp, np.nan))


_ORDER_INF = 0x7F800000  # int32 order key of float32 +inf: removed entries rank after every finite distance
_ORDER_PAD = 0x7F800001  # above +inf: the padding slots of the blocked layout


@dataclass
class _BlockTables:
    """Per-call lookups of the blocked path (:func:`_rows_blocked`), NumPy arrays.

    Every trial's gallery is laid out as a [P, n] grid: identity groups (ascending identity) along n, the entries of
    a group in the trial's gallery order along P, empty slots padded with the sentinel column U. All trials share the
    largest (P, n), so a block of query rows is gathered once into a [c, T, P, n] array.
    """

    columns: np.ndarray  # [T * P * n] union column of each slot, U for padding
    position: np.ndarray  # [T, P, n] position of each slot in its trial's gallery order (0 for padding)
    shape: tuple[int, int, int]  # (T, P, n)
    most: list[tuple[int, np.ndarray]]  # (M, trials): the trials whose identities have at most M entries, M exactly
    group: np.ndarray  # [n_ids + 1, T] group of each identity index in each trial, -1 absent (last row: unknown id)
    pos_bits: int  # bits of a gallery position in the exact (order << pos_bits | position) keys
    g_key: np.ndarray | None  # [U] removal keys (as small integer codes), or None when nothing can be removed


def _block_tables(trial_columns: Sequence[np.ndarray], g_idx: np.ndarray, n_ids: int, g_key: np.ndarray | None
                  ) -> _BlockTables:
    U, T = g_idx.shape[0], len(trial_columns)
    group_of = np.full((n_ids + 1, T), -1, dtype=np.int64)
    parts = []
    for t, cols in enumerate(trial_columns):
        gi = g_idx[cols]
        order = np.argsort(gi, kind="stable")  # by identity, each identity's entries in gallery order
        ids, start, counts = np.unique(gi[order], return_index=True, return_counts=True)
        group = np.repeat(np.arange(ids.size), counts)
        slot = np.arange(cols.size) - np.repeat(start, counts)
        group_of[ids, t] = np.arange(ids.size)
        parts.append((cols[order], order, slot, group))
    P = max(int(slot.max()) + 1 for _, _, slot, _ in parts)
    n = max(int(group.max()) + 1 for _, _, _, group in parts)
    columns = np.full((T, P, n), U, dtype=np.int64)
    position = np.zeros((T, P, n), dtype=np.int64)
    for t, (cols, order, slot, group) in enumerate(parts):
        columns[t, slot, group] = cols
        position[t, slot, group] = order
    pos_bits = max(int(max(c.size for c in trial_columns)).bit_length(), 1)
    per_trial_most = np.array([int(slot.max()) + 1 for _, _, slot, _ in parts])
    most = [(m, np.flatnonzero(per_trial_most == m)) for m in sorted(set(per_trial_most.tolist()))]
    return _BlockTables(columns.reshape(-1), position, (T, P, n), most, group_of, pos_bits, g_key)


def _rows_blocked(d: np.ndarray, q_keys: np.ndarray | None, q_idx: np.ndarray, tab: _BlockTables,
                  need_identity: bool, nonnegative: bool) -> RowMetrics:
    """First-match rank, identity rank, AP, INP ([c, T] each) of a block of query rows in every trial.

    The distances become int32 order keys once per block (the float32 bits, negative values counting down, -0.0 as
    +0.0, removed entries +inf), gathered into every trial's [P, n] grid. Per (row, trial): the query identity's
    entries are the matches; the sorted grid gives each match the number of entries with a smaller key (a binary
    search); the identity rank is the number of other groups whose smallest key is below the first
    match's. Both are the stable-order definitions whenever no other entry has a match's distance; the few (row,
    trial) pairs with such a tie are recounted with exact keys ``order << pos_bits | gallery position``.
    """
    c, U = d.shape
    T, P, n = tab.shape
    L = P * n
    B = np.empty((c, U + 1), dtype=np.int32)
    body = B[:, :U]
    np.add(d, np.float32(0.0), out=body.view(np.float32))  # -0.0 becomes +0.0 (ties with 0.0, as in a stable sort)
    if not nonnegative and body.size and body.min() < 0:  # negative values: count down from -1, in order
        np.bitwise_xor(body, 0x7FFFFFFF, out=body, where=body < 0)
    if tab.g_key is not None:
        assert q_keys is not None
        np.copyto(body, np.int32(_ORDER_INF), where=q_keys[:, None] == tab.g_key[None, :])
    B[:, U] = _ORDER_PAD
    K = B.take(tab.columns, axis=1).reshape(c, T, P, n)
    grp = tab.group[q_idx]  # [c, T]
    absent = grp < 0
    own = np.take_along_axis(K, np.maximum(grp, 0)[:, :, None, None], 3)[..., 0]  # [c, T, P] the query id's entries
    own[absent] = _ORDER_PAD
    own.sort(axis=2)
    ok = own < _ORDER_INF  # kept matches, ascending
    num = ok.sum(2)
    kmax = max(int(num.max()) if num.size else 0, 1)
    tk = own[:, :, :kmax]
    ok = ok[:, :, :kmax]
    id_rank = None
    if need_identity:
        id_rank = np.count_nonzero(K.min(axis=2) < own[:, :, :1], axis=2)  # other groups met before the first match
    srt = K.reshape(c * T, L)
    srt.sort(axis=1)  # in place: K is not needed unsorted any more (the tie recount reads B)
    flat = srt.reshape(-1)
    flat_t = tk.reshape(c * T, kmax)
    base = np.arange(c * T, dtype=np.int64)[:, None] * L
    lo = np.zeros(flat_t.shape, dtype=np.int64)  # lower bound of each match in its sorted row, bit by bit
    step = 1 << (int(L).bit_length() - 1)
    while step:
        idx = lo + (step - 1)
        inside = idx < L
        np.minimum(idx, L - 1, out=idx)
        idx += base
        inside &= np.take(flat, idx) < flat_t
        lo += inside * step
        step >>= 1
    nxt = np.take(flat, np.minimum(lo + 1, L - 1) + base).reshape(c, T, kmax)
    rank = lo.reshape(c, T, kmax)
    tied = ((nxt == tk) & (rank + 1 < L) & ok).any(2)
    if tied.any():  # another entry has a match's distance: count with the gallery positions
        rr, tt = np.nonzero(tied)
        cols = tab.columns.reshape(T, L)[tt]  # [m, L] the grids of the tied (row, trial) pairs, from B
        keys = np.left_shift(B[rr[:, None], cols], tab.pos_bits, dtype=np.int64).reshape(rr.size, P, n)
        keys += tab.position[tt]
        own_k = np.take_along_axis(keys, np.maximum(grp[rr, tt], 0)[:, None, None], 2)[..., 0]
        own_k.sort(axis=1)
        rank[rr, tt] = np.count_nonzero(keys.reshape(rr.size, 1, L) < own_k[:, :kmax, None], axis=2)
        if id_rank is not None:
            id_rank[rr, tt] = np.count_nonzero(keys.min(axis=1) < own_k[:, :1], axis=1)
    valid = num > 0
    # AP: each trial sums as many terms as its identities have entries at most (zeros after the matches), in the
    # same order -- the per-trial path's sum, to the bit (NumPy's pairwise sum depends on the number of terms)
    terms = np.zeros((c, T, P))
    terms[:, :, :kmax] = np.where(ok, np.arange(1, kmax + 1, dtype=np.float64) / (rank + 1), 0.0)
    if len(tab.most) == 1:
        ap_sum = terms.sum(2)
    else:
        ap_sum = np.empty((c, T))
        for m, ts in tab.most:
            ap_sum[:, ts] = terms[:, ts, :m].sum(2)
    ap = ap_sum / np.maximum(num, 1)
    last = np.take_along_axis(rank, np.maximum(num - 1, 0)[:, :, None], 2)[..., 0]
    inp = num / (last + 1)
    first = rank[:, :, 0]
    return (np.where(valid, first, -1), np.where(valid, first if id_rank is None else id_rank, -1),
            np.where(valid, ap, np.nan), np.where(valid, inp, np.nan))


def evaluate_trials(
    distances: Any,
    trial_columns: Sequence[np.ndarray],
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_remove_keys: np.ndarray | None = None,
    gallery_remove_keys: np.ndarray | None = None,
    *,
    cmc: CmcKind = "standard",
    invalid_query_quirk: bool = False,
    max_rank: int = 20,
    memory_budget_mb: float = 512.0,
    method: TrialMethod = "auto",
    assume_finite: bool = False,
    progress: bool = False,
    trial_names: Sequence[str] | None = None,
) -> list[RankingResult]:
    """The metrics of several trials that share their queries, each trial's gallery a list of columns of a pool.

    Equal, trial by trial, to ``evaluate_ranking(distances[:, cols], query_pids, gallery_pids[cols], ...)`` (same
    stable tie order, same removal rule): the SPEC 2 definitions, exactly.

    Args:
        distances: [Q, U] distances of the queries to the union of the trials' galleries (NumPy, or torch: a CPU
            tensor is read as NumPy, a GPU tensor is evaluated on its device), or a callable ``f(start, stop)``
            returning rows ``start:stop`` and carrying ``.shape = (Q, U)`` (e.g. :func:`feature_rows_distance_fn`;
            ``.fresh_finite`` as in :func:`evaluate_ranking`): the blocked path asks it for one block of rows at a
            time, the other paths for the whole matrix.
        trial_columns: per trial, the columns of ``distances`` that form its gallery, in the trial's gallery order
            (the order breaks distance ties).
        query_pids, gallery_pids: [Q], [U] integer identities.
        query_remove_keys, gallery_remove_keys: [Q], [U] removal keys as in :func:`evaluate_ranking`.
        cmc, invalid_query_quirk, max_rank, memory_budget_mb: as in :func:`evaluate_ranking`.
        method: "union" sorts each query's union row once and reads every trial's ranks from it (the trials overlap,
            as SYSU-MM01's multi-shot galleries do; NumPy on the CPU); "blocked" takes blocks of query rows and
            evaluates every trial of a block at once from the trials' identity grids (:func:`_rows_blocked`; small
            galleries such as SYSU-MM01's single-shot ones; NumPy on the CPU); "per-trial" evaluates column
            selections one by one with :func:`evaluate_ranking`; "auto" picks the cheapest by a cost model.
            "union" falls back to "per-trial" when a trial lists a column twice or no single tie order agrees with
            every trial's gallery order (see :func:`_tie_ranks`); "union" and "blocked" fall back to "per-trial"
            when the distances are float64 (no room in the sort key) or a tensor on an accelerator (evaluated
            there, trial by trial).
        assume_finite: the caller guarantees finite distances >= 0 (e.g. from :func:`feature_distance_fn`): skip
            the check.
        progress: a progress bar over query chunks (union, blocked) or trials (per-trial).
        trial_names: how error messages name each trial (default "trial <position>").

    Raises:
        FeaturesError: mismatched lengths, columns out of range, an empty trial, NaN distances, or a trial with no
            valid query.
    """
    if method not in ("auto", "union", "blocked", "per-trial"):
        raise ValueError(f"method must be 'auto', 'union', 'blocked' or 'per-trial', got {method!r}")
    rows_fn: Callable[[int, int], np.ndarray] | None = None  # float32 NumPy rows on demand (the blocked path)
    Q = U = 0
    if callable(distances) and not isinstance(distances, np.ndarray) and not is_tensor(distances):
        shape = getattr(distances, "shape", None)
        if shape is None:
            raise TypeError("a distance callable must carry .shape = (num_query, num_gallery)")
        assume_finite = assume_finite or bool(getattr(distances, "fresh_finite", False))
        Q, U = int(shape[0]), int(shape[1])
        probe = distances(0, 1) if method in ("auto", "blocked") and Q and U else None
        if isinstance(probe, np.ndarray) and probe.dtype == np.float32:
            rows_fn = distances
        else:
            distances = distances(0, Q)
    on_accel = rows_fn is None and is_tensor(distances) and distances.device.type != "cpu"
    dmat: Any = None
    if rows_fn is not None:
        dtype: Any = np.float32
    else:
        if on_accel:  # stays on its device: evaluated trial by trial in torch there
            dmat = distances if distances.is_floating_point() else distances.double()
            if dmat.dtype not in (sys.modules["torch"].float32, sys.modules["torch"].float64):
                dmat = dmat.float()  # float16/bfloat16 -> float32 is exact: same order, same ties
        else:
            dmat = _as_float_array(_numpy_of(distances))
        if dmat.ndim != 2:
            raise FeaturesError(f"distance matrix must be 2-D [num_query, num_gallery], got shape {tuple(dmat.shape)}")
        Q, U = dmat.shape
        dtype = dmat.dtype
    q_pids = _check_ids("query pids", query_pids, Q)
    g_pids = _check_ids("gallery pids", gallery_pids, U)
    q_keys = _check_ids("query removal keys", query_remove_keys, Q)
    g_keys = _check_ids("gallery removal keys", gallery_remove_keys, U)
    if (q_keys is None) != (g_keys is None):
        raise ValueError("give both query and gallery removal keys, or neither")
    assert q_pids is not None and g_pids is not None
    if Q == 0 or U == 0:
        raise FeaturesError(f"empty query set or gallery (Q={Q}, G={U}): nothing to evaluate")
    trials = [np.asarray(c) for c in trial_columns]
    for t, cols in enumerate(trials):
        if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or cols.min() < 0 or cols.max() >= U:
            raise FeaturesError(f"trial {t}: gallery columns must be a non-empty 1-D integer array in 0..{U - 1}")
    trials = [c.astype(np.int64) for c in trials]
    if not trials:
        return []
    names = list(trial_names) if trial_names is not None else [f"trial {t}" for t in range(len(trials))]
    if dmat is not None and not assume_finite and not (bool(sys.modules["torch"].isfinite(dmat).all()) if on_accel
                                                       else bool(np.isfinite(dmat).all())):
        _raise_nonfinite_distances()
    tie_rank = None
    if on_accel or dtype != np.float32 or method == "per-trial":
        path = "per-trial"  # float64 leaves no room in the int64 keys; a GPU sorts each trial on the device
    elif method == "auto":
        # cost model from CPU timings (benchmarks/bench_eval.py shapes): the union path costs about U * (1 + L / 4)
        # "per-trial elements" (one int64 sort of the row prefix up to its last match, then a gather and a running
        # sum per lane of packed counters), the per-trial path the sum of the gallery sizes. SYSU-MM01 multi-shot:
        # 6,014 * 1.5 against 30,100 (union); single-shot: 2,395 * 1.5 against 3,010 (per-trial). On a GPU the
        # per-trial sorts are cheap and stay on the device; the union path is NumPy. The per-trial numbers are
        # computed by the blocked path where it is cheaper (see _blocked_pays): the same numbers, to the bit.
        width = max(int(max(c.size for c in trials)).bit_length(), 1)
        lanes = -(-len(trials) // max(64 // width, 1))
        path = "per-trial"
        if len(trials) > 1 and U < 2**26 and U * (1.0 + 0.25 * lanes) < sum(c.size for c in trials):
            tie_rank = _tie_ranks(trials, np.unique(g_pids, return_inverse=True)[1].reshape(-1))
            if tie_rank is not None:
                path = "union"
        if path == "per-trial" and _blocked_pays(trials, g_pids, U):
            path = "blocked"
    else:
        path = method
        if path == "union":
            tie_rank = _tie_ranks(trials, np.unique(g_pids, return_inverse=True)[1].reshape(-1))
            if tie_rank is None:
                path = "per-trial"
    if path == "blocked":
        if rows_fn is None:
            mat: np.ndarray = dmat

            def rows_fn(a: int, b: int) -> np.ndarray:
                return mat[a:b]

        return _evaluate_blocked(rows_fn, Q, U, trials, names, q_pids, g_pids, q_keys, g_keys, cmc=cmc,
                                 invalid_query_quirk=invalid_query_quirk, max_rank=max_rank,
                                 memory_budget_mb=memory_budget_mb, checked=assume_finite or dmat is not None,
                                 nonnegative=assume_finite, progress=progress)
    if dmat is None:  # rows on demand, for another path: the whole matrix
        assert rows_fn is not None
        dmat = _as_float_array(rows_fn(0, Q))
        if not assume_finite and not bool(np.isfinite(dmat).all()):
            _raise_nonfinite_distances()
    if path == "per-trial":
        return _per_trial(dmat, trials, names, q_pids, g_pids, q_keys, g_keys, cmc=cmc,
                          invalid_query_quirk=invalid_query_quirk, max_rank=max_rank,
                          memory_budget_mb=memory_budget_mb, assume_finite=assume_finite, progress=progress)
    assert tie_rank is not None

    tab = _union_tables(trials, tie_rank, g_pids, g_keys, q_keys)
    d_np = dmat
    uniq = np.unique(g_pids)
    pos_in = np.clip(np.searchsorted(uniq, q_pids), 0, len(uniq) - 1)
    q_idx_all = np.where(uniq[pos_in] == q_pids, pos_in, -1).astype(np.int64)
    T = len(trials)
    M = tab.id_cols.shape[1]
    bytes_per_row = U * 30 + M * T * 40 + 64
    # blocks of ~8 MB of keys stay in cache through the passes over them (measured faster than bigger blocks)
    chunk = max(1, min(Q, int(memory_budget_mb * 2**20 // bytes_per_row), 2**23 // (8 * U), 1 << (31 - tab.rank_bits)))
    out = [np.empty((Q, T), np.int64), np.empty((Q, T), np.int64), np.empty((Q, T)), np.empty((Q, T))]

    def block(a: int) -> None:
        b = min(Q, a + chunk)
        removed = None if tab.g_key is None else (q_keys[a:b, None] == tab.g_key[None, :])  # type: ignore[index]
        res = _rows_union(d_np[a:b], removed, q_idx_all[a:b], tab, need_identity=(cmc == "identity"))
        for dst, src in zip(out, res):
            dst[a:b] = src

    _run_blocks(block, range(0, Q, chunk), progress)
    first, id_rank, ap, inp = out
    rank = id_rank if cmc == "identity" else first
    return [_result(rank[:, t].copy(), ap[:, t].copy(), inp[:, t].copy(), cmc=cmc,
                    invalid_query_quirk=invalid_query_quirk, max_rank=max_rank, num_gallery=int(cols.size),
                    where=f"{names[t]}: ") for t, cols in enumerate(trials)]


def _blocked_pays(trials: Sequence[np.ndarray], g_pids: np.ndarray, U: int) -> bool:
    """Whether the blocked path is cheaper than the per-trial one (CPU timings, benchmarks/bench_eval.py shapes).

    It gathers each query's union row (U columns) into every trial's padded identity grid (P entries of n
    identities) and sorts the grids. Measured 2-3x faster than the per-trial path (SYSU-MM01 single-shot, LLCM,
    RegDB), as fast on SYSU-MM01 10-shot galleries; it pays while the padding at most doubles the gallery entries
    and the union is not much wider than the trials' galleries together.
    """
    g_idx = np.unique(g_pids, return_inverse=True)[1].reshape(-1)
    P = n = 0
    for cols in trials:
        counts = np.bincount(g_idx[cols])
        P, n = max(P, int(counts.max())), max(n, int(np.count_nonzero(counts)))
    total = sum(c.size for c in trials)
    return len(trials) * P * n <= 2 * total and U <= 4 * total


def _raise_nonfinite_distances() -> NoReturn:
    raise FeaturesError("distance matrix has NaN or infinite values; expected finite distances "
                        "(check the features for NaN/inf)")


def _evaluate_blocked(rows_fn: Callable[[int, int], np.ndarray], Q: int, U: int, trials: list[np.ndarray],
                      names: list[str], q_pids: np.ndarray, g_pids: np.ndarray, q_keys: np.ndarray | None,
                      g_keys: np.ndarray | None, *, cmc: CmcKind, invalid_query_quirk: bool, max_rank: int,
                      memory_budget_mb: float, checked: bool, nonnegative: bool, progress: bool
                      ) -> list[RankingResult]:
    """:func:`evaluate_trials` by blocks of query rows, every trial of a block at once (:func:`_rows_blocked`).

    ``rows_fn(a, b)``: float32 distance rows a..b-1 (a block is computed where it is evaluated, e.g. from features);
    ``checked``: they are known to be finite (else each block is checked); ``nonnegative``: known to be >= 0.
    """
    uniq, g_idx = np.unique(g_pids, return_inverse=True)
    g_idx = g_idx.reshape(-1)
    g_key = q_code = None
    if g_keys is not None and q_keys is not None and np.isin(g_keys, q_keys).any():
        # the keys as the smallest integers that keep them apart: the per-block comparison reads less memory
        codes = np.unique(np.concatenate([q_keys, g_keys]), return_inverse=True)[1].reshape(-1)
        small = next(t for t in (np.int8, np.int16, np.int32, np.int64) if codes.max() <= np.iinfo(t).max)
        q_code, g_key = codes[:Q].astype(small), codes[Q:].astype(small)
    tab = _block_tables(trials, g_idx, len(uniq), g_key)
    T, P, n = tab.shape
    pos_in = np.clip(np.searchsorted(uniq, q_pids), 0, len(uniq) - 1)
    q_idx_all = np.where(uniq[pos_in] == q_pids, pos_in, -1).astype(np.int64)
    bytes_per_row = 4 * (U + 1) + 12 * T * P * n + 64
    # blocks of ~32 MB (measured faster than smaller ones: fewer NumPy calls), at least two per thread
    per_thread = -(-Q // (2 * _num_threads()))
    chunk = max(1, min(per_thread, int(memory_budget_mb * 2**20 // bytes_per_row), max(16, 2**25 // bytes_per_row)))
    out = [np.empty((Q, T), np.int64), np.empty((Q, T), np.int64), np.empty((Q, T)), np.empty((Q, T))]

    def block(a: int) -> None:
        b = min(Q, a + chunk)
        d = rows_fn(a, b)
        if d.shape != (b - a, U) or d.dtype != np.float32:
            raise FeaturesError(f"distance rows {a}:{b} have shape {tuple(d.shape)} and dtype {d.dtype}, expected "
                                f"{(b - a, U)} float32")
        if not checked and not bool(np.isfinite(d).all()):
            _raise_nonfinite_distances()
        res = _rows_blocked(d, None if q_code is None else q_code[a:b], q_idx_all[a:b], tab,
                            need_identity=(cmc == "identity"), nonnegative=nonnegative)
        for dst, src in zip(out, res):
            dst[a:b] = src

    _run_blocks(block, range(0, Q, chunk), progress)
    first, id_rank, ap, inp = out
    rank = id_rank if cmc == "identity" else first
    return [_result(rank[:, t].copy(), ap[:, t].copy(), inp[:, t].copy(), cmc=cmc,
                    invalid_query_quirk=invalid_query_quirk, max_rank=max_rank, num_gallery=int(cols.size),
                    where=f"{names[t]}: ") for t, cols in enumerate(trials)]


def _per_trial(dmat: Any, trials: list[np.ndarray], names: list[str], q_pids: np.ndarray,
               g_pids: np.ndarray, q_keys: np.ndarray | None, g_keys: np.ndarray | None, *, cmc: CmcKind,
               invalid_query_quirk: bool, max_rank: int, memory_budget_mb: float, assume_finite: bool,
               progress: bool) -> list[RankingResult]:
    """:func:`evaluate_trials` one trial at a time: :func:`evaluate_ranking` on streamed column selections."""
    Q = dmat.shape[0]
    seq: Any = progress_bar(trials, desc="trials", unit="trial") if progress else trials
    results = []
    for t, cols_np in enumerate(seq):
        if isinstance(dmat, np.ndarray):
            def dist(a: int, b: int, cols: Any = cols_np) -> Any:
                return np.take(dmat[a:b], cols, axis=1)
        else:  # a tensor on an accelerator
            cols_t = sys.modules["torch"].from_numpy(cols_np).to(dmat.device)

            def dist(a: int, b: int, cols: Any = cols_t) -> Any:
                return dmat[a:b].index_select(1, cols)

        dist.shape = (Q, cols_np.size)  # type: ignore[attr-defined]
        dist.fresh_finite = assume_finite  # type: ignore[attr-defined]
        try:
            results.append(evaluate_ranking(
                dist, q_pids, g_pids[cols_np], q_keys, None if g_keys is None else g_keys[cols_np], cmc=cmc,
                invalid_query_quirk=invalid_query_quirk, max_rank=max_rank, memory_budget_mb=memory_budget_mb,
                device=None if isinstance(dmat, np.ndarray) else dmat.device,
            ))
        except FeaturesError as exc:
            raise FeaturesError(f"{names[t]}: {exc}") from None
    return results
