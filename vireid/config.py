"""The run config: the shared sections (:mod:`vireid.settings`) plus the method's own section, from YAML.

A config file is YAML whose keys mirror the dataclasses; unknown keys and wrongly typed values are errors that name
the key, the file and what is allowed::

    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=5", "data.root=/data/SYSU-MM01"])

The ``method:`` section is read by the settings class of the registered method it names
(:mod:`vireid.methods.registry`), so each method has its own typed keys (``method.metric_loss``, ``method.phases``,
...). Cross-section rules live here: the dataset and backbone names come from their registries, and a knob of the
``augment:`` or ``sampler:`` section that the method does not read may not be changed (it would silently do
nothing). Modules below the command line never see a :class:`Config`: :mod:`vireid.training` hands the sections to
the method's plan, and :mod:`vireid.build` turns sections into objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vireid.data.datasets import DATASETS
from vireid.errors import ConfigError
from vireid.methods.registry import MethodSettings, MethodSpec, get_method
from vireid.models import BACKBONES
from vireid.settings import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    check,
    dump_yaml,
    from_dict,
    to_dict,
)

__all__ = ["AugmentConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig", "SamplerConfig", "TrainConfig",
           "apply_override", "dump_yaml", "from_dict", "load_config", "parse_override", "to_dict"]


@dataclass
class Config:
    """Top-level config: one per run."""

    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodSettings = field(default_factory=lambda: get_method("agw").settings())
    """The method's own section, read by the settings class that ``method.name`` registers."""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    output_dir: str = "runs/default"

    def validate(self, key: str) -> None:
        check(self.data.dataset in DATASETS, "data.dataset", self.data.dataset,
              f"a registered dataset ({', '.join(sorted(DATASETS))})")
        check(self.model.arch in BACKBONES, "model.arch", self.model.arch,
              f"a registered backbone ({', '.join(sorted(BACKBONES))})")
        spec = get_method(self.method.name)
        for section, keys in _read_keys(spec):
            value, default = getattr(self, section), type(getattr(self, section))()
            for f in dataclasses.fields(value):
                if f.name not in keys and getattr(value, f.name) != getattr(default, f.name):
                    raise ConfigError(f"{section}.{f.name}={getattr(value, f.name)!r} is not used by method "
                                      f"{spec.name} (it reads {section}.{f', {section}.'.join(sorted(keys))}); "
                                      "remove it from the config")
        if not spec.uses_sampler and self.sampler != SamplerConfig():
            raise ConfigError(f"the sampler section is not used by method {spec.name} (it draws its own batches); "
                              "remove it from the config")


def _read_keys(spec: MethodSpec) -> list[tuple[str, frozenset[str]]]:
    """(section, the keys of it the method reads) for every section whose unread knobs are refused."""
    return [(section, keys) for section, keys in (("augment", spec.augment_keys), ("model", spec.model_keys))
            if keys is not None]


def without_unread_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config mapping) without the ``augment.*`` / ``model.*`` keys its method does not read.

    For configs stored in checkpoints: a run written before a knob was refused for its method (e.g. a DEEN run with
    ``model.non_local: false``, which DEEN never read) still loads; the key had no effect on its weights. Configs a
    user writes are validated as they are, so that such a knob is refused there.
    """
    method = data.get("method")
    name = method.get("name", MethodSettings.name) if isinstance(method, dict) else MethodSettings.name
    if not isinstance(name, str):
        return data
    try:
        spec = get_method(name)
    except ConfigError:
        return data  # the normal validation names the unknown method
    out = dict(data)
    for section, keys in _read_keys(spec):
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k in keys}
    return out


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
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data:, train:, ...), "
                              f"got {type(loaded).__name__}")
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
