"""SYSU-MM02 (SPEC 1.3): ``train.txt``, ``test_rgb.txt``, ``test_ir.txt`` with lines ``<relpath> <pid> <cam>``.

Cameras are 1-based: camera 1 is RGB, cameras 2 and 3 near-infrared. The training set is UNLABELED: every train
record has label -1 and the pid column is kept only as ``pid`` for clustering diagnostics (``info["labeled"]`` is
False). Records keep list-file order; test = test_rgb then test_ir.
"""

from __future__ import annotations

from pathlib import Path

from vireid.data.datasets.common import DatasetOptions, ProblemLog, read_list_file, wrong_layout
from vireid.data.records import INFRARED, VISIBLE, CrossModalDataset, Sample

NAME = "sysu_mm02"
RGB_CAMERAS = (1,)
IR_CAMERAS = (2, 3)
LISTS = {
    "train.txt": ("the unlabeled training images (RGB camera 1, NIR cameras 2 and 3)", RGB_CAMERAS + IR_CAMERAS),
    "test_rgb.txt": ("the RGB test images (camera 1)", RGB_CAMERAS),
    "test_ir.txt": ("the near-infrared test images (cameras 2 and 3)", IR_CAMERAS),
}
EXPECTED = "ROOT/train/, ROOT/test/, ROOT/train.txt, ROOT/test_rgb.txt, ROOT/test_ir.txt ('<relpath> <pid> <cam>')"


def parse(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse a SYSU-MM02 root; problems go to ``log``."""
    if not any((root / f).exists() for f in LISTS):
        raise wrong_layout(root, "no train.txt, test_rgb.txt or test_ir.txt", NAME, EXPECTED)
    for d in ("train", "test"):
        if not (root / d).is_dir():
            log.error(f"image folder missing ({EXPECTED})", f"{d}/")

    out: dict[str, list[Sample]] = {}
    for rel, (what, cams) in LISTS.items():
        samples: list[Sample] = []
        for row in read_list_file(root, rel, ("pid", "cam"), log, what=what) or []:
            pid, cam = row.values
            if cam not in RGB_CAMERAS + IR_CAMERAS:
                log.error(f"camera {cam} is not a SYSU-MM02 camera; expected 1 (RGB), 2 or 3 (NIR)", rel, row.line)
                continue
            if cam not in cams:
                kind = "RGB" if cam in RGB_CAMERAS else "NIR"
                log.error(f"camera {cam} is {kind}, but {rel} lists {what}", rel, row.line)
                continue
            modality = int(VISIBLE if cam in RGB_CAMERAS else INFRARED)
            samples.append(Sample(row.path, pid, cam, modality, -1))
        out[rel] = samples

    test = out["test_rgb.txt"] + out["test_ir.txt"]
    info = {"labeled": False, "rgb_cameras": list(RGB_CAMERAS), "ir_cameras": list(IR_CAMERAS),
            "test_ids": sorted({s.pid for s in test})}
    return CrossModalDataset(NAME, root, out["train.txt"], test, [], info)
