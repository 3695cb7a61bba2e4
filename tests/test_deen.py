"""DEEN (docs/recipes/deen.md): its losses against hand-computed values and an independent transcription of the
official procedure, and its network pieces (MFA, DEE, the expanded batch, the test feature) against their
definitions on tiny inputs. Small backbones and small images keep this fast on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

from vireid.errors import ConfigError
from vireid.losses.deen import (
    center_pair_mining,
    deen_expansion_terms,
    expansion_orthogonality,
)
from vireid.models import EvalOutput, TrainOutput
from vireid.models.backbones import resnet18_half_random
from vireid.models.deen import (
    ChannelNonLocal,
    DEEModule,
    MFABlock,
    PairedNonLocal,
    build_deen_model,
    split_branches,
)

H, W = 64, 32


def _small(stages: int = 4, **kw) -> torch.nn.Module:
    torch.manual_seed(kw.pop("seed", 0))
    return build_deen_model("resnet18_half", num_classes=kw.pop("num_classes", 5), pretrained="none",
                            stages=stages, **kw)


def _batch(b: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))
    return x, torch.tensor([0] * (b // 2) + [1] * (b - b // 2))


# --------------------------------------------------------------------------------------------------------------------
# center-guided pair mining (CPM)


def _cpm_example(grad: bool = False):
    """Two identities, one image each per modality, 1-D features (distances are absolute differences).

    A (original visible) = 0, 3   B (original infrared) = 1, 5   C (expanded visible) = 0.5, 1.5
    D (expanded infrared) = 2, 4.5
    L_v: d(B,C) = .5, 3.5; d(A,C) = .5, 1.5 -> mean(relu(.2), relu(2.2)) = 1.2;
         nearest other C: 1, 1 -> mean(relu(-.3), relu(2.7)) = 1.35; nearest other A: 3, 3 -> mean(0, .7) = .35
         L_v = 1.2 + (1.35 + .35) / 2 = 2.05
    L_i: d(A,D) = 2, 1.5; d(B,D) = 1, .5 -> mean(1.2, 1.2) = 1.2; nearest other D: 2.5 -> 0; nearest other B: 4 -> 0
         L_i = 1.2
    CPM = (2.05 + 1.2) / 2 = 1.625
    """
    a = torch.tensor([[0.0], [3.0]], requires_grad=grad)
    b = torch.tensor([[1.0], [5.0]])
    c = torch.tensor([[0.5], [1.5]])
    d = torch.tensor([[2.0], [4.5]])
    original = torch.cat([a, b])
    expanded = torch.cat([c, d])
    labels = torch.tensor([0, 1, 0, 1])
    modalities = torch.tensor([0, 0, 1, 1])
    return a, original, expanded, labels, modalities


def test_cpm_hand_value():
    _, original, expanded, labels, modalities = _cpm_example()
    assert center_pair_mining(original, expanded, labels, modalities).item() == pytest.approx(1.625, abs=1e-6)


def test_cpm_gradient_stops_at_the_source_distance():
    """d(A, C) and d(B, D) are detached in the reference: A gets gradient only from d(A, D) (L_i, active for both
    identities: ½·½·sign(A − D) = −0.25 each) and from the nearest-other-A term of L_v (identity 1 only:
    ½·½·½·∓1 = ±0.125). dCPM/dA = [−0.25 + 0.125, −0.25 − 0.125] = [−0.125, −0.375]. Without the stop-gradient
    the d(A, C) term would add ½·½·[+1, −1] = [+0.25, −0.25]."""
    a, original, expanded, labels, modalities = _cpm_example(grad=True)
    center_pair_mining(original, expanded, labels, modalities).backward()
    assert a.grad.flatten().tolist() == pytest.approx([-0.125, -0.375], abs=1e-6)


def _reference_cpm(inputs: torch.Tensor, targets: torch.Tensor, margin: float = 0.2) -> float:
    """An independent transcription of the official procedure: four quarters (visible, infrared, expanded visible,
    expanded infrared), each cut into consecutive per-identity groups, full centre distance matrices, and the mask of
    the sorted unique labels compared with themselves."""
    quarters = torch.chunk(inputs, 4, 0)
    lbs = torch.unique(torch.chunk(targets, 4, 0)[0])
    n = lbs.numel()
    cen = [torch.stack([g.mean(0) for g in q.chunk(n, 0)]) for q in quarters]

    def dist(x, y):
        return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None] - 2 * x @ y.t()).clamp(min=1e-12).sqrt()

    mask = lbs[None, :] == lbs[:, None]

    def hinge(an, ap):
        return sum(max(0.0, float(ap[i] - an[i]) + margin) for i in range(n)) / n

    def half(p, q, s, t, u):   # ap = d(p, q) on the mask, an = d(s, q) on the mask, others from d(t,t) and d(u,u)
        ap = [dist(p, q)[i][mask[i]].max() for i in range(n)]
        an = [dist(s, q)[i][mask[i]].min() for i in range(n)]
        o1 = [dist(t, t)[i][~mask[i]].min() for i in range(n)]
        o2 = [dist(u, u)[i][~mask[i]].min() for i in range(n)]
        return hinge(an, ap) + 0.5 * (hinge(o1, ap) + hinge(o2, ap))

    c1, c2, c3, c4 = cen
    return (half(c2, c3, c1, c3, c1) + half(c1, c4, c2, c4, c2)) / 2


def test_cpm_matches_the_reference_procedure_and_ignores_row_order():
    g = torch.Generator().manual_seed(0)
    p, k, dim = 3, 2, 5
    ids = torch.tensor([7, 2, 4]).repeat_interleave(k)           # the sampler's order (not sorted)
    original = torch.randn(2 * p * k, dim, generator=g)
    expanded = torch.randn(2 * p * k, dim, generator=g)
    labels = torch.cat([ids, ids])
    modalities = torch.tensor([0] * (p * k) + [1] * (p * k))
    expected = _reference_cpm(torch.cat([original, expanded]), torch.cat([labels, labels]))
    got = center_pair_mining(original, expanded, labels, modalities)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    perm = torch.randperm(2 * p * k, generator=g)
    shuffled = center_pair_mining(original[perm], expanded[perm], labels[perm], modalities[perm])
    assert shuffled.item() == pytest.approx(expected, rel=1e-5)


def test_cpm_refuses_batches_it_cannot_score():
    _, original, expanded, labels, modalities = _cpm_example()
    with pytest.raises(ValueError, match="at least two identities"):
        center_pair_mining(original, expanded, torch.zeros(4, dtype=torch.long), modalities)
    with pytest.raises(ValueError, match="same identities"):
        center_pair_mining(original, expanded, torch.tensor([0, 1, 0, 2]), modalities)
    with pytest.raises(ValueError, match="same shape"):
        center_pair_mining(original, expanded[:2], labels, modalities)


# --------------------------------------------------------------------------------------------------------------------
# orthogonality between the expansions


def test_orthogonality_hand_value():
    """B = 2, two expansions: <(1,2),(3,0)> + <(0,1),(2,2)> = 3 + 2 = 5 over 3·B = 6 rows."""
    original = torch.tensor([[9.0, 9.0], [9.0, 9.0]])
    e1 = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    e2 = torch.tensor([[3.0, 0.0], [2.0, 2.0]])
    assert expansion_orthogonality(torch.cat([original, e1, e2]), 3).item() == pytest.approx(5 / 6)


def test_orthogonality_sums_every_pair_of_expansions():
    """Three expansions of one sample: <e1,e2> + <e1,e3> + <e2,e3> = 2 + 3 + 6 = 11 over 4 rows; one expansion: 0."""
    x = torch.tensor([[5.0], [1.0], [2.0], [3.0]])
    assert expansion_orthogonality(x, 4).item() == pytest.approx(11 / 4)
    assert expansion_orthogonality(x[:2], 2).item() == 0.0
    with pytest.raises(ValueError, match="blocks"):
        expansion_orthogonality(x[:3], 2)


def test_expansion_terms_sum_cpm_over_expansions():
    _, original, expanded, labels, modalities = _cpm_example()
    second = expanded * 2.0
    pooled = torch.cat([original, expanded, second])
    terms = deen_expansion_terms(pooled, labels, modalities, 3)
    expected_cpm = (center_pair_mining(original, expanded, labels, modalities)
                    + center_pair_mining(original, second, labels, modalities))
    assert terms["cpm"].item() == pytest.approx(expected_cpm.item())
    assert terms["ort"].item() == pytest.approx(expansion_orthogonality(pooled, 3).item())


# --------------------------------------------------------------------------------------------------------------------
# MFA blocks


def _unit_out_bn(block: torch.nn.Module) -> None:
    """Make the output BN a known map in eval mode: weight 1, bias 0, stats (0, 1) -> y / sqrt(1 + eps)."""
    with torch.no_grad():
        block.out_bn.weight.fill_(1.0)
        block.out_bn.bias.zero_()
    block.eval()


def _conv(m: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, m.weight, m.bias, stride=m.stride)


def test_mfa_block_starts_as_the_identity():
    torch.manual_seed(0)
    block = MFABlock(high_channels=8, low_channels=4, stride=2)
    x_h, x_l = torch.randn(3, 8, 4, 2), torch.randn(3, 4, 8, 4)
    assert torch.equal(block(x_h, x_l), x_h)
    block.eval()
    assert torch.equal(block(x_h, x_l), x_h)


def test_channel_non_local_formula():
    torch.manual_seed(0)
    m = ChannelNonLocal(high_channels=6, low_channels=4, stride=2)
    _unit_out_bn(m)
    x_h, x_l = torch.randn(2, 6, 3, 2), torch.randn(2, 4, 6, 4)
    g, th, ph = _conv(m.g, x_l), _conv(m.theta, x_h), _conv(m.phi, x_l)
    expected = torch.empty_like(x_h)
    for b in range(2):
        attention = torch.einsum("cp,dp->cd", th[b].flatten(1), ph[b].flatten(1)) / 4   # [C_l, C_l] / C_l
        y = (attention @ g[b].flatten(1)).reshape(1, 4, 6, 4)
        expected[b] = x_h[b] + _conv(m.out_conv, y)[0] / math.sqrt(1 + m.out_bn.eps)
    assert torch.allclose(m(x_h, x_l), expected, atol=1e-5)


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """[c, H, W] -> [N/2, 2c]: pair j holds channel k at position j (column 2k) and at position j + N/2 (2k + 1)."""
    c = t.shape[0]
    flat = t.flatten(1)
    half = flat.shape[1] // 2
    out = torch.empty(half, 2 * c)
    for j in range(half):
        for k in range(c):
            out[j, 2 * k] = flat[k, j]
            out[j, 2 * k + 1] = flat[k, j + half]
    return out


def _unpairs(y: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    half = y.shape[0]
    flat = torch.empty(c, 2 * half)
    for j in range(half):
        for k in range(c):
            flat[k, j] = y[j, 2 * k]
            flat[k, j + half] = y[j, 2 * k + 1]
    return flat.reshape(c, h, w)


def test_paired_non_local_reference_layout():
    """The official view of a [c, H, W] map as [2c, N/2]: attention over the N/2 position pairs (p, p + N/2)."""
    torch.manual_seed(0)
    m = PairedNonLocal(high_channels=6, low_channels=4)       # c = 2 inner channels, viewed as 4 rows
    _unit_out_bn(m)
    x_h, x_l = torch.randn(2, 6, 2, 2), torch.randn(2, 4, 4, 2)
    g, th, ph = _conv(m.g, x_l), _conv(m.theta, x_h), _conv(m.phi, x_l)
    expected = torch.empty_like(x_h)
    for b in range(2):
        u_th, u_ph, u_g = _pairs(th[b]), _pairs(ph[b]), _pairs(g[b])      # [2, 4], [4, 4], [4, 4]
        y = (u_th @ u_ph.t()) / u_ph.shape[0] @ u_g                           # [N_h/2, 4]
        y = _unpairs(y, 2, 2, 2).unsqueeze(0)
        expected[b] = x_h[b] + _conv(m.out_conv, y)[0] / math.sqrt(1 + m.out_bn.eps)
    assert torch.allclose(m(x_h, x_l), expected, atol=1e-5)


def test_paired_non_local_positions_layout():
    torch.manual_seed(0)
    m = PairedNonLocal(high_channels=6, low_channels=4, layout="positions")
    _unit_out_bn(m)
    x_h, x_l = torch.randn(2, 6, 2, 2), torch.randn(2, 4, 4, 2)
    g, th, ph = _conv(m.g, x_l), _conv(m.theta, x_h), _conv(m.phi, x_l)
    expected = torch.empty_like(x_h)
    for b in range(2):
        f = th[b].flatten(1).t() @ ph[b].flatten(1) / 8                      # [N_h, N_l] / N_l
        y = (f @ g[b].flatten(1).t()).t().reshape(1, 2, 2, 2)
        expected[b] = x_h[b] + _conv(m.out_conv, y)[0] / math.sqrt(1 + m.out_bn.eps)
    assert torch.allclose(m(x_h, x_l), expected, atol=1e-5)


def test_paired_non_local_reference_layout_needs_an_even_number_of_positions():
    m = PairedNonLocal(high_channels=6, low_channels=4)
    with pytest.raises(ValueError, match="even number of positions"):
        m(torch.randn(1, 6, 3, 1), torch.randn(1, 4, 3, 1))


# --------------------------------------------------------------------------------------------------------------------
# DEE module


def test_dee_module_stacks_the_input_and_its_expansions():
    torch.manual_seed(0)
    dee = DEEModule(channels=8, expansions=2).eval()
    x = torch.randn(3, 8, 5, 4)
    out = dee(x)
    assert out.shape == (9, 8, 5, 4)
    assert torch.equal(out[:3], x)
    for k, branch in enumerate(dee.branches):
        convs = [F.conv2d(x, c.weight, None, padding=d, dilation=d) for c, d in zip(branch.dilated, (1, 2, 3))]
        assert all(c.out_channels == 2 and c.bias is None for c in branch.dilated)
        expected = F.conv2d(F.relu(sum(convs) / 3), branch.project.weight, branch.project.bias)
        assert torch.allclose(out[3 * (k + 1): 3 * (k + 2)], expected, atol=1e-5)


def test_dee_dropout_only_in_training():
    torch.manual_seed(0)
    dee = DEEModule(channels=4, expansions=1, dropout=0.5)
    x = torch.ones(2, 4, 8, 8)
    assert (dee(x)[:2] == 0).any()              # dropout acts on the original rows too, as in the reference
    assert torch.equal(dee.eval()(x)[:2], x)


# --------------------------------------------------------------------------------------------------------------------
# the network


@pytest.mark.parametrize("stages, width", [(4, 256), (3, 128)])
def test_train_and_eval_outputs(stages, width):
    model = _small(stages)
    x, modality = _batch()
    out = model(x, modality)
    assert isinstance(out, TrainOutput)
    assert out.pooled.shape == (24, width) and out.bn.shape == (24, width) and out.logits.shape == (24, 5)
    model.eval()
    with torch.no_grad():
        feats = model(x, modality)
    assert isinstance(feats, EvalOutput)
    assert feats.bn.shape == (8, 6 * width) and model.feature_dim == 6 * width
    assert feats.pooled.shape == (8, 3 * width)
    assert torch.allclose(feats.bn.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(feats.pooled.norm(dim=1), torch.ones(8), atol=1e-5)


def test_regdb_network_ends_at_layer3_and_every_parameter_learns():
    """stages=3: no layer4 and no MFA3 (DDP needs every parameter to get a gradient)."""
    for stages in (3, 4):
        model = _small(stages)
        assert ("layer4" in dict(model.backbone.shared.named_children())) == (stages == 4)
        assert len(model.mfa) == stages - 1
        x, modality = _batch()
        out = model(x, modality)
        (out.logits.sum() + out.pooled.sum()).backward()
        silent = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert silent == []


def test_original_rows_do_not_depend_on_the_expansions_in_eval_mode():
    model = _small().eval()
    x, modality = _batch()
    with torch.no_grad():
        pooled = model.pooling(model.forward_features(x, modality))
        for p in model.dee.parameters():
            p.add_(0.5)
        pooled2 = model.pooling(model.forward_features(x, modality))
    assert torch.allclose(pooled[:8], pooled2[:8], atol=1e-6)
    assert not torch.allclose(pooled[8:], pooled2[8:], atol=1e-3)


@pytest.mark.parametrize("a", [0.5, 0.1])
def test_eval_feature_reproduces_the_official_similarity(a):
    """test.py: similarity = Σ_k a·<n(p_k), n(p'_k)> + (1 − a)·<n(b_k), n(b'_k)> over the three branches
    (distmat7 at a = 0.5 up to a factor 2, distmat8 at a = 0.1); ours is that over the number of branches."""
    model = _small(eval_pool_weight=a).eval()
    x, modality = _batch()
    with torch.no_grad():
        feats = model(x, modality).bn
        pooled = model.pooling(model.forward_features(x, modality))
        bn = model.neck(pooled)
    p = split_branches(F.normalize(pooled, dim=1), 3)
    b = split_branches(F.normalize(bn, dim=1), 3)
    official = sum(a * pk @ pk.t() + (1 - a) * bk @ bk.t() for pk, bk in zip(p, b))
    assert torch.allclose(feats @ feats.t(), official / 3, atol=1e-5)


def test_eval_original_branch_only():
    model = _small(eval_branches="original", eval_pool_weight=0.0).eval()
    x, modality = _batch()
    with torch.no_grad():
        feats = model(x, modality).bn
        bn = model.neck(model.pooling(model.forward_features(x, modality)))
    assert model.feature_dim == 256
    assert torch.allclose(feats, F.normalize(bn[:8], dim=1), atol=1e-6)


def test_head_and_backbone_parameters_partition_the_model():
    model = _small()
    head = {id(p) for p in model.head_parameters()}
    rest = {id(p) for p in model.backbone_parameters()}
    assert head.isdisjoint(rest) and head | rest == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.neck.parameters()} | {id(p) for p in model.classifier.parameters()} == head
    assert all(id(p) in rest for p in [*model.mfa.parameters(), *model.dee.parameters()])
    assert not model.neck.bn.bias.requires_grad
    assert model.classifier.fc.bias is None


def test_neck_and_classifier_initialisation():
    """The official weights_init_kaiming on BatchNorm1d (N(1, 0.01)) and weights_init_classifier (N(0, 0.001))."""
    model = build_deen_model("resnet18_half", num_classes=2000, pretrained="none")
    w = model.neck.bn.weight.detach()
    assert abs(w.mean().item() - 1.0) < 0.003 and 0.007 < w.std().item() < 0.013
    c = model.classifier.fc.weight.detach()
    assert abs(c.mean().item()) < 5e-5 and 0.0009 < c.std().item() < 0.0011


def test_pretrained_file_goes_into_both_stems_and_the_shared_stages(tmp_path):
    torch.manual_seed(3)
    template = resnet18_half_random()
    path = tmp_path / "r18half.pth"
    torch.save(template.state_dict(), path)
    model = build_deen_model("resnet18_half", num_classes=3, pretrained=str(path), stages=3)
    assert torch.equal(model.backbone.visible.conv1.weight, template.conv1.weight)
    assert torch.equal(model.backbone.infrared.conv1.weight, template.conv1.weight)
    assert torch.equal(model.backbone.shared.layer3[1].conv2.weight, template.layer3[1].conv2.weight)
    assert isinstance(model.backbone.shared.layer1[0], BasicBlock)
    assert model.build_kwargs["pretrained"] == str(path) and model.build_kwargs["stages"] == 3


@pytest.mark.parametrize("kwargs, field", [
    ({"stages": 5}, "stages"), ({"mfa": 1}, "mfa"), ({"pnl_layout": "x"}, "pnl_layout"),
    ({"expansions": 0}, "expansions"), ({"dee_dropout": 1.0}, "dee_dropout"),
    ({"eval_pool_weight": 2.0}, "eval_pool_weight"), ({"eval_branches": "some"}, "eval_branches"),
    ({"num_classes": -1}, "num_classes"),
])
def test_build_refuses_bad_options(kwargs, field):
    args = {"arch": "resnet18_half", "pretrained": "none", **kwargs}
    with pytest.raises(ConfigError, match=field):
        build_deen_model(**args)


def test_rebuild_from_build_kwargs_gives_the_same_network():
    model = _small(stages=3, expansions=3, eval_pool_weight=0.1)
    clone = build_deen_model(**{**model.build_kwargs, "pretrained": "none"})
    clone.load_state_dict(model.state_dict())
    x, modality = _batch()
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x, modality).bn, clone(x, modality).bn)
    assert clone.dee.expansions == 3 and clone.branches == 4


# --------------------------------------------------------------------------------------------------------------------
# the method plug-in and its recipes


def test_recipe_configs_load_with_published_pools():
    from pathlib import Path

    from vireid.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "deen"
    for name, stages, area in (("sysu", 4, (0.2, 0.8)), ("regdb", 3, (0.02, 0.4)), ("llcm", 4, (0.02, 0.4))):
        cfg = load_config(root / f"{name}.yaml")
        assert cfg.method.name == "deen" and cfg.method.stages == stages
        assert cfg.train.validation == "none" and cfg.train.epochs == 151
        assert (cfg.data.height, cfg.data.width) == (384, 144)
        assert (cfg.sampler.num_ids, cfg.sampler.num_instances) == (6, 4)
        assert tuple(cfg.augment.erasing_area) == area and cfg.augment.erasing == 0.5
        assert list(cfg.train.milestones) == [20, 80] and cfg.train.warmup_epochs == 10 and cfg.train.lr == 0.1
        assert cfg.eval.flip
    assert load_config(root / "regdb.yaml").data.trials == list(range(1, 11))
    assert load_config(root / "llcm.yaml").eval.direction == "i2v"


def test_deen_grayscale_equals_pil():
    from PIL import Image

    from vireid.methods.deen import RandomGrayscaleU8

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8, generator=g)
    op = RandomGrayscaleU8(1.0)
    out = op(x, g)
    for b in range(2):
        pil = Image.fromarray(x[b].permute(1, 2, 0).numpy()).convert("L")
        expected = torch.from_numpy(__import__("numpy").array(pil)).expand(3, -1, -1)
        assert torch.equal(out[b], expected)
    assert torch.equal(RandomGrayscaleU8(0.0)(x, g), x)


def test_deen_erasing_fill():
    from vireid.methods.deen import DEEN_ERASING_FILL, deen_train_transform

    t = deen_train_transform(16, 8, pad=0, flip=0.0, grayscale=0.0, erasing=1.0, erasing_area=(0.5, 0.5))
    out = t(torch.zeros(1, 3, 16, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    values = {tuple(round(v, 4) for v in out[0, :, i, j].tolist()) for i in range(16) for j in range(8)}
    assert tuple(round(v, 4) for v in DEEN_ERASING_FILL) in values


def test_method_loss_terms_match_the_official_composition():
    from vireid.losses import batch_hard_triplet, cross_entropy
    from vireid.methods.base import Batch
    from vireid.methods.deen import DEEN

    model = _small(num_classes=2)
    method = DEEN(model, height=H, width=W)
    x, modality = _batch(8)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    torch.manual_seed(5)
    terms = method.training_step(Batch(x, labels, modality, torch.full((8,), -1)))
    torch.manual_seed(5)
    out = model(x, modality)
    lab3 = labels.repeat(3)
    ext = deen_expansion_terms(out.pooled, labels, modality, 3)
    expected = (cross_entropy(out.logits, lab3) + batch_hard_triplet(out.pooled, lab3, margin=0.3)
                + 0.8 * ext["cpm"] + 0.01 * ext["ort"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["cpm"].item() == pytest.approx(0.8 * ext["cpm"].item(), rel=1e-4)


def test_too_few_identities_per_process_is_refused_before_building():
    """Under torchrun each process gets num_ids / world_size identities; CPM needs two (a one-line error up front,
    not a traceback at the first step)."""
    from types import SimpleNamespace

    from vireid.errors import ConfigError
    from vireid.methods.deen import DEENSettings, build_deen

    ctx = SimpleNamespace(sampler=SimpleNamespace(num_ids=2), world_size=2, augment=None, data=None)
    with pytest.raises(ConfigError, match="sampler.num_ids=2 over 2 processes leaves 1 identity"):
        build_deen(DEENSettings(), ctx, 10)
