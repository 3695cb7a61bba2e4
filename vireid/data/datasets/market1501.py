"""Market-1501 (plain, ground-truth labels) and market1501_gen (originals + fake-IR twins + PPLR pseudo labels).

SPEC 1.4. File names follow ``PPPP_cCsS_FFFFFF_NN.jpg``, parsed with ``([-\\d]+)_c(\\d)``; pid -1 (junk) is dropped
and counted in ``info["dropped"]``; camid = C (1..6); every Market image is RGB (modality 0).

market1501: train = bounding_box_train relabelled 0..C-1 in ascending pid order; test = query + bounding_box_test
(queries first; ``info["num_query"]`` says how many), label -1.

market1501_gen: train = the market1501_train/ originals, then the market1501_test/ originals, each with ``twin`` = the
same file name in market1501_train_<target>/ (market1501_test_<target>/); label = pseudo label from
pplr_pseudo_labels.pth (matched by basename, relabelled 0..C-1 in ascending pseudo-label order); images without one
are dropped (counted for market1501_train/; market1501_test/ images are only training data when PPLR labelled them).
This is AML's stage-1 pool as its code builds it (SPEC 1.4 / 6, corrected; wuancong/CMAM @ 21d258fb,
fastreid/data/datasets/market1501.py:39-53: ``process_dir(market1501_train) + process_dir(market1501_test)`` zipped
with the twins, kept where ``fname_pid_dict.get(basename)`` has a label). ``info["test_pool"]`` says how many test
images joined. With ``labels="ground_truth"`` train is the market1501_train/ originals with the Market pid relabelled
(the test folder's persons are others; the reference has no such option). test = market1501_test/ originals, label
-1 (no protocol uses it).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, cast

from vireid.data.datasets.common import DatasetOptions, ProblemLog, list_images, stray_files, wrong_layout
from vireid.data.records import VISIBLE, CrossModalDataset, Sample, Severity
from vireid.errors import DataError

NAME = "market1501"
GEN_NAME = "market1501_gen"
TARGETS = ("sysumm01", "sysumm02", "regdb")
LABEL_SOURCES = ("pseudo", "ground_truth")
PPLR = "pplr_pseudo_labels.pth"
CAMERAS = range(1, 7)
_NAME_RE = re.compile(r"([-\d]+)_c(\d)")
EXPECTED = "ROOT/bounding_box_train/, ROOT/bounding_box_test/, ROOT/query/ with PPPP_cCsS_FFFFFF_NN.jpg images"
GEN_EXPECTED = ("ROOT/market1501_train/, ROOT/market1501_test/, ROOT/market1501_train_<target>/, "
                "ROOT/market1501_test_<target>/, ROOT/pplr_pseudo_labels.pth")


# ------------------------------------------------------------------------------------------- plain Market
def parse(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse a plain Market-1501 root (ground-truth labels; ``options`` are not used)."""
    folders = ("bounding_box_train", "bounding_box_test", "query")
    if not any((root / f).is_dir() for f in folders):
        raise wrong_layout(root, "no bounding_box_train/, bounding_box_test/ or query/ folder", NAME, EXPECTED)
    dropped: dict[str, int] = {}
    parsed = {f: _scan(root, f, log, dropped) for f in folders}
    train = _relabel(parsed["bounding_box_train"])
    test = parsed["query"] + parsed["bounding_box_test"]
    info = {
        "num_query": len(parsed["query"]),
        "num_classes": len({s.label for s in train}),
        "dropped": {f"junk images (pid -1) in {f}/": n for f, n in dropped.items() if n},
    }
    return CrossModalDataset(NAME, root, train, test, [], info)


def parse_name(name: str) -> tuple[int, int] | None:
    """(pid, camid) from a Market file name, or None when it does not follow the naming scheme."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    try:
        return int(m.group(1)), int(m.group(2))
    except ValueError:  # e.g. "--1_c1": the character class admits stray dashes
        return None


def _scan(root: Path, folder: str, log: ProblemLog, dropped: dict[str, int]) -> list[Sample]:
    """Samples of one flat Market folder in file-name order, junk (pid -1) counted in ``dropped`` and left out."""
    path = root / folder
    if not path.is_dir():
        log.error("folder missing; it should hold PPPP_cCsS_FFFFFF_NN.jpg images", f"{folder}/")
        return []
    for stray in stray_files(path):
        log.warning("not an image file; ignored", f"{folder}/{stray}")
    out: list[Sample] = []
    for name in list_images(path, log, f"{folder}/"):
        rel = f"{folder}/{name}"
        parsed = parse_name(name)
        if parsed is None:
            log.error("file name does not follow Market's PPPP_cCsS_FFFFFF_NN.jpg; rename or remove it", rel)
            continue
        pid, cam = parsed
        if pid == -1:
            dropped[folder] = dropped.get(folder, 0) + 1
            continue
        if pid < -1 or cam not in CAMERAS:
            log.error(f"pid {pid} / camera {cam} out of range (pid >= -1, camera 1..6)", rel)
            continue
        out.append(Sample(rel, pid, cam, int(VISIBLE), -1))
    return out


def _relabel(samples: list[Sample], key: dict[str, int] | None = None) -> list[Sample]:
    """Labels 0..C-1 in ascending order of ``key[path]`` (default: the pid)."""
    value = (lambda s: s.pid) if key is None else (lambda s: key[s.path])
    mapping = {v: i for i, v in enumerate(sorted({value(s) for s in samples}))}
    return [Sample(s.path, s.pid, s.camid, s.modality, mapping[value(s)], s.twin) for s in samples]


# ------------------------------------------------------------------------------------------ market1501_gen
def normalize_target(target: str) -> str:
    """``SYSU-MM01``/``sysu_mm01``/``sysumm01`` -> ``sysumm01``; DataError for an unknown target."""
    key = target.lower().replace("-", "").replace("_", "")
    if key not in TARGETS:
        raise DataError(f"unknown market1501_gen target '{target}'; use one of {', '.join(TARGETS)}")
    return key


def parse_gen(root: Path, options: DatasetOptions, log: ProblemLog) -> CrossModalDataset:
    """Parse a market1501_gen root for ``options.target`` with ``options.labels`` labels."""
    target = normalize_target(options.target)
    labels = options.labels.lower().replace("-", "_")
    if labels not in LABEL_SOURCES:
        raise DataError(f"unknown label source '{options.labels}'; use pseudo or ground_truth")
    if not any((root / f).is_dir() for f in ("market1501_train", "market1501_test")):
        raise wrong_layout(root, "no market1501_train/ or market1501_test/ folder", GEN_NAME, GEN_EXPECTED)

    dropped: dict[str, int] = {}
    originals = _scan(root, "market1501_train", log, dropped)
    test = _scan(root, "market1501_test", log, dropped)
    twin_dir = f"market1501_train_{target}"
    twins = _check_twins(root, "market1501_train", twin_dir, log, severity="error")
    test_twin_dir = f"market1501_test_{target}"
    test_twins: set[str] = set()
    if (root / test_twin_dir).is_dir():
        # only pseudo-labelled test images are trained on; a missing twin of one of those is an error below
        test_twins = _check_twins(root, "market1501_test", test_twin_dir, log, severity="warning")

    # an original without its twin cannot be trained on (the error is reported above); it is left out here
    twinned = [Sample(s.path, s.pid, s.camid, s.modality, -1, f"{twin_dir}/{s.path.split('/', 1)[1]}")
               for s in originals if s.path.split("/", 1)[1] in twins]
    test_pool = 0
    if labels == "ground_truth":
        train = _relabel(twinned)
    else:
        pseudo = read_pseudo_labels(root, log)
        train = []
        if pseudo is not None:
            keep = [s for s in twinned if Path(s.path).name in pseudo]
            missing = len(twinned) - len(keep)
            if missing:
                dropped["market1501_train (no pseudo label)"] = missing
                log.warning(f"{missing} of {len(twinned)} training images have no pseudo label in {PPLR} and were "
                            f"dropped", "market1501_train/")
            # market1501_test/ images with a pseudo label are training data too (after the train folder, as the
            # reference concatenates the two folders); each needs its twin from market1501_test_<target>/
            extra: list[Sample] = []
            for s in test:
                name = s.path.split("/", 1)[1]
                if name not in pseudo:
                    continue
                if name not in test_twins:
                    log.error(f"twin of {name} is missing; the image has a pseudo label, so it is stage-1 training "
                              f"data and needs its fake-IR twin", f"{test_twin_dir}/")
                    continue
                extra.append(Sample(s.path, s.pid, s.camid, s.modality, -1, f"{test_twin_dir}/{name}"))
            if twinned and not keep and not extra:
                log.error(f"no training image has a pseudo label (labels are matched by file name); is this the "
                          f"{PPLR} of this dataset?", PPLR)
            pool = keep + extra
            train = _relabel(pool, {s.path: pseudo[Path(s.path).name] for s in pool})
            test_pool = len(extra)
    info: dict[str, Any] = {
        "target": target,
        "labels": labels,
        "test_pool": test_pool,
        "num_classes": len({s.label for s in train}),
        "dropped": {_dropped_key(k): n for k, n in dropped.items() if n},
    }
    return CrossModalDataset(GEN_NAME, root, train, test, [], info)


def _dropped_key(key: str) -> str:
    return key if "(" in key else f"junk images (pid -1) in {key}/"


def _check_twins(root: Path, originals: str, twins: str, log: ProblemLog, *, severity: Severity) -> set[str]:
    """Sorted file names of ``originals`` and ``twins`` must be identical; report the first mismatch by name.

    Returns the file names present in ``twins``.
    """
    if not (root / originals).is_dir():
        return set()
    if not (root / twins).is_dir():
        log.add(severity, f"fake-IR twin folder missing; it should hold one twin per image of {originals}/ "
                          f"(same file names)", f"{twins}/")
        return set()
    a, b = list_images(root / originals), list_images(root / twins, log, f"{twins}/")
    if a == b:
        return set(b)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    counts = (f"{len(only_a)} image{'s' if len(only_a) != 1 else ''} without twin, "
              f"{len(only_b)} twin{'s' if len(only_b) != 1 else ''} without image; originals and twins must "
              f"correspond one-to-one by file name")
    first_a = only_a[0] if only_a else None
    first_b = only_b[0] if only_b else None
    if first_a is not None and (first_b is None or first_a < first_b):
        message = f"twin of {first_a} is missing ({counts})"
    else:
        message = f"twin {first_b} has no original in {originals}/ ({counts})"
    log.add(severity, message, f"{twins}/")  # type: ignore[arg-type]
    return set(b)


def read_pseudo_labels(root: Path, log: ProblemLog) -> dict[str, int] | None:
    """Basename -> pseudo label from ``pplr_pseudo_labels.pth``, or None (reported) when unusable.

    The file is a torch-saved list of ``(path, pseudo_pid, ...)``. It is loaded with ``weights_only=True``; when that
    refuses the file because its numbers are numpy scalars (common for clustering output), it is loaded again with
    only numpy's scalar and integer-dtype reconstructors allowed. Nothing else is ever unpickled. Entries with a
    negative pseudo label (clustering outliers) carry no label.
    """
    path = root / PPLR
    if not path.is_file():
        log.error("missing; it should hold the PPLR pseudo labels, a torch-saved list of (path, pseudo_pid, camid) "
                  "(or pass --labels ground_truth)", PPLR)
        return None
    try:
        data = _safe_torch_load(path)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        reason = _torch_reason(exc)
        log.error(f"cannot be read as a torch-saved list of (path, pseudo_pid, camid) ({reason[:200]}); "
                  f"re-create it or pass --labels ground_truth", PPLR)
        return None
    if not isinstance(data, (list, tuple)):
        log.error(f"holds a {type(data).__name__}; expected a list of (path, pseudo_pid, camid)", PPLR)
        return None
    labels: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for i, entry in enumerate(data):
        parsed = _entry(entry)
        if parsed is None:
            log.error(f"entry {i} is {_short(entry)}; expected (path, pseudo_pid, ...) with a str path and an int "
                      f"label", PPLR)
            return None
        name, label = parsed
        if label < 0:
            continue
        if name in labels and labels[name] != label:
            log.error(f"entries {first_index[name]} and {i} give {name} different labels ({labels[name]} and "
                      f"{label}); labels are matched by file name, so each name needs one label", PPLR)
            return None
        labels[name] = label
        first_index.setdefault(name, i)
    return labels


def _numpy_int_globals() -> list[tuple[Any, str]]:
    """The only globals ever unpickled: numpy's scalar reconstructor and integer dtypes (pseudo labels saved as
    numpy integers need them; neither can run arbitrary code)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    out: list[tuple[Any, str]] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((core.multiarray.scalar, f"{module}.scalar"))
    out.append((np.dtype, "numpy.dtype"))
    for n in ("Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType",
              "UInt64DType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, n):
            out.append((getattr(np.dtypes, n), f"numpy.dtypes.{n}"))
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and primitives only; refuses every global except numpy integer scalars."""

    def find_class(self, module: str, name: str) -> Any:
        for obj, full in _numpy_int_globals():
            if full == f"{module}.{name}":
                return obj
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}; only lists/tuples of str/int are accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent reference; only lists/tuples of str/int are accepted")


def _safe_torch_load(path: Path) -> Any:
    """Load ``path`` without executing arbitrary pickles: torch ``weights_only``, then narrow fallbacks."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not support; we handle failure
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        if zipfile.is_zipfile(path):
            try:
                with torch.serialization.safe_globals(cast(list[Any], _numpy_int_globals())):
                    return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise pickle.UnpicklingError(_torch_reason(first)) from None
        # not a torch zip archive: maybe a plain pickle.dump of the list
        with path.open("rb") as f:
            try:
                return _RestrictedUnpickler(f).load()
            except Exception as exc:  # noqa: BLE001 - any failure means "not a readable list"
                raise pickle.UnpicklingError(f"not a torch or pickle file: {exc}") from None


def _torch_reason(exc: BaseException) -> str:
    """The informative part of torch's weights_only refusal (its advice to disable the check is not repeated)."""
    text = str(exc)
    m = re.search(r"unsupported GLOBAL (\S+)", text) or re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return f"refused to unpickle {m.group(1)}; only lists/tuples of str/int are accepted"
    m = re.search(r"(Unsupported operand \d+)", text)
    if m:
        return f"not a readable torch file ({m.group(1)})"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _entry(entry: Any) -> tuple[str, int] | None:
    """(basename, label) of one pplr entry, or None when it is not (str path, int label, ...)."""
    import numbers

    if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not isinstance(entry[0], str):
        return None
    label = entry[1]
    if hasattr(label, "numel") and hasattr(label, "item"):  # a 0-dim integer tensor
        if label.numel() != 1 or label.is_floating_point():
            return None
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        return None
    return entry[0].replace("\\", "/").rsplit("/", 1)[-1], int(label)


def _short(entry: Any) -> str:
    text = repr(entry)
    return text if len(text) <= 80 else text[:77] + "..."
