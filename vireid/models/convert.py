"""Load checkpoints of the original repositories into a :class:`~vireid.models.VIReIDModel`.

Two formats are understood (docs/checkpoints.md has the complete key maps):

``"agw"`` -- the AGW baseline and CAJ (``mangye16/Cross-Modal-Re-ID-baseline``): ``torch.save({'net':
state_dict, 'epoch', 'cmc', 'mAP', 'mINP'})`` of their ``embed_net``. Its stems are
``visible_module.visible.{conv1,bn1}`` and ``thermal_module.thermal.{conv1,bn1}``, the shared stages
``base_resnet.base.layer1..4``, the non-local blocks ``NL_2.<i>`` / ``NL_3.<i>`` (block ``i`` follows the ``i``-th
of the stage's last blocks in ascending order; ResNet-50: layer2 blocks 2, 3 and layer3 blocks 3, 4, 5) with
submodules ``theta``, ``phi``, ``g.0`` (conv) and ``W.0`` (conv) + ``W.1`` (BN), the BNNeck ``bottleneck`` and the
classifier ``classifier.weight``. Each of their three sub-networks is a whole ResNet, so the file also holds
weights their forward pass never uses (``visible_module.visible.layer*``, ``thermal_module.thermal.layer*``,
``base_resnet.base.{conv1,bn1}``); those are skipped by name, nothing else is.

``"fastreid"`` -- AML's fast-reid ``Baseline``: ``{'model': state_dict, ...}`` with ``backbone.{conv1,bn1,layer1..4}``
(one stream for both modalities), ``heads.pool_layer.p`` (learnable GeM p), ``heads.bottleneck.0`` (BNNeck, a
BatchNorm over ``[B, C, 1, 1]``), ``heads.weight`` (circle classifier) and the ``pixel_mean`` / ``pixel_std`` buffers
(fast-reid normalises 0..255 inputs inside the model; we check they are ImageNet's mean/std x 255, which is exactly
what our pipeline's ``(x / 255 - mean) / std`` does, and drop them).

Every tensor of the file must land on exactly one parameter or buffer of the model and every parameter or buffer of
the model must receive one (BatchNorm's ``num_batches_tracked`` counters may be absent); otherwise
:class:`~vireid.errors.CheckpointError` names the first offending keys. Files are read with
``torch.load(weights_only=True)``; the NumPy arrays and scalars AGW stores next to the weights (``cmc``, ``mAP``) are
allowed as plain data, nothing else.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from vireid.errors import CheckpointError, ConfigError
from vireid.models import BACKBONES, VIReIDModel, build_model
from vireid.models.backbones import STAGES

__all__ = [
    "FORMATS",
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "load_foreign_checkpoint",
    "read_foreign_state",
    "foreign_key_map",
    "convert_state_dict",
]

FORMATS = ("agw", "fastreid")
ForeignFormat = Literal["agw", "fastreid"]

IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
"""ImageNet mean x 255: fast-reid's ``MODEL.PIXEL_MEAN`` default, equal to our normalisation on 0..1 inputs."""
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)
"""ImageNet std x 255: fast-reid's ``MODEL.PIXEL_STD`` default."""

_OPTIONAL_SUFFIX = ".num_batches_tracked"

# keys their state dict carries that their forward pass never uses (whole ResNets hold only the parts they run)
_AGW_UNUSED = re.compile(r"^(visible_module\.visible\.(layer[1-4]|fc)\.|thermal_module\.thermal\.(layer[1-4]|fc)\."
                         r"|base_resnet\.base\.(conv1|bn1|fc)\.)")
_FASTREID_PIXEL = ("pixel_mean", "pixel_std")

# our NonLocal submodule -> AGW's Non_local submodule
_AGW_NON_LOCAL = {"theta": "theta", "phi": "phi", "g": "g.0", "out_conv": "W.0", "out_bn": "W.1"}

# defaults per format; inferred values (arch, num_classes, non-local) and the caller's model_args override them
_DEFAULTS: dict[str, dict[str, Any]] = {
    "agw": dict(pretrained="none", specific_stages=0, last_stride=1, pooling="gem", gem_p=3.0, gem_learnable=False,
                neck="bnneck", neck_init="ones", classifier="linear"),
    "fastreid": dict(pretrained="none", specific_stages=-1, last_stride=1, non_local=False, pooling="gem",
                     gem_p=3.0, gem_learnable=True, neck="bnneck", neck_init="normal", classifier="circle"),
}


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------------------------------------------------
# reading


def _numpy_safe_globals() -> list[Any]:
    """NumPy array/scalar reconstructors, allowed so that AGW's ``cmc``/``mAP`` entries load as plain data.

    Files written with NumPy 1.x name them ``numpy.core.multiarray.*``, NumPy 2.x ``numpy._core.multiarray.*``;
    both spellings are allowed. These functions only rebuild arrays from bytes and a dtype.
    """
    import numpy as np

    try:
        multiarray = np._core.multiarray  # type: ignore[attr-defined]  # NumPy >= 2 (not in numpy's stubs)
    except AttributeError:  # pragma: no cover - NumPy 1.x
        multiarray = np.core.multiarray  # type: ignore[attr-defined]  # not in numpy 2's stubs
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _load_file(path: Path) -> Any:
    if not path.is_file():
        hint = " (it is a directory; pass the checkpoint file inside)" if path.is_dir() else ""
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        text = " ".join(str(exc).split())
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if isinstance(exc, pickle.UnpicklingError) and match:
            what = f" ({match.group(1)})"
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain values{what}, which are not loaded "
                "(torch.load weights_only=True); re-save only the weights in a trusted environment, e.g. "
                "torch.save({'net': ckpt['net']}, 'clean.t') or torch.save({'model': ckpt['model']}, 'clean.pth')"
            ) from None
        inner = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        first = (inner.group(1) if inner else text)[:160] or "empty or unreadable file"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix (nn.DataParallel / DDP) when every key carries it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def read_foreign_state(path: str | os.PathLike, format: ForeignFormat) -> dict[str, torch.Tensor]:
    """The state dict inside an original-repository checkpoint file (safe loading), ``module.`` prefix removed.

    ``"agw"`` files hold it under ``'net'``, ``"fastreid"`` files under ``'model'``; a bare state dict is accepted
    too. Raises :class:`CheckpointError` (one line) for a missing/corrupt file, a vireid checkpoint, or a file
    without a state dict where the format keeps it.
    """
    _check_format(format)
    path = Path(path)
    obj = _load_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == "vireid-checkpoint":
        raise CheckpointError(f"{path}: is a vireid checkpoint, not a {format} one; load it as it is "
                              "(vireid.training.load_trained_model, or leave out the foreign-format option)")
    container = "net" if format == "agw" else "model"
    if isinstance(obj, Mapping) and container in obj:
        state = obj[container]
    elif _is_state_dict(obj):
        state = obj
    else:
        what = (f"a dict with keys {_first(sorted(map(str, obj)), 5)}" if isinstance(obj, Mapping)
                else f"a {type(obj).__name__}")
        layout = "{'net': state_dict, 'epoch': ..., ...} (AGW/CAJ torch.save)" if format == "agw" else \
            "{'model': state_dict, ...} (fast-reid Checkpointer)"
        raise CheckpointError(f"{path}: expected a {format} checkpoint {layout}, got {what}")
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: '{container}' is not a state dict (a mapping from names to tensors); "
                              f"is this a {format} checkpoint?")
    return _strip_module_prefix(dict(state))


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"checkpoint format {format!r} is not known; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------------------------------
# key maps (built from our model, so they follow whatever architecture it has)


def _agw_key(key: str, model: VIReIDModel) -> str | None:
    """AGW/CAJ name of our state-dict ``key`` (None: the AGW network has no such tensor)."""
    backbone = model.backbone
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        head, _, tail = rest.partition(".")
        if head == "visible":
            return f"visible_module.visible.{tail}"
        if head == "infrared":
            return f"thermal_module.thermal.{tail}"
        if head == "shared":
            stage, _, inner = tail.partition(".")
            if stage not in STAGES:
                return None
            m = re.match(r"non_local\.(\d+)\.([a-z_]+)\.(.+)$", inner)
            if m is None:
                return f"base_resnet.base.{stage}.{inner}"
            position, sub, param = int(m.group(1)), m.group(2), m.group(3)
            positions = sorted(backbone.non_local_after.get(stage, ()))
            number = STAGES.index(stage) + 1
            return f"NL_{number}.{positions.index(position)}.{_AGW_NON_LOCAL[sub]}.{param}"
        return None
    if key.startswith("neck.bn."):
        return "bottleneck." + key[len("neck.bn."):]
    if key == "classifier.fc.weight":
        return "classifier.weight"
    return None


def _fastreid_key(key: str, model: VIReIDModel) -> str | None:
    """fast-reid Baseline name of our state-dict ``key`` (None: no such tensor in fast-reid)."""
    if key.startswith("backbone.shared."):
        return "backbone." + key[len("backbone.shared."):]
    if key == "pooling.p":
        return "heads.pool_layer.p"
    if key.startswith("neck.bn."):
        return "heads.bottleneck.0." + key[len("neck.bn."):]
    if key == "classifier.weight":
        return "heads.weight"
    return None


def foreign_key_map(model: VIReIDModel, format: ForeignFormat) -> dict[str, str]:
    """``{their key: our key}`` for every tensor of ``model``'s state dict.

    Raises :class:`CheckpointError` when the model has a tensor the original network cannot have (e.g. an AGW
    model built with modality-specific stages, or a fast-reid model with two streams).
    """
    _check_format(format)
    stages = model.backbone.specific_stages
    if stages != (0 if format == "agw" else -1):
        want = "0 (modality-specific stem, shared layer1..4)" if format == "agw" else "-1 (one stream)"
        raise CheckpointError(f"a {format} checkpoint needs specific_stages={want}; this model has "
                              f"specific_stages={stages}")
    rename: Callable[[str, VIReIDModel], str | None] = _agw_key if format == "agw" else _fastreid_key
    mapping: dict[str, str] = {}
    orphans = []
    for key in model.state_dict():
        theirs = rename(key, model)
        if theirs is None:
            orphans.append(key)
        else:
            mapping[theirs] = key
    if orphans:
        need = ("specific_stages=0 (stem only), non-local blocks in layer2/layer3, BNNeck, linear classifier"
                if format == "agw" else "specific_stages=-1 (one stream), no non-local blocks, BNNeck, "
                "circle classifier")
        raise CheckpointError(f"a {format} checkpoint has no counterpart for this model's {_first(orphans)}; "
                              f"build the model as the {format} network is ({need})")
    return mapping


# --------------------------------------------------------------------------------------------------------------------
# conversion


def _ignored(key: str, format: str) -> bool:
    if format == "agw":
        return bool(_AGW_UNUSED.match(key))
    return key in _FASTREID_PIXEL


def _check_pixel_stats(state: Mapping[str, torch.Tensor], source: str) -> None:
    for key, expected in (("pixel_mean", IMAGENET_PIXEL_MEAN), ("pixel_std", IMAGENET_PIXEL_STD)):
        value = state.get(key)
        if value is None:
            raise CheckpointError(f"{source}: fast-reid checkpoint has no {key} buffer; it cannot be checked that the "
                                  "model expects ImageNet-normalised inputs (pass the Baseline's full state dict)")
        got = value.detach().float().flatten()
        want = torch.tensor(expected)
        if got.numel() != 3 or not torch.allclose(got, want, atol=1e-2):
            raise CheckpointError(
                f"{source}: {key} is {[round(v, 3) for v in got.tolist()]}, not ImageNet's {list(expected)} "
                "(x255); vireid normalises images with the ImageNet statistics, so this model would see "
                "differently scaled inputs")


def convert_state_dict(state: Mapping[str, torch.Tensor], model: VIReIDModel, format: ForeignFormat,
                       source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Rename an original-repository state dict to ``model``'s names, checking every key and shape.

    Returns a state dict that loads into ``model`` with ``strict=True`` (missing ``num_batches_tracked`` counters
    are filled from the model). Raises :class:`CheckpointError` listing the first unknown keys, missing keys or
    shape mismatches.
    """
    mapping = foreign_key_map(model, format)
    if format == "fastreid":
        _check_pixel_stats(state, source)
    unknown = sorted(k for k in state if k not in mapping and not _ignored(k, format))
    missing = sorted(k for k in mapping if k not in state and not k.endswith(_OPTIONAL_SUFFIX))
    own = model.state_dict()
    wrong = [f"{k} {list(state[k].shape)} vs {list(own[mapping[k]].shape)}"
             for k in sorted(mapping) if k in state and state[k].shape != own[mapping[k]].shape]
    if unknown or missing or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (file vs model: {_first(wrong, 2)})")
        if unknown:
            parts.append(f"{len(unknown)} unknown keys ({_first(unknown)})")
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        arch = model.build_kwargs.get("arch", "?")
        raise CheckpointError(f"{source}: does not fit a {format} {arch} model: {'; '.join(parts)}; "
                              "check the architecture (--arch NAME, non-local blocks, number of classes)")
    out = {ours: state[theirs] if theirs in state else own[ours] for theirs, ours in mapping.items()}
    return {k: v.detach().clone().to(own[k].dtype) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------------------------
# inference of the architecture from the tensors


def _backbone_tensors(state: Mapping[str, torch.Tensor], format: str) -> dict[str, torch.Size]:
    """torchvision-named shapes of the ResNet tensors the original network runs (stem + layer1..4)."""
    shapes: dict[str, torch.Size] = {}
    for key, value in state.items():
        if format == "agw":
            if key.startswith("visible_module.visible.conv1.") or key.startswith("visible_module.visible.bn1."):
                shapes[key[len("visible_module.visible."):]] = value.shape
            elif key.startswith("base_resnet.base.layer"):
                shapes[key[len("base_resnet.base."):]] = value.shape
        elif key.startswith("backbone.") and not key.startswith("backbone.NL_"):
            shapes[key[len("backbone."):]] = value.shape
    return shapes


def infer_arch(state: Mapping[str, torch.Tensor], format: ForeignFormat, source: str = "<state dict>") -> str:
    """The registered backbone that best explains the checkpoint's ResNet tensors.

    A candidate qualifies when no tensor name they share has a different shape and it explains at least half of
    its own tensors; among those the one with most shared tensors wins. Missing or extra keys are then reported
    precisely by :func:`convert_state_dict`.
    """
    found = {k: v for k, v in _backbone_tensors(state, format).items() if not k.endswith(_OPTIONAL_SUFFIX)}
    best, best_score = None, 0
    for name, definition in BACKBONES.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            template = definition.build()
        expected = {k: v.shape for k, v in template.state_dict().items()
                    if not k.startswith("fc.") and not k.endswith(_OPTIONAL_SUFFIX)}
        shared = [k for k in expected if k in found]
        if any(found[k] != expected[k] for k in shared) or 2 * len(shared) < len(expected):
            continue
        if len(shared) > best_score:
            best, best_score = name, len(shared)
    if best is None:
        raise CheckpointError(f"{source}: its ResNet tensors match none of the registered backbones "
                              f"({', '.join(BACKBONES)}); pass --arch NAME explicitly (a mismatch is then listed "
                              "key by key)")
    return best


def _inferred_args(state: Mapping[str, torch.Tensor], format: str, source: str,
                   given: Mapping[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if "arch" not in given:
        args["arch"] = infer_arch(state, format, source)  # type: ignore[arg-type]
    classifier = state.get("classifier.weight" if format == "agw" else "heads.weight")
    args["num_classes"] = int(classifier.shape[0]) if classifier is not None and classifier.dim() == 2 else 0
    if format == "agw":
        thetas = sorted(k for k in state if re.match(r"NL_\d+\.\d+\.theta\.weight$", k))
        args["non_local"] = bool(thetas)
        if thetas:
            inner = int(state[thetas[0]].shape[0])
            args["non_local_width"] = "faithful" if inner == 1 else "half"
    return args


def load_foreign_checkpoint(path: str | os.PathLike, format: ForeignFormat = "agw",
                            **model_args: Any) -> VIReIDModel:
    """Build the vireid model equivalent to an AGW/CAJ or fast-reid (AML) checkpoint and load its weights.

    The architecture (``arch``), the number of classes and (AGW) the non-local blocks and their width are read
    from the tensors; the rest follows the original network (AGW: stem-specific two-stream ResNet, fixed GeM p = 3,
    BNNeck, linear classifier; fast-reid: single-stream ResNet, learnable GeM, BNNeck, circle classifier).
    ``model_args`` are :func:`vireid.models.build_model` arguments that override those choices (e.g.
    ``pooling="avg"`` for AGW's ``--method base`` models, which have no parameter that would tell).

    Returns the model in eval mode on the CPU; ``model.build_kwargs`` rebuilds it. Raises
    :class:`CheckpointError` (one line) when the file is not such a checkpoint or its tensors do not fit.

    Example::

        model = load_foreign_checkpoint("sysu_agw_p4_n8_lr_0.1_seed_0_best.t", format="agw")
        feats = model(images, modality).bn        # L2-normalised, as AGW's test-time "feat_att"
    """
    _check_format(format)
    allowed = set(inspect.signature(build_model).parameters)
    unknown = sorted(set(model_args) - allowed)
    if unknown:
        raise ConfigError(f"load_foreign_checkpoint: unknown model argument(s) {', '.join(unknown)}; "
                          f"expected build_model arguments ({', '.join(sorted(allowed))})")
    source = str(path)
    state = read_foreign_state(path, format)
    args = {**_DEFAULTS[format], **_inferred_args(state, format, source, model_args), **model_args}
    model = build_model(**args)
    converted = convert_state_dict(state, model, format, source)
    model.load_state_dict(converted, strict=True)
    return model.eval()
