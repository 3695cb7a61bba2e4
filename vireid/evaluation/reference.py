"""A deliberately plain per-query loop over the SPEC 2 definitions: the independent baseline.

Tests and benchmarks compare :func:`vireid.evaluation.metrics.evaluate_ranking` with this. It is written to be
read, not to be fast: one stable argsort per query, then each definition literally. Do not "optimise" it -- its
value is being obviously right.
"""

from __future__ import annotations

import numpy as np


def reference_metrics(
    distmat: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_remove_keys: np.ndarray | None = None,
    gallery_remove_keys: np.ndarray | None = None,
    *,
    cmc: str = "standard",
    invalid_query_quirk: bool = False,
    max_rank: int = 20,
) -> dict[str, object]:
    """Per-query loop. Returns ``{"cmc", "mAP", "mINP", "num_valid", "rank", "ap", "inp"}`` (fractions 0..1).

    ``rank`` is the 0-based rank of the first match (standard) or of the query identity (identity-level) in the
    kept list, -1 for invalid queries. The CMC is padded with its last value up to ``max_rank``.
    """
    distmat = np.asarray(distmat)
    num_q, num_g = distmat.shape
    q_pids = np.asarray(query_pids)
    g_pids = np.asarray(gallery_pids)
    rows = []
    aps, inps, ranks = [], [], []
    num_valid = 0
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        if query_remove_keys is not None:
            keep = np.asarray(gallery_remove_keys)[order] != query_remove_keys[i]
        else:
            keep = np.ones(num_g, dtype=bool)
        kept_pids = g_pids[order][keep]
        match = kept_pids == q_pids[i]

        if cmc == "identity":
            seen: list[int] = []
            seen_set: set[int] = set()
            for p in kept_pids.tolist():
                if p not in seen_set:
                    seen_set.add(p)
                    seen.append(p)
            hits = np.array([p == q_pids[i] for p in seen], dtype=np.int64)
        else:
            hits = match.astype(np.int64)
        row = np.cumsum(hits)
        row = np.minimum(row, 1)
        if len(row) < max_rank:  # pad with the last value
            pad = row[-1] if len(row) else 0
            row = np.concatenate([row, np.full(max_rank - len(row), pad)])
        row = row[:max_rank]

        if not match.any():
            ranks.append(-1)
            aps.append(np.nan)
            inps.append(np.nan)
            if invalid_query_quirk:
                rows.append(row)  # all zeros, but counted in the numerator as the reference does
            continue
        num_valid += 1
        rows.append(row)
        ranks.append(int(np.argmax(hits > 0)))
        positions = np.nonzero(match)[0]  # 0-based ranks in the kept list
        precisions = [(k + 1) / (p + 1) for k, p in enumerate(positions)]
        aps.append(float(np.mean(precisions)))
        inps.append(len(positions) / (positions[-1] + 1))

    curve = (np.sum(rows, axis=0) / num_valid) if num_valid else np.full(max_rank, np.nan)
    ap_arr = np.array(aps)
    inp_arr = np.array(inps)
    valid = ~np.isnan(ap_arr)
    return {
        "cmc": np.asarray(curve, dtype=np.float64),
        "mAP": float(np.mean(ap_arr[valid])) if num_valid else float("nan"),
        "mINP": float(np.mean(inp_arr[valid])) if num_valid else float("nan"),
        "num_valid": num_valid,
        "rank": np.array(ranks, dtype=np.int64),
        "ap": ap_arr,
        "inp": inp_arr,
    }
