"""Per-dataset plans: which images exist, where they go, which list files describe them (docs/layouts.md).

A *plan* is computed entirely in the main process from one layout Generator: identities, splits, camera presence,
file names, list-file contents. It holds no pixels. Rendering a plan's :class:`Job` depends only on the job's keys
(and the seed), never on the order in which jobs run, so the output is identical for any number of workers.

Dataset sizes follow the real datasets at ``scale="full"`` (identity counts, cameras, images per identity and camera)
and are small at ``scale="mini"`` so that a layout is written in seconds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vireid.errors import VireidError

Scale = Literal["mini", "full"]

# Sensor codes for the fake-IR twins of market1501_gen (one target style each).
TWIN_TARGETS = {"sysumm01": 201, "sysumm02": 202, "regdb": 203}


@dataclass(frozen=True)
class Output:
    """One file rendered from a job's raster: where, which modality, through which camera sensor."""

    relpath: str
    modality: int
    sensor: int
    camid: int | None = None  # camera id as the layout names it; None = the job's camid


@dataclass(frozen=True)
class Job:
    """One view of one person, rendered to one or more files (an RGB image and its IR twins share a view).

    ``ident`` keys the identity's appearance, ``view`` the per-image randomness; both feed SeedSequence, so a job
    renders identically wherever and whenever it runs.
    """

    ident: tuple[int, ...]
    view: tuple[int, ...]
    scene: int
    sensor: int                      # sensor whose size/viewpoint preferences shape the view
    outputs: tuple[Output, ...]
    pid: int
    camid: int
    split: str
    force_view: str | None = None
    zoom: float = 1.0


@dataclass
class Plan:
    """Everything to write for one dataset, minus the pixels."""

    dataset: str
    jobs: list[Job]
    sensors: dict[int, tuple[int, str]]   # code -> (modality, style)
    scenes: dict[int, bool]               # code -> outdoor
    vary_size: bool                       # per-camera size variation (SYSU-style crops) or fixed (RegDB, Market)
    size_jitter: float
    text_files: dict[str, str] = field(default_factory=dict)
    writers: list[tuple[str, Callable[[Path], None]]] = field(default_factory=list)
    splits: dict[str, list[int]] = field(default_factory=dict)
    trials: list[dict[str, list[int]]] = field(default_factory=list)
    pseudo_labels: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# Default identity counts (all splits together). Mini sizes are small but still enough for a training demo.
DEFAULT_IDS: dict[str, dict[str, int]] = {
    "sysu_mm01": {"mini": 60, "full": 491},
    "regdb": {"mini": 40, "full": 412},
    "sysu_mm02": {"mini": 40, "full": 418},
    "llcm": {"mini": 45, "full": 1064},
    "market1501": {"mini": 40, "full": 1501},
    "market1501_gen": {"mini": 40, "full": 1501},
}
MIN_IDS = {"sysu_mm01": 3, "regdb": 2, "sysu_mm02": 2, "llcm": 2, "market1501": 2, "market1501_gen": 2}


def _counts(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _one_line(ids: list[int]) -> str:
    """SYSU/LLCM id files: one comma-separated line, no spaces, no trailing newline (as the real files)."""
    return ",".join(str(i) for i in ids)


def _split_sizes(n: int, fractions: list[float]) -> list[int]:
    """Split n into len(fractions) parts (each >= 1), the first part taking the rounding remainder."""
    rest = [max(1, int(round(n * f))) for f in fractions[1:]]
    first = n - sum(rest)
    if first < 1:
        raise VireidError(f"--ids {n} is too small for this dataset's splits; use at least {len(fractions) * 2}")
    return [first, *rest]


# ------------------------------------------------------------------------------------------------------ SYSU-MM01
SYSU_RGB, SYSU_IR = (1, 2, 4, 5), (3, 6)


def plan_sysu_mm01(rng: np.random.Generator, n: int, scale: Scale, perm_rng: np.random.Generator) -> Plan:
    """SYSU-MM01: cam1..cam6/PPPP/NNNN.jpg, exp/{train,val,test}_id.txt, exp/rand_perm_cam.mat.

    Real proportions: 296/99/96 train/val/test ids, pids 1..533 with gaps, about 20 images per (id, cam); cam1/cam2
    present for about half of the ids, cam4/cam5 for most; test ids nearly always seen by both IR cameras.
    """
    n_train, n_val, n_test = _split_sizes(n, [296 / 491, 99 / 491, 96 / 491])
    pids = sorted(int(p) for p in rng.choice(np.arange(1, max(n, round(n * 533 / 491)) + 1), n, replace=False))
    order = rng.permutation(n)
    test_ids = sorted(pids[i] for i in order[:n_test])
    val_ids = sorted(pids[i] for i in order[n_test:n_test + n_val])
    train_ids = sorted(pids[i] for i in order[n_test + n_val:])
    lo, hi = (3, 5) if scale == "mini" else (16, 24)
    presence_train = {1: 0.55, 2: 0.55, 4: 0.9, 5: 0.9, 3: 0.55, 6: 0.95}
    presence_test = {1: 0.55, 2: 0.55, 4: 0.9, 5: 0.9, 3: 0.95, 6: 1.0}
    split_of = {**{p: "train" for p in train_ids}, **{p: "val" for p in val_ids}, **{p: "test" for p in test_ids}}
    jobs: list[Job] = []
    counts: dict[tuple[int, int], int] = {}
    for pid in pids:
        pres = presence_test if split_of[pid] == "test" else presence_train
        cams = {c for c in range(1, 7) if rng.random() < pres[c]}
        if not cams & set(SYSU_RGB):
            cams.add(int(rng.choice(SYSU_RGB)))
        if not cams & set(SYSU_IR):
            cams.add(int(rng.choice(SYSU_IR)))
        for cam in sorted(cams):
            k_n = _counts(rng, lo, hi)
            counts[(cam, pid)] = k_n
            for k in range(1, k_n + 1):
                mod = 1 if cam in SYSU_IR else 0
                jobs.append(Job(
                    ident=(pid,), view=(pid, cam, k), scene=2 if cam == 3 else cam, sensor=cam,
                    outputs=(Output(f"cam{cam}/{pid:04d}/{k:04d}.jpg", mod, cam),),
                    pid=pid, camid=cam, split=split_of[pid],
                ))

    def write_mat(path: Path) -> None:
        from scipy.io import savemat

        n_persons = max(pids)
        cams = np.empty((6, 1), dtype=object)
        for c in range(1, 7):
            row = np.empty((1, n_persons), dtype=object)
            for i in range(n_persons):
                row[0, i] = np.zeros((0, 0))
            for pid in test_ids:
                k_n = counts.get((c, pid), 0)
                if k_n:
                    row[0, pid - 1] = np.stack([perm_rng.permutation(k_n) + 1 for _ in range(10)]).astype(np.float64)
            cams[c - 1, 0] = row
        buf = io.BytesIO()
        savemat(buf, {"rand_perm_cam": cams})
        raw = bytearray(buf.getvalue())
        # the 116-byte MAT-5 text header carries a creation time; a fixed one keeps the output byte-identical
        raw[:116] = b"MATLAB 5.0 MAT-file, written by vireid synth".ljust(116, b" ")
        path.write_bytes(bytes(raw))

    sensors = {c: ((1, "nir") if c in SYSU_IR else (0, "rgb")) for c in range(1, 7)}
    scenes = {1: False, 2: False, 4: True, 5: True, 6: True}  # cam3 shares cam2's location
    return Plan(
        dataset="sysu_mm01", jobs=jobs, sensors=sensors, scenes=scenes, vary_size=True, size_jitter=0.06,
        text_files={"exp/train_id.txt": _one_line(train_ids), "exp/val_id.txt": _one_line(val_ids),
                    "exp/test_id.txt": _one_line(test_ids)},
        writers=[("exp/rand_perm_cam.mat", write_mat)],
        splits={"train_ids": train_ids, "val_ids": val_ids, "test_ids": test_ids},
    )


# ---------------------------------------------------------------------------------------------------------- RegDB
def plan_regdb(rng: np.random.Generator, n: int, scale: Scale, gender_of: Callable[[int], str]) -> Plan:
    """RegDB: Visible/<id>/ and Thermal/<id>/ BMPs (10 each, one dual camera, same poses), idx files for 10 trials.

    The visible and thermal image of a frame are rendered from the same view, as the real dual-camera capture.
    """
    ids = list(range(1, n + 1))
    jobs: list[Job] = []
    names: dict[int, list[tuple[str, str]]] = {}
    frame = int(rng.integers(100, 1000))
    for pid in ids:
        view = str(rng.choice(["front", "back"]))
        gender = gender_of(pid)
        names[pid] = []
        for k in range(10):
            frame += int(rng.integers(1, 30))
            vis = f"Visible/{pid}/{gender}_{view}_v_{frame:05d}_{pid}.bmp"
            the = f"Thermal/{pid}/{gender}_{view}_t_{frame:05d}_{pid}.bmp"
            names[pid].append((vis, the))
            jobs.append(Job(ident=(pid,), view=(pid, k), scene=1, sensor=1,
                            outputs=(Output(vis, 0, 1, 1), Output(the, 1, 2, 2)),
                            pid=pid, camid=1, split="all", force_view=view))
    text: dict[str, str] = {}
    trials = []
    for t in range(1, 11):
        perm = rng.permutation(ids)
        train = sorted(int(i) for i in perm[: n // 2])
        test = sorted(int(i) for i in perm[n // 2:])
        trials.append({"train_ids": train, "test_ids": test})
        for split, sel in (("train", train), ("test", test)):
            for mod_i, mod in enumerate(("visible", "thermal")):
                lines = [f"{p} {label}\n" for label, pid in enumerate(sel)
                         for p in sorted(x[mod_i] for x in names[pid])]
                text[f"idx/{split}_{mod}_{t}.txt"] = "".join(lines)
    return Plan(
        dataset="regdb", jobs=jobs, sensors={1: (0, "rgb"), 2: (1, "thermal")}, scenes={1: True},
        vary_size=False, size_jitter=0.0, text_files=text, splits={"ids": ids}, trials=trials,
    )


# ------------------------------------------------------------------------------------------------------ SYSU-MM02
def plan_sysu_mm02(rng: np.random.Generator, n: int, scale: Scale) -> Plan:
    """SYSU-MM02: train/cam{c}/ and test/cam{c}/ ({pid:04d}_{k:04d}.jpg), train.txt, test_rgb.txt, test_ir.txt.

    Cameras are 1-based: 1 RGB, 2 and 3 near-infrared. Test: 20 RGB + 20 NIR per id at full scale (10 per NIR cam).
    """
    n_train, n_test = _split_sizes(n, [300 / 418, 118 / 418])
    perm = rng.permutation(np.arange(1, n + 1))
    test_ids = sorted(int(p) for p in perm[:n_test])
    train_ids = sorted(int(p) for p in perm[n_test:])
    jobs: list[Job] = []
    lines: dict[str, list[str]] = {"train.txt": [], "test_rgb.txt": [], "test_ir.txt": []}
    for split, sel in (("train", train_ids), ("test", test_ids)):
        for pid in sel:
            for cam in (1, 2, 3):
                if split == "test":
                    k_n = (4 if cam == 1 else 2) if scale == "mini" else (20 if cam == 1 else 10)
                elif scale == "mini":
                    k_n = _counts(rng, 3, 5)
                else:
                    k_n = _counts(rng, 20, 30) if cam == 1 else _counts(rng, 18, 27)
                for k in range(1, k_n + 1):
                    rel = f"{split}/cam{cam}/{pid:04d}_{k:04d}.jpg"
                    mod = 0 if cam == 1 else 1
                    jobs.append(Job(ident=(pid,), view=(pid, cam, k, 0 if split == "train" else 1), scene=cam,
                                    sensor=cam, outputs=(Output(rel, mod, cam),), pid=pid, camid=cam, split=split))
                    lst = "train.txt" if split == "train" else ("test_rgb.txt" if cam == 1 else "test_ir.txt")
                    lines[lst].append(f"{rel} {pid} {cam}\n")
    return Plan(
        dataset="sysu_mm02", jobs=jobs, sensors={1: (0, "rgb"), 2: (1, "nir"), 3: (1, "nir")},
        scenes={1: False, 2: True, 3: False}, vary_size=True, size_jitter=0.06,
        text_files={k: "".join(sorted(v)) for k, v in lines.items()},
        splits={"train_ids": train_ids, "test_ids": test_ids},
    )


# ----------------------------------------------------------------------------------------------------------- LLCM
LLCM_VIS, LLCM_NIR = tuple(range(1, 10)), (1, 2, 4, 5, 6, 7, 8, 9)


def plan_llcm(rng: np.random.Generator, n: int, scale: Scale) -> Plan:
    """LLCM: {train,test}_{vis,nir}/cam{K}/{PPPP}/{PPPP}_c{K:02d}_{k:04d}.jpg, idx/train_{vis,nir}.txt, idx/test_id.txt.

    Each camera films its scene in both modes (visible by day or low light, NIR at night), so a visible and a NIR
    camera with the same K share the background. 713/351 train/test ids at full scale.
    """
    n_train, n_test = _split_sizes(n, [713 / 1064, 351 / 1064])
    perm = rng.permutation(np.arange(1, n + 1))
    test_ids = sorted(int(p) for p in perm[:n_test])
    train_ids = sorted(int(p) for p in perm[n_test:])
    lo, hi = (1, 2) if scale == "mini" else (3, 6)
    jobs: list[Job] = []
    idx: dict[str, list[str]] = {"idx/train_vis.txt": [], "idx/train_nir.txt": []}
    label = {p: i for i, p in enumerate(train_ids)}
    for split, sel in (("train", train_ids), ("test", test_ids)):
        for pid in sel:
            vis = [c for c in LLCM_VIS if rng.random() < 0.59] or [int(rng.choice(LLCM_VIS))]
            nir = [c for c in LLCM_NIR if rng.random() < 0.55] or [int(rng.choice(LLCM_NIR))]
            for mod, tag, cams in ((0, "vis", vis), (1, "nir", nir)):
                for cam in cams:
                    for k in range(1, _counts(rng, lo, hi) + 1):
                        rel = f"{split}_{tag}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{k:04d}.jpg"
                        sensor = cam + 100 * mod
                        jobs.append(Job(ident=(pid,), view=(pid, sensor, k), scene=cam, sensor=sensor,
                                        outputs=(Output(rel, mod, sensor),), pid=pid, camid=cam, split=split))
                        if split == "train":
                            idx[f"idx/train_{tag}.txt"].append(f"{rel} {label[pid]}\n")
    sensors: dict[int, tuple[int, str]] = {c: (0, str(rng.choice(["rgb", "lowlight"]))) for c in LLCM_VIS}
    sensors.update({100 + c: (1, "nir") for c in LLCM_NIR})
    return Plan(
        dataset="llcm", jobs=jobs, sensors=sensors, scenes={c: bool(rng.random() < 0.6) for c in LLCM_VIS},
        vary_size=True, size_jitter=0.06,
        text_files={**{k: "".join(sorted(v)) for k, v in idx.items()}, "idx/test_id.txt": _one_line(test_ids)},
        splits={"train_ids": train_ids, "test_ids": test_ids},
    )


# ---------------------------------------------------------------------------------------------------- Market-1501
def _market_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    head = "-1" if pid == -1 else f"{pid:04d}"
    return f"{head}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def plan_market(rng: np.random.Generator, n: int, scale: Scale, gen: bool) -> Plan:
    """Market-1501 (bounding_box_train/test, query) or market1501_gen (originals + fake-IR twins + pseudo labels).

    751/750 train/test ids at full scale, 6 cameras, about 17 images per id; the test gallery holds a few junk (-1)
    and distractor (0000) detections; one query per (test id, camera). In market1501_gen every original has three
    fake-IR twins (one per target style) rendered from the same view, as an image-to-image translation would give.
    """
    n_train, n_test = _split_sizes(n, [0.5, 0.5])
    pids = rng.choice(np.arange(1, max(n, 1501) + 1), n, replace=False)
    train_ids = sorted(int(p) for p in pids[:n_train])
    test_ids = sorted(int(p) for p in pids[n_train:])
    full = scale == "full"
    train_dir, test_dir = ("market1501_train", "market1501_test") if gen else ("bounding_box_train",
                                                                                 "bounding_box_test")
    entries: list[tuple[str, str, int, int, tuple[int, ...], float]] = []  # split, relpath, pid, cam, key, zoom

    for split, sel in (("train", train_ids), ("test", test_ids)):
        for pid in sel:
            n_cams = _counts(rng, 2, 6 if full else 3)
            cams = sorted(int(c) for c in rng.choice(np.arange(1, 7), n_cams, replace=False))
            for cam in cams:
                seq = _counts(rng, 1, 6)
                frame = int(rng.integers(1, 9000)) * 10
                n_img = (_counts(rng, 2, 6) + int(rng.random() < 0.3)) if full else _counts(rng, 1, 3)
                folder = train_dir if split == "train" else test_dir
                for k in range(n_img):
                    frame += int(rng.integers(5, 40))
                    entries.append((split, f"{folder}/{_market_name(pid, cam, seq, frame, 1)}", pid, cam,
                                    (pid, cam, k), 1.0))
                if split == "test" and not gen:
                    frame += int(rng.integers(5, 40))
                    entries.append(("query", f"query/{_market_name(pid, cam, seq, frame, 2)}", pid, cam,
                                    (pid, cam, 1000), 1.0))
    n_junk = 3819 if full else max(3, round(n_test / 5))
    n_distr = 2793 if full else max(3, round(n_test / 4))
    for kind_pid, count, zoom in ((-1, n_junk, 1.7), (0, n_distr, 1.0)):
        for i in range(count):
            cam = _counts(rng, 1, 6)
            name = _market_name(kind_pid, cam, _counts(rng, 1, 6), 100 * (i + 1) + int(rng.integers(0, 99)), 1)
            entries.append(("test", f"{test_dir}/{name}", kind_pid, cam, (kind_pid, cam, i), zoom))

    jobs: list[Job] = []
    for split, rel, pid, cam, key, zoom in entries:
        outs = [Output(rel, 0, cam)]
        if gen:
            base = rel.split("/", 1)[1]
            for target, code in TWIN_TARGETS.items():
                outs.append(Output(f"market1501_{split}_{target}/{base}", 1, code))
        ident = (pid,) if pid > 0 else key  # every junk/distractor detection is a different random person
        jobs.append(Job(ident=ident, view=key, scene=cam, sensor=cam, outputs=tuple(outs), pid=pid, camid=cam,
                        split=split, zoom=zoom))

    sensors: dict[int, tuple[int, str]] = {c: (0, "rgb") for c in range(1, 7)}
    sensors.update({201: (1, "nir"), 202: (1, "nir"), 203: (1, "thermal")})
    plan = Plan(
        dataset="market1501_gen" if gen else "market1501", jobs=jobs, sensors=sensors,
        scenes={c: bool(c % 2) for c in range(1, 7)}, vary_size=False, size_jitter=0.0,
        splits={"train_ids": train_ids, "test_ids": test_ids},
    )
    if gen:
        _pseudo_labels(rng, plan, train_ids)
    return plan


def _pseudo_labels(rng: np.random.Generator, plan: Plan, train_ids: list[int]) -> None:
    """PPLR-style pseudo labels of the training originals: cluster ids, ~3 % wrong, ~5 % unlabeled (outliers).

    Written as ``pplr_pseudo_labels.pth``: a torch-saved list of (foreign absolute path, pseudo_pid, camid) tuples,
    camid 0-based as unsupervised re-ID code stores it. Only str and int, so ``torch.load(weights_only=True)`` reads it.
    """
    train = sorted((j for j in plan.jobs if j.split == "train"), key=lambda j: j.outputs[0].relpath)
    cluster = {pid: int(c) for pid, c in zip(train_ids, rng.permutation(len(train_ids)))}
    n = len(train)
    n_missing = max(1, round(0.05 * n))
    n_wrong = max(1, round(0.03 * n)) if len(train_ids) > 1 else 0
    chosen = rng.permutation(n)
    missing = set(int(i) for i in chosen[:n_missing])
    wrong = set(int(i) for i in chosen[n_missing:n_missing + n_wrong])
    entries: list[tuple[str, int, int]] = []
    wrong_names, missing_names = [], []
    for i, job in enumerate(train):
        name = job.outputs[0].relpath.rsplit("/", 1)[1]
        if i in missing:
            missing_names.append(name)
            continue
        label = cluster[job.pid]
        if i in wrong:
            label = int((label + rng.integers(1, len(train_ids))) % len(train_ids))
            wrong_names.append(name)
        plan.pseudo_labels[name] = label
        entries.append((f"/home/pplr/data/market1501/bounding_box_train/{name}", label, job.camid - 1))

    def write_pth(path: Path) -> None:
        import torch

        torch.save(entries, str(path))

    plan.writers.append(("pplr_pseudo_labels.pth", write_pth))
    plan.info["pseudo_label_noise"] = {"wrong": sorted(wrong_names), "unlabeled": sorted(missing_names),
                                       "clusters": {str(p): c for p, c in cluster.items()}}
