"""RegDB (SPEC 1.2): ``Visible/<id>/*.bmp``, ``Thermal/<id>/*.bmp`` and the per-trial ``idx/*_{t}.txt`` lists.

Trial t: train = train_visible_t + train_thermal_t (label = list label), test = test_visible_t + test_thermal_t
(label -1). pid = the list label (the features-file contract), camid 1 visible / 2 thermal, modality from the top
folder. Records keep list-file order, visible file first.
"""

from __future__ import annotations

from pathlib import Path

from vireid.data.datasets.common import DatasetOptions, ListRow, ProblemLog, read_list_file, wrong_layout
from vireid.data.records import INFRARED, VISIBLE, CrossModalDataset, Sample
from vireid.errors import DataError

NAME = "regdb"
TRIALS = range(1, 11)
MODALITY_FOLDERS = {"Visible": (int(VISIBLE), 1), "Thermal": (int(INFRARED), 2)}  # folder -> (modality, camid)
EXPECTED = "ROOT/Visible/<id>/*.bmp, ROOT/Thermal/<id>/*.bmp, ROOT/idx/{train,test}_{visible,thermal}_{1..10}.txt"


def parse(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse trial ``options.trial`` of a RegDB root; problems go to ``log``."""
    trial = options.trial
    if trial not in TRIALS:
        raise DataError(f"RegDB trial {trial} is out of range; use a trial from 1 to 10")
    if not any((root / d).is_dir() for d in ("Visible", "Thermal", "idx")):
        raise wrong_layout(root, "no Visible/, Thermal/ or idx/ folder", NAME, EXPECTED)
    for d in ("Visible", "Thermal", "idx"):
        if not (root / d).is_dir():
            log.error(f"folder missing; RegDB needs Visible/, Thermal/ and idx/ ({EXPECTED})", f"{d}/")

    splits: dict[str, list[Sample]] = {}
    folder_ids: dict[str, set[str]] = {}
    for split in ("train", "test"):
        samples: list[Sample] = []
        label_of_id: dict[str, tuple[int, str, int]] = {}  # id folder -> (label, list file, line)
        for folder, kind in (("Visible", "visible"), ("Thermal", "thermal")):
            rel = f"idx/{split}_{kind}_{trial}.txt"
            rows = read_list_file(root, rel, ("label",), log,
                                  what=f"the {kind} {split} images of trial {trial}") or []
            for row in rows:
                sample = _sample(row, rel, folder, split, log)
                if sample is None:
                    continue
                ident = row.path.split("/")[1] if row.path.count("/") >= 2 else row.path
                first = label_of_id.setdefault(ident, (row.values[0], rel, row.line))
                if first[0] != row.values[0]:
                    log.error(f"label {row.values[0]} for identity folder {ident}, but {first[1]}:{first[2]} gives "
                              f"it label {first[0]}; one identity has one label in a split", rel, row.line)
                    continue
                samples.append(sample)
        splits[split] = samples
        folder_ids[split] = set(label_of_id)

    leaked = sorted(folder_ids["train"] & folder_ids["test"], key=lambda s: (len(s), s))
    if leaked:
        more = f" (and {len(leaked) - 1} more)" if len(leaked) > 1 else ""
        log.error(f"identity {leaked[0]}{more} is in both the train and the test lists of trial {trial}; "
                  f"the identity split must be disjoint", f"idx/test_visible_{trial}.txt")

    info = {"trial": trial, "num_classes": len({s.label for s in splits["train"]})}
    return CrossModalDataset(NAME, root, splits["train"], splits["test"], [], info)


def _sample(row: ListRow, rel: str, expected_folder: str, split: str, log: ProblemLog) -> Sample | None:
    """The record of one list line, or None (reported) when its top folder is wrong."""
    top = row.path.split("/", 1)[0]
    if top not in MODALITY_FOLDERS:
        log.error(f"path '{row.path}' is under neither Visible/ nor Thermal/; the top folder gives the modality",
                  rel, row.line)
        return None
    if top != expected_folder:
        log.error(f"path '{row.path}' is under {top}/ but this file lists {expected_folder} images", rel, row.line)
        return None
    label = row.values[0]
    if label < 0:
        log.error(f"label {label} is negative; labels are 0..n-1", rel, row.line)
        return None
    modality, camid = MODALITY_FOLDERS[top]
    return Sample(row.path, label, camid, modality, label if split == "train" else -1)
