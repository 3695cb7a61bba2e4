"""Training checkpoints: written atomically, loaded without executing pickled code, carrying their provenance.

A checkpoint is one ``torch.save`` file holding a dict of tensors, numbers, strings, lists and dicts only, so it
loads with ``torch.load(weights_only=True)`` — opening a checkpoint from the internet cannot run code. Layout::

    {
      "format": "vireid-checkpoint", "format_version": 1,
      "model": model.state_dict(),            # what `vireid test` needs
      "method": method.state_dict() | None,   # model + training-only modules (resume)
      "optimizer": ... | None, "scaler": ... | None, "schedule": ... | None,
      "rng": [per-rank states from vireid.engine.seeding.get_rng_state] | None,
      "progress": {"epoch": e, "step_in_epoch": s, "global_step": g},
      "meta": {"config_yaml", "vireid_version", "git_commit", "dataset", "dataset_root" (absolute), "trial",
               "method", "best_metric", "select_metric", "world_size", "saved_at", ...},
    }

``epoch`` / ``step_in_epoch`` say where training continues: epoch ``e``, after its first ``s`` sampler steps.

Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over the target
(``os.replace``, atomic on POSIX and Windows), so a crash at any moment leaves either the old or the new file.

RegDB protocol rule (SPEC 1.2): a model trained on trial t must be tested on trial t. :func:`load_checkpoint`
refuses (or, when asked, warns) when the checkpoint's trial differs from the trial under test.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vireid import __version__
from vireid.errors import CheckpointError

FORMAT = "vireid-checkpoint"
FORMAT_VERSION = 1

# datasets whose trials are different *training* splits; on the others a "trial" only redraws the test gallery
_TRIAL_SPLIT_DATASETS = {"regdb"}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the vireid source tree (``+dirty`` when modified), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def make_meta(
    *,
    config_yaml: str | None = None,
    dataset: str | None = None,
    trial: int | None = None,
    method: str | None = None,
    dataset_root: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Provenance for a checkpoint: config text, dataset, its absolute root, trial, method name, vireid version and
    git commit.

    ``dataset_root`` defaults to the config's ``data.root`` resolved against the working directory *now*: configs
    hold relative roots (``data/SYSU-MM01``), and ``vireid report`` / ``vireid test`` run later from another folder
    must still find the images.
    """
    meta: dict[str, Any] = {
        "config_yaml": config_yaml,
        "dataset": dataset,
        "dataset_root": _absolute_root(dataset_root, config_yaml),
        "trial": None if trial is None else int(trial),
        "method": method,
        "vireid_version": __version__,
        "git_commit": git_commit(),
    }
    meta.update(extra)
    return meta


def _absolute_root(root: str | os.PathLike[str] | None, config_yaml: str | None) -> str | None:
    """``root`` (else the config's data.root) as an absolute path; None when neither is known."""
    if root is None and config_yaml:
        import yaml

        try:
            data = (yaml.safe_load(config_yaml) or {}).get("data") or {}
        except (yaml.YAMLError, AttributeError):
            data = {}
        root = data.get("root") if isinstance(data, dict) else None
    if root is None or str(root) == "":
        return None
    return str(Path(root).expanduser().resolve())


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file next to ``path``, fsync, then ``os.replace`` it over ``path``.

    If anything fails (disk full, the process is killed, the rename raises) the previous ``path`` is untouched and
    the temporary file is removed (except on SIGKILL, which leaves a ``.<name>.*.tmp`` file behind, never a torn
    ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(
    path: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    method_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
    scaler_state: dict | None = None,
    rng_state: list[dict] | dict | None = None,
    progress: Mapping[str, int] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (see the module docstring for the layout); returns ``path``.

    ``model_state`` is the model's ``state_dict`` (what inference needs); ``method_state`` the whole training
    method's (model + training-only modules); tensors shared between the two are stored once by ``torch.save``.
    ``meta`` is normally built with :func:`make_meta`; ``progress`` holds ``epoch``, ``step_in_epoch`` and
    ``global_step``. Everything must be tensors, numbers, strings, None, lists or dicts.
    """
    if isinstance(rng_state, dict):
        rng_state = [rng_state]
    full_meta = dict(meta or {})
    full_meta.setdefault("vireid_version", __version__)
    full_meta.setdefault("git_commit", git_commit())
    full_meta["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dict(model_state),
        "method": None if method_state is None else dict(method_state),
        "optimizer": optimizer_state,
        "schedule": scheduler_state,
        "scaler": scaler_state,
        "rng": rng_state,
        "progress": {k: int(v) for k, v in (progress or {}).items()},
        "meta": full_meta,
    }
    return atomic_torch_save(ckpt, path)


def trial_mismatch_message(path: str | Path, trained: int, tested: int) -> str:
    """The one-line explanation used for both the error and the warning of the RegDB trial rule."""
    return (f"checkpoint {path} was trained on RegDB trial {trained} but trial {tested} is under test; testing on "
            f"another trial leaks training identities — use the trial-{tested} checkpoint "
            f"(or --allow-trial-mismatch to only warn)")


def load_checkpoint(
    path: str | Path,
    *,
    expect_dataset: str | None = None,
    expect_trial: int | None = None,
    strict_trial: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load and check a vireid checkpoint with ``torch.load(weights_only=True)``; returns its dict.

    Raises :class:`CheckpointError` (one line) when the file is missing, unreadable, corrupt, not a vireid
    checkpoint (e.g. a bare ``state_dict``), or — for RegDB — trained on another trial than ``expect_trial``
    (``strict_trial=False`` turns that into a warning). A dataset other than ``expect_dataset`` only warns:
    cross-dataset evaluation is legitimate, but worth noticing.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory; pass the .pt file inside, e.g. last.pt or best.pt)" if path.is_dir() else ""
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file (KeyError, EOFError, RuntimeError, ...)
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
            raise CheckpointError(f"{path}: refusing to unpickle objects other than tensors and plain values "
                                  "(torch.load weights_only=True); vireid checkpoints hold only those — was it "
                                  "written by another program?") from None
        first = text.splitlines()[0][:160] if text else "empty or unreadable file"
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {first}); use "
                              "another copy or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            what = f"a bare state dict with {len(ckpt)} tensors"
        else:
            what = f"a {type(ckpt).__name__} without the vireid checkpoint header"
        hint = ""
        if isinstance(ckpt, dict) and isinstance(ckpt.get("net"), dict):
            hint = "it looks like an AGW/CAJ checkpoint: load it with --checkpoint-format agw; "
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
            hint = "it looks like a fast-reid (AML) checkpoint: load it with --checkpoint-format fastreid; "
        raise CheckpointError(f"{path}: not a vireid checkpoint ({what}); {hint}to start training from external "
                              "weights use the model's `pretrained` option instead")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this vireid "
                              f"({__version__}) understands ({FORMAT_VERSION}); upgrade vireid")
    for key in ("model", "progress", "meta"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} section; the file is damaged")

    meta = ckpt["meta"]
    dataset, trial = meta.get("dataset"), meta.get("trial")
    if expect_dataset is not None and dataset is not None and str(dataset).lower() != str(expect_dataset).lower():
        warnings.warn(f"checkpoint {path} was trained on {dataset} and is being used on {expect_dataset} "
                      "(cross-dataset evaluation)", stacklevel=2)
    tested_on = str(expect_dataset if expect_dataset is not None else dataset or "").lower()
    if expect_trial is not None and tested_on in _TRIAL_SPLIT_DATASETS and \
            str(dataset or tested_on).lower() in _TRIAL_SPLIT_DATASETS:
        if trial is None:
            warnings.warn(f"checkpoint {path} does not record which RegDB trial it was trained on; make sure it is "
                          f"trial {expect_trial}, or testing leaks training identities", stacklevel=2)
        elif int(trial) != int(expect_trial):
            message = trial_mismatch_message(path, int(trial), int(expect_trial))
            if strict_trial:
                raise CheckpointError(message)
            warnings.warn(message, stacklevel=2)
    return ckpt


def submodule_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``"model."``) with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)``, strict, with a one-line :class:`CheckpointError` naming the first mismatches.

    A checkpoint of another architecture (other backbone, another number of classes, a model without the
    non-local blocks, ...) shows up as missing / unexpected keys or shape mismatches; torch's own message for that is
    a multi-line dump of every key.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (checkpoint {list(state[k].shape)} vs model {list(own[k].shape)})"
              for k in own if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch {_names(shapes, 2)}")
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not fit this model (another architecture or number of "
                              f"classes?): {'; '.join(parts)}; build the model with the checkpoint's config")
    model.load_state_dict(dict(state), strict=True)
