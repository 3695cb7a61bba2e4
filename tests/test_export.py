"""vireid export / vireid.inference.export: ONNX graphs equal the PyTorch model within 1e-4 (checked here again
with onnxruntime on inputs the exporter never saw), both graph layouts, fixed/dynamic batch, flip, one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vireid.cli import main
from vireid.inference import export as export_mod
from vireid.inference.export import ExportError, export_onnx, require_onnx
from vireid.models import build_model

H, W = 64, 32
TOL = 1e-4


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason='onnx is not installed (pip install -e ".[export]")')
    return pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[export]")')


def _scramble(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and non-local output BN, and two different stems (at build time the infrared
    stem is a copy of the visible one and the non-local blocks are identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if model.backbone.specific_names:
            model.backbone.infrared.conv1.weight.mul_(-0.7).add_(0.02)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _scramble(build_model("resnet18_half", num_classes=5, pretrained="none", non_local=True))


def _images(b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _torch_features(model, x, modality, feature="bn", flip=False) -> np.ndarray:
    """Independent reference: the model's own forward, flip averaging as extract_features does it."""
    f = F.normalize(getattr(model(x, modality), feature), dim=1)
    if flip:
        f = F.normalize(f + F.normalize(getattr(model(torch.flip(x, dims=[3]), modality), feature), dim=1), dim=1)
    return f.numpy()


def _input_dims(path: Path) -> dict[str, list]:
    import onnx

    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def test_per_modality_graphs_equal_pytorch(tmp_path: Path, model, ort) -> None:
    result = export_onnx(model, tmp_path / "onnx", height=H, width=W, graph="per-modality", batch="dynamic")
    visible, infrared = tmp_path / "onnx" / "visible.onnx", tmp_path / "onnx" / "infrared.onnx"
    assert result.files == [str(visible), str(infrared)]
    assert set(result.max_abs_diff) == {"visible.onnx", "infrared.onnx"}
    assert all(0 <= d <= TOL for d in result.max_abs_diff.values())
    assert _input_dims(visible) == {"images": ["batch", 3, H, W]}

    x = _images(5, seed=11)  # a batch size the export never saw
    outs = {}
    for modality, path in ((0, visible), (1, infrared)):
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
        want = _torch_features(model, x, torch.full((5,), modality))
        assert got.shape == (5, 256)
        assert np.abs(got - want).max() <= TOL
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        outs[modality] = got
    assert np.abs(outs[0] - outs[1]).max() > 1e-3  # the two stems really differ

    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert meta["files"] == ["visible.onnx", "infrared.onnx"]
    assert meta["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, H, W]}]
    assert meta["outputs"][0]["shape"] == ["batch", 256]
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["max_abs_diff"] == pytest.approx(result.max_abs_diff)


def test_modality_input_graph_routes_each_sample(tmp_path: Path, model, ort) -> None:
    out = tmp_path / "routed.onnx"
    result = export_onnx(model, out, height=H, width=W, graph="modality-input", batch="dynamic", opset=13)
    assert result.files == [str(out)] and result.max_abs_diff["routed.onnx"] <= TOL
    assert _input_dims(out) == {"images": ["batch", 3, H, W], "modality": ["batch"]}
    assert (tmp_path / "routed.export.json").is_file()

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(6, seed=12)
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    got = session.run(None, {"images": x.numpy(), "modality": modality.numpy()})[0]
    assert np.abs(got - _torch_features(model, x, modality)).max() <= TOL
    # each row is its own modality's feature, whatever the rest of the batch
    alone = _torch_features(model, x[3:4], torch.tensor([1]))
    assert np.abs(got[3:4] - alone).max() <= TOL
    swapped = session.run(None, {"images": x.numpy(), "modality": (1 - modality).numpy()})[0]
    assert np.abs(swapped - got).max() > 1e-3


def test_fixed_batch_flip_and_pooled_feature(tmp_path: Path, model, ort) -> None:
    result = export_onnx(model, tmp_path / "fixed", height=H, width=W, graph="per-modality", batch=2, flip=True,
                         feature="pooled")
    path = tmp_path / "fixed" / "infrared.onnx"
    assert result.batch == 2 and _input_dims(path) == {"images": [2, 3, H, W]}
    x = _images(2, seed=13)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    want = _torch_features(model, x, torch.ones(2, dtype=torch.long), feature="pooled", flip=True)
    assert np.abs(got - want).max() <= TOL
    no_flip = _torch_features(model, x, torch.ones(2, dtype=torch.long), feature="pooled")
    assert np.abs(got - no_flip).max() > 1e-4  # the flip is really in the graph


def test_single_stream_model_keeps_the_modality_input(tmp_path: Path, ort) -> None:
    torch.manual_seed(1)
    aml = _scramble(build_model("resnet18_half", num_classes=4, pretrained="none", specific_stages=-1,
                                non_local=False, gem_learnable=True, neck_init="normal", classifier="circle"))
    with torch.no_grad():
        aml.pooling.p.fill_(2.5)
    result = export_onnx(aml, tmp_path / "aml.onnx", height=H, width=W, graph="modality-input", batch="dynamic")
    assert result.max_abs_diff["aml.onnx"] <= TOL
    assert list(_input_dims(tmp_path / "aml.onnx")) == ["images", "modality"]


def test_a_difference_above_tolerance_is_a_one_line_error(tmp_path: Path, model, ort, monkeypatch) -> None:
    real = export_mod._reference
    monkeypatch.setattr(export_mod, "_reference", lambda *a, **k: real(*a, **k) + 1e-3)
    with pytest.raises(ExportError) as exc:
        export_onnx(model, tmp_path / "off", height=H, width=W)
    text = str(exc.value)
    assert "\n" not in text and "differs from PyTorch by 0.001" in text and "> 0.0001" in text


def test_invalid_options_are_one_line_errors(tmp_path: Path, model, ort) -> None:
    for kwargs, needle in (({"batch": "0"}, "--batch"), ({"batch": "many"}, "--batch"),
                           ({"graph": "both"}, "--graph"), ({"opset": 7}, "--opset"),
                           ({"feature": "logits"}, "feature")):
        with pytest.raises(ExportError) as exc:
            export_onnx(model, tmp_path / "x", height=H, width=W, **kwargs)
        assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_missing_onnx_says_how_to_install(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ExportError) as exc:
        require_onnx()
    assert 'pip install -e ".[export]"' in str(exc.value) and "onnxruntime" in str(exc.value)
    assert main(["export", str(tmp_path / "best.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[export]"' in err


# --------------------------------------------------------------------------------------------------------------------
# the command on a real (tiny) checkpoint


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The shared tiny trained run (built once per session; same folder as the other practitioner-tool tests)."""
    from _checkpoint import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp() / "practitioner_tiny")


def test_cli_export_of_a_trained_checkpoint(tiny: Path, tmp_path: Path, capsys, ort) -> None:
    from vireid.checkpoints import load_trained_model

    out = tmp_path / "deploy" / "agw.onnx"
    rc = main(["export", str(tiny / "best.pt"), "--format", "onnx", "--out", str(out), "--graph", "modality-input",
               "--batch", "dynamic"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert f"wrote {out}" in stdout and "max abs difference" in stdout
    meta = json.loads((out.parent / "agw.export.json").read_text())
    assert meta["inputs"][0]["shape"] == ["batch", 3, 64, 32]  # data.height x data.width of the tiny config
    assert meta["feature"] == "bn" and meta["checkpoint"] == str(tiny / "best.pt")

    model, cfg, _ = load_trained_model(tiny / "best.pt")
    x = torch.randn(4, 3, cfg.data.height, cfg.data.width, generator=torch.Generator().manual_seed(5))
    modality = torch.tensor([0, 1, 0, 1])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy(), "modality": modality.numpy()})[0]
    assert np.abs(got - _torch_features(model, x, modality)).max() <= TOL

    # default output folder: next to the checkpoint (a copy: the shared run folder stays untouched), per-modality
    own = tmp_path / "run"
    own.mkdir()
    shutil.copy(tiny / "best.pt", own / "best.pt")
    rc = main(["export", str(own / "best.pt")])
    assert rc == 0 and (own / "onnx" / "visible.onnx").is_file() and (own / "onnx" / "infrared.onnx").is_file()


def test_cli_export_bad_inputs(tiny: Path, tmp_path: Path, capsys, ort) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    cases = [
        (["export", str(text)], str(text)),
        (["export", str(tmp_path / "absent.pt")], "checkpoint not found"),
        (["export", str(tiny / "best.pt"), "--batch", "0", "--out", str(tmp_path / "o")], "--batch"),
        (["export", str(text), "--checkpoint-format", "agw"], "not a readable torch checkpoint"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("vireid: error:") and err.count("\n") == 0 and needle in err, err
