"""LLCM (SPEC 1.5): ``{train,test}_{vis,nir}/camK/PPPP/*.jpg``, ``idx/train_{vis,nir}.txt``, ``idx/test_id.txt``.

train: from the idx lists, label = list label, pid = PPPP from the path, camid = K. test: every image under
test_vis/ and test_nir/ whose PPPP is listed in idx/test_id.txt, label -1, ordered by pid, modality (visible
first), camera, file name.
"""

from __future__ import annotations

import re
from pathlib import Path

from vireid.data.datasets.common import (
    DatasetOptions,
    ProblemLog,
    list_dirs,
    list_images,
    read_id_file,
    read_list_file,
    stray_files,
    wrong_layout,
)
from vireid.data.records import INFRARED, VISIBLE, CrossModalDataset, Sample

NAME = "llcm"
TOP = {"vis": int(VISIBLE), "nir": int(INFRARED)}
TEST_IDS = "idx/test_id.txt"
EXPECTED = ("ROOT/{train,test}_{vis,nir}/camK/PPPP/*.jpg, ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt "
            "('<relpath> <label>'), ROOT/idx/test_id.txt")
_TRAIN_PATH = re.compile(r"^train_(vis|nir)/cam(\d+)/(\d+)/[^/]+$")


def parse(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse an LLCM root; problems go to ``log``."""
    folders = [f"{s}_{m}" for s in ("train", "test") for m in ("vis", "nir")]
    if not any((root / f).is_dir() for f in folders):
        raise wrong_layout(root, "no train_vis/, train_nir/, test_vis/ or test_nir/ folder", NAME, EXPECTED)
    for f in folders + ["idx"]:
        if not (root / f).is_dir():
            log.error(f"folder missing ({EXPECTED})", f"{f}/")

    train: list[Sample] = []
    label_of_pid: dict[int, tuple[int, str, int]] = {}
    for mod in ("vis", "nir"):
        rel = f"idx/train_{mod}.txt"
        kind = "visible" if mod == "vis" else "near-infrared"
        for row in read_list_file(root, rel, ("label",), log, what=f"the {kind} training images") or []:
            m = _TRAIN_PATH.match(row.path)
            if m is None or m.group(1) != mod:
                log.error(f"path '{row.path}' is not of the form train_{mod}/camK/PPPP/NAME", rel, row.line)
                continue
            cam, pid, label = int(m.group(2)), int(m.group(3)), row.values[0]
            if label < 0:
                log.error(f"label {label} is negative; labels are 0..n-1", rel, row.line)
                continue
            first = label_of_pid.setdefault(pid, (label, rel, row.line))
            if first[0] != label:
                log.error(f"label {label} for identity {pid}, but {first[1]}:{first[2]} gives it label {first[0]}; "
                          f"one identity has one label", rel, row.line)
                continue
            train.append(Sample(row.path, pid, cam, TOP[mod], label))

    test_ids = read_id_file(root, TEST_IDS, log, what="the test identities") or []
    wanted = set(test_ids)
    found: set[int] = set()
    test: list[Sample] = []
    for mod in ("vis", "nir"):
        top = root / f"test_{mod}"
        if not top.is_dir():
            continue
        for cam_name in list_dirs(top):
            m = re.fullmatch(r"cam(\d+)", cam_name)
            if m is None:
                log.warning("folder is not a camK camera folder; ignored", f"test_{mod}/{cam_name}/")
                continue
            cam = int(m.group(1))
            for pid_name in list_dirs(top / cam_name):
                rel_dir = f"test_{mod}/{cam_name}/{pid_name}/"
                if not pid_name.isdigit():
                    log.warning("folder name is not an identity number; ignored", rel_dir)
                    continue
                pid = int(pid_name)
                files = list_images(top / cam_name / pid_name, log, rel_dir)
                for stray in stray_files(top / cam_name / pid_name):
                    log.warning("not an image file; ignored", rel_dir + stray)
                if pid not in wanted:
                    if files:
                        log.warning(f"identity {pid} is not in {TEST_IDS}; its {len(files)} images are not used",
                                    rel_dir)
                    continue
                if files:
                    found.add(pid)
                test.extend(Sample(rel_dir + f, pid, cam, TOP[mod], -1) for f in files)
    for pid in test_ids:
        if pid not in found:
            log.error(f"id {pid} has no images under test_vis/ or test_nir/ (expected camK/{pid:04d}/); restore "
                      f"its images or remove it from the list", TEST_IDS, 1)
    test.sort(key=lambda s: (s.pid, s.modality, s.camid, s.path))
    train_ids = sorted(label_of_pid)
    leaked = sorted(set(train_ids) & wanted)
    if leaked:
        log.error(f"test id {leaked[0]} also has training images; the identity split must be disjoint", TEST_IDS, 1)
    info = {"train_ids": train_ids, "test_ids": sorted(test_ids), "num_classes": len({s.label for s in train})}
    return CrossModalDataset(NAME, root, train, test, [], info)
