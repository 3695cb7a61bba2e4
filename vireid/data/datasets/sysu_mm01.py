"""SYSU-MM01 (SPEC 1.1): ``camK/PPPP/NNNN.jpg`` folders and ``exp/{train,val,test}_id.txt`` id files.

train = every image of the train_id ∪ val_id identities in all six cameras, labelled 0..394 in ascending pid order;
val = the val_id images with those same labels (a subset of train, for model selection); test = every image of the
test_id identities, label -1. Records are ordered by pid, then camera, then file name.
"""

from __future__ import annotations

from pathlib import Path

from vireid.data.datasets.common import (
    DatasetOptions,
    ProblemLog,
    list_dirs,
    list_images,
    read_id_file,
    stray_files,
    wrong_layout,
)
from vireid.data.records import INFRARED, VISIBLE, CrossModalDataset, Sample

NAME = "sysu_mm01"
CAMERAS = (1, 2, 3, 4, 5, 6)
RGB_CAMERAS = (1, 2, 4, 5)
IR_CAMERAS = (3, 6)
ID_FILES = {
    "train": ("exp/train_id.txt", "the training identities"),
    "val": ("exp/val_id.txt", "the validation identities"),
    "test": ("exp/test_id.txt", "the test identities"),
}
RAND_PERM = "exp/rand_perm_cam.mat"
EXPECTED = "ROOT/cam1..cam6/PPPP/NNNN.jpg and ROOT/exp/{train,val,test}_id.txt"


def parse(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse a SYSU-MM01 root; problems go to ``log``."""
    present = [c for c in CAMERAS if (root / f"cam{c}").is_dir()]
    if not present:
        raise wrong_layout(root, "no cam1..cam6 folders", NAME, EXPECTED)
    for c in CAMERAS:
        if c not in present:
            log.error(f"camera folder missing; SYSU-MM01 has cam1..cam6 ({EXPECTED})", f"cam{c}/")

    ids: dict[str, list[int]] = {}
    for split, (rel, what) in ID_FILES.items():
        got = read_id_file(root, rel, log, what=what)
        ids[split] = got if got is not None else []
    _check_disjoint(ids, log)

    # (pid -> cam -> sorted file names) for every 4-digit identity folder
    folders: dict[int, dict[int, list[str]]] = {}
    listed = set(ids["train"]) | set(ids["val"]) | set(ids["test"])
    unlisted: dict[int, list[tuple[str, int]]] = {}  # pid -> [(folder, images)] of identities in no id file
    for c in present:
        cam_dir = root / f"cam{c}"
        for name in stray_files(cam_dir):
            log.warning("not an identity folder; ignored", f"cam{c}/{name}")
        for name in list_dirs(cam_dir):
            rel_dir = f"cam{c}/{name}/"
            if not (len(name) == 4 and name.isdigit()):
                log.warning("folder name is not a 4-digit identity; ignored", rel_dir)
                continue
            pid = int(name)
            for stray in stray_files(cam_dir / name):
                log.warning("not an image file; ignored", rel_dir + stray)
            files = list_images(cam_dir / name, log, rel_dir)
            if not files:
                log.warning("empty identity folder (treated as absent)", rel_dir)
                continue
            if pid not in listed:
                unlisted.setdefault(pid, []).append((rel_dir, len(files)))
                continue
            folders.setdefault(pid, {})[c] = files
    for pid, where in sorted(unlisted.items()):
        images = sum(n for _, n in where)
        log.warning(f"identity {pid} is in none of exp/*_id.txt; its images are not used ({images} "
                    f"image{'s' if images != 1 else ''} in {len(where)} folder{'s' if len(where) != 1 else ''})",
                    where[0][0])

    for split, (rel, _) in ID_FILES.items():
        for pid in ids[split]:
            if pid not in folders:
                log.error(f"id {pid} has no folder in any of cam1..cam6 (expected camK/{pid:04d}/); "
                          f"restore its images or remove it from the list", rel, 1)

    train_ids = sorted(set(ids["train"]) | set(ids["val"]))
    labels = {pid: i for i, pid in enumerate(train_ids)}
    train = _samples(folders, train_ids, labels)
    val = _samples(folders, sorted(ids["val"]), labels)
    test = _samples(folders, sorted(ids["test"]), {})
    # training pairs RGB with IR images and the protocol queries IR against RGB: a split without one modality
    # would only fail later (in the sampler, or as an empty query set)
    for split, samples, rel in (("training", train, ID_FILES["train"][0]), ("test", test, ID_FILES["test"][0])):
        if not samples:
            continue
        for modality, name, cams in ((INFRARED, "IR", IR_CAMERAS), (VISIBLE, "RGB", RGB_CAMERAS)):
            if not any(s.modality == modality for s in samples):
                folders_ = ", ".join(f"cam{c}/" for c in cams)
                log.error(f"the {split} split has no {name} images (none of its ids has a folder in {folders_}); "
                          f"VI-ReID needs both modalities: restore those folders", rel)

    info = {
        "train_ids": sorted(ids["train"]),
        "val_ids": sorted(ids["val"]),
        "test_ids": sorted(ids["test"]),
        "num_classes": len(train_ids),
        "rgb_cameras": list(RGB_CAMERAS),
        "ir_cameras": list(IR_CAMERAS),
        "rand_perm_cam": _check_rand_perm(root, log),
    }
    return CrossModalDataset(NAME, root, train, test, val, info)


def modality_of(camid: int) -> int:
    """0 for the RGB cameras 1, 2, 4, 5; 1 for the IR cameras 3, 6."""
    return int(INFRARED if camid in IR_CAMERAS else VISIBLE)


def _samples(folders: dict[int, dict[int, list[str]]], pids: list[int], labels: dict[int, int]) -> list[Sample]:
    out: list[Sample] = []
    for pid in pids:
        for cam, files in sorted(folders.get(pid, {}).items()):
            out.extend(
                Sample(f"cam{cam}/{pid:04d}/{f}", pid, cam, modality_of(cam), labels.get(pid, -1)) for f in files
            )
    return out


def _check_disjoint(ids: dict[str, list[int]], log: ProblemLog) -> None:
    """An identity in two of the id files would leak between training and test (or double-count)."""
    splits = list(ids)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            both = sorted(set(ids[a]) & set(ids[b]))
            if both:
                more = f" (and {len(both) - 1} more)" if len(both) > 1 else ""
                log.error(f"id {both[0]}{more} is also listed in {ID_FILES[a][0]}; each id belongs to one split",
                          ID_FILES[b][0], 1)


def _check_rand_perm(root: Path, log: ProblemLog) -> str | None:
    """Validate the optional official permutation file; its relative path when usable, else None."""
    path = root / RAND_PERM
    if not path.exists():
        return None
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types on corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error(f"cannot be read by scipy.io.loadmat ({reason}); replace it with the official file or delete it "
                  f"(it is optional)", RAND_PERM)
        return None
    if "rand_perm_cam" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        log.error(f"has no variable 'rand_perm_cam' (found: {found}); replace it with the official file or delete it "
                  f"(it is optional)", RAND_PERM)
        return None
    cams = mat["rand_perm_cam"].squeeze()
    if getattr(cams, "size", 0) != len(CAMERAS):
        log.error(f"'rand_perm_cam' holds {getattr(cams, 'size', 0)} cameras, expected 6; replace it with the "
                  f"official file or delete it (it is optional)", RAND_PERM)
        return None
    return RAND_PERM
