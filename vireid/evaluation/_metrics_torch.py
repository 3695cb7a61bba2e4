"""The torch backend of :mod:`vireid.evaluation.metrics`: the same definitions, computed where a tensor lives.

Imported only when distances or features are torch tensors, or a non-CPU ``device`` is asked for (a GPU); the
features-file path (``vireid evaluate``) never imports it, so it never loads torch. The NumPy functions in
:mod:`vireid.evaluation.metrics` are the reference for what is computed; these are the same steps in torch, tested
against the same per-query loop (tests/test_metrics.py runs both backends).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vireid.errors import FeaturesError
from vireid.evaluation.gallery_index import prepare_gallery

__all__ = ["feature_distance_fn_torch", "l2_normalize_torch", "rank_chunks_torch"]


def l2_normalize_torch(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation (a zero row stays zero instead of becoming NaN)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)



def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device) if device is not None else t



def feature_distance_fn_torch(
    query_features: np.ndarray | torch.Tensor,
    gallery_features: np.ndarray | torch.Tensor,
    *,
    normalize: bool = True,
    device: str | torch.device | None = None,
) -> Callable[[int, int], torch.Tensor]:
    """A chunk callable ``f(start, stop) -> [stop-start, G]`` of Euclidean distances between the features.

    With ``normalize`` the features are L2-normalised first, so the distance is ``sqrt(max(2 - 2 cos, 0))`` (the
    same ranking as cosine similarity). Nothing of size Q x G is allocated here; :func:`evaluate_ranking` asks for
    as many query rows at a time as its memory budget allows.
    """
    dev = torch.device(device) if device is not None else None
    qf = _as_tensor(query_features, dev).float()
    gf = _as_tensor(gallery_features, dev).float()
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise FeaturesError(
            f"query features {tuple(qf.shape)} and gallery features {tuple(gf.shape)} must be 2-D with the same "
            "feature dimension"
        )
    for name, f in (("query", qf), ("gallery", gf)):
        if not bool(torch.isfinite(f).all()):
            bad = int((~torch.isfinite(f).all(1)).sum())
            raise FeaturesError(f"{name} features have NaN or infinite values in {bad} rows; expected finite numbers")
    if normalize:
        qf, gf = l2_normalize_torch(qf), l2_normalize_torch(gf)
        gsq = None
    else:
        gsq = (gf * gf).sum(1)
    gt = gf.t()  # a view: BLAS reads it transposed, no copy

    def chunk(start: int, stop: int) -> torch.Tensor:
        q = qf[start:stop]
        if gsq is None:
            d = torch.addmm(torch.full((1,), 2.0, device=q.device, dtype=q.dtype), q, gt, alpha=-2.0)
        else:
            d = torch.addmm(gsq[None, :], q, gt, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        return d.clamp_(min=0.0).sqrt_()

    chunk.shape = (qf.shape[0], gf.shape[0])  # type: ignore[attr-defined]
    # fresh, finite (features are checked by the caller), >= +0.0 tensors: evaluate_ranking may skip its checks
    chunk.fresh_finite = True  # type: ignore[attr-defined]
    return chunk



def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row's values (indices not needed).

    CPU: NumPy's SIMD quicksort on row blocks in parallel threads (NumPy releases the GIL); it is several times faster
    than ``torch.sort`` for float32 rows. Values only, so stability is irrelevant. GPU: ``torch.sort``.
    """
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    out = x.numpy().copy()
    n_threads = max(1, min(torch.get_num_threads(), out.shape[0]))  # (the torch path's own thread setting)
    if n_threads == 1 or out.size < 200_000:
        out.sort(axis=1)
    else:
        bounds = np.linspace(0, out.shape[0], n_threads + 1).astype(int)

        def work(i: int) -> None:
            out[bounds[i]:bounds[i + 1]].sort(axis=1)

        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(work, range(n_threads)))
    return torch.from_numpy(out)


@dataclass
class _Prepared:
    """Per-gallery lookups shared by all query chunks (all tensors on the compute device)."""

    g_idx: torch.Tensor  # [G] gallery pid -> 0..n_ids-1
    n_ids: int
    id_cols: torch.Tensor  # [n_ids, M] gallery columns of each id, padded with G
    g_key: torch.Tensor | None  # [G] removal keys or None (nothing can be removed)


def _prepare(g_pids: np.ndarray, g_keys: np.ndarray | None, q_keys: np.ndarray | None,
             device: torch.device) -> tuple[_Prepared, np.ndarray]:
    """:func:`vireid.evaluation.gallery_index.prepare_gallery` with its arrays moved to ``device``."""

    p, uniq = prepare_gallery(g_pids, g_keys, q_keys)
    g_key = None if p.g_key is None else torch.from_numpy(p.g_key).to(device)
    return _Prepared(torch.from_numpy(p.g_idx).to(device), p.n_ids, torch.from_numpy(p.id_cols).to(device), g_key), uniq


def _rows_sorted(d: torch.Tensor, removed: torch.Tensor | None, q_idx: torch.Tensor, prep: _Prepared
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact metrics of a block of rows from a full stable argsort: the SPEC definitions, vectorised.

    Returns (first-match rank, identity rank, AP, INP, number of matches), ranks -1 for invalid rows.
    """
    c = d.shape[0]
    order = torch.sort(d, dim=1, stable=True).indices
    gp = prep.g_idx[order]
    kept = torch.ones_like(gp, dtype=torch.bool) if removed is None else ~removed.gather(1, order)
    match = (gp == q_idx[:, None]) & kept
    pos = kept.to(torch.int64).cumsum(1) - 1  # 0-based rank within the kept list
    n = match.sum(1)
    valid = n > 0
    big = torch.iinfo(torch.int64).max
    first = torch.where(match, pos, big).amin(1)
    last = torch.where(match, pos, -1).amax(1)
    cm = match.to(torch.float64).cumsum(1)
    ap_sum = torch.where(match, cm / (pos + 1).to(torch.float64), 0.0).sum(1)
    nf = n.to(torch.float64)
    ap = torch.where(valid, ap_sum / nf.clamp_min(1), float("nan"))
    inp = torch.where(valid, nf / (last + 1).clamp_min(1).to(torch.float64), float("nan"))
    # identity rank: distinct other ids among kept entries ranked before the first match
    before = kept & (pos < first[:, None]) & (gp != q_idx[:, None])
    seen = torch.zeros((c, prep.n_ids), dtype=torch.uint8, device=d.device)
    seen.scatter_reduce_(1, gp, before.to(torch.uint8), reduce="amax")
    id_rank = seen.sum(1)
    first = torch.where(valid, first, -1)
    id_rank = torch.where(valid, id_rank, -1)
    return first, id_rank, ap, inp, n


def _rows_fast(d: torch.Tensor, removed: torch.Tensor | None, q_idx: torch.Tensor, prep: _Prepared,
               need_identity: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same outputs as :func:`_rows_sorted`, from a value sort + binary search, ties corrected exactly.

    A match at gallery column ``j`` with distance ``t`` sits at kept rank ``#{kept l: d_l < t}`` plus
    ``#{kept l: d_l == t, l < j}`` (stable order). The first term is a binary search in the sorted values; the second
    is only computed for the (row, match) pairs whose value occurs more than once in the row. ``d`` is modified in
    place (removed entries become +inf): callers pass a private copy.
    """
    c, G = d.shape
    dev = d.device
    dk = d if removed is None else d.masked_fill_(removed, float("inf"))
    has_id = q_idx >= 0
    cols = prep.id_cols[q_idx.clamp_min(0)]  # [c, M], ascending columns, padded with G
    col_ok = (cols < G) & has_id[:, None]
    cols_c = cols.clamp_max(G - 1)
    md = dk.gather(1, cols_c).masked_fill_(~col_ok, float("inf"))
    t, perm = torch.sort(md, dim=1, stable=True)  # by (distance, column): the stable order of the matches
    tcol = cols_c.gather(1, perm)
    finite = torch.isfinite(t)
    n = finite.sum(1)
    valid = n > 0
    s = _sort_rows(dk)
    left = torch.searchsorted(s, t, side="left")
    # s[left] is t itself (or an equal value); t is tied with another kept entry iff the next value is equal too
    nxt = s.gather(1, (left + 1).clamp_max(G - 1))
    tied = (nxt == t) & (left + 1 < G) & finite
    rank = left
    if bool(tied.any()):
        rank = left.clone()
        pr, pk = tied.nonzero(as_tuple=True)
        step = max(1, (64 << 20) // (4 * G + 1))
        for a in range(0, pr.numel(), step):
            r, k = pr[a:a + step], pk[a:a + step]
            # the few entries equal to each tied match distance, as (pair, column); count those before the match
            pair, col = (dk[r] == t[r, k][:, None]).nonzero(as_tuple=True)
            before = col < tcol[r, k][pair]
            rank[r, k] += torch.bincount(pair[before], minlength=r.numel())
    if need_identity:
        # identity rank = number of distinct ids among the kept entries ranked before the first match: those with
        # a smaller distance, plus (ties) those with the same distance and a lower column. The query's own id never
        # qualifies, and removed entries are +inf. Only the entries before the first match are touched.
        # rows whose first match is at kept rank 0 have identity rank 0: only the others are scanned
        need = (valid & (rank[:, 0] > 0)).nonzero()[:, 0]
        id_rank = torch.zeros(c, dtype=torch.int64, device=dev)
        if need.numel():
            sub = dk[need] if need.numel() < c else dk
            t0, j0 = t[need, :1], tcol[need, :1]
            before = sub < t0
            tie0 = tied[need, 0]
            if bool(tie0.any()):
                rows = tie0.nonzero()[:, 0]
                cols_idx = torch.arange(G, device=dev)
                before[rows] |= (sub[rows] == t0[rows]) & (cols_idx[None, :] < j0[rows])
            r_b, c_b = before.nonzero(as_tuple=True)
            code = torch.unique(r_b * prep.n_ids + prep.g_idx[c_b])
            id_rank[need] = torch.bincount(code // prep.n_ids, minlength=need.numel())
    k1 = torch.arange(1, t.shape[1] + 1, device=dev, dtype=torch.float64)
    ap = torch.where(finite, k1 / (rank + 1).to(torch.float64), 0.0).sum(1) / n.clamp_min(1).to(torch.float64)
    last = rank.gather(1, (n - 1).clamp_min(0)[:, None])[:, 0]
    inp = n.to(torch.float64) / (last + 1).to(torch.float64)
    first_rank = rank[:, 0]
    if not need_identity:
        id_rank = first_rank
    nan = float("nan")
    return (torch.where(valid, first_rank, -1), torch.where(valid, id_rank, -1),
            torch.where(valid, ap, nan), torch.where(valid, inp, nan), n)


@torch.no_grad()
def rank_chunks_torch(
    fn: Callable[[int, int], object],
    Q: int,
    G: int,
    q_idx_all: np.ndarray,
    g_pids: np.ndarray,
    q_keys: np.ndarray | None,
    g_keys: np.ndarray | None,
    *,
    device: str | torch.device | None,
    method: str,
    need_identity: bool,
    memory_budget_mb: float,
    trusted: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, identity rank, AP and INP of every query ([Q] NumPy arrays), rows fetched by ``fn``.

    ``q_idx_all`` maps each query to its gallery-identity index (-1: its id is not in the gallery). Chunks of query
    rows are sized to ``memory_budget_mb``; ``trusted`` skips the finiteness check and the private copy (the rows
    come fresh from :func:`feature_distance_fn_torch`).
    """
    if device is not None:
        work_dev = torch.device(device)
    else:  # where the distances live
        probe = fn(0, 1)
        work_dev = probe.device if isinstance(probe, torch.Tensor) else torch.device("cpu")
    prep, _ = _prepare(g_pids, g_keys, q_keys, work_dev)
    q_key_t = torch.from_numpy(q_keys).to(work_dev) if prep.g_key is not None and q_keys is not None else None
    bytes_per_row = G * (80 if method == "sort" else 24) + prep.n_ids * 8 + 64
    chunk = max(1, min(Q, int(memory_budget_mb * 2**20 // bytes_per_row)))
    first = np.empty(Q, np.int64)
    id_rank = np.empty(Q, np.int64)
    ap = np.empty(Q, np.float64)
    inp = np.empty(Q, np.float64)
    for a in range(0, Q, chunk):
        b = min(Q, a + chunk)
        d = _as_tensor(fn(a, b), work_dev)  # type: ignore[arg-type]
        if not d.is_floating_point():
            d = d.double()
        elif d.dtype not in (torch.float32, torch.float64):
            d = d.float()  # float16/bfloat16 -> float32 is exact: same order, same ties
        if tuple(d.shape) != (b - a, G):
            raise FeaturesError(f"distance rows {a}:{b} have shape {tuple(d.shape)}, expected {(b - a, G)}")
        if not trusted:
            if not bool(torch.isfinite(d).all()):
                raise FeaturesError(
                    f"distance matrix has NaN or infinite values in query rows {a}:{b}; expected finite distances "
                    "(check the features for NaN/inf)"
                )
            d = d + 0.0  # a private copy (modified in place below); also turns -0.0 into +0.0 so it ties with 0.0
        g_key = prep.g_key
        removed = None if q_key_t is None or g_key is None else (q_key_t[a:b, None] == g_key[None, :])
        q_idx = torch.from_numpy(q_idx_all[a:b]).to(work_dev)
        if method == "sort":
            out = _rows_sorted(d, removed, q_idx, prep)
        else:
            out = _rows_fast(d, removed, q_idx, prep, need_identity=need_identity)
        for dst, src in zip((first, id_rank, ap, inp), out[:4]):
            dst[a:b] = src.cpu().numpy()
    return first, id_rank, ap, inp
