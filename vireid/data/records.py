"""The cross-modal sample record and the dataset container every parser returns.

A :class:`Sample` names one image: its path relative to the dataset root (POSIX separators, exactly as the layout
or list file spells it), the identity and camera *as the dataset names them*, the modality, and the training label
(0..C-1, or -1 where the sample carries no training label: test images, unlabeled training images).

Protocols form query and gallery sets from these records; trainers read ``label``; the features file of
``vireid evaluate`` carries ``pid``, ``camid``, ``modality`` and ``path`` of the same records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal


class Modality(IntEnum):
    """Image modality. The integer values are part of the features-file contract."""

    VISIBLE = 0
    INFRARED = 1

    @property
    def short(self) -> str:
        return "rgb" if self is Modality.VISIBLE else "ir"


VISIBLE = Modality.VISIBLE
INFRARED = Modality.INFRARED


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of a cross-modal dataset.

    Attributes:
        path: path relative to the dataset root, POSIX separators, as in the layout or list file.
        pid: identity as the dataset names it (SYSU-MM01: folder number; RegDB/SYSU-MM02/LLCM: list-file label;
            Market: file-name prefix). -1 when unknown.
        camid: camera as the dataset names it (SYSU-MM01 1..6, RegDB 1 visible / 2 thermal, SYSU-MM02 1..3, ...).
        modality: 0 visible, 1 infrared (:class:`Modality`).
        label: training label 0..C-1; -1 for samples without one (test images, unlabeled training data).
        twin: for paired data (market1501_gen), the path of the paired image (the fake-IR twin); else None.
    """

    path: str
    pid: int
    camid: int
    modality: int
    label: int = -1
    twin: str | None = None


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a layout: where it is and what to do.

    ``error`` problems make the layout (or part of it) unusable; ``warning`` problems were handled (e.g. an RGBA image
    converted, a missing trailing newline accepted) but are worth knowing about.
    """

    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        loc = ""
        if self.file is not None:
            loc = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return f"{loc}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "file": self.file, "line": self.line, "message": self.message}


@dataclass
class CrossModalDataset:
    """A parsed dataset: training samples, the test pool, optional validation samples, and what the parser found.

    ``test`` is the whole test pool (all images of the test identities in both modalities). Protocols
    (:mod:`vireid.evaluation.protocols`) form query and gallery sets from it, per trial.

    ``info`` carries dataset-specific facts the protocols and trainers need, e.g. ``train_ids``, ``val_ids``,
    ``test_ids`` (SYSU-MM01, LLCM), ``trial`` (RegDB), ``num_classes``, ``labeled`` (False for SYSU-MM02 train).
    """

    name: str
    root: Path
    train: list[Sample]
    test: list[Sample]
    val: list[Sample] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of training labels (distinct ``label`` >= 0 in ``train``)."""
        return len({s.label for s in self.train if s.label >= 0})

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def splits(self) -> dict[str, list[Sample]]:
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v or k != "val"}

    def summary(self) -> dict[str, Any]:
        """Counts per split, modality and camera (plain dict, JSON-serialisable)."""
        return {name: summarize(samples) for name, samples in self.splits().items()}


def summarize(samples: Iterable[Sample]) -> dict[str, Any]:
    """Counts of images, identities, modalities and cameras of a list of samples."""
    samples = list(samples)
    by_mod = Counter(Modality(s.modality).short for s in samples)
    by_cam = Counter(s.camid for s in samples)
    return {
        "images": len(samples),
        "identities": len({s.pid for s in samples}),
        "labels": len({s.label for s in samples if s.label >= 0}),
        "modalities": {m: by_mod.get(m, 0) for m in ("rgb", "ir")},
        "cameras": {str(c): by_cam[c] for c in sorted(by_cam)},
    }


def relabel(samples: list[Sample]) -> list[Sample]:
    """Map the pids of ``samples`` to training labels 0..C-1 in ascending pid order."""
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [replace(s, label=mapping[s.pid]) for s in samples]
