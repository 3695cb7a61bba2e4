"""Reports of an evaluation: the summary dict (the JSON of ``vireid evaluate``), a text table, a CMC plot.

The JSON keys are a user-facing contract (issue 3): ``protocol, mode, direction, trials, rerank, rank1, rank5,
rank10, rank20, mAP, mINP, cmc (20 values), per_trial, num_query, num_gallery``, metrics in percent (0-100).
We add ``shots``, ``cmc_kind`` ("standard" or "identity"), ``std`` (population standard deviation over trials of
each scalar metric) and ``num_valid_query``; also ``rerank_precision`` when re-ranked. Both directions evaluated in
one run (``direction: "both"``) give ``{protocol, mode, direction, shots, cmc_kind, rerank, v2i: {...}, i2v: {...}}``
with the one-direction summary under each direction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCALARS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")

__all__ = ["SCALARS", "format_table", "plot_cmc", "summarize_trials", "write_json"]


def _size(values: Sequence[int]) -> int | float:
    """One gallery/query size when all trials agree, else the mean."""
    vals = list(values)
    return int(vals[0]) if len(set(vals)) == 1 else float(np.mean(vals))


def summarize_trials(plan: Any, per_trial: Sequence[Any], *, rerank: bool = False,
                     trial_indices: Sequence[int] | None = None, rerank_precision: str = "float16"
                     ) -> dict[str, Any]:
    """Mean (and std) over trials of the percent metrics of :class:`RankingResult` objects, per-trial rows too.

    ``plan`` supplies protocol/mode/direction/shots/cmc (a :class:`ProtocolPlan`, or anything with those
    attributes). ``trial_indices`` overrides the trial numbers (several RegDB files: 1..n). ``rerank_precision``
    (the re-ranking's arithmetic) is recorded when ``rerank``. A plan with direction "both" (its trials name their
    direction) gives ``{"protocol", "mode", "direction": "both", "shots", "cmc_kind",
    "rerank", "v2i": summary, "i2v": summary}``, each entry summarising that direction's trials.
    """
    if plan.direction == "both":
        both: dict[str, Any] = {"protocol": plan.protocol, "mode": plan.mode, "direction": "both",
                                "shots": plan.shots, "cmc_kind": plan.cmc, "rerank": bool(rerank)}
        if rerank:
            both["rerank_precision"] = rerank_precision
        for d in plan.directions:
            keep = [k for k, t in enumerate(plan.trials) if t.direction == d]
            both[d] = summarize_trials(plan.for_direction(d), [per_trial[k] for k in keep], rerank=rerank,
                                       trial_indices=(None if trial_indices is None
                                                      else [trial_indices[k] for k in keep]),
                                       rerank_precision=rerank_precision)
        return both
    rows = []
    for k, res in enumerate(per_trial):
        s = res.summary()
        idx = trial_indices[k] if trial_indices is not None else plan.trials[k].index
        rows.append({"trial": int(idx), **{m: s[m] for m in SCALARS}, "cmc": s["cmc"],
                     "num_query": s["num_query"], "num_valid_query": s["num_valid"], "num_gallery": s["num_gallery"]})
    out: dict[str, Any] = {
        "protocol": plan.protocol,
        "mode": plan.mode,
        "direction": plan.direction,
        "shots": plan.shots,
        "cmc_kind": getattr(plan, "cmc", None),
        "trials": len(rows),
        "rerank": bool(rerank),
    }
    if rerank:
        out["rerank_precision"] = rerank_precision
    for m in SCALARS:
        out[m] = float(np.mean([r[m] for r in rows]))
    out["cmc"] = [float(v) for v in np.mean([r["cmc"] for r in rows], axis=0)]
    out["std"] = {m: float(np.std([r[m] for r in rows])) for m in SCALARS}
    out["per_trial"] = rows
    out["num_query"] = _size([r["num_query"] for r in rows])
    out["num_valid_query"] = _size([r["num_valid_query"] for r in rows])
    out["num_gallery"] = _size([r["num_gallery"] for r in rows])
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table: one row per trial (when more than one) and the mean (± std).

    A summary of both directions gives one table per direction, v2i first.
    """
    if summary.get("direction") == "both":
        return "\n\n".join(format_table(summary[d]) for d in ("v2i", "i2v"))
    head = (f"{'':<8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}{'Rank-20':>9}{'mAP':>8}{'mINP':>8}"
            f"{'#query':>8}{'gallery':>9}")
    title_bits = [summary["protocol"]]
    if summary.get("mode"):
        title_bits.append(f"mode={summary['mode']}")
    if summary.get("shots") and summary["protocol"].startswith("sysu") and summary["protocol"] != "sysu-mm02":
        title_bits.append(f"shots={summary['shots']}")
    title_bits.append(f"direction={summary['direction']}")
    if summary.get("cmc_kind"):
        title_bits.append(f"cmc={summary['cmc_kind']}")
    title_bits.append(f"trials={summary['trials']}")
    if summary.get("rerank"):
        title_bits.append("re-ranked")
    lines = ["  ".join(title_bits), head, "-" * len(head)]

    def row(name: str, r: dict[str, Any]) -> str:
        g = r["num_gallery"]
        gs = f"{g}" if isinstance(g, int) else f"{g:.1f}"
        q = r["num_query"]
        qs = f"{q}" if isinstance(q, int) else f"{q:.1f}"
        return (f"{name:<8}{r['rank1']:>8.2f}{r['rank5']:>8.2f}{r['rank10']:>9.2f}{r['rank20']:>9.2f}"
                f"{r['mAP']:>8.2f}{r['mINP']:>8.2f}{qs:>8}{gs:>9}")

    if len(summary["per_trial"]) > 1:
        for r in summary["per_trial"]:
            lines.append(row(f"trial {r['trial']}", r))
        lines.append("-" * len(head))
    lines.append(row("mean", summary))
    if len(summary["per_trial"]) > 1:
        std = summary["std"]
        lines.append(f"{'std':<8}{std['rank1']:>8.2f}{std['rank5']:>8.2f}{std['rank10']:>9.2f}{std['rank20']:>9.2f}"
                     f"{std['mAP']:>8.2f}{std['mINP']:>8.2f}")
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def write_json(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the summary as JSON (atomically: temp file + rename); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def plot_cmc(path: str | Path, summary: dict[str, Any]) -> Path:
    """Save the mean CMC curve (percent vs rank 1..20) as a PNG, with per-trial curves faintly behind it.

    A summary of both directions draws one mean curve per direction.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [summary[d] for d in ("v2i", "i2v")] if summary.get("direction") == "both" else [summary]
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    ranks = np.arange(1, len(parts[0]["cmc"]) + 1)
    for part in parts:
        cmc = part["cmc"]
        ranks = np.arange(1, len(cmc) + 1)
        if len(part["per_trial"]) > 1:
            for r in part["per_trial"]:
                ax.plot(ranks, r["cmc"], color="0.8", linewidth=0.8)
        label = f"{part['protocol']} {part['direction']} (R1 {part['rank1']:.2f}, mAP {part['mAP']:.2f})"
        ax.plot(ranks, cmc, marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xticks([1, 5, 10, 15, 20] if len(ranks) >= 20 else ranks)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("CMC" + (" (re-ranked)" if summary.get("rerank") else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
