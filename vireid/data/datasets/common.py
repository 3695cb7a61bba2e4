"""Shared parsing machinery: problem collection, safe relative paths, list files, id files, image checks.

Every parser reports what is wrong with a layout as :class:`~vireid.data.records.Problem` objects collected in a
:class:`ProblemLog` instead of stopping at the first one, so ``vireid data check`` can list everything that needs
fixing in one run. :func:`finish` turns the collected problems into a :class:`~vireid.errors.DataError` when the
caller asked for a strict load.
"""

from __future__ import annotations

import os
import re
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from vireid.data.images import IMAGE_EXTENSIONS
from vireid.data.records import CrossModalDataset, Problem, Sample, Severity
from vireid.errors import DataError

# Image checks: a progress bar above this many images; at most this many individual "converted to RGB" warnings
# per image mode (the rest are summarised in one warning, so a dataset of 1-channel BMPs stays readable).
PROGRESS_THRESHOLD = 200
MAX_CONVERSION_WARNINGS = 10


class ProblemLog:
    """Collects the problems of one parse, in the order they were found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.add("error", message, file, line)

    def warning(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.add("warning", message, file, line)

    def add(self, severity: Severity, message: str, file: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(severity, message, file, line))

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass(frozen=True)
class DatasetOptions:
    """Options every parser receives; each parser reads only those that apply to its dataset.

    Attributes:
        trial: RegDB trial 1..10.
        target: market1501_gen twin set: ``sysumm01``, ``sysumm02`` or ``regdb``.
        labels: market1501_gen training labels: ``pseudo`` (pplr_pseudo_labels.pth) or ``ground_truth``.
    """

    trial: int = 1
    target: str = "sysumm01"
    labels: str = "pseudo"


def check_root(root: str | Path) -> Path:
    """Return ``root`` as a Path, raising a one-line DataError when it is not an existing folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{path}: dataset root does not exist; pass the folder that holds the dataset")
    if not path.is_dir():
        raise DataError(f"{path}: dataset root is not a folder; pass the folder that holds the dataset")
    return path


def finish(dataset: CrossModalDataset, *, strict: bool, name: str) -> CrossModalDataset:
    """In strict mode, raise the first error-severity problem (warnings never raise); else return ``dataset``."""
    if not strict:
        return dataset
    errors = dataset.errors
    if not errors:
        return dataset
    others = len(dataset.problems) - 1
    message = str(errors[0])
    if others:
        noun = "problem" if others == 1 else "problems"
        message += (
            f" (and {others} more {noun}; run `vireid data check {shlex.quote(str(dataset.root))} --dataset {name}` "
            f"to list them)"
        )
    raise DataError(message)


# --------------------------------------------------------------------------------------------------- layouts
# What each dataset's root looks like, used to say "this looks like RegDB" when the user picked the wrong parser.
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "sysu_mm01": ("cam1", "cam3", "exp"),
    "regdb": ("Visible", "Thermal", "idx"),
    "sysu_mm02": ("train.txt", "test_rgb.txt", "test_ir.txt"),
    "llcm": ("train_vis", "train_nir", "test_vis", "test_nir"),
    "market1501_gen": ("market1501_train", "market1501_test"),
    "market1501": ("bounding_box_train", "bounding_box_test", "query"),
}


DISPLAY = {"sysu_mm01": "SYSU-MM01", "regdb": "RegDB", "sysu_mm02": "SYSU-MM02", "llcm": "LLCM",
           "market1501": "Market-1501", "market1501_gen": "market1501_gen"}


def guess_layout(root: Path) -> str | None:
    """Name of the dataset whose characteristic top-level entries all exist in ``root`` (None if none does)."""
    for name, entries in _SIGNATURES.items():
        if all((root / e).exists() for e in entries):
            return name
    return None


# Entries of which at least one must exist for a folder to be taken as that dataset's root by a protocol that reads
# split files from it (`vireid evaluate --dataset-root`); looser than _SIGNATURES: sysu-official needs only exp/.
_ROOT_MARKERS: dict[str, tuple[str, ...]] = {
    "sysu_mm01": ("exp/test_id.txt", "exp/rand_perm_cam.mat", *(f"cam{c}" for c in range(1, 7))),
    "llcm": ("idx/test_id.txt", "test_vis", "test_nir"),
    "regdb": ("Visible", "Thermal"),
    "sysu_mm02": ("test_rgb.txt", "test_ir.txt"),
}


def check_dataset_root(root: str | Path, dataset: str, option: str = "--dataset-root") -> Path:
    """A one-line DataError unless ``root`` is an existing folder holding (part of) ``dataset``'s layout.

    Used where a root is optional and would otherwise be silently ignored when it is wrong (a typo, another
    dataset's folder): the folder must exist and hold at least one of the dataset's characteristic entries, and
    must not be recognisably another dataset.
    """
    path = Path(root).expanduser()
    name = DISPLAY.get(dataset, dataset)
    if not path.exists():
        raise DataError(f"{option} {path}: no such folder; pass the {name} folder")
    if not path.is_dir():
        raise DataError(f"{option} {path}: is a file, not a folder; pass the {name} folder")
    markers = _ROOT_MARKERS.get(dataset, _SIGNATURES.get(dataset, ()))
    guess = guess_layout(path)
    if guess is not None and guess != dataset:
        raise DataError(f"{option} {path}: looks like {DISPLAY[guess]}, not {name}; pass the {name} folder")
    if markers and not any((path / m).exists() for m in markers):
        raise DataError(f"{option} {path}: does not look like {name} (none of {', '.join(markers[:4])}"
                        f"{', ...' if len(markers) > 4 else ''} in it); pass the {name} folder")
    return path


class LayoutError(DataError):
    """The root does not have the chosen dataset's layout at all (nothing further can be checked)."""


def wrong_layout(root: Path, what: str, dataset: str, expected: str) -> LayoutError:
    """A LayoutError for a root that does not have the dataset's layout at all, naming a better guess if any."""
    guess = guess_layout(root)
    hint = f" (it looks like {DISPLAY[guess]}: use --dataset {guess})" if guess and guess != dataset else ""
    return LayoutError(f"{what} in {root}; is this {DISPLAY.get(dataset, dataset)}?{hint} expected layout: {expected}")


# ------------------------------------------------------------------------------------------------ safe paths
def unsafe_reason(rel: str) -> str | None:
    """Why ``rel`` may not be used as a path relative to the dataset root (None when it is fine).

    Rejects absolute paths (POSIX or Windows), ``..`` components and backslash separators: every path in a list
    file must name a file inside the root, spelled with ``/``.
    """
    if not rel:
        return "empty path"
    if "\\" in rel:
        return f"path '{rel}' uses '\\' separators; use '/'"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return f"path '{rel}' is absolute; paths must be relative to the dataset root"
    if ".." in PurePosixPath(rel).parts:
        return f"path '{rel}' escapes the dataset root ('..'); paths must stay inside it"
    return None


# ------------------------------------------------------------------------------------------ invisible characters
BOM = "\ufeff"
_CHAR_NAMES = {
    "\ufeff": "byte-order mark", "\u00a0": "non-breaking space", "\u202f": "narrow no-break space",
    "\u200b": "zero-width space", "\u200c": "zero-width non-joiner", "\u200d": "zero-width joiner",
    "\u2060": "word joiner", "\u00ad": "soft hyphen", "\u3000": "ideographic space", "\u2009": "thin space",
    "\u2007": "figure space", "\u200e": "left-to-right mark", "\u200f": "right-to-left mark",
    "\x00": "NUL byte", "\x0b": "vertical tab", "\x0c": "form feed",
}


def char_name(ch: str) -> str:
    """A readable name of a (usually invisible) character: ``non-breaking space (U+00A0)``."""
    name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "").lower() or "control character"
    return f"{name} (U+{ord(ch):04X})"


def first_invisible(text: str, allowed: str = " \t") -> int | None:
    """Index of the first character of ``text`` that is invisible or a non-ASCII space (a space, separator, control
    or format character other than ``allowed``), or None. Visible non-ASCII letters (e.g. CJK file names) pass."""
    for i, ch in enumerate(text):
        if ch in allowed or (ch.isascii() and ch.isprintable()):
            continue
        if unicodedata.category(ch)[0] in "ZC":
            return i
    return None


def shown(text: str) -> str:
    """``text`` with invisible characters written as ``<U+XXXX>`` (safe to print in a one-line message)."""
    out = []
    for ch in text:
        out.append(f"<U+{ord(ch):04X}>" if first_invisible(ch, " ") is not None else ch)
    return "".join(out)


# ------------------------------------------------------------------------------------------------ list files
@dataclass(frozen=True)
class ListRow:
    """One parsed line of a list file: its 1-based number, the relative image path and the integer columns."""

    line: int
    path: str
    values: tuple[int, ...]


_INT = re.compile(r"^[+-]?\d+$")


def read_list_file(
    root: Path, rel: str, columns: Sequence[str], log: ProblemLog, *, what: str
) -> list[ListRow] | None:
    """Read ``root/rel``: lines ``<relpath> <int> ...`` with the integer ``columns`` named (e.g. ``("label",)``).

    Returns the valid rows in file order; every bad line is reported to ``log`` with its line number and left out
    of the result (so a collect-mode parse can go on). Returns None when the file is missing or unreadable.
    A missing trailing newline, Windows line ends and a UTF-8 byte-order mark at the start (Windows editors write
    one) are accepted; any other invisible character (a non-breaking space, a BOM inside the file, ...) is an error
    that names it. An image that is a dangling symbolic link is reported as such.

    Args:
        root: dataset root; paths in the file are relative to it.
        rel: the list file, relative to ``root`` (used as the file name in problems).
        columns: names of the integer columns after the path, for messages.
        log: where problems go.
        what: what the file should list, for the "missing file" message (e.g. "the visible training images").
    """
    fmt = "'<relpath> " + " ".join(f"<{c}>" for c in columns) + "'"
    path = root / rel
    if not path.is_file():
        log.error(f"missing; it should list {what}, one {fmt} per line", rel)
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        log.error(f"not UTF-8 text ({exc.reason} at byte {exc.start}); it should hold {fmt} lines", rel)
        return None
    except OSError as exc:
        log.error(f"cannot read ({exc.strerror}); check its permissions", rel)
        return None
    text = text.removeprefix(BOM)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    if not lines:
        log.error(f"empty; it should list {what}, one {fmt} per line", rel)
        return None
    rows: list[ListRow] = []
    seen: dict[str, int] = {}  # stripped line -> first line number
    seen_paths: dict[str, int] = {}  # image path -> first line number (same image, other label)
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            log.error(f"empty line; remove it (expected {fmt})", rel, number)
            continue
        bad = first_invisible(line)
        if bad is not None:
            log.error(f"contains a {char_name(line[bad])} at column {bad + 1}: '{shown(line.strip())}'; replace it "
                      f"with a plain space (or remove it); expected {fmt}", rel, number)
            continue
        key = line.strip()
        if key in seen:
            log.error(
                f"line {number} duplicates line {seen[key]}; remove it (duplicates change the protocol's counts)",
                rel, number,
            )
            continue
        seen[key] = number
        fields = line.split()
        if len(fields) == 1 and len(columns) >= 1:
            log.error(f"line without a {columns[0]}: '{line.strip()}'; expected {fmt}", rel, number)
            continue
        if len(fields) != 1 + len(columns):
            log.error(f"expected {1 + len(columns)} columns {fmt}, found {len(fields)}: '{line.strip()}'", rel, number)
            continue
        values: list[int] = []
        for name, token in zip(columns, fields[1:]):
            if not _INT.match(token):
                log.error(f"{name} '{token}' is not an integer; expected {fmt}", rel, number)
                break
            values.append(int(token))
        else:
            image = fields[0]
            reason = unsafe_reason(image)
            if reason is not None:
                log.error(reason, rel, number)
                continue
            if not (root / image).is_file():
                if (root / image).is_symlink():
                    log.error(f"image '{image}' is a {dangling(root / image)}", rel, number)
                else:
                    log.error(f"image '{image}' does not exist under the dataset root; fix the path or the root", rel,
                              number)
                continue
            if image in seen_paths:
                log.error(f"image '{image}' is already listed on line {seen_paths[image]}; remove one of the two lines",
                          rel, number)
                continue
            seen_paths[image] = number
            rows.append(ListRow(number, image, tuple(values)))
    return rows


def read_id_file(root: Path, rel: str, log: ProblemLog, *, what: str) -> list[int] | None:
    """Read an id file: ONE line of comma-separated integers, with or without a trailing newline.

    Tolerated (the official files have none of it, but editors add it): a UTF-8 byte-order mark at the start, blank
    lines, spaces or tabs around the ids, Windows line ends. Returns the ids in file order (bad tokens reported and
    left out, every line still read so that later checks can go on), or None when the file is missing or
    unreadable. Duplicate ids are errors; a token with an invisible character names that character.
    """
    expected = "expected ONE line of comma-separated integers (e.g. 1,2,4)"
    path = root / rel
    if not path.is_file():
        log.error(f"missing; it should hold {what} as ONE line of comma-separated integers (e.g. 1,2,4)", rel)
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        log.error(f"cannot read ({exc}); {expected}", rel)
        return None
    text = text.removeprefix(BOM)
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line.strip(" \t")]  # blank lines are fine
    if not lines:
        log.error(f"empty; it should hold {what}; {expected}", rel)
        return None
    if len(lines) > 1:
        log.error(f"{expected}, found {len(lines)} lines; join them with commas", rel, lines[1][0])
    ids: list[int] = []
    first_seen: dict[int, int] = {}
    bad_seen = len(lines) > 1
    for number, line in lines:
        values: list[int] = []
        bad: list[str] = []
        for raw in line.split(","):
            token = raw.strip(" \t")
            if token.isdigit() and token.isascii():
                values.append(int(token))
            else:
                bad.append(token)
        if bad:
            bad_seen = True
            more = f" ({len(bad)} bad tokens in all)" if len(bad) > 1 else ""
            token = bad[0]
            hidden = first_invisible(token)
            if hidden is not None:
                log.error(f"bad token '{shown(token)}': it contains a {char_name(token[hidden])}{more}; remove it; "
                          f"{expected}", rel, number)
            elif not token:
                log.error(f"empty entry between commas{more}; {expected}", rel, number)
            else:
                log.error(f"bad token '{token}'{more}; {expected}", rel, number)
        for value in values:
            if value in first_seen:
                log.error(f"id {value} is listed twice; remove one", rel, number)
                continue
            first_seen[value] = number
            ids.append(value)
    if not ids and not bad_seen:
        log.error(f"holds no ids; {expected}", rel)
    return ids


# ------------------------------------------------------------------------------------------------- folders
def list_images(folder: Path, log: ProblemLog | None = None, rel_dir: str = "") -> list[str]:
    """Sorted names of the image files directly in ``folder`` (by extension, case-insensitive).

    An image name that is a dangling symbolic link is not an image file; with ``log`` it is reported as an error
    (file ``rel_dir + name``) instead of vanishing from the dataset unnoticed.
    """
    names: list[str] = []
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if e.is_file():
                names.append(e.name)
            elif log is not None and e.is_symlink():
                log.error(dangling(Path(e.path)), rel_dir + e.name)
    return sorted(names)


def dangling(link: Path) -> str:
    """The message for a symbolic link whose target does not exist."""
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    full = target if os.path.isabs(target) else os.path.join(os.path.dirname(link), target)
    return f"dangling symbolic link (its target {full} does not exist); restore the target or remove the link"


def list_dirs(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir())


def stray_files(folder: Path) -> list[str]:
    """Sorted names of non-hidden files in ``folder`` that are not images (reported, never silently ignored)."""
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if e.is_file() and not e.name.startswith(".") and not e.name.lower().endswith(IMAGE_EXTENSIONS)
        )


# -------------------------------------------------------------------------------------------------- images
def check_images(root: Path, samples: Iterable[Sample], log: ProblemLog) -> int:
    """Decode every image of ``samples`` (and their twins) once; report corrupt files and non-RGB modes.

    A corrupt or truncated file is an error. A 1-channel, RGBA, palette or 16-bit image is a warning: it is
    handled (:func:`vireid.data.images.load_image` converts it to RGB) but worth knowing about. Returns the number
    of images checked.
    """
    from tqdm import tqdm

    paths: list[str] = []
    seen: set[str] = set()
    for s in samples:
        for p in (s.path, s.twin):
            if p is not None and p not in seen:
                seen.add(p)
                paths.append(p)

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda rel: _check_one(root, rel), paths)
        bar = tqdm(results, total=len(paths), desc="checking images", unit="img",
                   disable=len(paths) <= PROGRESS_THRESHOLD, leave=False)
        converted: dict[str, list[str]] = {}
        for rel, (kind, detail) in zip(paths, bar):
            if kind == "error":
                log.error(detail, rel)
            elif kind == "mode":
                converted.setdefault(detail, []).append(rel)
    for mode, rels in converted.items():
        for rel in rels[:MAX_CONVERSION_WARNINGS]:
            log.warning(f"mode {mode} image converted to RGB", rel)
        if len(rels) > MAX_CONVERSION_WARNINGS:
            log.warning(f"{len(rels) - MAX_CONVERSION_WARNINGS} more mode {mode} images converted to RGB (not listed)")
    return len(paths)


def _check_one(root: Path, rel: str) -> tuple[str, str]:
    """("ok", ""), ("mode", MODE) for a decodable non-RGB image, or ("error", message)."""
    from PIL import Image, UnidentifiedImageError

    from vireid.data.images import load_image

    try:
        with Image.open(root / rel) as img:
            mode = img.mode
            img.load()
        if mode != "RGB":
            load_image(root / rel)  # the conversion the training pipeline will apply must work too
            return "mode", mode
        return "ok", ""
    except DataError as exc:
        return "error", str(exc).split(": ", 1)[-1]
    except UnidentifiedImageError:
        return "error", "cannot decode image (not a known image format); replace the file or remove it from the list"
    except FileNotFoundError:
        return "error", "image file not found; check the dataset root and list files"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data; all mean "cannot decode"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return "error", f"cannot decode image ({reason}); replace the file or remove it from the list"
