"""Typed settings: the shared config sections as dataclasses, and the schema machinery that reads them from YAML.

Every section is a dataclass whose fields are its YAML keys; :func:`from_dict` checks every key and value type and
runs the section's ``validate``, so a wrong config is a one-line error that names the key, the file and what is
allowed. A method's own section is a dataclass too (a subclass of
:class:`vireid.methods.registry.MethodSettings`), defined in the method's module: the ``method:`` mapping is read by
the class that its ``name`` registers (see :func:`from_dict`'s ``section_class`` hook).

This module imports nothing of vireid but errors, so every layer can take these small typed settings.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, cast, get_args, get_origin

import yaml

from vireid.errors import ConfigError

__all__ = ["AugmentConfig", "DataConfig", "EvalConfig", "ModelConfig", "SamplerConfig", "TrainConfig", "check",
           "dump_yaml", "from_dict", "to_dict"]


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Exponent notation PyYAML (YAML 1.1) reads as a string: ``1e-3``, ``5E4`` (it needs a dot: ``1.0e-3``)."""


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise the standard one-line ConfigError for ``key=value`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is invalid: expected {expected}")


_check = check

# --------------------------------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    """Which dataset to read and how images are prepared."""

    dataset: str = "sysu_mm01"
    """A registered dataset (:func:`vireid.data.datasets.register_dataset`): sysu_mm01, regdb, sysu_mm02, llcm,
    market1501, market1501_gen or one of yours."""
    root: str = "data/SYSU-MM01"
    trial: int = 1
    """RegDB trial 1..10: the model trains on train_*_{trial} and is tested on test_*_{trial}."""
    trials: list[int] = field(default_factory=list)
    """RegDB: train and test each of these trials in turn (each on its own split) and report the mean; [] = trial."""
    target: Literal["sysumm01", "sysumm02", "regdb"] = "sysumm01"
    """market1501_gen: which fake-IR twin folders to pair with the originals."""
    labels: Literal["pseudo", "ground_truth"] = "pseudo"
    """market1501_gen: pplr pseudo labels (AML) or Market's own ground-truth labels."""
    height: int = 288
    width: int = 144
    cache_dir: str | None = None
    """Where decoded-image caches live; None = ``$VIREID_CACHE`` or ``~/.cache/vireid``."""
    workers: int = 2

    def validate(self, key: str) -> None:
        _check(self.trial >= 1 and self.trial <= 10, f"{key}.trial", self.trial, "an integer in 1..10")
        _check(all(1 <= t <= 10 for t in self.trials) and len(set(self.trials)) == len(self.trials),
               f"{key}.trials", self.trials, "distinct RegDB trials in 1..10")
        _check(self.height > 0 and self.width > 0, f"{key}.height/width", (self.height, self.width), "positive sizes")
        _check(self.workers >= 0, f"{key}.workers", self.workers, "an integer >= 0")


@dataclass
class SamplerConfig:
    """Batches of supervised methods (SPEC 3): ``num_ids`` identities x ``num_instances`` RGB + as many IR images
    (:class:`vireid.data.sampling.CrossModalIdentitySampler`). Methods with their own sampling (AML's phases) refuse
    a changed section. With DDP, ``num_ids`` must be a multiple of the number of processes (each rank takes
    ``num_ids / world_size`` identities of every batch).
    """

    num_ids: int = 8
    num_instances: int = 4
    """Images per modality per identity."""

    def validate(self, key: str) -> None:
        _check(self.num_ids >= 1, f"{key}.num_ids", self.num_ids, "an integer >= 1")
        _check(self.num_instances >= 1, f"{key}.num_instances", self.num_instances, "an integer >= 1")


@dataclass
class AugmentConfig:
    """Training-time augmentation (SPEC 3-6), translated to :mod:`vireid.data.transforms`. Probabilities in 0..1."""

    pad: int = 10
    flip: float = 0.5
    erasing: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    """Fraction of the image area; MSCLNet's paper prints (0.2, 0.8)."""
    erasing_ratio: float = 0.3
    """r1: the box aspect h/w lies in [r1, 1/r1]."""
    erasing_aspect: Literal["uniform", "log_uniform"] = "uniform"
    """uniform in [r1, 1/r1] (torchreid/AGW/CAJ/fast-reid) or log-uniform (torchvision)."""
    erasing_fill: Literal["imagenet_mean", "zero", "random", "mean_pixel"] = "imagenet_mean"
    """imagenet_mean: (0.4914, 0.4822, 0.4465) written into the normalised tensor (AGW/CAJ); zero; random: N(0, 1);
    mean_pixel: the ImageNet mean pixel, i.e. 0 after normalisation (AML)."""
    adaptive_gray: float = 0.0
    """CAJ: probability of the adaptive gray transform of the IR view."""

    def validate(self, key: str) -> None:
        for name in ("flip", "erasing", "adaptive_gray"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"{key}.{name}", v, "a probability in [0, 1]")
        lo, hi = self.erasing_area
        _check(0.0 < lo <= hi < 1.0, f"{key}.erasing_area", self.erasing_area, "[min, max] with 0 < min <= max < 1")
        _check(0.0 < self.erasing_ratio <= 1.0, f"{key}.erasing_ratio", self.erasing_ratio, "r1 in (0, 1]")
        _check(self.pad >= 0, f"{key}.pad", self.pad, "an integer >= 0")


@dataclass
class ModelConfig:
    """The network (see :func:`vireid.models.build_model`)."""

    arch: str = "resnet50"
    """A registered backbone (:func:`vireid.models.register_backbone`): resnet50, resnet18, resnet18_half or yours."""
    pretrained: str = "imagenet"
    """"imagenet" (torchvision weights API), "none" (random init), or a path to a local torchvision weights file."""
    specific_stages: int = 0
    """Modality-specific part: 0 = stem only (AGW); k = stem + layer1..k; -1 = single stream (AML)."""
    last_stride: int = 1
    non_local: bool = True
    non_local_width: Literal["faithful", "half"] = "faithful"
    """faithful: 1 inner channel, as in the AGW code behind every published AGW number; half: C/2 (the intent)."""
    pooling: Literal["gem", "avg"] = "gem"
    gem_p: float = 3.0
    gem_learnable: bool = False
    neck: Literal["bnneck", "none"] = "bnneck"
    neck_init: Literal["ones", "normal"] = "ones"
    """BNNeck weight init: 1 (AGW as specified) or N(1, 0.02) (AML / fast-reid)."""
    classifier: Literal["linear", "circle"] = "linear"

    def validate(self, key: str) -> None:
        _check(-1 <= self.specific_stages <= 4, f"{key}.specific_stages", self.specific_stages,
               "an integer in -1..4 (-1 = single stream)")
        _check(self.last_stride in (1, 2), f"{key}.last_stride", self.last_stride, "1 or 2")
        _check(self.gem_p > 0, f"{key}.gem_p", self.gem_p, "a positive number")




@dataclass
class TrainConfig:
    """Optimisation, schedule and the training loop (each recipe file documents its own values)."""

    epochs: int = 81
    lr: float = 0.1
    """Head learning rate; the backbone uses 0.1x (AGW family)."""
    backbone_lr_mult: float = 0.1
    """Backbone lr = this x lr (AGW family: 0.1 for an ImageNet-initialised backbone; 1.0 suits random init)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: Literal["agw", "step", "msclnet"] = "agw"
    """agw: warm-up over warmup_epochs then x gamma at each milestone; step: the same without warm-up;
    msclnet: 0.1 -> 0.05 (epoch 21) -> 0.01 (51) -> 0.001 (101), as factors of lr."""
    warmup_epochs: int = 10
    milestones: list[int] = field(default_factory=lambda: [20, 50])
    gamma: float = 0.1
    steps_per_epoch: int | None = None
    """None = the sampler's rule (floor(max(#RGB, #IR) / (P*K)) + 1)."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1, ..."""
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    """auto = bf16 on a GPU that supports it, none on CPU."""
    channels_last: bool = True
    grad_accum: int = 1
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""
    validation: Literal["holdout", "none"] = "holdout"
    """holdout: SYSU-MM01 val ids (RegDB: holdout_ids of the training ids) are left out of training and used to
    select the best epoch; none: train on every training id (the published recipes) and keep the last epoch."""
    holdout_ids: float = 0.1
    """RegDB/LLCM/SYSU-MM02 holdout: fraction of training identities held out for validation."""
    eval_every: int = 10
    """Validate every N epochs (and after the last)."""
    checkpoint_every: int = 200
    """Write last.pt every N steps (and at every epoch end) so a killed run resumes mid-epoch."""
    log_every: int = 20

    def validate(self, key: str) -> None:
        _check(self.epochs >= 1, f"{key}.epochs", self.epochs, "an integer >= 1")
        _check(self.lr > 0, f"{key}.lr", self.lr, "a positive number")
        _check(self.backbone_lr_mult > 0, f"{key}.backbone_lr_mult", self.backbone_lr_mult, "a positive number")
        _check(self.milestones == sorted(self.milestones), f"{key}.milestones", self.milestones, "ascending epochs")
        _check(self.grad_accum >= 1, f"{key}.grad_accum", self.grad_accum, "an integer >= 1")
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, f"{key}.steps_per_epoch",
               self.steps_per_epoch, "null or an integer >= 1")
        _check(0.0 < self.holdout_ids < 1.0, f"{key}.holdout_ids", self.holdout_ids, "a fraction in (0, 1)")
        _check(self.eval_every >= 1, f"{key}.eval_every", self.eval_every, "an integer >= 1")


@dataclass
class EvalConfig:
    """How a trained model is tested (and validated during training)."""

    protocol: Literal["auto", "sysu", "sysu-official", "regdb", "sysu-mm02", "llcm"] = "auto"
    """auto: the dataset's standard protocol (sysu_mm01 -> sysu, regdb -> regdb, ...)."""
    mode: Literal["all", "indoor"] = "all"
    trials: int = 10
    direction: Literal["v2i", "i2v"] = "v2i"
    cmc: Literal["auto", "standard", "identity"] = "auto"
    """auto: the protocol's published CMC; identity: AML's identity-level CMC (wuancong/CMAM get_unique) for RegDB /
    SYSU-MM02. Both directions of a features file in one run: ``vireid evaluate ... --direction both``."""
    flip: bool = False
    """Average the L2-normalised features of the image and its mirror, then re-normalise (CAJ, AML)."""
    feature: Literal["bn", "pooled"] = "bn"
    batch_size: int = 128

    def validate(self, key: str) -> None:
        _check(self.trials >= 1, f"{key}.trials", self.trials, "an integer >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")




# ------------------------------------------------------------------------------------------------------------------
# reading and writing sections


def from_dict(cls: type, data: Any, source: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and value type; then run ``validate``.

    A class with a ``section_class(data, key)`` classmethod picks the concrete dataclass from the mapping first
    (the ``method:`` section is read by the settings class its ``name`` registers).
    """
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}'{prefix[:-1] or '<top>'}' must be a mapping, got {_show(data)}")
    pick = getattr(cls, "section_class", None)
    if pick is not None:
        try:
            cls = pick(data, prefix[:-1] or cls.__name__)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            hint = ""
            if pick is not None and prefix:
                # a key of another variant (e.g. a CAJ-only option left in the YAML after --set method.name=agw)
                section, name = prefix[:-1], data.get("name", "...")
                hint = (f"; to switch the {section} of a YAML that sets {section} options, replace the whole "
                        f"section: --set '{section}={{name: {name}}}'")
            raise ConfigError(f"{where}unknown config key '{full}'; "
                              f"known keys{' in ' + prefix[:-1] if prefix else ''}: {known}{hint}")
        kwargs[key] = _coerce(hints[key], value, full, source)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate(prefix[:-1] if prefix else cls.__name__)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    return obj


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    where = f"{source}: " if source else ""
    origin = get_origin(tp)
    args = get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(cast(type, tp), value if value is not None else {}, source, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}config key '{key}' = {value!r} is not allowed; allowed values: {allowed}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # an optional section: report what is wrong inside it
            return _coerce(sections[0], value, key, source)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"{where}config key '{key}' expects {names}, got {_show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}config key '{key}' expects a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}config key '{key}' expects {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}config key '{key}' expects a mapping, got {_show(value)}")
        return dict(value)
    if tp is Any:
        return value
    if isinstance(value, dict):
        wanted = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, "a value")
        raise ConfigError(f"{where}config key '{key}' is a value, not a section; give it {wanted}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}config key '{key}' expects true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}config key '{key}' expects an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)  # 1e-3: a number everywhere but in YAML 1.1, which wants 1.0e-3
        raise ConfigError(f"{where}config key '{key}' expects a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}config key '{key}' expects a string, got {_show(value)}")
    raise ConfigError(f"{where}config key '{key}': unsupported type {tp!r}")  # a schema bug, not user input


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists, so it round-trips through YAML/JSON)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what ``vireid config show`` prints and checkpoints carry)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
