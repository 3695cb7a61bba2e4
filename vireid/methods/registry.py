"""The method registry: a plain dict from a method's name to its :class:`MethodSpec`.

A method is one module that declares its settings (its own ``method:`` YAML section, a dataclass subclassing
:class:`MethodSettings`), how it trains (a :class:`~vireid.methods.base.PhasePlan` built from those settings and
the run's context) and registers both under its name with :func:`register_method`. The built-in methods register
themselves when :mod:`vireid.methods` is imported; your own module does the same (docs/adding_a_method.md)::

    @dataclass
    class MySettings(MethodSettings):
        weights: dict[str, float] = field(default_factory=dict)

    register_method(MethodSpec("mine", MySettings, supervised_plan(build_mine), summary="my method"))

Registering a name twice is an error; an unknown name lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vireid.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from torch import nn

    from vireid.methods.base import PhasePlan, RunContext
    from vireid.settings import ModelConfig

__all__ = ["MethodSettings", "MethodSpec", "get_method", "method_names", "register_method", "unregister_method"]


@dataclass
class MethodSettings:
    """Base of every method's ``method:`` section: ``name`` picks the registered method whose settings class reads
    the rest of the mapping."""

    name: str = "agw"

    @classmethod
    def section_class(cls, data: dict[str, Any], key: str) -> type:
        """The settings dataclass of the method named in ``data`` (the schema reader calls this first)."""
        if cls is not MethodSettings:  # already a concrete method's settings
            return cls
        name = data.get("name", MethodSettings.name)
        if not isinstance(name, str):
            raise ConfigError(f"config key '{key}.name' expects a method name, got {name!r}; "
                              f"known: {', '.join(method_names())}")
        return get_method(name, key=f"{key}.name").settings

    def validate(self, key: str) -> None:
        """Check values (override in a method's settings; call :func:`vireid.settings.check`)."""


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of vireid knows of a method.

    Args:
        name: the ``method.name`` value.
        settings: the dataclass of its ``method:`` section (a :class:`MethodSettings` subclass).
        plan: ``plan(settings, ctx) -> PhasePlan``: how it trains (one phase for supervised methods, see
            :func:`vireid.methods.supervised.supervised_plan`; several for AML).
        summary: one line for ``vireid train --help`` and the README's recipe table.
        augment_keys: the ``augment.*`` knobs it reads; a config that changes any other one from its default is
            refused (the knob would silently do nothing).
        uses_sampler: whether it reads the ``sampler:`` section (False: a changed section is refused).
        model_keys: the ``model.*`` knobs it reads; None = all of them (it builds its network with
            :func:`vireid.models.build_model`). A config that changes any other one from its default is refused.
        eval_model: ``eval_model(settings, model_config, num_classes) -> nn.Module`` rebuilds the network a checkpoint
            holds for testing; None = :func:`vireid.models.build_model` from the ``model:`` section.
        checkpoint_dirs: ``checkpoint_dirs(settings) -> [folder, ...]``: the sub-folders of ``output_dir`` its
            phases write (for tools that look for checkpoints); None = ``output_dir`` itself.
    """

    name: str
    settings: type[MethodSettings]
    plan: Callable[[Any, RunContext], PhasePlan]
    summary: str = ""
    augment_keys: frozenset[str] = frozenset({"pad", "flip"})
    uses_sampler: bool = True
    model_keys: frozenset[str] | None = None
    eval_model: Callable[[Any, ModelConfig, int], nn.Module] | None = None
    checkpoint_dirs: Callable[[Any], list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}
"""Method name -> spec. Add entries with :func:`register_method` (duplicates are an error)."""


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under ``spec.name``; a name that is already registered is an error. Returns ``spec``."""
    if not spec.name or not spec.name.replace("_", "").isalnum() or spec.name != spec.name.lower():
        raise ValueError(f"method name {spec.name!r}: use lower-case letters, digits and '_'")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered; choose another name or "
                         "unregister_method() it first")
    if not (isinstance(spec.settings, type) and issubclass(spec.settings, MethodSettings)):
        raise TypeError(f"method {spec.name!r}: settings must be a MethodSettings dataclass, got {spec.settings!r}")
    METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a registered method (tests, or replacing a built-in deliberately)."""
    METHODS.pop(name, None)


def get_method(name: str, *, key: str = "method.name") -> MethodSpec:
    """The spec registered under ``name``; unknown names are a ConfigError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"{key}={name!r} is not a registered method; known: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(METHODS)
