"""vireid.models.convert: AGW/CAJ and fast-reid (AML) checkpoints land tensor by tensor where they belong.

Each test builds a vireid model, fills every tensor with known random values, renames the keys to the original
repository's layout with a mapping table written out by hand here (independent of the converter's code), saves the
file the way the original code does, loads it back with ``load_foreign_checkpoint`` and compares every tensor.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vireid.errors import CheckpointError, ConfigError
from vireid.models import build_model
from vireid.models.convert import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    foreign_key_map,
    infer_arch,
    load_foreign_checkpoint,
    read_foreign_state,
)

# --------------------------------------------------------------------------------------------------------------------
# hand-written key tables (longest prefix first): our prefix -> their prefix

# AGW/CAJ embed_net for resnet18_half with non-local blocks: our positions layer2 (1,), layer3 (1,) = AGW's rule
# "after the last n blocks" with n = 1, so NL_2.0 follows layer2 block 1 and NL_3.0 follows layer3 block 1.
AGW_TABLE_R18 = [
    ("backbone.shared.layer2.non_local.1.theta.", "NL_2.0.theta."),
    ("backbone.shared.layer2.non_local.1.phi.", "NL_2.0.phi."),
    ("backbone.shared.layer2.non_local.1.g.", "NL_2.0.g.0."),
    ("backbone.shared.layer2.non_local.1.out_conv.", "NL_2.0.W.0."),
    ("backbone.shared.layer2.non_local.1.out_bn.", "NL_2.0.W.1."),
    ("backbone.shared.layer3.non_local.1.theta.", "NL_3.0.theta."),
    ("backbone.shared.layer3.non_local.1.phi.", "NL_3.0.phi."),
    ("backbone.shared.layer3.non_local.1.g.", "NL_3.0.g.0."),
    ("backbone.shared.layer3.non_local.1.out_conv.", "NL_3.0.W.0."),
    ("backbone.shared.layer3.non_local.1.out_bn.", "NL_3.0.W.1."),
    ("backbone.visible.", "visible_module.visible."),
    ("backbone.infrared.", "thermal_module.thermal."),
    ("backbone.shared.", "base_resnet.base."),
    ("neck.bn.", "bottleneck."),
    ("classifier.fc.weight", "classifier.weight"),
]

# AGW on ResNet-50 (their NL_2_idx = [2, 3], NL_3_idx = [3, 4, 5]): the non-local part of the table
AGW_NL_R50 = {
    "backbone.shared.layer2.non_local.2.": "NL_2.0.", "backbone.shared.layer2.non_local.3.": "NL_2.1.",
    "backbone.shared.layer3.non_local.3.": "NL_3.0.", "backbone.shared.layer3.non_local.4.": "NL_3.1.",
    "backbone.shared.layer3.non_local.5.": "NL_3.2.",
}
AGW_NL_SUB = {"theta.": "theta.", "phi.": "phi.", "g.": "g.0.", "out_conv.": "W.0.", "out_bn.": "W.1."}

FASTREID_TABLE = [
    ("backbone.shared.", "backbone."),
    ("pooling.p", "heads.pool_layer.p"),
    ("neck.bn.", "heads.bottleneck.0."),
    ("classifier.weight", "heads.weight"),
]


def rename(key: str, table: list[tuple[str, str]]) -> str:
    for ours, theirs in table:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise AssertionError(f"the test's table has no entry for {key}")


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fill every tensor of the model's state with distinct random values (scaled so that a forward pass stays
    finite: positive BN scales and variances, fan-in-scaled weights); return a copy of that state."""
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if not value.dtype.is_floating_point:
                value.copy_(torch.randint(1, 1000, value.shape, generator=gen))
            elif key.endswith("running_var") or (value.dim() == 1 and key.endswith(".weight")) or key == "pooling.p":
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5 + 2.0 * (key == "pooling.p"))
            elif value.dim() >= 2:
                fan_in = value[0].numel()
                value.copy_(torch.randn(value.shape, generator=gen) / fan_in ** 0.5)
            else:
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def agw_model(**kw) -> torch.nn.Module:
    args = dict(arch="resnet18_half", num_classes=7, pretrained="none", non_local=True)
    args.update(kw)
    return build_model(**args)


def fastreid_model(**kw) -> torch.nn.Module:
    args = dict(arch="resnet18_half", num_classes=9, pretrained="none", specific_stages=-1, non_local=False,
                gem_learnable=True, neck_init="normal", classifier="circle")
    args.update(kw)
    return build_model(**args)


def their_agw_state(ours: dict[str, torch.Tensor], seed: int = 5) -> dict[str, torch.Tensor]:
    """AGW's state dict: the renamed tensors plus the parts of their whole-ResNet modules they never run."""
    theirs = {rename(k, AGW_TABLE_R18): v for k, v in ours.items()}
    gen = torch.Generator().manual_seed(seed)
    for key, value in ours.items():  # their visible/thermal modules are whole ResNets; base has its own stem
        if key.startswith("backbone.shared.layer") and ".non_local." not in key:
            rest = key[len("backbone.shared."):]
            theirs[f"visible_module.visible.{rest}"] = torch.rand(value.shape, generator=gen)
            theirs[f"thermal_module.thermal.{rest}"] = torch.rand(value.shape, generator=gen)
        if key.startswith("backbone.visible."):
            theirs[f"base_resnet.base.{key[len('backbone.visible.'):]}"] = torch.rand(value.shape, generator=gen)
    return theirs


def pixel_buffers(mean=IMAGENET_PIXEL_MEAN, std=IMAGENET_PIXEL_STD) -> dict[str, torch.Tensor]:
    return {"pixel_mean": torch.tensor(mean).view(1, -1, 1, 1), "pixel_std": torch.tensor(std).view(1, -1, 1, 1)}


def assert_all_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------------------------------
# AGW / CAJ


def test_agw_checkpoint_every_tensor_lands_where_it_belongs(tmp_path: Path) -> None:
    source = agw_model()
    expected = randomise(source, seed=1)
    theirs = their_agw_state(expected)
    path = tmp_path / "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"
    # as AGW/CAJ save it: NumPy arrays and scalars next to the weights
    torch.save({"net": theirs, "cmc": np.linspace(0.4, 1.0, 20), "mAP": np.float64(0.47), "mINP": np.float64(0.35),
                "epoch": 80}, path)
    model = load_foreign_checkpoint(path, "agw")
    assert_all_equal(model, expected)
    assert not model.training
    kw = model.build_kwargs
    assert (kw["arch"], kw["num_classes"], kw["non_local"], kw["non_local_width"]) == ("resnet18_half", 7, True,
                                                                                        "faithful")
    assert (kw["specific_stages"], kw["pooling"], kw["gem_learnable"], kw["classifier"]) == (0, "gem", False,
                                                                                             "linear")
    # the same function as the model the tensors came from
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    modality = torch.tensor([0, 1, 1, 0])
    source.eval()
    with torch.no_grad():
        out = model(x, modality).bn
        assert torch.isfinite(out).all()
        assert torch.equal(out, source(x, modality).bn)


def test_agw_half_width_non_local_and_data_parallel_prefix(tmp_path: Path) -> None:
    expected = randomise(agw_model(non_local_width="half", num_classes=3), seed=2)
    theirs = {f"module.{k}": v for k, v in their_agw_state(expected).items()}
    path = tmp_path / "agw_half.t"
    torch.save({"net": theirs, "epoch": 1}, path)
    model = load_foreign_checkpoint(path, "agw")
    assert model.build_kwargs["non_local_width"] == "half"
    assert model.backbone.shared.layer3.non_local["1"].inner_channels == 64  # 128 channels // 2
    assert_all_equal(model, expected)


def test_agw_without_non_local_and_numpy1_pickles(tmp_path: Path) -> None:
    """A `--method base`-style model (no NL blocks), saved by NumPy 1.x (numpy.core.multiarray names)."""
    expected = randomise(agw_model(non_local=False), seed=3)
    theirs = their_agw_state(expected)
    modern = tmp_path / "modern.t"
    torch.save({"net": theirs, "cmc": np.arange(20.0), "mAP": np.float64(0.5), "epoch": 2}, modern)
    old = tmp_path / "numpy1.t"
    buf = io.BytesIO()
    with zipfile.ZipFile(modern) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    old.write_bytes(buf.getvalue())
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
    model = load_foreign_checkpoint(old, "agw", pooling="avg")
    assert model.build_kwargs["non_local"] is False and model.build_kwargs["pooling"] == "avg"
    assert_all_equal(model, expected)


def test_agw_resnet50_non_local_positions_follow_agw() -> None:
    """NL_2.i / NL_3.i follow AGW's NL_2_idx = [2, 3] and NL_3_idx = [3, 4, 5] (checked on a shape-only model)."""
    with torch.device("meta"):
        model = build_model("resnet50", num_classes=395, pretrained="none", non_local=True)
    mapping = foreign_key_map(model, "agw")
    inverse = {ours: theirs for theirs, ours in mapping.items()}
    nl_keys = [k for k in inverse if ".non_local." in k]
    assert len(nl_keys) == 5 * 13  # 5 blocks x (theta, phi, g, out_conv: weight + bias; out_bn: 5 tensors)
    for key in nl_keys:
        prefix = next(p for p in AGW_NL_R50 if key.startswith(p))
        rest = key[len(prefix):]
        sub = next(s for s in AGW_NL_SUB if rest.startswith(s))
        assert inverse[key] == AGW_NL_R50[prefix] + AGW_NL_SUB[sub] + rest[len(sub):]
    assert inverse["backbone.shared.layer4.2.bn3.weight"] == "base_resnet.base.layer4.2.bn3.weight"
    assert inverse["backbone.infrared.conv1.weight"] == "thermal_module.thermal.conv1.weight"
    assert inverse["classifier.fc.weight"] == "classifier.weight"
    assert inverse["neck.bn.running_var"] == "bottleneck.running_var"


def test_agw_missing_and_unknown_keys_are_one_line_errors(tmp_path: Path) -> None:
    theirs = their_agw_state(randomise(agw_model(), seed=4))
    missing = dict(theirs)
    del missing["base_resnet.base.layer3.0.conv2.weight"]
    del missing["NL_3.0.W.1.running_mean"]
    torch.save({"net": missing}, tmp_path / "missing.t")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "missing.t", "agw")
    text = one_line(exc)
    assert "2 missing keys" in text and "NL_3.0.W.1.running_mean" in text
    assert "base_resnet.base.layer3.0.conv2.weight" in text

    unknown = dict(theirs)
    unknown["NL_4.0.theta.weight"] = torch.zeros(1, 256, 1, 1)
    unknown["extra_head.weight"] = torch.zeros(3)
    torch.save({"net": unknown}, tmp_path / "unknown.t")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "unknown.t", "agw")
    text = one_line(exc)
    assert "2 unknown keys" in text and "NL_4.0.theta.weight" in text and "extra_head.weight" in text


def test_wrong_architecture_is_a_one_line_error(tmp_path: Path) -> None:
    theirs = their_agw_state(randomise(agw_model(), seed=6))
    path = tmp_path / "r18half.t"
    torch.save({"net": theirs}, path)
    with pytest.raises(CheckpointError) as exc:  # forcing another ResNet
        load_foreign_checkpoint(path, "agw", arch="resnet18")
    assert "shape mismatches" in one_line(exc) and "resnet18" in one_line(exc)
    with pytest.raises(CheckpointError) as exc:  # fewer classes than the checkpoint's classifier
        load_foreign_checkpoint(path, "agw", num_classes=5)
    assert "classifier.weight [7, 256] vs [5, 256]" in one_line(exc)
    with pytest.raises(CheckpointError) as exc:  # AGW has only a modality-specific stem
        load_foreign_checkpoint(path, "agw", specific_stages=1)
    assert "specific_stages=0" in one_line(exc)
    # tensors of no registered backbone
    odd = {k: (v[:, :3] if k == "base_resnet.base.layer1.0.conv1.weight" else v) for k, v in theirs.items()}
    torch.save({"net": odd}, tmp_path / "odd.t")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "odd.t", "agw")
    assert "match none of the registered backbones" in one_line(exc)


def test_vireid_checkpoint_with_other_architecture_config_is_refused(tmp_path: Path) -> None:
    """A vireid resnet18_half checkpoint whose config names resnet18: the one-line load error."""
    from vireid.checkpoints import load_trained_model
    from vireid.config import Config, dump_yaml, from_dict
    from vireid.engine.checkpoint import make_meta, save_checkpoint

    model = agw_model(non_local=False)
    cfg = from_dict(Config, {"model": {"arch": "resnet18", "pretrained": "none", "non_local": False}})
    path = save_checkpoint(tmp_path / "best.pt", model_state=model.state_dict(),
                           meta=make_meta(config_yaml=dump_yaml(cfg), dataset="sysu_mm01", num_classes=7))
    with pytest.raises(CheckpointError) as exc:
        load_trained_model(path)
    assert "does not fit this model" in one_line(exc) and "shape mismatch" in one_line(exc)
    with pytest.raises(CheckpointError) as exc:  # and as a "foreign" file it is recognised as ours
        load_foreign_checkpoint(path, "agw")
    assert "is a vireid checkpoint" in one_line(exc)


# --------------------------------------------------------------------------------------------------------------------
# fast-reid (AML)


def test_fastreid_checkpoint_every_tensor_lands_where_it_belongs(tmp_path: Path) -> None:
    source = fastreid_model()
    expected = randomise(source, seed=7)
    theirs = {rename(k, FASTREID_TABLE): v for k, v in expected.items()}
    theirs.update(pixel_buffers())
    path = tmp_path / "model_final.pth"
    torch.save({"model": theirs, "iteration": 15000, "optimizer": {"state": {}, "param_groups": []}}, path)
    model = load_foreign_checkpoint(path, "fastreid")
    assert_all_equal(model, expected)
    kw = model.build_kwargs
    assert (kw["arch"], kw["num_classes"], kw["specific_stages"], kw["non_local"]) == ("resnet18_half", 9, -1, False)
    assert (kw["gem_learnable"], kw["classifier"], kw["neck_init"]) == (True, "circle", "normal")
    assert torch.equal(model.pooling.p, expected["pooling.p"])
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(8))
    m = torch.tensor([0, 1, 0])
    source.eval()
    with torch.no_grad():  # one stream: the modality does not change the feature
        assert torch.equal(model(x, m).bn, source(x, m).bn)
        assert torch.equal(model(x, 1 - m).bn, source(x, m).bn)


def test_fastreid_pixel_statistics_are_checked(tmp_path: Path) -> None:
    theirs = {rename(k, FASTREID_TABLE): v for k, v in randomise(fastreid_model(), seed=9).items()}
    theirs.update(pixel_buffers(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    torch.save({"model": theirs}, tmp_path / "unit_range.pth")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "unit_range.pth", "fastreid")
    assert "pixel_mean is [0.485, 0.456, 0.406], not ImageNet's" in one_line(exc)
    del theirs["pixel_mean"], theirs["pixel_std"]
    torch.save({"model": theirs}, tmp_path / "no_pixels.pth")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "no_pixels.pth", "fastreid")
    assert "no pixel_mean buffer" in one_line(exc)


def test_fastreid_missing_unknown_and_non_local_keys(tmp_path: Path) -> None:
    theirs = {rename(k, FASTREID_TABLE): v for k, v in randomise(fastreid_model(), seed=10).items()}
    theirs.update(pixel_buffers())
    bad = dict(theirs)
    del bad["heads.pool_layer.p"]
    bad["backbone.NL_2.0.theta.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "bad.pth", "fastreid")
    text = one_line(exc)
    assert "1 unknown keys (backbone.NL_2.0.theta.weight)" in text and "1 missing keys (heads.pool_layer.p)" in text
    assert infer_arch(theirs, "fastreid") == "resnet18_half"


# --------------------------------------------------------------------------------------------------------------------
# files that are not such checkpoints


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.t"
    text_file.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(text_file, "agw")
    assert "not a readable torch checkpoint" in one_line(exc)

    with pytest.raises(CheckpointError) as exc:
        load_foreign_checkpoint(tmp_path / "absent.t", "agw")
    assert "checkpoint not found" in one_line(exc)

    torch.save({"net": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.t")
    with pytest.raises(CheckpointError) as exc:  # never unpickles arbitrary objects
        load_foreign_checkpoint(tmp_path / "objects.t", "agw")
    assert "argparse.Namespace" in one_line(exc) and "weights_only=True" in one_line(exc)

    torch.save({"state": {"x": torch.zeros(1)}, "epoch": 3}, tmp_path / "other.t")
    with pytest.raises(CheckpointError) as exc:
        read_foreign_state(tmp_path / "other.t", "agw")
    assert "expected a agw checkpoint {'net': state_dict" in one_line(exc)

    torch.save({"net": [1, 2, 3]}, tmp_path / "netlist.t")
    with pytest.raises(CheckpointError) as exc:
        read_foreign_state(tmp_path / "netlist.t", "agw")
    assert "'net' is not a state dict" in one_line(exc)

    with pytest.raises(ConfigError) as exc:
        load_foreign_checkpoint(text_file, "agw", widht=3)
    assert "unknown model argument(s) widht" in one_line(exc)
    with pytest.raises(ConfigError):
        load_foreign_checkpoint(text_file, "caj")  # type: ignore[arg-type]


def test_the_architecture_hint_names_a_cli_option_that_exists(tmp_path: Path, capsys) -> None:
    from vireid.cli import main

    theirs = their_agw_state(randomise(agw_model(), seed=6))
    odd = {k: (v[:, :3] if k == "base_resnet.base.layer1.0.conv1.weight" else v) for k, v in theirs.items()}
    torch.save({"net": odd}, tmp_path / "odd.t")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 64), (120, 30, 200)).save(images / "a.jpg")
    base = ["extract", str(tmp_path / "odd.t"), "--checkpoint-format", "agw", "--images", str(images),
            "--modality", "rgb", "--out", str(tmp_path / "f.npz"), "--device", "cpu"]
    assert main(base) == 2
    line = capsys.readouterr().err.strip()
    assert "match none of the registered backbones" in line and "--arch NAME" in line
    # the option exists and reaches the loader: forcing resnet18 on these tensors lists the mismatches
    assert main([*base, "--arch", "resnet18"]) == 2
    line = capsys.readouterr().err.strip()
    assert "shape mismatches" in line and "resnet18" in line and "--arch NAME" in line
    assert main(["export", str(tmp_path / "odd.t"), "--checkpoint-format", "agw", "--arch", "resnet18",
                 "--out", str(tmp_path / "onnx")]) == 2
    assert "does not fit a agw resnet18 model" in capsys.readouterr().err
    # a vireid checkpoint names its own architecture
    with pytest.raises(Exception, match="--arch applies to"):
        from vireid.checkpoints import load_any_checkpoint

        load_any_checkpoint(tmp_path / "odd.t", "vireid", arch="resnet18")
