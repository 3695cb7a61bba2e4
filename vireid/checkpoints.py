"""Loading trained models: a vireid checkpoint (its embedded config rebuilds the network) or an original
repository's checkpoint (AGW/CAJ, AML's fast-reid), with the test-time settings it is used with.

Below both :mod:`vireid.training` (which tests what it trained) and :mod:`vireid.inference` (extract, search,
export); it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from vireid import build
from vireid.config import Config, from_dict, without_unread_keys
from vireid.engine.checkpoint import load_checkpoint, load_model_state
from vireid.errors import CheckpointError, ConfigError
from vireid.methods.registry import get_method

__all__ = ["FOREIGN_DEFAULTS", "TestSettings", "config_of_checkpoint", "load_any_checkpoint", "load_trained_model",
           "model_for_config"]


@dataclass(frozen=True)
class TestSettings:
    """How a model's features are computed at test time: input size, flip averaging, which feature."""

    height: int
    width: int
    flip: bool = False
    feature: str = "bn"
    batch_size: int = 128

    @classmethod
    def of(cls, cfg: Config) -> TestSettings:
        return cls(cfg.data.height, cfg.data.width, cfg.eval.flip, cfg.eval.feature, cfg.eval.batch_size)


FOREIGN_DEFAULTS = {"agw": TestSettings(288, 144, flip=False), "fastreid": TestSettings(384, 128, flip=True)}
"""Input size and flip-averaging of checkpoints from the original repositories (AGW/CAJ test at 288x144; AML's
fast-reid at 384x128 with flip-averaged features). CAJ tests with flip: pass ``flip=True`` for CAJ checkpoints."""


def config_of_checkpoint(ckpt: dict[str, Any], source: Path) -> Config:
    """The config a vireid checkpoint was trained with (``meta.config_yaml``)."""
    text = ckpt.get("meta", {}).get("config_yaml")
    if not text:
        raise CheckpointError(f"{source}: carries no config (meta.config_yaml); it was not written by vireid train")
    data = yaml.safe_load(text)
    if isinstance(data, dict):
        data = without_unread_keys(data)  # knobs its method never read (refused only in configs a user writes)
    return from_dict(Config, data, source=f"{source} (embedded config)")


def model_for_config(cfg: Config, num_classes: int, *, pretrained: str | None = None) -> torch.nn.Module:
    """The network a run of ``cfg`` trains and tests: the method's own (``MethodSpec.eval_model``) or the ``model:``
    section's."""
    spec = get_method(cfg.method.name)
    model_cfg = cfg.model if pretrained is None else replace(cfg.model, pretrained=pretrained)
    if spec.eval_model is not None:
        return spec.eval_model(cfg.method, model_cfg, num_classes)
    return build.model_from_config(model_cfg, num_classes)


def load_trained_model(path: str | Path, *, expect_trial: int | None = None, strict_trial: bool = True,
                       device: str = "cpu") -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Rebuild the model a vireid checkpoint was trained with and load its weights (safe loading)."""
    path = Path(path)
    ckpt = load_checkpoint(path, expect_trial=expect_trial, strict_trial=strict_trial, map_location=device)
    cfg = config_of_checkpoint(ckpt, path)
    num_classes = int(ckpt["meta"].get("num_classes") or 0)
    model = model_for_config(cfg, num_classes, pretrained="none")
    load_model_state(model, ckpt["model"], path)
    return model.to(device).eval(), cfg, ckpt


def load_any_checkpoint(path: str | Path, checkpoint_format: str = "vireid", *, size: tuple[int, int] | None = None,
                        flip: bool | None = None, device: str = "cpu",
                        arch: str | None = None) -> tuple[torch.nn.Module, TestSettings]:
    """A model and its test-time settings from a vireid checkpoint or, with ``checkpoint_format`` ``"agw"``
    (AGW/CAJ ``{'net': ...}``) or ``"fastreid"`` (AML model1), an original-repository checkpoint mapped by
    :func:`vireid.models.convert.load_foreign_checkpoint` (its settings: :data:`FOREIGN_DEFAULTS`, BNNeck feature).
    ``size`` (H, W) and ``flip`` override the settings; ``arch`` names the backbone of a foreign checkpoint instead
    of inferring it from the tensors (a vireid checkpoint's config names its own)."""
    if checkpoint_format == "vireid":
        if arch is not None:
            raise ConfigError("--arch applies to --checkpoint-format agw|fastreid; a vireid checkpoint's config "
                              "names its architecture")
        model, cfg, _ = load_trained_model(path, device=device)
        settings = TestSettings.of(cfg)
    elif checkpoint_format in FOREIGN_DEFAULTS:
        from vireid.models.convert import load_foreign_checkpoint

        given = {} if arch is None else {"arch": arch}
        model = load_foreign_checkpoint(path, checkpoint_format, **given).to(device).eval()  # type: ignore[arg-type]
        settings = FOREIGN_DEFAULTS[checkpoint_format]
    else:
        raise ConfigError(f"checkpoint format {checkpoint_format!r} is not known; expected vireid, agw or fastreid")
    if size is not None:
        settings = replace(settings, height=int(size[0]), width=int(size[1]))
    if flip is not None:
        settings = replace(settings, flip=bool(flip))
    return model, settings
