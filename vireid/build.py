"""Settings sections -> objects: datasets, networks, devices, the test protocol's name.

Each function takes one small typed section (:mod:`vireid.settings`), never the whole config; a method's own
objects are built by its plan (:mod:`vireid.methods`).
"""

from __future__ import annotations

import torch

from vireid.data.datasets import load_dataset
from vireid.data.records import CrossModalDataset
from vireid.errors import ConfigError
from vireid.settings import DataConfig, EvalConfig, ModelConfig

# the standard protocol of each dataset (eval.protocol = auto)
DEFAULT_PROTOCOL = {"sysu_mm01": "sysu", "regdb": "regdb", "sysu_mm02": "sysu-mm02", "llcm": "llcm"}


def dataset_from_config(data: DataConfig, *, strict: bool = True, check_images: bool = False) -> CrossModalDataset:
    return load_dataset(data.dataset, data.root, trial=data.trial, target=data.target, labels=data.labels,
                        strict=strict, check_images=check_images)


def model_from_config(model: ModelConfig, num_classes: int, *, pretrained: str | None = None) -> torch.nn.Module:
    """The network of ``model``; ``pretrained`` overrides ``model.pretrained`` (e.g. "none" when a checkpoint
    follows)."""
    from vireid.models import build_model

    return build_model(
        arch=model.arch,
        num_classes=num_classes,
        pretrained=model.pretrained if pretrained is None else pretrained,
        specific_stages=model.specific_stages,
        last_stride=model.last_stride,
        non_local=model.non_local,
        non_local_width=model.non_local_width,
        pooling=model.pooling,
        gem_p=model.gem_p,
        gem_learnable=model.gem_learnable,
        neck=model.neck,
        neck_init=model.neck_init,
        classifier=model.classifier,
    )


def protocol_name(data: DataConfig, ev: EvalConfig) -> str:
    if ev.protocol != "auto":
        return ev.protocol
    if data.dataset not in DEFAULT_PROTOCOL:
        raise ConfigError(f"eval.protocol=auto: {data.dataset} has no cross-modality test protocol; "
                          f"train/test on one of {', '.join(DEFAULT_PROTOCOL)}")
    return DEFAULT_PROTOCOL[data.dataset]


def device_from_config(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA GPU is available here; use train.device=cpu")
    return dev


def amp_from_config(name: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that supports it (else fp16), none on CPU (CPU autocast is slower for convolutions)."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
