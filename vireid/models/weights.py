"""Pretrained backbone weights: ImageNet through torchvision's weights API, a local torchvision-format file, or the
backbone of another vireid run (its ``last.pt`` / ``best.pt``, or the model state dict it holds) when that backbone
is one stream (``model.specific_stages: -1``, as AML's).

All routes produce a torchvision ResNet state dict, which is checked key by key against a freshly built
torchvision network of the chosen architecture and loaded into it; :class:`~vireid.models.backbones.TwoStreamResNet`
then copies that network into both modality streams and the shared stages. ImageNet's ``fc.*`` (the 1000-class
classifier) is ignored; non-local blocks, neck and classifier keep their own initialisation.

Files are read without executing pickled code (``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models._api import WeightsEnum

from vireid.errors import CheckpointError

__all__ = ["LoadReport", "fetch_imagenet_state_dict", "read_state_dict_file", "load_torchvision_state_dict",
           "torchvision_state_of_vireid_model"]

# Keys a torchvision ResNet state dict may carry that the backbone does not use.
IGNORED_PREFIXES = ("fc.",)
# BatchNorm counters that old torchvision files lack; PyTorch fills them in itself.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a torchvision network."""

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)       # present in the file, not used (fc.*)
    defaulted: list[str] = field(default_factory=list)     # optional keys absent from the file (num_batches_tracked)


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fetch_imagenet_state_dict(arch: str, weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Get ImageNet weights through torchvision's weights API (download to the torch hub cache, or read it there).

    Raises :class:`CheckpointError` with a one-line fix when they cannot be fetched (no internet, hub unreachable,
    corrupt download).
    """
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib/http/socket/hash errors all mean the same thing to the user
        file_name = os.path.basename(weights.url)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise CheckpointError(
            f"cannot fetch ImageNet weights for {arch} ({type(exc).__name__}: {_one_line(exc)}); "
            f"download them on a machine with internet ({weights.url}) and pass pretrained=/path/to/{file_name} "
            f"(or copy the file into {cache}), or pretrained=none"
        ) from exc


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth``/``.pt``) without executing pickled code.

    A torch file may also hold the state dict under a ``"state_dict"`` or ``"model"`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; pass an existing .pth/.safetensors file, "
                              f"pretrained=imagenet or pretrained=none")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return dict(load_file(str(path)))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read as safetensors ({_one_line(exc)}); "
                                  f"re-export the weights with safetensors.torch.save_file") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot load with torch.load(weights_only=True) ({type(exc).__name__}: {_one_line(exc, 120)}); "
            f"save the weights as a plain state dict (torch.save(model.state_dict(), path)) or as .safetensors"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a state dict (a mapping from parameter names to tensors), "
                              f"got {type(obj).__name__}; pass torchvision-format ResNet weights")
    return dict(obj)


def torchvision_state_of_vireid_model(state: Mapping[str, torch.Tensor], source: str
                                       ) -> dict[str, torch.Tensor] | None:
    """The torchvision-layout backbone of a vireid model state dict (keys ``backbone.shared.*``), or None when
    ``state`` is not one (no ``backbone.*`` key). Pooling, neck and classifier are left out: they keep their own
    initialisation in the new model, as with ImageNet weights.

    Raises:
        CheckpointError: the backbone has modality-specific stages (``backbone.visible.*`` / ``backbone.infrared.*``),
            which one torchvision network cannot hold, or non-local blocks, which it would drop.
    """
    streams = sorted({k.split(".")[1] for k in state if k.startswith("backbone.") and k.count(".") >= 2})
    if not streams:
        return None
    if streams != ["shared"]:
        specific = ", ".join(s for s in streams if s != "shared")
        raise CheckpointError(
            f"{source}: a vireid model whose backbone has modality-specific stages ({specific}); model.pretrained "
            f"takes a one-stream backbone (a run with model.specific_stages: -1, e.g. AML), ImageNet weights or a "
            f"torchvision-format file"
        )
    non_local = sorted(k for k in state if ".non_local." in k)
    if non_local:
        raise CheckpointError(
            f"{source}: a vireid model whose backbone has non-local blocks ({len(non_local)} tensors, e.g. "
            f"{non_local[0]}); model.pretrained carries over the ResNet stages only, and would drop them: start "
            f"from a run with model.non_local: false"
        )
    prefix = "backbone.shared."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_torchvision_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, arch: str
) -> LoadReport:
    """Load a torchvision-format ResNet ``state`` into ``model`` (a torchvision-layout ResNet), strictly.

    ``fc.*`` keys are ignored and missing ``num_batches_tracked`` counters are allowed; every other key must match
    by name and shape, otherwise :class:`CheckpointError` names the first offending keys and ``source``.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(IGNORED_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    unexpected = sorted(set(given) - set(expected))
    missing = sorted(k for k in set(expected) - set(given) if not k.endswith(OPTIONAL_SUFFIXES))
    hint = f"pass torchvision-format {arch} weights (the state_dict() of a torchvision {arch}) or pretrained=none"
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        raise CheckpointError(f"{source}: not a torchvision {arch} state dict: {'; '.join(parts)}; {hint}")
    wrong = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
             for k in sorted(given) if given[k].shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} tensors have the wrong shape for {arch} "
                              f"(file vs model: {_first(wrong, 2)}); {hint}")
    model.load_state_dict(given, strict=False)
    return LoadReport(
        source=source,
        loaded=sorted(given),
        ignored=sorted(k for k in state if k.startswith(IGNORED_PREFIXES)),
        defaulted=sorted(set(expected) - set(given)),
    )

