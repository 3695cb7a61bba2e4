"""Verification thresholds from a labelled features file: cross-modal genuine / impostor distances, ROC, EER.

Pairs: every (visible row, infrared row) pair -- RGB-vs-IR only, never two images of one modality. A pair is
*genuine* when both rows have the same pid, else an *impostor*. Distance: Euclidean between the L2-normalised
features, ``d = sqrt(max(2 - 2 cos, 0))`` in float64 (0..2).

Decision rule: a pair is accepted (same person) when ``d <= t``. For a threshold t,
``FAR(t) = #impostors with d <= t / #impostors`` and ``TAR(t) = #genuine with d <= t / #genuine``
(``FRR = 1 - TAR``).

Threshold for a requested false-accept rate ``far`` (0 < far < 1): with the impostor distances sorted ascending
``a_1 <= a_2 <= ...`` and ``k = floor(far * #impostors)``, ``t = `` the largest float64 below ``a_{k+1}``
(``numpy.nextafter(a_{k+1}, -inf)``). Accepting ``d <= t`` therefore accepts exactly the pairs strictly closer than
the (k+1)-th nearest impostor: at most k impostors, so the achieved FAR is ``<= far``, and no larger threshold keeps
that bound on this data (its TAR is the highest possible). When ``far < 1 / #impostors`` (k = 0) the data cannot
resolve it: t falls below every impostor and the report flags ``resolvable: false``.

EER: FAR and FRR are step functions on finite data and rarely meet exactly. The reported EER is
``min over t of max(FAR(t), FRR(t))`` -- the smallest error rate achievable on both sides at once -- with the
smallest genuine distance t attaining it (the minimum is always attained at a genuine distance). On large data it
equals the usual crossing point to within one step.

Memory: the [#visible, #infrared] distance matrix is never held whole; rows of visible images are processed in
chunks within ``memory_mb`` (two passes: the first collects the genuine distances, a histogram and the smallest
impostor distances the requested FARs need -- ``floor(max(far) * #impostors) + 1`` values; the second counts the
impostors below every genuine distance for the ROC and the EER).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vireid.errors import ConfigError, FeaturesError
from vireid.evaluation.features import check_feature_rows

DEFAULT_FARS = (1e-4, 1e-3, 1e-2, 1e-1)
HIST_BINS = 100
"""Histogram bins between the smallest and the largest pair distance."""


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold for one requested FAR (module docstring)."""

    far_requested: float
    threshold: float
    far: float
    tar: float
    impostors_accepted: int
    genuine_accepted: int
    resolvable: bool

    def as_dict(self) -> dict[str, Any]:
        return {"far_requested": self.far_requested, "threshold": self.threshold, "far": self.far, "tar": self.tar,
                "frr": 1.0 - self.tar, "impostors_accepted": self.impostors_accepted,
                "genuine_accepted": self.genuine_accepted, "resolvable": self.resolvable}


@dataclass
class Calibration:
    """Everything ``vireid calibrate`` reports; ``roc_*`` are the ROC corners (one per distinct genuine distance)."""

    source: str
    num_visible: int
    num_infrared: int
    num_identities: int
    num_genuine: int
    num_impostor: int
    eer: float
    eer_threshold: float
    eer_far: float
    eer_frr: float
    points: list[OperatingPoint]
    roc_threshold: np.ndarray
    roc_far: np.ndarray
    roc_tar: np.ndarray
    hist_edges: np.ndarray
    hist_genuine: np.ndarray
    hist_impostor: np.ndarray
    genuine_mean: float = 0.0
    impostor_mean: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, max_roc_points: int = 512) -> dict[str, Any]:
        """JSON-ready summary; the ROC is thinned to at most ``max_roc_points`` corners (evenly in rank)."""
        n = len(self.roc_far)
        keep: np.ndarray | list[int] = (
            np.unique(np.round(np.linspace(0, n - 1, min(n, max_roc_points))).astype(np.int64)) if n else [])
        return {
            "features": self.source,
            "pairs": "visible x infrared (cross-modal only); genuine = same pid",
            "distance": "euclidean on L2-normalised features (0..2)",
            "rule": "accept a pair when distance <= threshold",
            "num_visible": self.num_visible, "num_infrared": self.num_infrared,
            "num_identities": self.num_identities,
            "num_genuine": self.num_genuine, "num_impostor": self.num_impostor,
            "genuine_mean_distance": self.genuine_mean, "impostor_mean_distance": self.impostor_mean,
            "eer": self.eer, "eer_threshold": self.eer_threshold, "eer_far": self.eer_far, "eer_frr": self.eer_frr,
            "thresholds": [p.as_dict() for p in self.points],
            "roc": {"threshold": self.roc_threshold[keep].tolist(), "far": self.roc_far[keep].tolist(),
                    "tar": self.roc_tar[keep].tolist()},
            "histogram": {"edges": self.hist_edges.tolist(), "genuine": self.hist_genuine.tolist(),
                          "impostor": self.hist_impostor.tolist()},
        }


def _check_fars(fars: Sequence[float]) -> list[float]:
    out = []
    for f in fars:
        f = float(f)
        if not (0.0 < f < 1.0):
            raise ConfigError(f"--far {f:g}: a false-accept rate must be between 0 and 1 (exclusive), e.g. 1e-3")
        out.append(f)
    if not out:
        raise ConfigError("--far: give at least one false-accept rate, e.g. --far 1e-3 1e-2")
    return out


def _chunks(v: np.ndarray, ir: np.ndarray, memory_mb: float) -> Iterator[tuple[int, np.ndarray]]:
    """(start, distances [rows, #ir]) for chunks of visible rows; identical chunks on every call."""
    per_row = max(1, ir.shape[0]) * 8 * 4  # distances + products + mask + temporaries, float64
    rows = max(1, int(memory_mb * 2**20 // per_row))
    for a in range(0, v.shape[0], rows):
        s = v[a:a + rows] @ ir.T
        yield a, np.sqrt(np.maximum(2.0 - 2.0 * s, 0.0))


def calibrate(
    features: np.ndarray,
    pids: np.ndarray,
    modalities: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    *,
    memory_mb: float = 256.0,
    source: str = "<memory>",
) -> Calibration:
    """Genuine/impostor statistics, ROC, EER and one threshold per requested FAR (module docstring).

    Raises :class:`FeaturesError` (one line) when rows have no identity (pid < 0), a row has zero norm (or every
    row is the same vector), a modality is missing, no identity has images in both modalities, or there is no
    impostor pair.
    """
    fars = _check_fars(fars)
    if memory_mb <= 0:
        raise ConfigError(f"--memory-mb {memory_mb}: must be positive")
    pids = np.asarray(pids, dtype=np.int64)
    mods = np.asarray(modalities, dtype=np.int64)
    unknown = int((pids < 0).sum())
    if unknown:
        raise FeaturesError(f"{source}: {unknown} of {len(pids)} rows have no identity (pid -1); calibration needs "
                            "a labelled features file -- extract from a list file with 'path pid camid' lines or a "
                            "recognised layout, or drop the unlabelled rows")
    check_feature_rows(features, source)  # zero rows would sit at one distance from everything
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    v, ir = f[mods == 0], f[mods == 1]
    pv, pi = pids[mods == 0], pids[mods == 1]
    if len(v) == 0 or len(ir) == 0:
        raise FeaturesError(f"{source}: has {len(v)} visible and {len(ir)} infrared rows; cross-modal calibration "
                            "needs both (column 'modalities': 0 visible, 1 infrared)")
    ids_v, cnt_v = np.unique(pv, return_counts=True)
    ids_i, cnt_i = np.unique(pi, return_counts=True)
    shared, a_idx, b_idx = np.intersect1d(ids_v, ids_i, return_indices=True)
    n_gen = int((cnt_v[a_idx].astype(np.int64) * cnt_i[b_idx]).sum())
    n_imp = len(v) * len(ir) - n_gen
    if n_gen == 0:
        raise FeaturesError(f"{source}: no identity has both visible and infrared rows, so there is no genuine "
                            "cross-modal pair; calibrate on a file where the same people appear in both modalities")
    if n_imp == 0:
        raise FeaturesError(f"{source}: every cross-modal pair is genuine (one identity); calibration needs "
                            "impostor pairs of different people")

    ks = [int(np.floor(far * n_imp + 1e-9)) for far in fars]
    keep = min(max(ks) + 1, n_imp)
    smallest = np.empty(0)
    genuine: list[np.ndarray] = []
    imp_sum, imp_max = 0.0, 0.0
    # pass 1: genuine distances, the `keep` smallest impostor distances, impostor sum and maximum
    for a, d in _chunks(v, ir, memory_mb):
        same = pv[a:a + d.shape[0], None] == pi[None, :]
        genuine.append(d[same])
        imp = d[~same]
        if imp.size:
            imp_sum += float(imp.sum())
            imp_max = max(imp_max, float(imp.max()))
        pool = np.concatenate([smallest, imp])
        smallest = np.partition(pool, keep - 1)[:keep] if len(pool) > keep else pool
    gen = np.sort(np.concatenate(genuine))
    smallest = np.sort(smallest)

    # pass 2: impostors at or below each distinct genuine distance (ROC corners, EER); impostor histogram
    thresholds = np.unique(gen)
    counts = np.zeros(len(thresholds) + 1, dtype=np.int64)
    lo, hi = min(float(gen[0]), float(smallest[0])), max(float(gen[-1]), imp_max)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, HIST_BINS + 1)
    hist_imp = np.zeros(HIST_BINS, dtype=np.int64)
    for a, d in _chunks(v, ir, memory_mb):
        same = pv[a:a + d.shape[0], None] == pi[None, :]
        imp = d[~same]
        counts += np.bincount(np.searchsorted(thresholds, imp, side="left"), minlength=len(thresholds) + 1)
        hist_imp += np.histogram(imp, bins=edges)[0]
    imp_le = np.cumsum(counts)[:-1]  # imp_le[j] = #impostors with d <= thresholds[j]
    gen_le = np.searchsorted(gen, thresholds, side="right")
    roc_far = imp_le / n_imp
    roc_tar = gen_le / n_gen
    worst = np.maximum(roc_far, 1.0 - roc_tar)
    j = int(np.argmin(worst))

    points = []
    for far, k in zip(fars, ks):
        limit = smallest[k]
        t = float(np.nextafter(limit, -np.inf))
        n_acc_imp = int(np.searchsorted(smallest, limit, side="left"))
        n_acc_gen = int(np.searchsorted(gen, limit, side="left"))
        points.append(OperatingPoint(far, t, n_acc_imp / n_imp, n_acc_gen / n_gen, n_acc_imp, n_acc_gen, k > 0))

    return Calibration(
        source=source, num_visible=len(v), num_infrared=len(ir), num_identities=len(shared),
        num_genuine=n_gen, num_impostor=n_imp,
        eer=float(worst[j]), eer_threshold=float(thresholds[j]), eer_far=float(roc_far[j]),
        eer_frr=float(1.0 - roc_tar[j]), points=points,
        roc_threshold=thresholds, roc_far=roc_far, roc_tar=roc_tar,
        hist_edges=edges, hist_genuine=np.histogram(gen, bins=edges)[0], hist_impostor=hist_imp,
        genuine_mean=float(gen.mean()), impostor_mean=imp_sum / n_imp,
    )


def format_calibration(cal: Calibration) -> str:
    """A summary and one row per requested FAR."""
    lines = [
        f"pairs: {cal.num_genuine} genuine, {cal.num_impostor} impostor (visible {cal.num_visible} x infrared "
        f"{cal.num_infrared}, {cal.num_identities} identities in both)",
        f"mean distance: genuine {cal.genuine_mean:.4f}, impostor {cal.impostor_mean:.4f}",
        f"EER {100 * cal.eer:.2f}% at threshold {cal.eer_threshold:.6f} (FAR {100 * cal.eer_far:.2f}%, "
        f"FRR {100 * cal.eer_frr:.2f}%)",
        "accept a pair when distance <= threshold:",
        f"  {'FAR asked':>10}  {'threshold':>10}  {'FAR':>10}  {'TAR':>8}  note",
    ]
    for p in cal.points:
        note = "" if p.resolvable else f"below 1/{cal.num_impostor}: not resolvable, accepts no impostor"
        lines.append(f"  {p.far_requested:>10.2e}  {p.threshold:>10.6f}  {p.far:>10.2e}  {100 * p.tar:>7.2f}%  "
                     f"{note}".rstrip())
    return "\n".join(lines)


def write_calibration(out_dir: str | Path, cal: Calibration) -> tuple[Path, Path]:
    """``calibration.json`` and ``calibration.png`` (distance histograms + ROC) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "calibration.json"
    js.write_text(json.dumps(cal.as_dict(), indent=2) + "\n", encoding="utf-8")
    return js, plot_calibration(out / "calibration.png", cal)


def plot_calibration(path: str | Path, cal: Calibration) -> Path:
    """Left: genuine and impostor distance densities with the FAR thresholds; right: ROC (TAR vs FAR, log FAR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    edges = cal.hist_edges
    width = np.diff(edges)
    for counts, label, color in ((cal.hist_impostor, "impostor", "#d62728"), (cal.hist_genuine, "genuine", "#1a9e1a")):
        total = max(int(counts.sum()), 1)
        ax1.bar(edges[:-1], counts / total / width, width=width, align="edge", alpha=0.5, color=color, label=label)
    styles = ("--", ":", "-.", (0, (5, 1)), (0, (1, 3)))
    for i, p in enumerate(cal.points):
        ax1.axvline(p.threshold, color="k", lw=0.8, ls=styles[i % len(styles)],
                    label=f"FAR {p.far_requested:.0e}: t={p.threshold:.4f}")
    ax1.set_xlabel("distance (L2-normalised features)")
    ax1.set_ylabel("density")
    ax1.set_title("cross-modal pair distances")
    ax1.legend(fontsize=7)
    far = np.concatenate([[0.0], cal.roc_far, [1.0]])
    tar = np.concatenate([[0.0], cal.roc_tar, [1.0]])
    xs = np.repeat(far, 2)[1:]  # step curve: FAR grows at constant TAR, then TAR jumps
    ys = np.repeat(tar, 2)[:-1]
    floor = 1.0 / max(cal.num_impostor, 1)
    ax2.plot(np.maximum(xs, floor), ys, color="#1f5fbf", lw=1.5)
    ax2.scatter([max(p.far, floor) for p in cal.points], [p.tar for p in cal.points], color="k", s=12, zorder=3,
                label="requested FARs")
    ax2.scatter([max(cal.eer_far, floor)], [1.0 - cal.eer_frr], color="#d62728", s=20, zorder=3,
                label=f"EER {100 * cal.eer:.2f}%")
    ax2.set_xscale("log")
    ax2.set_xlim(floor, 1.0)
    ax2.set_ylim(0.0, 1.01)
    ax2.set_xlabel("false accept rate (FAR)")
    ax2.set_ylabel("true accept rate (TAR)")
    ax2.set_title("ROC (visible vs infrared)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
