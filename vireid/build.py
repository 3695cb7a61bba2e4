"""Config -> objects: the ONE place where config values become constructor arguments.

Everything below this module takes plain arguments (models, methods, samplers, transforms, schedules); nothing else
reads a :class:`~vireid.config.Config`.
"""

from __future__ import annotations

from typing import Callable

import torch

from vireid.config import Config, DataConfig, EvalConfig, ModelConfig
from vireid.data.datasets import load_dataset
from vireid.data.records import CrossModalDataset
from vireid.errors import ConfigError

# the standard protocol of each dataset (eval.protocol = auto)
DEFAULT_PROTOCOL = {"sysu_mm01": "sysu", "regdb": "regdb", "sysu_mm02": "sysu-mm02", "llcm": "llcm"}


def dataset_from_config(data: DataConfig, *, strict: bool = True, check_images: bool = False) -> CrossModalDataset:
    return load_dataset(data.dataset, data.root, trial=data.trial, target=data.target, labels=data.labels,
                        strict=strict, check_images=check_images)


def model_from_config(model: ModelConfig, num_classes: int, *, pretrained: str | None = None) -> torch.nn.Module:
    """The network of ``model``; ``pretrained`` overrides ``model.pretrained`` (e.g. "none" when a checkpoint follows)."""
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


def method_from_config(cfg: Config, model: torch.nn.Module, num_classes: int):
    """The training method (model + augmentation + losses) named by ``cfg.method.name``."""
    a, m, d = cfg.augment, cfg.method, cfg.data
    if a.channel_exchange and m.name != "caj":
        raise ConfigError(f"augment.channel_exchange=true is only used by the CAJ recipe (its second view); "
                          f"method.name={m.name} would ignore it: use method.name=caj or set it to false")
    if m.name == "agw":
        from vireid.methods.agw import AGW

        method = AGW(model, height=d.height, width=d.width, pad=a.pad, flip=a.flip, erasing=a.erasing,
                     erasing_area=a.erasing_area, erasing_ratio=a.erasing_ratio, erasing_fill=a.erasing_fill,
                     erasing_aspect=a.erasing_aspect, weights=m.weights, label_smoothing=m.label_smoothing)
        method.backbone_lr_mult = cfg.train.backbone_lr_mult
        return method
    if m.name == "caj":
        from vireid.methods.agw import CAJ

        method = CAJ(model, height=d.height, width=d.width, pad=a.pad, flip=a.flip, erasing=a.erasing,
                     erasing_area=a.erasing_area, erasing_ratio=a.erasing_ratio, adaptive_gray=a.adaptive_gray,
                     weights=m.weights, label_smoothing=m.label_smoothing)
        method.backbone_lr_mult = cfg.train.backbone_lr_mult
        return method
    if m.name == "msclnet":
        from vireid.methods.msclnet import MSCLNetMethod

        erasing = {"p": a.erasing, "area": a.erasing_area, "ratio": a.erasing_ratio, "fill": a.erasing_fill,
                   "aspect": a.erasing_aspect}
        try:
            return MSCLNetMethod(model, num_classes, weights=m.weights, local_variant=m.local_variant,
                                 inter_margin=m.inter_margin, erasing=erasing if a.erasing > 0 else "none",
                                 height=d.height, width=d.width, pad=a.pad,
                                 backbone_lr_mult=cfg.train.backbone_lr_mult)
        except ValueError as exc:  # unknown loss-term names and bad options, reported by the method
            raise ConfigError(f"method: {exc}") from None
    if m.name == "aml":
        raise ConfigError("method.name=aml trains in phases (cfg.aml.phases): run it with `vireid train`, which builds "
                          "each phase's method with build.aml_method_from_config")
    raise ConfigError(f"method.name={m.name!r} has no builder; known: agw, caj, msclnet, aml")


def aml_method_from_config(cfg: Config, phase, model1: torch.nn.Module, model2: torch.nn.Module, *,
                           memories: tuple | list | None = None, num_samples: int = 0):
    """The AML method of one phase (SPEC 6): stage 1 (two classifier networks) or stage 2 (two cluster memories)."""
    from vireid.methods.aml import AMLStage1, AMLStage2

    a, aug, d = cfg.aml, cfg.augment, cfg.data
    if phase.stage == 1:
        from vireid.data.transforms import aml_stage1_transform

        transform = aml_stage1_transform(d.height, d.width, pad=aug.pad, flip=aug.flip,
                                         brightness=aug.color_jitter[0], contrast=aug.color_jitter[1],
                                         jitter_p=aug.color_jitter_p, erasing=aug.erasing,
                                         erasing_area=aug.erasing_area, erasing_ratio=aug.erasing_ratio,
                                         alpha=aug.fake_ir_alpha, aligned=aug.aligned_twin)
        return AMLStage1(model1, model2, transform=transform, kl_weight=phase.kl_weight, sim_weight=a.sim_weight,
                         label_smoothing=a.label_smoothing, circle_scale=a.circle_scale,
                         circle_margin=a.circle_margin)
    if memories is None or len(memories) != 2:
        raise ValueError("AML stage 2 needs two cluster memories")
    return AMLStage2(model1, model2, memories[0], memories[1], num_samples=num_samples, height=d.height,
                     width=d.width, kl_weight=phase.kl_weight, dist_weight=a.dist_weight, pad=aug.pad, flip=aug.flip,
                     erasing=aug.erasing, erasing_area=aug.erasing_area, erasing_ratio=aug.erasing_ratio,
                     brightness=aug.color_jitter[0], contrast=aug.color_jitter[1])


def optimizer_from_config(cfg: Config, method) -> torch.optim.Optimizer:
    t = cfg.train
    groups = method.param_groups(t.lr, t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
    return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)


def schedule_from_config(cfg: Config) -> Callable[[int], float]:
    """Per-epoch learning-rate factor (of ``train.lr``)."""
    from vireid.engine import schedules

    t = cfg.train
    if t.schedule == "agw":
        return schedules.warmup_multistep(t.warmup_epochs, t.milestones, t.gamma)
    if t.schedule == "step":
        return schedules.warmup_multistep(0, t.milestones, t.gamma)
    return schedules.msclnet_factor


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
