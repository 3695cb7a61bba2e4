"""Tiny, hand-written dataset layouts for parser tests (independent of the synthetic generator).

Each ``write_*`` function writes a minimal valid layout of one dataset under ``root`` with 8x4 solid-colour images
and returns the root. The tests assert the exact records these layouts must produce, so the layouts are kept small
and fully spelled out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 20)]


def image(path: Path, colour: tuple[int, int, int] = (100, 50, 25), mode: str = "RGB") -> Path:
    """Write a tiny solid-colour image (format from the suffix) in ``mode``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (4, 8), colour)
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P")
    img.save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


# ---------------------------------------------------------------------------------------------- SYSU-MM01
# (cam, pid) -> number of images. Train ids 1, 4; val id 7; test ids 2, 9. pid 9 has no cam1 folder (normal).
SYSU_FOLDERS = {
    (1, 1): 2, (3, 1): 1,
    (2, 4): 1, (6, 4): 2,
    (4, 7): 1, (3, 7): 1,
    (1, 2): 2, (2, 2): 1, (3, 2): 1, (6, 2): 1,
    (5, 9): 1, (6, 9): 1,
}
SYSU_IDS = {"train": "4,1", "val": "7", "test": "2,9"}


def write_sysu_mm01(root: Path, *, rand_perm: bool = False) -> Path:
    """SYSU-MM01 with 5 identities over 6 cameras; id files without trailing newline (as the real ones)."""
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for (cam, pid), n in SYSU_FOLDERS.items():
        for k in range(1, n + 1):
            image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", COLOURS[cam % 4])
    for split, text in SYSU_IDS.items():
        write_text(root / "exp" / f"{split}_id.txt", text)
    if rand_perm:
        write_rand_perm(root / "exp" / "rand_perm_cam.mat")
    return root


def write_rand_perm(path: Path, key: str = "rand_perm_cam") -> None:
    """A rand_perm_cam.mat of the documented shape for SYSU_FOLDERS' test ids (max pid 9)."""
    import scipy.io

    cams = np.empty((6, 1), dtype=object)
    for c in range(6):
        persons = np.empty((1, 9), dtype=object)
        for p in range(9):
            n = SYSU_FOLDERS.get((c + 1, p + 1), 0)
            persons[0, p] = (np.array([np.arange(1, n + 1)] * 10, dtype=np.float64) if n
                             else np.zeros((0, 0)))
        cams[c, 0] = persons
    scipy.io.savemat(str(path), {key: cams})


# -------------------------------------------------------------------------------------------------- RegDB
REGDB_TRAIN = [285, 3]  # ids in the train lists of trial 1 (labels by ascending id: 3 -> 0, 285 -> 1)
REGDB_TEST = [10]


def regdb_name(ident: int, kind: str, k: int) -> str:
    return f"male_front_{kind}_{k:05d}_{ident}.bmp"


def write_regdb(root: Path, trial: int = 1, per_id: int = 2) -> Path:
    """RegDB with 2 training and 1 test identity, ``per_id`` images per identity and modality, lists of ``trial``."""
    for split, ids in (("train", REGDB_TRAIN), ("test", REGDB_TEST)):
        label = {pid: i for i, pid in enumerate(sorted(ids))}
        for folder, kind, name in (("Visible", "v", "visible"), ("Thermal", "t", "thermal")):
            lines = []
            for pid in ids:
                for k in range(per_id):
                    rel = f"{folder}/{pid}/{regdb_name(pid, kind, k)}"
                    image(root / rel, COLOURS[k % 4], mode="RGB")
                    lines.append(f"{rel} {label[pid]}\n")
            write_text(root / "idx" / f"{split}_{name}_{trial}.txt", "".join(lines))
    return root


# ---------------------------------------------------------------------------------------------- SYSU-MM02
MM02_TRAIN = [("train/cam1/0007_0001.jpg", 7, 1), ("train/cam2/0007_0002.jpg", 7, 2),
              ("train/cam3/0008_0001.jpg", 8, 3)]
MM02_TEST_RGB = [("test/cam1/0001_0001.jpg", 1, 1), ("test/cam1/0002_0001.jpg", 2, 1)]
MM02_TEST_IR = [("test/cam2/0001_0002.jpg", 1, 2), ("test/cam3/0002_0002.jpg", 2, 3)]


def write_sysu_mm02(root: Path, *, final_newline: bool = True) -> Path:
    """SYSU-MM02: 3 unlabeled training images, 2 RGB + 2 NIR test images."""
    for name, rows in (("train.txt", MM02_TRAIN), ("test_rgb.txt", MM02_TEST_RGB), ("test_ir.txt", MM02_TEST_IR)):
        for rel, _, cam in rows:
            image(root / rel, COLOURS[cam])
        text = "\n".join(f"{rel} {pid} {cam}" for rel, pid, cam in rows)
        write_text(root / name, text + ("\n" if final_newline else ""))
    return root


# --------------------------------------------------------------------------------------------------- LLCM
LLCM_TRAIN_VIS = [("train_vis/cam1/0005/0005_c01_0001.jpg", 1), ("train_vis/cam2/0003/0003_c02_0001.jpg", 0)]
LLCM_TRAIN_NIR = [("train_nir/cam4/0003/0003_c04_0001.jpg", 0), ("train_nir/cam4/0005/0005_c04_0001.jpg", 1)]
LLCM_TEST = ["test_vis/cam1/0011/0011_c01_0001.jpg", "test_vis/cam9/0011/0011_c09_0001.jpg",
             "test_nir/cam2/0011/0011_c02_0001.jpg", "test_vis/cam3/0012/0012_c03_0001.jpg",
             "test_nir/cam8/0012/0012_c08_0001.jpg"]


def write_llcm(root: Path) -> Path:
    """LLCM with training ids 3 and 5 and test ids 11 and 12."""
    for rel, _ in LLCM_TRAIN_VIS + LLCM_TRAIN_NIR:
        image(root / rel)
    for rel in LLCM_TEST:
        image(root / rel)
    write_text(root / "idx/train_vis.txt", "".join(f"{r} {l}\n" for r, l in LLCM_TRAIN_VIS))
    write_text(root / "idx/train_nir.txt", "".join(f"{r} {l}\n" for r, l in LLCM_TRAIN_NIR))
    write_text(root / "idx/test_id.txt", "11,12")
    return root


# ------------------------------------------------------------------------------------------------- Market
MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000101_02.jpg"]
MARKET_TEST = ["-1_c1s1_000001_00.jpg", "0000_c2s1_000002_00.jpg", "0010_c4s1_000003_01.jpg"]
MARKET_QUERY = ["0010_c1s1_000004_00.jpg"]


def write_market1501(root: Path) -> Path:
    """Plain Market-1501: 2 training identities, one junk and one distractor image in the gallery."""
    for folder, names in (("bounding_box_train", MARKET_TRAIN), ("bounding_box_test", MARKET_TEST),
                          ("query", MARKET_QUERY)):
        for name in names:
            image(root / folder / name)
    return root


# Pseudo labels: 0002_c1s1 -> 40, 0002_c2s1 -> 12 (pseudo labels need not agree with the pids),
# 0007_c3s1 has none (dropped). Paths are foreign absolute paths: matched by basename.
PPLR_ENTRIES = [("/home/x/market/bounding_box_train/0002_c1s1_000451_03.jpg", 40, 0),
                ("/home/x/market/bounding_box_train/0002_c2s1_000301_01.jpg", 12, 1),
                ("/home/x/market/bounding_box_train/9999_c2s1_000301_01.jpg", 5, 1)]


def write_market1501_gen(root: Path, targets: tuple[str, ...] = ("sysumm01",), pplr: bool = True) -> Path:
    """market1501_gen: originals, twins for ``targets``, and pplr_pseudo_labels.pth (torch-saved list)."""
    import torch

    for split, names in (("train", MARKET_TRAIN), ("test", MARKET_TEST)):
        for name in names:
            image(root / f"market1501_{split}" / name)
            for t in targets:
                image(root / f"market1501_{split}_{t}" / name, (90, 90, 90))
    if pplr:
        torch.save(PPLR_ENTRIES, root / "pplr_pseudo_labels.pth")
    return root
