"""Typed configs: dataclasses, YAML files, dotted overrides, validation with actionable messages.

A config file is YAML whose keys mirror the dataclasses below. Unknown keys and wrongly typed values are errors that
name the key, the file and what is allowed::

    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=5", "data.root=/data/SYSU-MM01"])

Modules below the command line never see these objects: :mod:`vireid.build` translates a config into plain
constructor arguments in one place.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from vireid.errors import ConfigError

DatasetName = Literal["sysu_mm01", "regdb", "sysu_mm02", "llcm", "market1501", "market1501_gen"]


# --------------------------------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    """Which dataset to read and how images are prepared."""

    dataset: DatasetName = "sysu_mm01"
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
    """How batches are drawn (SPEC 3: P identities x K RGB + K IR; SPEC 6: anchor + other cameras).

    ``cross_modal`` -> :class:`vireid.data.sampling.CrossModalIdentitySampler`, ``aml`` ->
    :class:`vireid.data.sampling.AnchorCrossCameraSampler`. With DDP, ``num_ids`` must be a multiple of the number
    of processes (each rank takes ``num_ids / world_size`` identities of every batch).
    """

    kind: Literal["cross_modal", "aml", "random"] = "cross_modal"
    num_ids: int = 8
    num_instances: int = 4
    """cross_modal: images per modality per identity; aml: images per identity (anchor included)."""

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
    channel_exchange: bool = False
    """CAJ: the channel-exchanged RGB view (the CAJ method always makes it; documents the recipe)."""
    adaptive_gray: float = 0.0
    color_jitter: tuple[float, float] = (0.0, 0.0)
    """(brightness, contrast) for ColorJitter; (0, 0) disables it."""
    color_jitter_p: float = 1.0
    """Probability of applying the colour jitter to a sample (1 = always, as transforms.ColorJitter)."""
    fake_ir_alpha: float = 0.2
    """AML stage 1: x_t = alpha * norm(fake IR) + (1 - alpha) * gray(norm(x))."""
    aligned_twin: bool = False
    """AML stage 1: give the fake-IR twin the same crop/flip/erasing box as x (the reference does not)."""

    def validate(self, key: str) -> None:
        for name in ("flip", "erasing", "adaptive_gray", "color_jitter_p", "fake_ir_alpha"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"{key}.{name}", v, "a probability in [0, 1]")
        lo, hi = self.erasing_area
        _check(0.0 < lo <= hi < 1.0, f"{key}.erasing_area", self.erasing_area, "[min, max] with 0 < min <= max < 1")
        _check(0.0 < self.erasing_ratio <= 1.0, f"{key}.erasing_ratio", self.erasing_ratio, "r1 in (0, 1]")
        _check(self.pad >= 0, f"{key}.pad", self.pad, "an integer >= 0")
        _check(min(self.color_jitter) >= 0.0, f"{key}.color_jitter", self.color_jitter,
               "[brightness, contrast] >= 0")


@dataclass
class ModelConfig:
    """The network (see :func:`vireid.models.build_model`)."""

    arch: Literal["resnet50", "resnet18", "resnet18_half"] = "resnet50"
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
class MethodConfig:
    """Which published method trains the model, and its loss weights (0 switches a term off)."""

    name: Literal["agw", "caj", "msclnet", "aml"] = "agw"
    weights: dict[str, float] = field(default_factory=dict)
    """Loss-term weights overriding the method's published defaults, e.g. {wrt: 0} or MSCLNet {div: 0}.
    Unknown term names are an error that lists the method's terms."""
    label_smoothing: float = 0.0
    local_variant: Literal["as_printed", "corrected"] = "as_printed"
    """MSCLNet L_local: the formula as printed in the paper, or with the sign of the cosine term corrected."""
    inter_margin: float = 1.0
    """MSCLNet L_inter: hinge margin that bounds the push-apart of identity centres."""

    def validate(self, key: str) -> None:
        _check(0.0 <= self.label_smoothing < 1.0, f"{key}.label_smoothing", self.label_smoothing, "a value in [0, 1)")
        for name, w in self.weights.items():
            _check(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"{key}.weights.{name}", w,
                   "a weight >= 0")


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
    flip: bool = False
    """Average the L2-normalised features of the image and its mirror, then re-normalise (CAJ, AML)."""
    feature: Literal["bn", "pooled"] = "bn"
    batch_size: int = 128

    def validate(self, key: str) -> None:
        _check(self.trials >= 1, f"{key}.trials", self.trials, "an integer >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class PhaseConfig:
    """One phase of a multi-phase recipe (AML: stage-1 runs 1 and 2, stage-2 runs A and B; SPEC 6).

    A phase trains for ``iterations`` optimiser steps with Adam and a per-iteration warm-up / hold / cosine schedule
    into ``<output_dir>/<name>/``, starting from the final weights of phase ``init`` ("" = the model's
    ``pretrained`` weights). A finished phase is skipped on ``--resume``; an interrupted one continues.
    """

    name: str = "phase"
    stage: int = 1
    """1 = RGB-gray mutual learning on the auxiliary source; 2 = cross-modality self-training on the target."""
    iterations: int = 15000
    lr: float = 3.5e-4
    init: str = ""
    warmup: int = 2000
    warmup_factor: float = 0.01
    hold_until: int | None = None
    """Constant lr until this iteration, then cosine to ``final_lr`` (None: stage 1 9,000; stage 2 = warmup)."""
    final_lr: float = 7.7e-7
    kl_weight: float = 0.0
    """Mutual KL weight (stage 1: 0 in run 1, 0.1 in run 2; stage 2: 0.01)."""
    clustering: Literal["dbscan", "kmeans"] = "dbscan"
    """Stage 2: Jaccard + DBSCAN (run A) or cosine k-means (run B)."""
    recluster_every: int | None = None
    """Stage 2: re-cluster every this many iterations (RegDB: 200); None = once the samples trained since the last
    clustering exceed the number of kept (non-outlier) samples (an "epoch")."""
    num_ids: int = 4
    num_instances: int = 16

    def validate(self, key: str) -> None:
        _check(self.stage in (1, 2), f"{key}.stage", self.stage, "1 or 2")
        _check(self.iterations >= 1, f"{key}.iterations", self.iterations, "an integer >= 1")
        _check(self.lr > 0, f"{key}.lr", self.lr, "a positive number")
        _check(0 <= self.warmup < self.iterations, f"{key}.warmup", self.warmup, "0 <= warmup < iterations")
        hold = self.hold_until
        _check(hold is None or self.warmup <= hold < self.iterations, f"{key}.hold_until", hold,
               "null or warmup <= hold_until < iterations")
        _check(self.kl_weight >= 0, f"{key}.kl_weight", self.kl_weight, "a weight >= 0")
        _check(self.recluster_every is None or self.recluster_every >= 1, f"{key}.recluster_every",
               self.recluster_every, "null or an integer >= 1")
        _check(self.num_ids >= 1 and self.num_instances >= 2, f"{key}.num_ids/num_instances",
               (self.num_ids, self.num_instances), "num_ids >= 1 and num_instances >= 2")


@dataclass
class AMLConfig:
    """AML (SPEC 6): the auxiliary source data, the loss weights and clustering settings, and the phases in order."""

    source: DataConfig = field(default_factory=lambda: DataConfig(dataset="market1501_gen", root="data/market1501_gen"))
    """Stage-1 data: market1501_gen with the fake-IR twins of ``source.target`` and pplr pseudo labels."""
    phases: list[PhaseConfig] = field(default_factory=list)
    label_smoothing: float = 0.1
    circle_scale: float = 64.0
    circle_margin: float = 0.35
    sim_weight: float = 0.5
    """Stage 1: similarity-structure terms (o1 -> o3, o3 -> o2)."""
    dist_weight: float = 0.05
    """Stage 2: distance-structure term between the two models."""
    temperature: float = 0.05
    memory_momentum: float = 0.2
    eps: float = 0.4
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    kmeans_k: int = 400
    diagnostics_truth: bool = True
    """Log ARI/NMI/match precision against the dataset's identity column when it has one (synthetic data, a labelled
    dataset run unsupervised). Never used for training or model selection."""

    def validate(self, key: str) -> None:
        names = [p.name for p in self.phases]
        _check(len(set(names)) == len(names), f"{key}.phases", names, "distinct phase names")
        for i, p in enumerate(self.phases):
            _check(p.init == "" or p.init in names[:i], f"{key}.phases[{i}].init", p.init,
                   f"'' or the name of an earlier phase ({', '.join(names[:i]) or 'none'})")
        _check(self.temperature > 0, f"{key}.temperature", self.temperature, "a positive number")
        _check(0 <= self.memory_momentum < 1, f"{key}.memory_momentum", self.memory_momentum, "a value in [0, 1)")
        _check(self.eps > 0 and self.min_samples >= 1, f"{key}.eps/min_samples", (self.eps, self.min_samples),
               "eps > 0 and min_samples >= 1")
        _check(self.kmeans_k >= 2, f"{key}.kmeans_k", self.kmeans_k, "an integer >= 2")


@dataclass
class Config:
    """Top-level config: one per run."""

    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    aml: AMLConfig | None = None
    """Only for method.name=aml (SPEC 6)."""
    seed: int = 0
    output_dir: str = "runs/default"


# --------------------------------------------------------------------------------------------------------------------
# Loading, overrides, dumping


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is invalid: expected {expected}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Read a YAML config (or start from defaults when ``path`` is None), apply ``a.b=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found; pass the path of a YAML file such as configs/demo.yaml")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{p}{line}: invalid YAML ({problem}); fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data:, train:, ...), got {type(loaded).__name__}")
        raw = loaded
    for ov in overrides or []:
        apply_override(raw, ov)
    return from_dict(cls, raw, source=source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); the value is parsed as YAML (``5``, ``0.1``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value (e.g. train.epochs=5)")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write it as key.subkey=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Set a dotted key inside a nested dict (creating sections as needed); type checks happen in from_dict."""
    parts, value = parse_override(text)
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, source: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and value type; then run ``validate``."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}'{prefix[:-1] or '<top>'}' must be a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}unknown config key '{full}'; known keys{' in ' + prefix[:-1] if prefix else ''}: {known}")
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
        return from_dict(tp, value if value is not None else {}, source, prefix=f"{key}.")
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
