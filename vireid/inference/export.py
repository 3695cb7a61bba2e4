"""ONNX export of a trained model's retrieval feature, verified against PyTorch with onnxruntime.

Two graph layouts (``graph=``):

``"per-modality"``
    Two files, ``visible.onnx`` and ``infrared.onnx``. Each takes ``images`` (float32 ``[B, 3, H, W]``, RGB,
    ``(pixel / 255 - ImageNet mean) / ImageNet std``) and returns ``features`` (float32 ``[B, D]``, L2-normalised):
    the eval feature of the model (``bn`` after the BNNeck by default) for images of that modality. The smallest
    graphs; a deployment knows which camera an image came from.

``"modality-input"``
    One file with inputs ``images`` and ``modality`` (int64 ``[B]``, 0 visible, anything else infrared) and the
    same output. The two-stream routing of :meth:`TwoStreamResNet.forward_specific` (gather per modality, run,
    scatter back) depends on the batch's contents, which a static graph cannot express; here both modality-specific
    fronts run on the whole batch and ``torch.where`` picks each sample's row. That costs one extra stem per image
    (about 2 % of a ResNet-50's multiply-adds with AGW's stem-only split), and gives the same numbers: every sample
    still goes through its own stem, and the shared stages see each sample independently in eval mode. A
    single-stream model (``specific_stages=-1``) ignores ``modality``.

Image size (H, W) is the checkpoint's ``data.height`` / ``data.width``; the batch axis is fixed (``batch=N``) or
symbolic (``batch="dynamic"``). ``flip=True`` bakes the CAJ/AML test-time augmentation into the graph: features of
the image and its mirror image are averaged and re-normalised, as :func:`vireid.inference.extract_features` does.

After writing, every file is run with onnxruntime on random inputs and compared with the PyTorch model's own
forward pass; a maximum absolute difference above ``tolerance`` (1e-4) is an error. ``export.json`` next to the
files records inputs, outputs, preprocessing and the measured differences.

onnx and onnxruntime are optional dependencies: ``pip install -e ".[export]"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vireid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vireid.errors import VireidError
from vireid.outputs import check_writable_dir

if TYPE_CHECKING:  # annotations only
    from vireid.models import VIReIDModel

__all__ = [
    "ExportError",
    "ExportResult",
    "GRAPHS",
    "ModalityFeatures",
    "RoutedFeatures",
    "export_onnx",
    "export_checkpoint",
    "require_onnx",
]

GRAPHS = ("per-modality", "modality-input")
Graph = Literal["per-modality", "modality-input"]
DEFAULT_OPSET = 17
TOLERANCE = 1e-4
INSTALL_HINT = 'pip install -e ".[export]"'


class ExportError(VireidError):
    """The export cannot be done or its result does not match the PyTorch model."""


# --------------------------------------------------------------------------------------------------------------------
# exportable wrappers


def _eval_feature(model: nn.Module, feature_map: torch.Tensor, feature: str) -> torch.Tensor:
    """Pooling -> neck -> L2 normalisation, as :meth:`VIReIDModel.forward` does in eval mode."""
    m = cast("VIReIDModel", model)
    pooled = m.pooling(feature_map)
    out = m.neck(pooled) if feature == "bn" else pooled
    return F.normalize(out.float(), dim=1)


class ModalityFeatures(nn.Module):
    """One modality's feature extractor: ``images [B, 3, H, W] -> features [B, D]`` (L2-normalised)."""

    def __init__(self, model: nn.Module, modality: int, feature: str = "bn", flip: bool = False) -> None:
        super().__init__()
        if modality not in (0, 1):
            raise ValueError(f"modality must be 0 (visible) or 1 (infrared), got {modality}")
        self.model = model
        self.modality = modality
        self.feature = feature
        self.flip = flip

    def _once(self, images: torch.Tensor) -> torch.Tensor:
        backbone = cast("VIReIDModel", self.model).backbone
        front = backbone.stream(self.modality) if backbone.specific_names else nn.Identity()
        return _eval_feature(self.model, backbone.shared(front(images)), self.feature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self._once(images)
        if self.flip:
            f = F.normalize(f + self._once(torch.flip(images, dims=[3])), dim=1)
        return f


class RoutedFeatures(nn.Module):
    """Both modalities in one graph: ``(images [B, 3, H, W], modality int64 [B]) -> features [B, D]``.

    Both modality-specific fronts run on the whole batch; ``torch.where`` keeps each sample's own front's output
    (modality 0: visible, any other value: infrared). Static shapes, no data-dependent control flow.
    """

    def __init__(self, model: nn.Module, feature: str = "bn", flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.feature = feature
        self.flip = flip

    def _once(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        backbone = cast("VIReIDModel", self.model).backbone
        visible = modality.reshape(-1, 1, 1, 1) == 0
        if backbone.specific_names:
            x = torch.where(visible, backbone.visible(images), backbone.infrared(images))
        else:  # single stream: the modality does not matter, but the graph keeps the input (same interface)
            x = torch.where(visible, images, images)
        return _eval_feature(self.model, backbone.shared(x), self.feature)

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        f = self._once(images, modality)
        if self.flip:
            f = F.normalize(f + self._once(torch.flip(images, dims=[3]), modality), dim=1)
        return f


# --------------------------------------------------------------------------------------------------------------------
# export


@dataclass
class ExportResult:
    """What was written and how closely onnxruntime reproduces PyTorch (per file)."""

    graph: str
    files: list[str]
    height: int
    width: int
    feature_dim: int
    opset: int
    batch: int | str
    feature: str
    flip: bool
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    verify_batch: int = 0
    checkpoint: str | None = None
    onnxruntime_version: str | None = None
    metadata: str | None = None


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """Import onnx and onnxruntime, or raise :class:`ExportError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnx/onnxruntime"
        raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({missing} is not installed): "
                          f"{INSTALL_HINT}") from None
    return onnx, onnxruntime


def _parse_batch(batch: int | str) -> int | str:
    if isinstance(batch, str) and batch.strip().lower() == "dynamic":
        return "dynamic"
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or isinstance(batch, bool):
        raise ExportError(f"--batch: {batch!r} is not allowed; expected 'dynamic' or a positive integer")
    return value


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  dynamic: bool, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript-based exporter (no onnxscript dependency), warnings muted."""
    axes = {name: {0: "batch"} for name in [*input_names, "features"]} if dynamic else None
    kwargs: dict[str, Any] = dict(input_names=input_names, output_names=["features"], dynamic_axes=axes,
                                  opset_version=opset, do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter; the numbers are verified below
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        except TypeError as exc:  # torch without the dynamo switch
            if "dynamo" not in str(exc):
                raise
            torch.onnx.export(module, args, str(path), **kwargs)


def _session(ort: ModuleType, path: Path) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def _reference(model: nn.Module, images: torch.Tensor, modality: torch.Tensor, feature: str,
               flip: bool) -> np.ndarray:
    """What the PyTorch model itself returns (its own routing), as the ONNX files must."""
    f = F.normalize(getattr(model(images, modality), feature).float(), dim=1)
    if flip:
        f = F.normalize(f + F.normalize(getattr(model(torch.flip(images, dims=[3]), modality), feature).float(),
                                        dim=1), dim=1)
    return f.numpy()


def output_files(out: str | os.PathLike, graph: str) -> list[Path]:
    """The ONNX files an export to ``out`` writes (see :func:`export_onnx`)."""
    out = Path(out)
    if graph == "per-modality":
        if out.suffix == ".onnx":
            return [out.with_name(f"{out.stem}_visible.onnx"), out.with_name(f"{out.stem}_infrared.onnx")]
        return [out / "visible.onnx", out / "infrared.onnx"]
    return [out if out.suffix == ".onnx" else out / "model.onnx"]


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    height: int,
    width: int,
    graph: Graph = "per-modality",
    opset: int = DEFAULT_OPSET,
    batch: int | str = 1,
    feature: str = "bn",
    flip: bool = False,
    tolerance: float = TOLERANCE,
    seed: int = 0,
    checkpoint: str | None = None,
) -> ExportResult:
    """Export ``model`` (a :class:`~vireid.models.VIReIDModel`) to ONNX and verify it with onnxruntime.

    ``out``: per-modality -- a folder receiving ``visible.onnx`` and ``infrared.onnx`` (a path ending in ``.onnx``
    gives ``<stem>_visible.onnx`` / ``<stem>_infrared.onnx`` next to it); modality-input -- the ``.onnx`` file,
    or a folder receiving ``model.onnx``. ``export.json`` is written next to the files.

    The model is left in eval mode, float32, on the CPU. Raises :class:`ExportError` (one line) when
    onnx/onnxruntime are missing, an option is invalid, or onnxruntime's output differs from the PyTorch model's
    by more than ``tolerance`` on random inputs.
    """
    onnx, ort = require_onnx()
    if graph not in GRAPHS:
        raise ExportError(f"--graph: {graph!r} is not known; expected one of {', '.join(GRAPHS)}")
    if feature not in ("bn", "pooled"):
        raise ExportError(f"feature: {feature!r} is not known; expected 'bn' (after the BNNeck) or 'pooled'")
    if not isinstance(opset, int) or not 11 <= opset <= 21:
        raise ExportError(f"--opset: {opset!r} is not supported here; expected an integer in 11..21 "
                          f"(default {DEFAULT_OPSET})")
    if height < 1 or width < 1:
        raise ExportError(f"image size {height}x{width} is not allowed; expected positive height and width")
    batch = _parse_batch(batch)
    dynamic = batch == "dynamic"
    out = Path(out)
    files = output_files(out, graph)
    check_writable_dir(files[0].parent, "--out folder")
    files[0].parent.mkdir(parents=True, exist_ok=True)

    model = model.eval().float().cpu()  # exported and verified in float32 on the CPU
    trace_batch = 2 if dynamic else int(batch)
    check_batch = 3 if dynamic else int(batch)
    gen = torch.Generator().manual_seed(seed)
    trace_images = torch.randn(trace_batch, 3, height, width, generator=gen)
    images = torch.randn(check_batch, 3, height, width, generator=gen)

    result = ExportResult(graph=graph, files=[str(f) for f in files], height=height, width=width,
                          feature_dim=int(getattr(model, "feature_dim", 0)), opset=opset, batch=batch,
                          feature=feature, flip=flip, verify_batch=check_batch, checkpoint=checkpoint,
                          onnxruntime_version=getattr(ort, "__version__", None))
    try:
        if graph == "per-modality":
            for modality, path in enumerate(files):
                wrapper = ModalityFeatures(model, modality, feature, flip).eval()
                _torch_export(wrapper, (trace_images,), path, ["images"], dynamic, opset)
                onnx.checker.check_model(str(path))
                got = _session(ort, path).run(["features"], {"images": images.numpy()})[0]
                want = _reference(model, images, torch.full((check_batch,), modality, dtype=torch.long), feature,
                                  flip)
                result.max_abs_diff[path.name] = _compare(got, want, path, tolerance)
        else:
            path = files[0]
            trace_modality = torch.arange(trace_batch, dtype=torch.long) % 2
            routed = RoutedFeatures(model, feature, flip).eval()
            _torch_export(routed, (trace_images, trace_modality), path, ["images", "modality"], dynamic, opset)
            onnx.checker.check_model(str(path))
            check_mods = torch.randint(0, 2, (check_batch,), generator=gen)
            session = _session(ort, path)
            worst = 0.0
            for mods in (check_mods, 1 - check_mods):  # every image through both streams, whatever the batch size
                got = session.run(["features"], {"images": images.numpy(), "modality": mods.numpy()})[0]
                worst = max(worst, _compare(got, _reference(model, images, mods, feature, flip), path, tolerance))
            result.max_abs_diff[path.name] = worst
    except VireidError:
        raise
    except Exception as exc:  # exporter or onnxruntime failure: one line, with the cause
        text = " ".join(str(exc).split())[:200]
        raise ExportError(f"ONNX export to {files[0]} failed ({type(exc).__name__}: {text})") from exc

    meta = files[0].parent / ("export.json" if graph == "per-modality" and out.suffix != ".onnx"
                              else f"{files[0].stem}.export.json")
    meta.write_text(json.dumps(_metadata(result, files), indent=2) + "\n")
    result.metadata = str(meta)
    return result


def _compare(got: np.ndarray, want: np.ndarray, path: Path, tolerance: float) -> float:
    if got.shape != want.shape:
        raise ExportError(f"{path}: onnxruntime returned shape {list(got.shape)}, PyTorch {list(want.shape)}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(f"{path}: onnxruntime output differs from PyTorch by {diff:.3g} (max abs) > {tolerance:g} "
                          "on random inputs; the exported graph is not faithful -- please report it with the "
                          "checkpoint's config")
    return diff


def _metadata(result: ExportResult, files: Sequence[Path]) -> dict[str, Any]:
    batch_dim: int | str = "batch" if result.batch == "dynamic" else result.batch
    inputs = [{"name": "images", "dtype": "float32", "shape": [batch_dim, 3, result.height, result.width]}]
    if result.graph == "modality-input":
        inputs.append({"name": "modality", "dtype": "int64", "shape": [batch_dim],
                       "values": "0 visible, anything else infrared"})
    info = asdict(result)
    info.pop("metadata", None)
    info.update({
        "format": "onnx",
        "files": [f.name for f in files],
        "inputs": inputs,
        "outputs": [{"name": "features", "dtype": "float32", "shape": [batch_dim, result.feature_dim],
                     "l2_normalised": True}],
        "preprocessing": {"channels": "RGB", "resize": [result.height, result.width], "scale": 1 / 255,
                          "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "formula": "(pixel / 255 - mean) / std, per channel"},
        "distance": "Euclidean on the L2-normalised features (same ranking as cosine similarity)",
        "tolerance": TOLERANCE,
    })
    if result.graph == "per-modality":
        info["modalities"] = {files[0].name: "visible (RGB cameras)", files[1].name: "infrared (IR cameras)"}
    return info


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    graph: Graph = "per-modality",
    opset: int = DEFAULT_OPSET,
    batch: int | str = 1,
    feature: str | None = None,
    flip: bool = False,
    checkpoint_format: str = "vireid",
    size: tuple[int, int] | None = None,
    arch: str | None = None,
) -> ExportResult:
    """Export a checkpoint file: a vireid checkpoint (image size and feature from its config) or, with
    ``checkpoint_format="agw"|"fastreid"``, an original-repository checkpoint (``size`` = (H, W); default
    288x144 for AGW, 384x128 for fast-reid/AML).

    ``out`` defaults to ``<checkpoint folder>/onnx`` (per-modality) or ``<checkpoint folder>/onnx/model.onnx``.
    """
    require_onnx()  # fail before loading anything
    path = Path(checkpoint)
    if out is None:
        out = path.parent / "onnx"
        if graph == "modality-input":
            out = out / "model.onnx"
    if graph in GRAPHS:
        check_writable_dir(output_files(out, graph)[0].parent, "--out folder")  # before loading the model
    from vireid.checkpoints import load_any_checkpoint

    model, settings = load_any_checkpoint(path, checkpoint_format, size=size, arch=arch)
    height, width = settings.height, settings.width
    feature = feature or settings.feature
    return export_onnx(model, out, height=int(height), width=int(width), graph=graph, opset=opset, batch=batch,
                       feature=feature, flip=flip, checkpoint=str(path))
