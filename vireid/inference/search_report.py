"""What ``vireid search`` shows and writes: a table per probe, ``results.json`` and a picture grid.

``results.json``::

    {"model": {checkpoint, input_size, flip, feature, feature_dim, device},
     "gallery": {"source", "root", "size", "modalities": {"rgb": n, "ir": n}},
     "index": {"kind": "exact"|"ivf", "backend": "faiss-flat"|"faiss-ivf"|"torch", ...params},
     "distance": "euclidean on L2-normalised features", "top": K,
     "probes": [{"path", "modality", "modality_auto_score" (auto only), "pid", "camid",
                 "matches": [{"rank" (1-based), "gallery_row", "path", "distance", "pid", "camid", "modality",
                              "same_identity" (null unless both pids are known)}]}]}

pid/camid are null where unknown (-1). Gallery ``path`` is relative to the gallery root, probe ``path`` absolute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vireid.inference.gallery import Gallery
from vireid.inference.images import MODALITY_NAME, ImageList
from vireid.inference.search import SearchResult


def _id(x: int) -> int | None:
    return int(x) if int(x) >= 0 else None


def search_report(probes: ImageList, probe_modalities: np.ndarray, probe_scores: np.ndarray | None,
                  gallery: Gallery, result: SearchResult, model_info: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` dict (module docstring)."""
    rows = []
    for i in range(len(probes)):
        pid = _id(probes.pids[i])
        entry: dict[str, Any] = {"path": str(probes.absolute(i)), "modality": MODALITY_NAME[int(probe_modalities[i])]}
        if probe_scores is not None:
            entry["modality_auto_score"] = float(probe_scores[i])
        entry.update({"pid": pid, "camid": _id(probes.camids[i])})
        matches = []
        for rank, (j, d) in enumerate(zip(result.rows[i], result.distances[i]), start=1):
            if j < 0:
                continue
            gpid = _id(gallery.pids[j])
            matches.append({
                "rank": rank, "gallery_row": int(j), "path": str(gallery.paths[j]), "distance": float(d),
                "pid": gpid, "camid": _id(gallery.camids[j]), "modality": MODALITY_NAME[int(gallery.modalities[j])],
                "same_identity": None if pid is None or gpid is None else bool(pid == gpid),
            })
        entry["matches"] = matches
        rows.append(entry)
    mods = np.asarray(gallery.modalities)
    return {
        "model": model_info,
        "gallery": {"source": gallery.source, "root": str(gallery.root), "size": len(gallery),
                    "modalities": {"rgb": int((mods == 0).sum()), "ir": int((mods == 1).sum())}},
        "index": {"kind": result.index, "backend": result.backend, **result.params},
        "distance": "euclidean on L2-normalised features",
        "top": int(result.rows.shape[1]),
        "probes": rows,
    }


def format_search_table(report: dict[str, Any]) -> str:
    """One block per probe: rank, gallery path, distance, pid (``-`` unknown), ``ok``/``x`` when both ids known."""
    lines: list[str] = []
    for p in report["probes"]:
        pid = "-" if p["pid"] is None else str(p["pid"])
        extra = f", score {p['modality_auto_score']:.2f}" if "modality_auto_score" in p else ""
        lines.append(f"probe {p['path']}  ({p['modality']}{extra}, pid {pid})")
        width = max([len("gallery path")] + [len(m["path"]) for m in p["matches"]])
        lines.append(f"  {'rank':>4}  {'gallery path':<{width}}  {'distance':>8}  {'pid':>6}  match")
        for m in p["matches"]:
            mpid = "-" if m["pid"] is None else str(m["pid"])
            ok = "" if m["same_identity"] is None else ("ok" if m["same_identity"] else "x")
            lines.append(f"  {m['rank']:>4}  {m['path']:<{width}}  {m['distance']:>8.4f}  {mpid:>6}  {ok}")
    return "\n".join(lines)


def write_search_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON (folder created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def draw_search_grid(report: dict[str, Any], gallery: Gallery, out: str | Path,
                     max_probes: int = 16) -> tuple[Path | None, str | None]:
    """The picture: one row per probe (the first ``max_probes``), its top-K with distances; framed green/red when
    the ids of the probe and every shown match are known (:func:`vireid.evaluation.visualize.ranked_list_figure`).

    Returns (path, None), or (None, reason) when an image cannot be found (e.g. a features file whose images are
    not under the gallery root): the results themselves do not need the images.
    """
    from vireid.evaluation.visualize import ranked_list_figure

    probes = report["probes"][:max_probes]
    top = int(report["top"])
    cols = sorted({m["gallery_row"] for p in probes for m in p["matches"]})
    for p in probes:
        if not Path(p["path"]).is_file():
            return None, f"probe image {p['path']} not found"
    for j in cols:
        f = gallery.root / str(gallery.paths[j])
        if not f.is_file():
            return None, f"gallery image {f} not found; pass --gallery-root, the folder the gallery paths are " \
                         "relative to"
    col_of = {j: c for c, j in enumerate(cols)}
    dist = np.full((len(probes), max(len(cols), 1)), np.inf)
    for r, p in enumerate(probes):
        for m in p["matches"]:
            dist[r, col_of[m["gallery_row"]]] = m["distance"]
    known = all(p["pid"] is not None for p in probes) and all(gallery.pids[j] >= 0 for j in cols)
    path = ranked_list_figure(
        gallery.root, [p["path"] for p in probes], [str(gallery.paths[j]) for j in cols], dist, out,
        probe_pids=[p["pid"] for p in probes] if known else None,
        gallery_pids=[int(gallery.pids[j]) for j in cols] if known else None,
        top=top, title=f"probe -> top-{top} gallery" + (" (green: same identity)" if known else ""),
    )
    return path, None
