"""The features file: the public boundary between any model and ``vireid evaluate``.

A NumPy ``.npz`` with (extra keys are ignored, rows may come in any order):

=============  ===============  ===============================================================================
key            dtype / shape    meaning
=============  ===============  ===============================================================================
``features``   float32 [N, D]   one embedding per image (any float dtype is accepted and cast to float32)
``pids``       int64 [N]        identity as the dataset names it: SYSU-MM01 the 4-digit folder number,
                                RegDB / SYSU-MM02 the label in the list file, LLCM the PPPP folder number
``camids``     int64 [N]        camera as the dataset names it: SYSU-MM01 1..6, RegDB 1 visible / 2 thermal,
                                SYSU-MM02 the cam column of its list files, LLCM K of camK
``modalities`` int64 [N]        0 visible, 1 infrared
``paths``      str [N]          path relative to the dataset root, exactly as in the layout or list files
=============  ===============  ===============================================================================

Any integer dtype is accepted for the integer columns. :func:`load_features` validates everything and sorts the
rows by path, so results never depend on the row order of the file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from vireid.errors import FeaturesError

REQUIRED_KEYS = ("features", "pids", "camids", "modalities", "paths")

__all__ = ["REQUIRED_KEYS", "FeatureSet", "check_feature_rows", "load_features", "save_features", "validate_features"]

ZERO_NORM = 1e-12
"""Rows with an L2 norm at or below this are "zero": normalisation cannot give them a direction."""

_NPZ_MAGIC = b"PK\x03\x04"  # a .npz is a zip archive
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class FeatureSet:
    """A validated features file, rows sorted by path.

    Attributes:
        features: [N, D] float32 (not normalised; the evaluation normalises).
        pids, camids, modalities: [N] int64.
        paths: [N] str (NumPy unicode array).
        source: where it came from (for messages).
    """

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    modalities: np.ndarray
    paths: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, rows: np.ndarray) -> FeatureSet:
        """The rows ``rows`` (indices or a boolean mask), in that order."""
        return FeatureSet(self.features[rows], self.pids[rows], self.camids[rows], self.modalities[rows],
                          self.paths[rows], self.source)


def _int_column(name: str, arr: np.ndarray, n: int, source: str) -> np.ndarray:
    if arr.ndim != 1:
        raise FeaturesError(f"{source}: '{name}' must be 1-D [N], got shape {arr.shape}")
    if arr.shape[0] != n:
        raise FeaturesError(
            f"{source}: '{name}' has {arr.shape[0]} rows but 'features' has {n}; every key must have one row per image"
        )
    if arr.dtype.kind not in "iu":
        raise FeaturesError(
            f"{source}: '{name}' must be an integer array (int64), got dtype {arr.dtype}; "
            f"save it with np.asarray({name}, dtype=np.int64)"
        )
    return arr.astype(np.int64)


def validate_features(
    features: np.ndarray,
    pids: np.ndarray,
    camids: np.ndarray,
    modalities: np.ndarray,
    paths: np.ndarray,
    source: str = "<memory>",
) -> FeatureSet:
    """Check every column against the contract and return the rows sorted by path.

    Raises:
        FeaturesError: wrong shape or dtype, mismatched lengths, NaN/inf features, modality not 0/1, empty or
            duplicated paths -- with a one-line message naming the key and what is expected.
    """
    return _validate(features, pids, camids, modalities, paths, source)[0]


def _row_sumsq(features: np.ndarray) -> np.ndarray:
    """[N] float64 sum of squares of each row (of a 2-D float array): the squared L2 norms."""
    return np.einsum("ij,ij->i", features, features, dtype=np.float64)


def _validate(
    features: np.ndarray,
    pids: np.ndarray,
    camids: np.ndarray,
    modalities: np.ndarray,
    paths: np.ndarray,
    source: str,
) -> tuple[FeatureSet, np.ndarray]:
    """:func:`validate_features`, and the rows' squared norms in the order given (one pass over the features serves
    the finiteness check here and the zero-row check of :func:`check_feature_rows`)."""
    features = np.asarray(features)
    if features.dtype.kind != "f":
        raise FeaturesError(
            f"{source}: 'features' must be a float array (float32), got dtype {features.dtype}; "
            "save the embeddings themselves, e.g. np.asarray(feats, dtype=np.float32)"
        )
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise FeaturesError(f"{source}: 'features' must be a non-empty 2-D array [N, D], got shape {features.shape}")
    n = features.shape[0]
    sumsq = _row_sumsq(features)  # finite exactly when the row is, unless float64 squares overflow: recheck those
    bad = ~np.isfinite(sumsq)
    if bad.any():
        rows = np.flatnonzero(bad)
        bad[rows] = ~np.isfinite(features[rows]).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise FeaturesError(
            f"{source}: 'features' has NaN or infinite values in {int(bad.sum())} of {n} rows (first: row {first}); "
            "expected finite numbers"
        )
    pids = _int_column("pids", np.asarray(pids), n, source)
    camids = _int_column("camids", np.asarray(camids), n, source)
    modalities = _int_column("modalities", np.asarray(modalities), n, source)
    bad_mod = ~np.isin(modalities, (0, 1))
    if bad_mod.any():
        i = int(np.argmax(bad_mod))
        raise FeaturesError(
            f"{source}: 'modalities' must be 0 (visible) or 1 (infrared), got {modalities[i]} at row {i}"
        )
    paths = np.asarray(paths)
    if paths.dtype.kind == "S":
        try:
            paths = np.char.decode(paths, "utf-8")
        except UnicodeDecodeError as exc:
            raise FeaturesError(f"{source}: 'paths' are bytes that are not UTF-8 ({exc})") from None
    if paths.dtype.kind != "U":
        raise FeaturesError(
            f"{source}: 'paths' must be a string array, got dtype {paths.dtype}; "
            "save it with np.asarray(paths, dtype=str)"
        )
    if paths.ndim != 1 or paths.shape[0] != n:
        raise FeaturesError(
            f"{source}: 'paths' must be 1-D with one entry per row of 'features' ({n}), got shape {paths.shape}"
        )
    empty = np.char.str_len(paths) == 0
    if empty.any():
        raise FeaturesError(f"{source}: 'paths' has an empty string at row {int(np.argmax(empty))}")
    order = np.argsort(paths, kind="stable")
    sp = paths[order]
    dup = sp[1:] == sp[:-1]
    if dup.any():
        raise FeaturesError(
            f"{source}: path '{sp[1:][dup][0]}' appears more than once; each image must have exactly one row"
        )
    fs = FeatureSet(
        np.ascontiguousarray(features[order], dtype=np.float32),
        pids[order], camids[order], modalities[order], sp, source,
    )
    return fs, sumsq


def check_feature_rows(features: np.ndarray, source: str = "<memory>", what: str = "'features'", *,
                       identical: bool = True) -> None:
    """Refuse degenerate feature rows before anything is ranked or thresholded.

    A zero (or zero-norm) row has no direction: after L2 normalisation it is still zero, at the same distance from
    every other feature, so it ties with the whole gallery and the tie order decides its "matches" (a file of zeros
    scored Rank-1 21% / mAP 45% on a synthetic SYSU-MM01, like a trained model). All rows being one and the same
    vector is the same failure in another form (checked when ``identical``; a probe list may legitimately repeat
    one image). Raises :class:`FeaturesError` with the count and the first row
    (index in the order given).
    """
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] == 0:
        return
    _check_rows(f, _row_sumsq(f), source, what, identical)


def _check_rows(f: np.ndarray, sumsq: np.ndarray, source: str, what: str, identical: bool) -> None:
    """:func:`check_feature_rows` of a 2-D array with its rows' squared norms (:func:`_row_sumsq`)."""
    norms = np.sqrt(sumsq)
    zero = ~(norms > ZERO_NORM)
    if zero.any():
        raise FeaturesError(
            f"{source}: {what} has {int(zero.sum())} of {len(f)} rows with zero norm (all zeros; first: row "
            f"{int(np.argmax(zero))}); a zero feature has no direction and ties with every other image -- check the "
            "model that wrote them, or drop those rows"
        )
    if identical and len(f) > 1 and bool(np.all(f == f[:1])):
        raise FeaturesError(f"{source}: {what}: all {len(f)} rows are the same vector; the features do not tell the "
                            "images apart -- check the model that wrote them")


def _not_npz(path: Path, src: str) -> FeaturesError | None:
    """Our message for a file that is not a zip archive (NumPy's would suggest loading it with pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        return FeaturesError(f"{src}: cannot be read ({exc.strerror}); check its permissions")
    if head.startswith(_NPZ_MAGIC):
        return None
    if head.startswith(_NPY_MAGIC):
        return FeaturesError(f"{src}: expected a .npz archive with keys {', '.join(REQUIRED_KEYS)}, found a single "
                             "array (.npy); save all of them with np.savez(path, features=..., pids=..., camids=..., "
                             "modalities=..., paths=...)")
    kind = "the file is empty" if not head else "it is not a zip archive, which every NumPy .npz is"
    return FeaturesError(f"{src}: not a readable .npz file ({kind}); write the features file with "
                         "np.savez(path, features=..., pids=..., camids=..., modalities=..., paths=...) or vireid "
                         "extract")


def load_features(path: str | Path) -> FeatureSet:
    """Read and validate a features ``.npz`` (see the module docstring); rows come back sorted by path."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise FeaturesError(f"{src}: no such features file; expected a .npz written by 'vireid extract' or np.savez")
    bad = _not_npz(path, src)
    if bad is not None:
        raise bad
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise FeaturesError(f"{src}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FeaturesError(f"{src}: expected a .npz archive with keys {', '.join(REQUIRED_KEYS)}, found a single "
                            "array; save all of them with np.savez(path, features=..., pids=..., ...)")
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise FeaturesError(
                f"{src}: missing key(s) {', '.join(repr(k) for k in missing)}; a features file needs "
                f"{', '.join(REQUIRED_KEYS)} (found: {', '.join(npz.files) or 'none'})"
            )
        arrays = {}
        for k in REQUIRED_KEYS:
            try:
                arrays[k] = npz[k]
            except ValueError as exc:  # object arrays need pickle, which we refuse to load
                raise FeaturesError(
                    f"{src}: '{k}' is stored as Python objects ({exc}); store plain arrays, e.g. "
                    f"np.asarray({k}, dtype={'str' if k == 'paths' else 'np.int64'})"
                ) from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member (bad CRC, truncated data)
                raise FeaturesError(f"{src}: the array '{k}' is damaged ({exc}); the file was corrupted after it "
                                    "was written: write it again (vireid extract / vireid test)") from None
    fs, sumsq = _validate(source=src, **arrays)
    _check_rows(arrays["features"], sumsq, src, "'features'", identical=False)  # "row i": the file's row i
    return fs


def save_features(
    path: str | Path,
    features: np.ndarray,
    pids: np.ndarray,
    camids: np.ndarray,
    modalities: np.ndarray,
    paths: list[str] | np.ndarray,
    **extra: np.ndarray,
) -> Path:
    """Validate and write a features file (extra arrays are stored too and ignored by the evaluation).

    The file is written to a temporary name and renamed, so a crash never leaves a truncated file behind.
    """
    fs = validate_features(features, pids, camids, modalities, np.asarray(paths, dtype=str), source=str(path))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=fs.features, pids=fs.pids, camids=fs.camids, modalities=fs.modalities,
             paths=fs.paths, **cast(dict[str, Any], extra))
    tmp.replace(path)
    return path
