"""Which images to embed: folders and list files, identities read from known layouts, IR-or-RGB by pixel statistics.

A practitioner's images rarely come as a dataset the parsers of :mod:`vireid.data.datasets` know, so this module
turns "a folder" or "a text file of paths" into an :class:`ImageList`: the paths relative to one root (as the
features file stores them) with an identity and camera per image when they can be known.

Identities and cameras, in order of precedence:

1. a list file's columns (``path [pid [camid]]``);
2. a recognisable layout of the image's full path (first match wins):

   - ``.../camK/PPPP/NAME`` (SYSU-MM01, LLCM): pid = PPPP, camid = K;
   - ``.../Visible/PPPP/NAME`` or ``.../Thermal/PPPP/NAME`` (RegDB): pid = PPPP, camid 1 visible, 2 thermal;
   - a Market-1501 file name ``PPPP_cC...`` (e.g. ``0002_c1s1_000451_03.jpg``): pid = PPPP (-1 = junk), camid = C;

3. otherwise -1 (unknown) for both.

Modality "auto" (:func:`ir_scores`): an infrared frame is a gray level image stored in three channels, so its
channels are (nearly) equal everywhere, while a colour photograph of a person and a street almost never is. The
score of an image is the mean over its pixels of ``max(R, G, B) - min(R, G, B)`` (0..255). A gray frame scores 0
(PIL decodes a 3-channel JPEG of a gray image with equal channels); on the synthetic SYSU-MM01 every RGB image scores
13 or more, and a photograph desaturated to 30% still scores about 4..8. Below the threshold (default
:data:`DEFAULT_IR_THRESHOLD`) the image is called infrared; raise it for noisy IR cameras with a colour cast, lower
it for washed-out night-time RGB. It is computed on the image as the model sees it
(decoded, converted to RGB, resized to the checkpoint's input size). Colour-mapped thermal images (false colour
palettes) are not gray and are called visible: pass the modality explicitly for those.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vireid.data.images import IMAGE_EXTENSIONS
from vireid.errors import ConfigError, DataError

Modality = Literal["rgb", "ir", "auto"]
MODALITIES: tuple[str, ...] = ("rgb", "ir", "auto")
MODALITY_CODE = {"rgb": 0, "ir": 1}
MODALITY_NAME = {0: "rgb", 1: "ir"}

DEFAULT_IR_THRESHOLD = 4.0
"""Mean channel spread (0..255) below which ``--modality auto`` calls an image infrared."""

_SYSU_RE = re.compile(r"(?:^|/)cam(\d+)/(\d+)/[^/]+$")
_REGDB_RE = re.compile(r"(?:^|/)(Visible|Thermal)/(\d+)/[^/]+$")
_MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)")


def parse_modality(value: str, option: str = "--modality") -> Modality:
    """``value`` lower-cased if it is rgb, ir or auto; else a one-line :class:`ConfigError` naming ``option``."""
    v = str(value).strip().lower()
    if v not in MODALITIES:
        raise ConfigError(f"{option} {value!r}: unknown modality; use rgb (visible), ir (infrared) or auto "
                          "(decide per image from its colour)")
    return v  # type: ignore[return-value]


@dataclass(frozen=True)
class ImageList:
    """Images to embed: ``root / paths[i]``, with pid/camid per image (-1 = unknown).

    Attributes:
        root: absolute folder the paths are relative to (what the features file's ``paths`` are relative to).
        paths: POSIX relative paths, in the order of the rows.
        pids, camids: int64 [N]; -1 where unknown.
        source: what the user gave (folder, list file or probe files), for messages.
        labels: where pid/camid came from: ``"list"``, ``"layout"`` (at least one image parsed) or ``"none"``.
    """

    root: Path
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray
    source: str
    labels: str = "none"
    full_paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> Path:
        """The file of row ``i``."""
        return self.full_paths[i] if self.full_paths else self.root / self.paths[i]

    @property
    def known_ids(self) -> np.ndarray:
        """Boolean [N]: the identity of the row is known (pid >= 0)."""
        return self.pids >= 0


def layout_ids(path: str | Path) -> tuple[int, int]:
    """(pid, camid) read from a recognisable layout of ``path`` (see the module docstring), else (-1, -1)."""
    text = Path(path).as_posix()
    m = _SYSU_RE.search(text)
    if m:
        return int(m.group(2)), int(m.group(1))
    m = _REGDB_RE.search(text)
    if m:
        return int(m.group(2)), 1 if m.group(1) == "Visible" else 2
    m = _MARKET_RE.match(Path(text).name)
    if m:
        return int(m.group(1)), int(m.group(2))
    return -1, -1


def _relative(full: Path, root: Path, source: str) -> str:
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{source}: image {full} is not under the root {root}; pass --root a folder that holds "
                        "every image (paths in the features file are relative to it)") from None


def _abs(path: str | Path) -> Path:
    """Absolute, normalised (``..`` removed) but without resolving symlinks: paths stay as the user sees them."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _finish(root: Path, fulls: list[Path], source: str, pids: list[int] | None = None,
            camids: list[int] | None = None) -> ImageList:
    rels = [_relative(f, root, source) for f in fulls]
    if pids is None:
        parsed = [layout_ids(f) for f in fulls]
        p = np.array([x[0] for x in parsed], dtype=np.int64)
        c = np.array([x[1] for x in parsed], dtype=np.int64)
        labels = "layout" if bool(((p >= 0) | (c >= 0)).any()) else "none"
    else:
        p = np.array(pids, dtype=np.int64)
        c = np.array(camids if camids is not None else [-1] * len(fulls), dtype=np.int64)
        labels = "list"
    return ImageList(root, rels, p, c, source, labels, list(fulls))


def images_in_folder(folder: str | Path, root: str | Path | None = None) -> ImageList:
    """Every image (jpg, jpeg, png, bmp; any case) under ``folder``, recursively, sorted by relative path.

    Paths are relative to ``root`` (default: ``folder`` itself); pid/camid come from the layout (module docstring).
    """
    folder_abs = _abs(folder)
    if not folder_abs.is_dir():
        raise DataError(f"{folder}: no such folder")
    root_abs = _abs(root) if root is not None else folder_abs
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder_abs, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / n for n in filenames if n.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise DataError(f"{folder}: no images found under it (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                        "recursively); point at the folder that holds the images")
    found.sort(key=lambda f: f.relative_to(folder_abs).as_posix())
    return _finish(root_abs, found, str(folder))


def images_in_list(list_file: str | Path, root: str | Path | None = None) -> ImageList:
    """The images named in a text file, in its order: one per line, ``path`` or ``path pid`` or ``path pid camid``.

    Blank lines and lines starting with ``#`` are skipped. Relative paths are relative to ``root`` (default: the
    list file's folder). When any line gives a pid, lines without one get -1; when no line does, pid/camid come
    from the layout. Paths cannot contain spaces (the columns are whitespace-separated).
    """
    lf = _abs(list_file)
    if not lf.is_file():
        raise DataError(f"{list_file}: no such file or folder")
    root_abs = _abs(root) if root is not None else lf.parent
    try:
        text = lf.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{list_file}: not a text file (UTF-8) of image paths; give a folder or a list file, one "
                        "path per line") from None
    fulls: list[Path] = []
    pids: list[int] = []
    camids: list[int] = []
    any_labels = False
    seen: dict[Path, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 3:
            raise DataError(f"{list_file}:{lineno}: expected 'path', 'path pid' or 'path pid camid', got "
                            f"{len(parts)} columns (paths cannot contain spaces)")
        try:
            nums = [int(x) for x in parts[1:]]
        except ValueError:
            raise DataError(f"{list_file}:{lineno}: pid and camid must be integers, got {' '.join(parts[1:])!r}") \
                from None
        full = _abs(root_abs / parts[0])
        if not full.is_file():
            raise DataError(f"{list_file}:{lineno}: image {full} not found (paths are relative to {root_abs}; "
                            "see --root)")
        if full in seen:
            raise DataError(f"{list_file}:{lineno}: {parts[0]} is listed again (first on line {seen[full]}); each "
                            "image must appear once")
        seen[full] = lineno
        any_labels = any_labels or bool(nums)
        fulls.append(full)
        pids.append(nums[0] if len(nums) >= 1 else -1)
        camids.append(nums[1] if len(nums) >= 2 else -1)
    if not fulls:
        raise DataError(f"{list_file}: lists no images; put one image path per line")
    if any_labels:
        return _finish(root_abs, fulls, str(list_file), pids, camids)
    return _finish(root_abs, fulls, str(list_file))


def collect_images(source: str | Path, root: str | Path | None = None) -> ImageList:
    """A folder (every image under it) or a list file (see :func:`images_in_folder`, :func:`images_in_list`)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return images_in_folder(p, root)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{source}: is an image, not a folder or a list file; give the folder that holds it "
                            "or a text file listing it")
        return images_in_list(p, root)
    raise DataError(f"{source}: no such folder or list file")


def image_files(files: list[str | Path]) -> ImageList:
    """Individual image files (search probes): root = their deepest common folder; pid/camid from the layout."""
    if not files:
        raise DataError("no probe images given; pass at least one image file")
    fulls = [_abs(f) for f in files]
    for given, full in zip(files, fulls):
        if full.is_dir():
            raise DataError(f"{given}: is a folder; give image files (e.g. {given}/*.jpg)")
        if not full.is_file():
            raise DataError(f"{given}: image file not found")
    root = Path(os.path.commonpath([str(f.parent) for f in fulls]))
    return _finish(root, fulls, "probe images")


def ir_scores(images: np.ndarray) -> np.ndarray:
    """Mean channel spread of each image: mean over pixels of ``max(R,G,B) - min(R,G,B)``, float64 [B] in 0..255.

    ``images`` is uint8 [B, H, W, 3] (as :meth:`vireid.data.cache.ImageCache.batch` returns). Gray-level (IR)
    frames score about 0; see the module docstring.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
    spread = images.max(axis=3).astype(np.int16) - images.min(axis=3).astype(np.int16)
    return spread.reshape(len(images), -1).mean(axis=1, dtype=np.float64)


def decide_modalities(scores: np.ndarray, threshold: float = DEFAULT_IR_THRESHOLD) -> np.ndarray:
    """int64 [B]: 1 (infrared) where ``score < threshold``, else 0 (visible)."""
    return (np.asarray(scores) < threshold).astype(np.int64)
