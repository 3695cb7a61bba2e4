"""Benchmark protocols: which test images are queries, which form the gallery of each trial, what is removed.

Each builder takes the *test pool* -- anything with ``pids``, ``camids``, ``modalities`` and ``paths`` arrays, such
as a :class:`vireid.evaluation.features.FeatureSet` or :func:`pool_from_samples` of a dataset's ``test`` records --
and returns a :class:`ProtocolPlan`: per trial the pool rows of the queries and of the gallery, plus per-row removal
keys and the CMC flavour. :func:`evaluate_protocol` then computes the distances of the pool once and indexes them
per trial.

Protocols (SPEC 2.1-2.4, 1.5):

- ``sysu``: AGW-style SYSU-MM01. Queries: every IR image (cam3, cam6) of the test ids, ids ascending, cam3 then
  cam6, file names sorted. Gallery of trial t: ``random.seed(t)``, then for each test id (ascending, as 4-digit
  strings) and each RGB camera (cam1, cam2, cam4, cam5; indoor: cam1, cam2) whose folder exists, one
  ``random.choice`` over the sorted file names (a missing folder consumes no draw). cam3 queries lose every cam2
  gallery image. Identity-level CMC with the reference's invalid-query quirk. Trials 0..9.
- ``sysu-official``: galleries from ``exp/rand_perm_cam.mat`` (first ``shots`` indices of run r for each camera and
  test id), location removal with locations [1, 2, 2, 4, 5, 6], identity-level CMC without quirk, runs 0..9.
- ``regdb``: one features file per trial; query = visible, gallery = thermal (v2i) or swapped (i2v); nothing
  removed; standard CMC.
- ``sysu-mm02``: one split; v2i query = RGB (test_rgb), gallery = NIR (test_ir), i2v swapped; same pid and same
  camera removed; identity-level CMC.
- ``llcm``: queries = every test image of the query modality; gallery of trial t = one ``random.choice`` per
  (id, camera) of the other modality (ids ascending, cameras 1..9, missing folder = no draw) after
  ``random.seed(t)``; same pid and same camera removed; identity-level CMC; trials 0..9.

The random draws depend on the exact list of files in every folder, so the pool must be the *whole* test pool:
the same images the reference code lists on disk.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn
from typing import Protocol as TypingProtocol

import numpy as np

from vireid.errors import DataError, FeaturesError
from vireid.evaluation.metrics import (
    evaluate_ranking,
    evaluate_trials,
    feature_distance_fn,
    feature_rows_distance_fn,
    l2_normalize,
    pair_keys,
    progress_bar,
    unit_rows,
)

PROTOCOLS = ("sysu", "sysu-official", "regdb", "sysu-mm02", "llcm")
MODES = ("all", "indoor")
DIRECTIONS = ("v2i", "i2v")
CMC_CHOICES = ("auto", "standard", "identity")
RERANK_PRECISIONS = ("float16", "float32")

SYSU_RGB_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_IR_CAMS = (3, 6)
SYSU_LOCATIONS = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}
LLCM_CAMS = tuple(range(1, 10))

__all__ = [
    "CMC_CHOICES",
    "PROTOCOLS",
    "RERANK_PRECISIONS",
    "Pool",
    "ProtocolPlan",
    "ProtocolResult",
    "Trial",
    "build_protocol",
    "check_pool_paths",
    "evaluate_protocol",
    "llcm",
    "load_rand_perm_cam",
    "pool_from_samples",
    "read_id_list",
    "regdb",
    "sysu_agw",
    "sysu_mm02",
    "sysu_official",
]


class PoolLike(TypingProtocol):
    """Anything with the four aligned test-pool columns (read-only), e.g. a Pool or a FeatureSet."""

    @property
    def pids(self) -> np.ndarray: ...
    @property
    def camids(self) -> np.ndarray: ...
    @property
    def modalities(self) -> np.ndarray: ...
    @property
    def paths(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Pool:
    """The test pool as four aligned columns (what protocols need from records or a features file)."""

    pids: np.ndarray
    camids: np.ndarray
    modalities: np.ndarray
    paths: np.ndarray
    source: str = "<records>"


def pool_from_samples(samples: Sequence[Any], source: str = "<records>") -> Pool:
    """A :class:`Pool` from :class:`vireid.data.records.Sample` objects (e.g. ``dataset.test``)."""
    return Pool(
        np.array([s.pid for s in samples], dtype=np.int64),
        np.array([s.camid for s in samples], dtype=np.int64),
        np.array([int(s.modality) for s in samples], dtype=np.int64),
        np.array([s.path for s in samples], dtype=str),
        source,
    )


@dataclass(frozen=True)
class Trial:
    """One trial/run: pool row indices of the queries and of the gallery, in protocol order.

    ``direction`` is set on the trials of a plan that holds both directions (``ProtocolPlan.direction == "both"``):
    "v2i" or "i2v"; otherwise None (the plan's direction).
    """

    index: int
    query: np.ndarray
    gallery: np.ndarray
    direction: str | None = None


@dataclass(frozen=True)
class ProtocolPlan:
    """Everything needed to evaluate a protocol on a pool.

    ``query_remove_keys`` / ``gallery_remove_keys`` are per *pool row*: gallery row j is removed for query row i when
    ``query_remove_keys[i] == gallery_remove_keys[j]`` (see :func:`vireid.evaluation.metrics.evaluate_ranking`).
    ``cmc`` is "standard" or "identity" (the protocol's published flavour unless overridden, see
    :func:`build_protocol`). ``direction`` is "v2i", "i2v" or "both"; a "both" plan lists the v2i trials, then the
    i2v trials, each trial naming its direction (:meth:`for_direction` gives one direction's plan).
    """

    protocol: str
    trials: list[Trial]
    pids: np.ndarray
    query_remove_keys: np.ndarray
    gallery_remove_keys: np.ndarray
    cmc: str
    invalid_query_quirk: bool = False
    mode: str | None = None
    direction: str = "i2v"
    shots: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def directions(self) -> tuple[str, ...]:
        """The directions evaluated: ``("v2i", "i2v")`` for a "both" plan, else the plan's one direction."""
        return DIRECTIONS if self.direction == "both" else (self.direction,)

    def for_direction(self, direction: str) -> ProtocolPlan:
        """The plan of one direction (itself when it has only that one)."""
        if direction not in self.directions:
            raise FeaturesError(f"{self.protocol} plan has direction(s) {', '.join(self.directions)}, "
                                f"not {direction!r}")
        if self.direction != "both":
            return self
        trials = [replace(t, direction=None) for t in self.trials if t.direction == direction]
        return replace(self, trials=trials, direction=direction)


# ----------------------------------------------------------------------------------------------------------------
# path checks: a file of another dataset must not be evaluated silently

_PATTERNS = {
    "sysu": (re.compile(r"^cam([1-6])/(\d{4})/([^/]+)$"), "camK/PPPP/NNNN.jpg (K 1..6, PPPP the 4-digit id folder)"),
    "regdb": (re.compile(r"^(Visible|Thermal)/(\d+)/([^/]+)$"), "Visible/<id>/<name>.bmp or Thermal/<id>/<name>.bmp"),
    "sysu-mm02": (re.compile(r"^test/(.+)$"), "test/... as in test_rgb.txt / test_ir.txt"),
    "llcm": (re.compile(r"^test_(vis|nir)/cam(\d+)/(\d+)/([^/]+)$"), "test_vis/camK/PPPP/name.jpg or test_nir/..."),
}
_DATASET = {"sysu": "SYSU-MM01", "sysu-official": "SYSU-MM01", "regdb": "RegDB", "sysu-mm02": "SYSU-MM02",
            "llcm": "LLCM"}


def check_pool_paths(pool: PoolLike, protocol: str) -> None:
    """Check that every path belongs to the protocol's dataset and agrees with its camid/modality/pid columns.

    Raises:
        FeaturesError: naming the first offending row, what was expected, and a hint that the protocol may be wrong.
    """
    key = "sysu" if protocol == "sysu-official" else protocol
    if key not in _PATTERNS:
        raise FeaturesError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    rx, expected = _PATTERNS[key]
    src = getattr(pool, "source", "<records>")
    ds = _DATASET[protocol]

    def fail(i: int, why: str) -> NoReturn:
        raise FeaturesError(f"{src}: row path '{pool.paths[i]}' {why}; is --protocol {protocol} the right one?")

    # Python ints and strings up front: indexing the NumPy columns row by row costs more than the checks
    columns = zip(np.asarray(pool.camids).tolist(), np.asarray(pool.modalities).tolist(),
                  np.asarray(pool.pids).tolist())
    for i, (p, (cam, mod, pid)) in enumerate(zip(pool.paths.tolist(), columns)):
        m = rx.match(p)
        if m is None:
            fail(i, f"is not a {ds} test image path (expected {expected}, relative to the {ds} root)")
        cam, mod, pid = int(cam), int(mod), int(pid)
        if key == "sysu":
            k = int(m.group(1))
            if cam != k:
                fail(i, f"is in cam{k} but 'camids' says {cam} (SYSU-MM01 camids are 1..6 as in camK)")
            if mod != (1 if k in SYSU_IR_CAMS else 0):
                fail(i, f"is a {'IR' if k in SYSU_IR_CAMS else 'RGB'} camera but 'modalities' says {mod}")
            if pid != int(m.group(2)):
                fail(i, f"is in id folder {m.group(2)} but 'pids' says {pid} (SYSU-MM01 pids are the folder numbers)")
        elif key == "regdb":
            want_cam, want_mod = (1, 0) if m.group(1) == "Visible" else (2, 1)
            if cam != want_cam or mod != want_mod:
                fail(i, f"expects camid {want_cam} and modality {want_mod} (RegDB: visible 1/0, thermal 2/1), got "
                        f"camid {cam} and modality {mod}")
        elif key == "sysu-mm02":
            if cam not in (1, 2, 3):
                fail(i, f"has camid {cam}; SYSU-MM02 cameras are 1 (RGB), 2 and 3 (NIR)")
            if mod != (0 if cam == 1 else 1):
                fail(i, f"has camid {cam} but modality {mod} (SYSU-MM02: cam 1 RGB = 0, cams 2/3 NIR = 1)")
        else:  # llcm
            want_mod = 0 if m.group(1) == "vis" else 1
            if mod != want_mod:
                fail(i, f"is under test_{m.group(1)} but 'modalities' says {mod}")
            if cam != int(m.group(2)):
                fail(i, f"is in cam{m.group(2)} but 'camids' says {cam}")
            if pid != int(m.group(3)):
                fail(i, f"is in id folder {m.group(3)} but 'pids' says {pid}")


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _groups(pool: PoolLike, rows: np.ndarray | None = None) -> dict[tuple[int, int, int], list[int]]:
    """(modality, camid, pid) -> pool rows, each list sorted by path (the reference's sorted folder listing)."""
    out: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    mods, cams, pids = (np.asarray(c).tolist() for c in (pool.modalities, pool.camids, pool.pids))
    idx = range(len(pool.paths)) if rows is None else rows.tolist()
    for i in idx:
        out[(int(mods[i]), int(cams[i]), int(pids[i]))].append(i)
    paths = pool.paths.tolist()
    return {k: sorted(v, key=paths.__getitem__) for k, v in out.items()}


def _test_ids(pool: PoolLike, test_ids: Sequence[int] | None) -> list[int]:
    present = sorted(set(pool.pids.tolist()))
    if test_ids is None:
        return present
    ids = sorted({int(x) for x in test_ids})
    missing = sorted(set(ids) - set(present))
    if missing:
        src = getattr(pool, "source", "<records>")
        raise FeaturesError(
            f"{src}: no image of test id(s) {', '.join(map(str, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}; the features file must hold the whole test pool"
        )
    return ids


def _draw_gallery(groups: dict[tuple[int, int, int], list[int]], paths: Sequence[str], modality: int,
                  ids: list[int], cams: Sequence[int], seed: int) -> np.ndarray:
    """``random.seed(seed)``; per id (ascending, as zero-padded strings) and camera with images: one random.choice.

    ``paths``: the pool's paths as a list of str (``pool.paths.tolist()``).
    """
    random.seed(seed)
    out: list[int] = []
    for pid in sorted(ids, key=lambda p: f"{p:04d}"):
        for cam in cams:
            rows = groups.get((modality, cam, pid))
            if not rows:
                continue  # a missing folder consumes no draw
            files = [paths[r] for r in rows]  # rows are sorted by path: the sorted folder listing
            out.append(rows[files.index(random.choice(files))])
    return np.asarray(out, dtype=np.int64)


def _queries(groups: dict[tuple[int, int, int], list[int]], modality: int, ids: list[int],
             cams: Sequence[int]) -> np.ndarray:
    return np.asarray([r for pid in ids for cam in cams for r in groups.get((modality, cam, pid), [])], dtype=np.int64)


def _check_trials(trials: int, most: int, what: str) -> None:
    if not 1 <= trials <= most:
        raise FeaturesError(f"{what}: --trials must be between 1 and {most}, got {trials}")


# ----------------------------------------------------------------------------------------------------------------
# protocols


def sysu_agw(pool: PoolLike, mode: str = "all", trials: int = 10, test_ids: Sequence[int] | None = None
             ) -> ProtocolPlan:
    """SYSU-MM01, AGW-style (SPEC 2.1). ``test_ids`` default: every pid of the pool."""
    if mode not in MODES:
        raise FeaturesError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    _check_trials(trials, 10**6, "sysu")
    ids = _test_ids(pool, test_ids)
    groups = _groups(pool)
    query = _queries(groups, 1, ids, SYSU_IR_CAMS)
    if query.size == 0:
        raise FeaturesError(f"{getattr(pool, 'source', '<records>')}: no IR (cam3/cam6) image of the test ids: "
                            "no query to evaluate")
    paths = pool.paths.tolist()
    plan_trials = [Trial(t, query, _draw_gallery(groups, paths, 0, ids, SYSU_RGB_CAMS[mode], t))
                   for t in range(trials)]
    cam = pool.camids
    return ProtocolPlan(
        "sysu", plan_trials, pool.pids.astype(np.int64),
        query_remove_keys=np.where(cam == 3, 2, -1).astype(np.int64),
        gallery_remove_keys=np.where(cam == 2, 2, -2).astype(np.int64),
        cmc="identity", invalid_query_quirk=True, mode=mode, direction="i2v", shots=1,
    )


def load_rand_perm_cam(path: str | Path) -> list[list[np.ndarray]]:
    """Read ``exp/rand_perm_cam.mat``: per camera 1..6, per person index (pid - 1), a [runs, n] array (1-based).

    Accepts the (6, 1) layout written by the synthetic generator and MATLAB's (1, 6); squeezes defensively.

    Raises:
        DataError: missing or unreadable file, or not the documented structure.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; the sysu-official protocol needs exp/rand_perm_cam.mat under "
                        "--dataset-root (the SYSU-MM01 folder)")
    try:
        from scipy.io import loadmat

        mat = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001  (scipy raises many types for corrupt files)
        raise DataError(f"{path}: cannot read the MATLAB file ({type(exc).__name__}: {exc})") from None
    if "rand_perm_cam" not in mat:
        raise DataError(f"{path}: no variable 'rand_perm_cam' "
                        f"(found: {', '.join(k for k in mat if not k.startswith('__'))})")
    cams = np.asarray(mat["rand_perm_cam"], dtype=object).reshape(-1)
    if cams.size != 6:
        raise DataError(f"{path}: 'rand_perm_cam' must have one entry per camera (6), got {cams.size}")
    out: list[list[np.ndarray]] = []
    for c, entry in enumerate(cams, start=1):
        persons = np.asarray(entry, dtype=object).reshape(-1)
        cam_list = []
        for p in persons:
            arr = np.asarray(p)
            if arr.size == 0:
                cam_list.append(np.zeros((0, 0), dtype=np.int64))
                continue
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2:
                raise DataError(f"{path}: camera {c}: a person entry has shape {arr.shape}, expected [runs, n]")
            cam_list.append(arr)
        out.append(cam_list)
    return out


def sysu_official(pool: PoolLike, rand_perm_cam: list[list[np.ndarray]] | str | Path, mode: str = "all",
                  shots: int = 1, trials: int = 10, test_ids: Sequence[int] | None = None) -> ProtocolPlan:
    """SYSU-MM01 with the official galleries of ``exp/rand_perm_cam.mat`` (SPEC 2.2)."""
    if mode not in MODES:
        raise FeaturesError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if shots not in (1, 10):
        raise FeaturesError(f"--shots must be 1 (single-shot) or 10 (multi-shot), got {shots}")
    perms = load_rand_perm_cam(rand_perm_cam) if isinstance(rand_perm_cam, (str, Path)) else rand_perm_cam
    src = getattr(pool, "source", "<records>")
    ids = _test_ids(pool, test_ids)
    groups = _groups(pool)
    query = _queries(groups, 1, ids, SYSU_IR_CAMS)
    if query.size == 0:
        raise FeaturesError(f"{src}: no IR (cam3/cam6) image of the test ids: no query to evaluate")
    galleries: list[list[int]] = [[] for _ in range(trials)]
    for cam in SYSU_RGB_CAMS[mode]:
        cam_perm = perms[cam - 1]
        for pid in ids:
            rows = groups.get((0, cam, pid), [])
            perm = cam_perm[pid - 1] if 0 < pid <= len(cam_perm) else np.zeros((0, 0))
            if perm.size == 0:
                if rows:
                    raise DataError(f"rand_perm_cam.mat has no permutation for camera {cam}, id {pid} although the "
                                    f"features file has {len(rows)} images of cam{cam}/{pid:04d}")
                continue
            if perm.shape[1] != len(rows):
                raise FeaturesError(
                    f"{src}: {len(rows)} images of cam{cam}/{pid:04d} but rand_perm_cam.mat indexes {perm.shape[1]}; "
                    "the features file must hold the whole test pool"
                )
            if trials > perm.shape[0]:
                raise FeaturesError(f"--trials {trials} but rand_perm_cam.mat holds {perm.shape[0]} runs")
            for r in range(trials):
                sel = np.asarray(perm[r, :shots])
                if not np.all(sel == np.round(sel)) or sel.min() < 1 or sel.max() > len(rows):
                    raise DataError(f"rand_perm_cam.mat: camera {cam}, id {pid}, run {r}: indices must be 1-based "
                                    f"integers in 1..{len(rows)}")
                galleries[r].extend(rows[int(i) - 1] for i in sel)
    plan_trials = [Trial(r, query, np.asarray(g, dtype=np.int64)) for r, g in enumerate(galleries)]
    loc = np.vectorize(SYSU_LOCATIONS.get, otypes=[np.int64])(pool.camids) if len(pool.camids) else pool.camids
    return ProtocolPlan("sysu-official", plan_trials, pool.pids.astype(np.int64),
                        query_remove_keys=loc.astype(np.int64), gallery_remove_keys=loc.astype(np.int64),
                        cmc="identity", invalid_query_quirk=False,
                        mode=mode, direction="i2v", shots=shots)


def _split_by_modality(pool: PoolLike, direction: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if direction not in DIRECTIONS:
        raise FeaturesError(f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    qmod = 0 if direction == "v2i" else 1
    query = np.nonzero(pool.modalities == qmod)[0].astype(np.int64)
    gallery = np.nonzero(pool.modalities != qmod)[0].astype(np.int64)
    src = getattr(pool, "source", "<records>")
    if query.size == 0 or gallery.size == 0:
        raise FeaturesError(f"{src}: {name} needs both visible and infrared images; "
                            f"found {int((pool.modalities == 0).sum())} visible and "
                            f"{int((pool.modalities == 1).sum())} infrared")
    return query, gallery


def regdb(pool: PoolLike, direction: str = "v2i", trial: int = 0) -> ProtocolPlan:
    """RegDB, one trial (one features file): visible -> thermal (v2i) or back (i2v); nothing removed."""
    query, gallery = _split_by_modality(pool, direction, "regdb")
    n = len(pool.pids)
    return ProtocolPlan("regdb", [Trial(trial, query, gallery)], pool.pids.astype(np.int64),
                        np.full(n, -1, np.int64), np.full(n, -2, np.int64), cmc="standard", direction=direction)


def _same_pid_cam_keys(pool: PoolLike) -> np.ndarray:
    return pair_keys(pool.pids, pool.camids) if len(pool.pids) else np.zeros(0, np.int64)


def sysu_mm02(pool: PoolLike, direction: str = "v2i") -> ProtocolPlan:
    """SYSU-MM02, one split: RGB -> NIR (v2i) or back; same pid and same camera removed; identity-level CMC."""
    query, gallery = _split_by_modality(pool, direction, "sysu-mm02")
    keys = _same_pid_cam_keys(pool)
    return ProtocolPlan("sysu-mm02", [Trial(0, query, gallery)], pool.pids.astype(np.int64), keys, keys,
                        cmc="identity", direction=direction)


def llcm(pool: PoolLike, direction: str = "v2i", trials: int = 10, test_ids: Sequence[int] | None = None
         ) -> ProtocolPlan:
    """LLCM (SPEC 1.5): all query-modality images vs one random image per (id, camera) of the other modality."""
    if direction not in DIRECTIONS:
        raise FeaturesError(f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    _check_trials(trials, 10**6, "llcm")
    qmod = 0 if direction == "v2i" else 1
    ids = _test_ids(pool, test_ids)
    groups = _groups(pool)
    query = _queries(groups, qmod, ids, LLCM_CAMS)
    if query.size == 0:
        raise FeaturesError(f"{getattr(pool, 'source', '<records>')}: no {'visible' if qmod == 0 else 'infrared'} "
                            "image in the pool: no query to evaluate")
    paths = pool.paths.tolist()
    plan_trials = [Trial(t, query, _draw_gallery(groups, paths, 1 - qmod, ids, LLCM_CAMS, t))
                   for t in range(trials)]
    keys = _same_pid_cam_keys(pool)
    return ProtocolPlan("llcm", plan_trials, pool.pids.astype(np.int64), keys, keys, cmc="identity",
                        direction=direction)


def build_protocol(name: str, pool: PoolLike, *, mode: str = "all", shots: int = 1, trials: int | None = None,
                   direction: str = "v2i", dataset_root: str | Path | None = None,
                   test_ids: Sequence[int] | None = None, cmc: str = "auto") -> ProtocolPlan:
    """Dispatch by protocol name (one of :data:`PROTOCOLS`) after checking the pool's paths.

    ``dataset_root`` is read only where the protocol needs split files: ``sysu-official`` reads
    ``exp/rand_perm_cam.mat``; ``sysu``/``sysu-official`` restrict to ``exp/test_id.txt`` and ``llcm`` to
    ``idx/test_id.txt`` when those exist under it.

    ``direction``: "v2i", "i2v", or "both" (regdb, sysu-mm02, llcm: one plan holding the trials of both directions,
    evaluated in one :func:`evaluate_protocol` call and reported per direction). SYSU-MM01 is always "i2v".

    ``cmc``: "auto" keeps the protocol's published CMC (identity-level for sysu, sysu-official, sysu-mm02 and llcm;
    standard for regdb); "standard" or "identity" overrides it. AML's evaluation (wuancong/CMAM,
    fastreid/evaluation/eval_regdb.py:30-66 ``get_unique``, used for RegDB and SYSU-MM02 in reid_evaluation.py:134-148)
    counts RegDB at identity level too: ``build_protocol("regdb", fs, cmc="identity", direction="both")``.
    """
    if name not in PROTOCOLS:
        raise FeaturesError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    if cmc not in CMC_CHOICES:
        raise FeaturesError(f"unknown cmc {cmc!r}; expected one of {', '.join(CMC_CHOICES)}")
    if direction not in DIRECTIONS + ("both",):
        raise FeaturesError(f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS + ('both',))}")
    if direction == "both" and name in ("sysu", "sysu-official"):
        raise FeaturesError(f"{name} has one direction (IR queries vs RGB gallery, i2v); direction 'both' applies to "
                            "regdb, sysu-mm02 and llcm")
    check_pool_paths(pool, name)
    root = Path(dataset_root) if dataset_root is not None else None
    if test_ids is None and root is not None:
        id_file = root / ("idx/test_id.txt" if name == "llcm" else "exp/test_id.txt")
        if name in ("sysu", "sysu-official", "llcm") and id_file.is_file():
            test_ids = read_id_list(id_file)
    if root is not None and name in ("sysu", "sysu-official", "llcm"):
        check_pool_complete(pool, root, name, test_ids)

    def one(d: str) -> ProtocolPlan:
        if name == "sysu":
            return sysu_agw(pool, mode, 10 if trials is None else trials, test_ids)
        if name == "sysu-official":
            if root is None:
                raise DataError("the sysu-official protocol reads exp/rand_perm_cam.mat: pass --dataset-root "
                                "(the SYSU-MM01 folder)")
            return sysu_official(pool, root / "exp" / "rand_perm_cam.mat", mode, shots,
                                 10 if trials is None else trials, test_ids)
        if name == "regdb":
            return regdb(pool, d)
        if name == "sysu-mm02":
            return sysu_mm02(pool, d)
        return llcm(pool, d, 10 if trials is None else trials, test_ids)

    if direction == "both":
        parts = [one(d) for d in DIRECTIONS]
        plan = replace(parts[0], direction="both",
                       trials=[replace(t, direction=p.direction) for p in parts for t in p.trials])
    else:
        plan = one(direction)
    return plan if cmc == "auto" else replace(plan, cmc=cmc)


def check_pool_complete(pool: PoolLike, root: str | Path, protocol: str,
                        test_ids: Sequence[int] | None = None) -> None:
    """Check that the pool holds every test image found on disk under ``root`` (the draws depend on it).

    Only SYSU-MM01 (camK/PPPP folders) and LLCM (test_vis|test_nir/camK/PPPP) are checked, and only when the image
    folders exist under ``root`` (a root holding just ``exp/`` is fine).
    """
    root = Path(root)
    have = set(pool.paths.tolist())
    ids = sorted(set(pool.pids.tolist()) if test_ids is None else {int(x) for x in test_ids})
    if protocol == "llcm":
        bases = [f"test_{m}/cam{c}" for m in ("vis", "nir") for c in LLCM_CAMS]
    else:
        bases = [f"cam{c}" for c in range(1, 7)]
    if not any((root / b).is_dir() for b in bases):
        return
    src = getattr(pool, "source", "<records>")
    for b in bases:
        for pid in ids:
            folder = root / b / f"{pid:04d}"
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                rel = f"{b}/{pid:04d}/{f.name}"
                if f.is_file() and rel not in have:
                    raise FeaturesError(
                        f"{src}: test image {rel} (under {root}) has no row; the features file must hold the whole "
                        "test pool because the galleries are drawn from every folder's file list"
                    )


def read_id_list(path: str | Path) -> list[int]:
    """Read a one-line comma-separated id list (exp/test_id.txt, idx/test_id.txt)."""
    path = Path(path)
    text = path.read_text().strip()
    try:
        return [int(x) for x in text.replace("\n", ",").split(",") if x.strip()]
    except ValueError:
        raise DataError(f"{path}:1: expected comma-separated integer ids, got {text[:60]!r}") from None


# ----------------------------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class ProtocolResult:
    """Per-trial :class:`~vireid.evaluation.metrics.RankingResult` of a plan (aligned with ``plan.trials``)."""

    plan: ProtocolPlan
    per_trial: list[Any]
    rerank: bool = False
    rerank_precision: str = "float16"

    def by_direction(self) -> dict[str, ProtocolResult]:
        """``{direction: result}``: one entry, or "v2i" and "i2v" for a plan evaluated in both directions."""
        if self.plan.direction != "both":
            return {self.plan.direction: self}
        return {d: ProtocolResult(self.plan.for_direction(d),
                                  [r for t, r in zip(self.plan.trials, self.per_trial) if t.direction == d],
                                  self.rerank, self.rerank_precision)
                for d in self.plan.directions}

    def summary(self) -> dict[str, Any]:
        """Means over trials (percent), population std, mean CMC curve, per-trial rows, sizes.

        For a plan with both directions: ``{"protocol", "direction": "both", "cmc_kind", "rerank", "v2i": {...},
        "i2v": {...}}``, each direction's entry the one-direction summary.
        """
        from vireid.evaluation.report import summarize_trials

        return summarize_trials(self.plan, self.per_trial, rerank=self.rerank, rerank_precision=self.rerank_precision)



def evaluate_protocol(features: np.ndarray, plan: ProtocolPlan, *, rerank: bool = False,
                      rerank_precision: str = "float16", cmc: str | None = None, device: str | None = None,
                      memory_budget_mb: float = 512.0, progress: bool = False,
                      trial_method: str = "auto") -> ProtocolResult:
    """Evaluate ``plan`` on the pool's ``features`` ([N, D], rows aligned with the pool).

    Features are L2-normalised, distances are Euclidean. When every trial of a direction has the same queries (all
    protocols here) the query x (union of all trial galleries) distances are computed once -- if that matrix fits in
    ``memory_budget_mb`` -- and :func:`vireid.evaluation.metrics.evaluate_trials` evaluates every trial from it
    (``trial_method``: "auto", "union" = one sort of each query's union row for all trials, "blocked" = blocks of
    queries with every trial at once, or "per-trial");
    otherwise each trial streams its distances in chunks. A plan with both directions is evaluated direction by
    direction; the result's :meth:`ProtocolResult.by_direction` and ``summary()`` key them by direction.

    ``cmc``: None or "auto" = the plan's CMC flavour; "standard" or "identity" overrides it.

    With ``rerank`` each trial's distances come from :func:`vireid.evaluation.rerank.k_reciprocal_rerank` (k1 20,
    k2 6, lambda 0.3) on the normalised features, in the published float16 arithmetic (``rerank_precision=
    "float16"``, the default: what published "+re-ranking" numbers carry) or in float32.

    ``device``: None or "cpu" computes with NumPy (torch is not imported); "cuda" (or another torch device) computes
    distances and metrics in torch there. Re-ranking runs its sparse steps on the CPU either way.
    """
    if trial_method not in ("auto", "union", "blocked", "per-trial"):
        raise ValueError(f"trial_method must be 'auto', 'union', 'blocked' or 'per-trial', got {trial_method!r}")
    if rerank_precision not in RERANK_PRECISIONS:
        raise FeaturesError(f"unknown re-ranking precision {rerank_precision!r}; expected one of "
                            f"{', '.join(RERANK_PRECISIONS)}")
    if cmc is not None and cmc != "auto":
        if cmc not in CMC_CHOICES:
            raise FeaturesError(f"unknown cmc {cmc!r}; expected one of {', '.join(CMC_CHOICES)}")
        plan = replace(plan, cmc=cmc)
    for trial in plan.trials:
        if trial.gallery.size == 0:
            raise FeaturesError(f"{plan.protocol} trial {trial.index}: empty gallery")
    raw = np.ascontiguousarray(features, dtype=np.float32)
    on_accel = device is not None and str(device).split(":")[0] != "cpu"
    if on_accel:
        import torch

        on_device = torch.from_numpy(l2_normalize(raw)).to(torch.device(device))  # type: ignore[arg-type]

        def rows(idx: np.ndarray) -> Any:
            return on_device[torch.from_numpy(idx).to(on_device.device)]
    else:
        def rows(idx: np.ndarray) -> Any:  # L2 is per row: normalise only the rows a trial uses
            return unit_rows(raw, idx)[0]

    by_trial: dict[int, Any] = {}
    for direction in plan.directions:
        sub = plan.for_direction(direction)
        positions = [k for k, t in enumerate(plan.trials) if plan.direction != "both" or t.direction == direction]
        results = _evaluate_one_direction(raw, rows, sub, rerank=rerank, rerank_precision=rerank_precision,
                                          device=device, memory_budget_mb=memory_budget_mb, progress=progress,
                                          trial_method=trial_method)
        by_trial.update(zip(positions, results))
    return ProtocolResult(plan, [by_trial[k] for k in range(len(plan.trials))], rerank, rerank_precision)


def _evaluate_one_direction(raw: np.ndarray, rows: Any, plan: ProtocolPlan, *, rerank: bool,
                            rerank_precision: str, device: str | None, memory_budget_mb: float, progress: bool,
                            trial_method: str) -> list[Any]:
    """The per-trial results of a one-direction plan (see :func:`evaluate_protocol`); ``rows(idx)`` gives the
    normalised features of pool rows ``idx`` where the distances are computed."""
    same_queries = all(np.array_equal(t.query, plan.trials[0].query) for t in plan.trials)
    if same_queries and not rerank:
        query = plan.trials[0].query
        union = np.flatnonzero(np.bincount(np.concatenate([t.gallery for t in plan.trials])))  # sorted distinct rows
        if query.size * union.size * 4 <= memory_budget_mb * 2**20:
            if device is None or str(device).split(":")[0] == "cpu":
                # distance rows on demand: the blocked path computes each block of queries where it evaluates it
                union_dist: Any = feature_rows_distance_fn(raw, query, union)
            else:
                fn = feature_distance_fn(rows(query), rows(union), normalize=False, device=device)
                union_dist = fn(0, query.size)
            return evaluate_trials(
                union_dist, [np.searchsorted(union, t.gallery) for t in plan.trials],
                plan.pids[query], plan.pids[union], plan.query_remove_keys[query], plan.gallery_remove_keys[union],
                cmc=plan.cmc, invalid_query_quirk=plan.invalid_query_quirk,  # type: ignore[arg-type]
                memory_budget_mb=memory_budget_mb, method=trial_method,  # type: ignore[arg-type]
                assume_finite=True, progress=progress,
                trial_names=[f"{plan.protocol} trial {t.index}" for t in plan.trials],
            )

    results = []
    trials: Any = progress_bar(plan.trials, desc=f"{plan.protocol} trials", unit="trial") if progress else plan.trials
    for trial in trials:
        q, g = trial.query, trial.gallery
        if rerank:
            from vireid.evaluation.rerank import k_reciprocal_rerank

            dist: Any = k_reciprocal_rerank(l2_normalize(raw[q]), l2_normalize(raw[g]), precision=rerank_precision,
                                            normalize=False, device=device)
        else:
            dist = feature_distance_fn(rows(q), rows(g), normalize=False, device=device)
        res = evaluate_ranking(
            dist, plan.pids[q], plan.pids[g],
            plan.query_remove_keys[q], plan.gallery_remove_keys[g],
            cmc=plan.cmc, invalid_query_quirk=plan.invalid_query_quirk,  # type: ignore[arg-type]
            memory_budget_mb=memory_budget_mb, device=None if rerank else device,
        )
        results.append(res)
    return results
