"""vireid.models: shapes, modality routing, non-local identity, GeM/BNNeck/classifier numbers, parameter groups,
pretrained weight mapping and its errors, registry errors. Small inputs and small backbones keep this fast on CPU."""

from __future__ import annotations

import math
import pickle
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from vireid.errors import CheckpointError, ConfigError, DataError, VireidError
from vireid.models import (
    BACKBONES,
    BackboneDef,
    BNNeck,
    CircleClassifier,
    EvalOutput,
    GeM,
    LinearClassifier,
    NonLocal,
    TrainOutput,
    build_model,
    get_backbone,
    register_backbone,
)
from vireid.models.backbones import resnet18_half_random

H, W = 64, 32


def _small(**kw) -> torch.nn.Module:
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(arch="resnet18_half", num_classes=7, pretrained="none")
    args.update(kw)
    return build_model(**args)


def _images(b: int = 4, h: int = H, w: int = W, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _perturb_infrared_stem(model) -> None:
    """Make the two stems differ (at build time the infrared stream is a copy of the visible one)."""
    with torch.no_grad():
        model.backbone.infrared.conv1.weight.mul_(-0.5).add_(0.01)
        model.backbone.infrared.bn1.bias.add_(0.3)


# --------------------------------------------------------------------------------------------------------------------
# shapes and outputs


@pytest.fixture(scope="module")
def resnet50_model():
    torch.manual_seed(0)
    return build_model("resnet50", num_classes=5, pretrained="none")


def test_resnet50_train_output_shapes(resnet50_model):
    model = resnet50_model.train()
    assert model.feature_dim == 2048
    out = model(_images(2), torch.tensor([0, 1]))
    assert isinstance(out, TrainOutput)
    assert out.feature_map.shape == (2, 2048, H // 16, W // 16)  # layer4 stride 1: /16 instead of /32
    assert out.pooled.shape == out.bn.shape == (2, 2048)
    assert out.logits.shape == (2, 5)
    # AGW positions: after the last 2 bottlenecks of layer2 and the last 3 of layer3, 1 inner channel
    names = sorted(n for n, _ in model.backbone.non_local_blocks())
    assert names == ([f"shared.layer2.non_local.{i}" for i in (2, 3)]
                     + [f"shared.layer3.non_local.{i}" for i in (3, 4, 5)])
    assert {m.inner_channels for _, m in model.backbone.non_local_blocks()} == {1}
    assert [m.channels for _, m in model.backbone.non_local_blocks()] == [512, 512, 1024, 1024, 1024]


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet18_half", 256)])
@pytest.mark.parametrize("last_stride,div", [(1, 16), (2, 32)])
def test_small_backbone_shapes(arch, dim, last_stride, div):
    model = _small(arch=arch, last_stride=last_stride)
    out = model(_images(4), torch.tensor([0, 1, 0, 1]))
    assert model.feature_dim == dim
    assert out.feature_map.shape == (4, dim, H // div, W // div)
    assert out.logits.shape == (4, 7)
    model.eval()
    ev = model(_images(4), torch.tensor([0, 1, 0, 1]))
    assert isinstance(ev, EvalOutput) and ev.bn.shape == ev.pooled.shape == (4, dim)
    nl = model.backbone.non_local_blocks()
    assert sorted(n for n, _ in nl) == ["shared.layer2.non_local.1", "shared.layer3.non_local.1"]


def test_agw_input_size_gives_18_by_9_map():
    model = _small().eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 3, 288, 144), torch.tensor([1]))
    assert fmap.shape == (1, 256, 18, 9)


def test_eval_features_unit_norm_and_float32():
    model = _small()
    with torch.no_grad():
        model(_images(8, seed=2), torch.tensor([0, 1] * 4))  # move the BNNeck running statistics off 0/1
        model.eval()
        ev = model(_images(4), torch.tensor([1, 0, 0, 1]))
    for t in (ev.bn, ev.pooled):
        assert t.dtype == torch.float32
        torch.testing.assert_close(t.norm(dim=1), torch.ones(4))
    # bn and pooled are different features (with trained running stats BN is not a scaling of the pooled vector)
    assert not torch.allclose(ev.bn, ev.pooled, atol=1e-3)


def test_no_classifier_and_no_neck():
    model = _small(num_classes=0, neck="none")
    out = model(_images(2), torch.tensor([0, 1]))
    assert out.logits is None and model.num_classes == 0
    torch.testing.assert_close(out.bn, out.pooled)
    assert list(model.head_parameters()) == []


# --------------------------------------------------------------------------------------------------------------------
# routing


def test_single_modality_batch_uses_only_its_stem():
    model = _small().eval()
    _perturb_infrared_stem(model)
    bb = model.backbone
    x = _images(4)
    with torch.no_grad():
        vis = model.forward_features(x, torch.zeros(4, dtype=torch.long))
        ir = model.forward_features(x, torch.ones(4, dtype=torch.long))
        torch.testing.assert_close(vis, bb.shared(bb.visible(x)))
        torch.testing.assert_close(ir, bb.shared(bb.infrared(x)))
    assert (vis - ir).abs().max() > 1e-2  # the stems really differ, so the checks above can fail


@pytest.mark.parametrize("order", [[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 1], [0, 1, 1, 1]])
def test_mixed_batch_equals_separate_runs_in_input_order(order):
    model = _small().eval()
    _perturb_infrared_stem(model)
    x = _images(4, seed=3)
    modality = torch.tensor(order)
    with torch.no_grad():
        mixed = model.forward_features(x, modality)
        separate = torch.cat([model.forward_features(x[i : i + 1], modality[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(mixed, separate, rtol=1e-4, atol=1e-5)


def test_train_mode_stems_per_modality_shared_over_whole_batch():
    model = _small().train()
    _perturb_infrared_stem(model)
    bb = model.backbone
    x = _images(6, seed=4)
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    v, i = (modality == 0).nonzero().squeeze(1), (modality == 1).nonzero().squeeze(1)
    with torch.no_grad():
        got = model.forward_features(x, modality)
        front = torch.empty(6, *bb.visible(x[v]).shape[1:])
        front[v] = bb.visible(x[v])
        front[i] = bb.infrared(x[i])
        expected = bb.shared(front)
        # running the shared part per modality would give something else (its BN sees the whole batch)
        per_modality = torch.empty_like(expected)
        per_modality[v] = bb.shared(front[v])
        per_modality[i] = bb.shared(front[i])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - per_modality).abs().max() > 1e-3


def test_bad_modality_is_a_user_error():
    model = _small().eval()
    with pytest.raises(DataError, match="0 \\(visible\\) or 1 \\(infrared\\)"):
        model(_images(2), torch.tensor([0, 2]))
    with pytest.raises(DataError, match="B = 2"):
        model(_images(2), torch.tensor([0, 1, 1]))
    with pytest.raises(DataError, match="B = 2"):
        model(_images(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(2, 1, H, W), torch.tensor([0, 1]))


def test_single_stream_shares_everything_and_ignores_modality():
    base, model = _small(specific_stages=0), _small(specific_stages=-1, non_local=False)
    bb = model.backbone
    assert bb.specific_names == () and bb.shared_names[:4] == ("conv1", "bn1", "relu", "maxpool")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    stem = sum(p.numel() for n in ("conv1", "bn1") for p in getattr(base.backbone.visible, n).parameters())
    nl = sum(p.numel() for _, m in base.backbone.non_local_blocks() for p in m.parameters())
    assert count(model) == count(base) - stem - nl  # one stem instead of two, no non-local blocks
    assert bb.torchvision_key_targets("conv1.weight") == ["shared.conv1.weight"]
    model.eval()
    x = _images(3)
    a = model(x, torch.tensor([0, 0, 0])).bn
    b = model(x, torch.tensor([1, 0, 1])).bn
    assert torch.equal(a, b)  # the modality tag changes nothing in a single stream


@pytest.mark.parametrize("k", [1, 2])
def test_specific_stages_duplicate_front_layers(k):
    base, model = _small(specific_stages=0), _small(specific_stages=k)
    bb = model.backbone
    for name in ("layer1", "layer2")[:k]:
        assert hasattr(bb.visible, name) and hasattr(bb.infrared, name) and not hasattr(bb.shared, name)
        assert getattr(bb.visible, name) is not getattr(bb.infrared, name)
        v_weight, i_weight = getattr(bb.visible, name)[0].conv1.weight, getattr(bb.infrared, name)[0].conv1.weight
        assert v_weight.data_ptr() != i_weight.data_ptr()
    extra = sum(p.numel() for n in ("layer1", "layer2")[:k] for p in getattr(bb.visible, n).parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(base) + extra
    if k == 2:  # the layer2 non-local block goes with its stage into both streams
        assert sorted(n for n, _ in bb.non_local_blocks()) == [
            "infrared.layer2.non_local.1", "shared.layer3.non_local.1", "visible.layer2.non_local.1"]
    out = model(_images(4), torch.tensor([0, 1, 1, 0]))
    assert out.feature_map.shape == (4, 256, H // 16, W // 16)


# --------------------------------------------------------------------------------------------------------------------
# non-local


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_non_local_is_identity_at_init(mode):
    with_nl = _small(non_local=True, seed=5)
    without = _small(non_local=False, seed=6)
    result = without.load_state_dict(with_nl.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".non_local." in k for k in result.unexpected_keys)
    getattr(with_nl, mode)()
    getattr(without, mode)()
    x, m = _images(4, seed=7), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(with_nl.forward_features(x, m), without.forward_features(x, m), rtol=0, atol=0)
    bn = with_nl.backbone.non_local_blocks()[0][1].out_bn
    assert torch.count_nonzero(bn.weight) == 0 and torch.count_nonzero(bn.bias) == 0


def _non_local_reference(block: NonLocal, x: torch.Tensor) -> torch.Tensor:
    """Dense formula: z = x + W(sum_j theta_i . phi_j / N * g_j), N = H*W (the full N x N affinity)."""
    b, c, h, w = x.shape
    theta = block.theta(x).reshape(b, -1, h * w)
    phi = block.phi(x).reshape(b, -1, h * w)
    g = block.g(x).reshape(b, -1, h * w)
    affinity = torch.einsum("bci,bcj->bij", theta, phi) / (h * w)
    y = torch.einsum("bij,bcj->bci", affinity, g).reshape(b, -1, h, w)
    return x + block.out_bn(block.out_conv(y))


@pytest.mark.parametrize("inner,hw", [(1, (3, 5)), (4, (2, 2)), (4, (3, 4))])
def test_non_local_formula_and_position_count(inner, hw):
    torch.manual_seed(0)
    block = NonLocal(8, inner).eval()
    with torch.no_grad():
        block.out_bn.weight.fill_(1.0)
        block.out_bn.bias.fill_(0.1)
        x = torch.randn(2, 8, *hw)
        got = block(x)
        torch.testing.assert_close(got, _non_local_reference(block, x), rtol=1e-5, atol=1e-5)
        # the affinity is divided by the number of positions: tiling the map twice side by side doubles every sum
        # over positions and the count alike, so each position's output is unchanged (any other normaliser fails)
        tiled = torch.cat([x, x], dim=3)
        torch.testing.assert_close(block(tiled), torch.cat([got, got], dim=3), rtol=1e-5, atol=1e-5)
        bias_only = x + block.out_bn(block.out_conv(torch.zeros(2, inner, *hw)))
        assert (got - bias_only).abs().max() > 1e-3  # the affinity term is not negligible, so the checks can fail


def test_non_local_half_width():
    model = _small(non_local_width="half")
    assert [(m.channels, m.inner_channels) for _, m in model.backbone.non_local_blocks()] == [(64, 32), (128, 64)]


# --------------------------------------------------------------------------------------------------------------------
# pooling, neck, classifiers


def test_gem_fixed_p_hand_computed():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # [2, 1, 2, 2]
    out = GeM(3.0)(x)
    # (mean(1, 8, 27, 64) + 1e-12) ** (1/3) = 25 ** (1/3); an all-zero map gives (1e-12) ** (1/3) = 1e-4 (AGW formula)
    torch.testing.assert_close(out, torch.tensor([[25.0 ** (1 / 3)], [1e-4]]), rtol=1e-6, atol=0)
    assert out.shape == (2, 1)


def test_gem_learnable_hand_computed_and_has_grad():
    gem = GeM(3.0, learnable=True)
    assert isinstance(gem.p, torch.nn.Parameter) and gem.p.item() == 3.0
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    out = gem(x)
    # clamp(x, 1e-6) ** p, mean, ** (1/p): the zero map gives 1e-6 (fast-reid formula)
    torch.testing.assert_close(out.detach(), torch.tensor([[25.0 ** (1 / 3)], [1e-6]]), rtol=1e-5, atol=0)
    out[0].sum().backward()
    # d/dp (mean x^p)^(1/p) at p=3 for x = 1..4, computed by hand with the chain rule
    m = 25.0
    dm = sum(v ** 3 * math.log(v) for v in (1, 2, 3, 4)) / 4
    expected = m ** (1 / 3) * (-math.log(m) / 9 + dm / (3 * m))
    assert gem.p.grad is not None
    assert gem.p.grad.item() == pytest.approx(expected, rel=1e-4)


def test_avg_pooling():
    model = _small(pooling="avg").eval()
    with torch.no_grad():
        fmap = model.forward_features(_images(2), torch.tensor([0, 1]))
        ev = model(_images(2), torch.tensor([0, 1]))
    torch.testing.assert_close(ev.pooled, F.normalize(fmap.mean(dim=(2, 3)), dim=1))


def test_bnneck_bias_frozen_at_zero():
    model = _small()
    neck = model.neck.bn
    assert not neck.bias.requires_grad and torch.count_nonzero(neck.bias) == 0
    torch.testing.assert_close(neck.weight.detach(), torch.ones(256))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(_images(4), torch.tensor([0, 1, 0, 1]))
    (out.logits.sum() + out.bn.pow(2).sum()).backward()
    opt.step()
    assert neck.bias.grad is None and torch.count_nonzero(neck.bias) == 0
    assert not torch.equal(neck.weight.detach(), torch.ones(256))  # the weight did train


def test_bnneck_normal_init():
    torch.manual_seed(0)
    w = BNNeck(4096, weight_init="normal", weight_std=0.02).bn.weight.detach()
    assert w.mean().item() == pytest.approx(1.0, abs=0.002)
    assert w.std().item() == pytest.approx(0.02, rel=0.06)


def test_linear_classifier_init():
    torch.manual_seed(0)
    clf = LinearClassifier(2048, 200)
    assert clf.fc.bias is None
    assert clf.weight.mean().item() == pytest.approx(0.0, abs=2e-5)
    assert clf.weight.std().item() == pytest.approx(0.001, rel=0.01)


def test_circle_classifier_returns_cosines():
    torch.manual_seed(0)
    clf = CircleClassifier(16, 5)
    x = torch.randn(3, 16)
    cos = clf(x)
    expected = torch.stack([torch.stack([F.cosine_similarity(x[i], clf.weight[k], dim=0) for k in range(5)])
                            for i in range(3)])
    torch.testing.assert_close(cos, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clf(7.0 * x), cos, rtol=1e-5, atol=1e-6)  # scale-free
    model = _small(classifier="circle")
    logits = model(_images(2), torch.tensor([0, 1])).logits
    assert logits.shape == (2, 7) and logits.abs().max() <= 1.0 + 1e-6


# --------------------------------------------------------------------------------------------------------------------
# parameter groups, memory format, autocast


@pytest.mark.parametrize("kw", [dict(), dict(gem_learnable=True, classifier="circle"), dict(num_classes=0)])
def test_param_groups_partition_all_parameters(kw):
    model = _small(**kw)
    head = [id(p) for p in model.head_parameters()]
    backbone = [id(p) for p in model.backbone_parameters()]
    everything = [id(p) for p in model.parameters()]
    assert len(set(head)) == len(head) and len(set(backbone)) == len(backbone)
    assert not set(head) & set(backbone)
    assert sorted(head + backbone) == sorted(everything)
    expected_head = {id(p) for p in model.neck.parameters()}
    if model.classifier is not None:
        expected_head |= {id(p) for p in model.classifier.parameters()}
    assert set(head) == expected_head
    if kw.get("gem_learnable"):
        assert id(model.pooling.p) in set(backbone)


def test_channels_last_input_matches_contiguous():
    model = _small().eval()
    _perturb_infrared_stem(model)
    x = _images(4, seed=8)
    m = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        ref = model(x, m)
        cl = model(x.contiguous(memory_format=torch.channels_last), m)
    torch.testing.assert_close(cl.bn, ref.bn, rtol=1e-4, atol=1e-5)
    model.train()
    out = model(x.contiguous(memory_format=torch.channels_last), m)
    out.logits.sum().backward()
    assert model.backbone.infrared.conv1.weight.grad is not None


def test_autocast_bf16_on_cpu():
    model = _small()
    x, m = _images(4, seed=9), torch.tensor([0, 1, 1, 0])
    ref = model(x, m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, m)
    assert out.feature_map.dtype == torch.bfloat16
    assert out.pooled.dtype == out.bn.dtype == out.logits.dtype == torch.float32
    assert torch.isfinite(out.bn).all()
    rel = (out.pooled - ref.pooled).norm() / ref.pooled.norm()
    assert rel < 0.05
    out.logits.float().sum().backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ev = model(x, m)
    torch.testing.assert_close(ev.bn.norm(dim=1), torch.ones(4))


# --------------------------------------------------------------------------------------------------------------------
# pretrained weights


def _tv_key_targets(key: str, specific: tuple[str, ...]) -> list[str]:
    head = key.split(".")[0]
    if head in ("conv1", "bn1") + specific:
        return [f"backbone.visible.{key}", f"backbone.infrared.{key}"]
    return [f"backbone.shared.{key}"]


def _nontrivial_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm2d running statistics and biases, so that loading them is checked too (not just defaults)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.bias.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weights_land_in_both_stems_and_shared_layers(tmp_path, fmt):
    torch.manual_seed(123)
    tv = _nontrivial_batchnorm(torchvision.models.resnet18(weights=None))
    state = tv.state_dict()
    path = tmp_path / f"resnet18.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model("resnet18", num_classes=3, pretrained=path, specific_stages=1)
    ours = model.state_dict()
    checked = 0
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        targets = _tv_key_targets(key, ("layer1",))
        for target in targets:
            assert torch.equal(ours[target], value), target
            checked += 1
    assert checked == 2 * sum(1 for k in state if k.startswith(("conv1", "bn1", "layer1"))) + sum(
        1 for k in state if k.startswith(("layer2", "layer3", "layer4")))
    # everything else keeps its own initialisation
    torch.testing.assert_close(model.neck.bn.weight.detach(), torch.ones(512))
    assert all(torch.count_nonzero(m.out_bn.weight) == 0 for _, m in model.backbone.non_local_blocks())
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.pretrained_report.ignored == ["fc.bias", "fc.weight"]
    # the layer4 stride was changed to 1 after loading, and the weights still match
    assert model.backbone.shared.layer4[0].conv1.stride == (1, 1)


def test_a_one_stream_vireid_run_seeds_both_streams_of_a_new_model(tmp_path):
    # an AML-like run (one stream) as the start of a two-stream model (ADCA, AGW): its backbone goes into both stems
    # and the shared stages, exactly as ImageNet weights would; pooling, neck and classifier keep their own init
    torch.manual_seed(7)
    source = build_model("resnet18_half", num_classes=5, pretrained="none", specific_stages=-1, non_local=False,
                         gem_learnable=True)
    _nontrivial_batchnorm(source)
    with torch.no_grad():
        source.neck.bn.weight.fill_(3.0)
    path = tmp_path / "last.pt"
    torch.save({"format": "vireid-checkpoint", "model": source.state_dict(), "meta": {"method": "aml"}}, path)
    model = build_model("resnet18_half", num_classes=0, pretrained=path, specific_stages=0, non_local=False)
    theirs, ours = source.state_dict(), model.state_dict()
    checked = 0
    for key, value in theirs.items():
        if not key.startswith("backbone.shared."):
            continue
        tv_key = key[len("backbone.shared."):]
        for target in _tv_key_targets(tv_key, ()):
            assert torch.equal(ours[target], value), target
            checked += 1
    assert checked == len(model.pretrained_report.loaded) + sum(
        1 for k in model.pretrained_report.loaded if k.startswith(("conv1", "bn1")))
    assert "vireid model" in model.pretrained_report.source
    torch.testing.assert_close(model.neck.bn.weight.detach(), torch.ones(256))  # not the source's 3.0


def test_a_two_stream_or_non_local_vireid_run_is_refused_as_a_start(tmp_path):
    source = build_model("resnet18_half", num_classes=5, pretrained="none", specific_stages=0, non_local=False)
    path = tmp_path / "agw_last.pt"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        build_model("resnet18_half", pretrained=path, specific_stages=-1)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "modality-specific stages (infrared, visible)" in msg and "specific_stages: -1" in msg
    # one stream, but with non-local blocks: refused rather than dropped
    source = build_model("resnet18_half", num_classes=5, pretrained="none", specific_stages=-1, non_local=True)
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        build_model("resnet18_half", pretrained=path, specific_stages=0, non_local=True)
    msg = str(err.value)
    assert "\n" not in msg and "model.non_local: false" in msg
    assert "non-local blocks (26 tensors, e.g. backbone.shared.layer2.non_local." in msg


def test_weights_file_with_wrong_keys_names_them(tmp_path):
    state = resnet18_half_random().state_dict()
    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    del extra["layer2.1.bn2.weight"]
    path = tmp_path / "bad.pth"
    torch.save(extra, path)
    with pytest.raises(CheckpointError) as err:
        build_model("resnet18_half", pretrained=path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "1 unexpected keys (layer5.0.conv1.weight)" in msg and "1 missing keys (layer2.1.bn2.weight)" in msg


def test_weights_file_for_another_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    expected = r"100 tensors have the wrong shape for resnet18_half \(file vs model: bn1.bias \(64,\) vs \(32,\)"
    with pytest.raises(CheckpointError, match=expected):
        build_model("resnet18_half", pretrained=path)


def test_weights_file_unreadable_or_unsafe(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_model("resnet18_half", pretrained=tmp_path / "missing.pth")
    unsafe = tmp_path / "unsafe.pth"
    with open(unsafe, "wb") as f:
        pickle.dump({"conv1.weight": _Opaque()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        build_model("resnet18_half", pretrained=unsafe)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        build_model("resnet18_half", pretrained=junk)


class _Opaque:
    pass


def test_imagenet_download_failure_message(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as err:
        build_model("resnet50", pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot fetch ImageNet weights for resnet50 (URLError: ")
    assert "Temporary failure in name resolution" in msg
    assert "pass pretrained=/path/to/resnet50-0676ba61.pth" in msg and msg.endswith("or pretrained=none")


def test_imagenet_weights_go_through_the_weights_api(monkeypatch):
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    asked = []

    def cached(self, *args, **kwargs):
        asked.append(self)
        return state

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", cached)
    model = build_model("resnet18", pretrained="imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(model.backbone.infrared.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.shared.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_no_imagenet_weights_for_half_width():
    with pytest.raises(ConfigError, match="resnet18_half has no ImageNet weights"):
        build_model("resnet18_half", pretrained="imagenet")


# --------------------------------------------------------------------------------------------------------------------
# registry and argument errors


def test_registry_errors_and_custom_backbone():
    assert {"resnet50", "resnet18", "resnet18_half"} <= set(BACKBONES)
    with pytest.raises(ConfigError, match="unknown backbone 'resnet51'; known: .*resnet18, resnet18_half, resnet50"):
        get_backbone("resnet51")
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model("resnet51", pretrained="none")
    with pytest.raises(ConfigError, match="'resnet50' is already registered"):
        register_backbone("resnet50", BACKBONES["resnet50"])
    register_backbone("tiny_test", BackboneDef(resnet18_half_random, None, {}, "test"))
    try:
        model = build_model("tiny_test", num_classes=2, pretrained="none", non_local=True)
        assert model.backbone.non_local_blocks() == [] and model.feature_dim == 256
    finally:
        del BACKBONES["tiny_test"]


@pytest.mark.parametrize("kw,field", [
    (dict(pooling="max"), "model.pooling"),
    (dict(specific_stages=5), "model.specific_stages"),
    (dict(last_stride=3), "model.last_stride"),
    (dict(num_classes=-1), "model.num_classes"),
    (dict(classifier="arcface"), "model.classifier"),
    (dict(non_local_width="full"), "model.non_local_width"),
    (dict(gem_p=0), "model.gem_p"),
])
def test_bad_arguments_name_the_field(kw, field):
    with pytest.raises(VireidError, match=field.replace(".", "\\.")):
        build_model("resnet18_half", pretrained="none", **kw)
