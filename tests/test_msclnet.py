"""MSCLNet: training-only modules, the Mogrifier cell, term switches, learning, gradients and test-time isolation.

Tiny and fast: resnet18_half without pretrained weights, 64x32 images, 2 identities x (2 RGB + 2 IR).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import vireid.methods.msclnet as msc
from vireid.data.transforms import agw_train_transform
from vireid.errors import ConfigError, DataError
from vireid.methods.msclnet import DEFAULT_WEIGHTS, MSCLNetMethod
from vireid.models import build_model
from vireid.models.msclnet_modules import (
    FeatureInstanceNorm,
    ModalityIdentityClassifier,
    MogrifierLSTMCell,
    SynergyEncoder,
    class_centers,
    horizontal_parts,
    pair_by_identity,
    subclass_labels,
)

H, W = 64, 32
NUM_CLASSES = 4


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch="resnet18_half", num_classes=NUM_CLASSES, pretrained="none")


def _method(seed: int = 0, **kwargs) -> MSCLNetMethod:
    model = _model(seed)
    torch.manual_seed(seed + 1)
    kwargs.setdefault("hidden_size", 16)
    return MSCLNetMethod(model, NUM_CLASSES, height=H, width=W, **kwargs)


def _u8(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Two identities with different mean colours so the task is learnable; IR is gray-ish.
    base = torch.tensor([40, 200]).repeat_interleave(2).view(4, 1, 1, 1)
    rgb = (base + torch.randint(0, 40, (4, 3, H, W), generator=g)).clamp(0, 255).to(torch.uint8)
    ir = (base.flip(0) // 2 + torch.randint(0, 40, (4, 1, H, W), generator=g)).expand(4, 3, H, W)
    return rgb, ir.clamp(0, 255).to(torch.uint8).contiguous()


LABELS = torch.tensor([0, 0, 1, 1])
RGB_CAMS = torch.tensor([0, 1, 0, 1])
IR_CAMS = torch.tensor([2, 2, 5, 2])


def _batch(method: MSCLNetMethod, seed: int = 0, cams: bool = True):
    rgb, ir = _u8(seed)
    g = torch.Generator().manual_seed(seed)
    if cams:
        return method.make_batch(rgb, ir, LABELS, LABELS, g, RGB_CAMS, IR_CAMS)
    return method.make_batch(rgb, ir, LABELS, LABELS, g)


# ---------------------------------------------------------------------------------------------------------------------
# Modules


def test_training_only_modules_are_not_in_the_model_state_dict() -> None:
    method = _method()
    reference_keys = set(_model().state_dict())
    model_keys = set(method.model.state_dict())
    assert model_keys == reference_keys  # building the method added nothing to the model
    method_keys = set(method.state_dict())
    extra = method_keys - {f"model.{k}" for k in model_keys}
    assert extra and all(k.startswith(("synergy.", "instance_norm.", "t_classifier.")) for k in extra)
    assert any("cell.q." in k for k in extra) and any("cell.r." in k for k in extra)
    model_params = {id(p) for p in method.model.parameters()}
    assert not any(id(p) in model_params for p in method.training_only_parameters())


def test_mogrifier_with_zero_rounds_is_lstmcell() -> None:
    torch.manual_seed(0)
    cell = MogrifierLSTMCell(10, 6, rounds=0)
    ref = nn.LSTMCell(10, 6)
    ref.load_state_dict(cell.lstm.state_dict())
    x, h, c = torch.randn(3, 10), torch.randn(3, 6), torch.randn(3, 6)
    h1, c1 = cell(x, (h, c))
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    assert len(cell.q) == 0 and len(cell.r) == 0


def test_mogrifier_rounds_follow_the_gating_rule() -> None:
    torch.manual_seed(1)
    cell = MogrifierLSTMCell(5, 4, rounds=5)
    assert (len(cell.q), len(cell.r)) == (3, 2)  # rounds 1, 3, 5 gate x; rounds 2, 4 gate h
    x, h, c = torch.randn(2, 5), torch.randn(2, 4), torch.randn(2, 4)
    q = [m.proj.weight for m in cell.q]
    r = [m.proj.weight for m in cell.r]
    ex, eh = x.clone(), h.clone()
    ex = 2 * torch.sigmoid(eh @ q[0].T) * ex
    eh = 2 * torch.sigmoid(ex @ r[0].T) * eh
    ex = 2 * torch.sigmoid(eh @ q[1].T) * ex
    eh = 2 * torch.sigmoid(ex @ r[1].T) * eh
    ex = 2 * torch.sigmoid(eh @ q[2].T) * ex
    mx, mh = cell.mogrify(x, h)
    torch.testing.assert_close(mx, ex)
    torch.testing.assert_close(mh, eh)
    torch.testing.assert_close(cell(x, (h, c))[0], cell.lstm(ex, (eh, c))[0])
    # A mogrifier that gates nothing (zero matrices: 2*sigmoid(0) = 1) is the plain LSTM again.
    for gate in [*cell.q, *cell.r]:
        nn.init.zeros_(gate.proj.weight)
    torch.testing.assert_close(cell(x, (h, c))[0], cell.lstm(x, (h, c))[0])


def test_low_rank_mogrifier_and_interleaved_encoder_shapes() -> None:
    torch.manual_seed(0)
    for fusion in ("concat", "interleave"):
        enc = SynergyEncoder(8, hidden_size=5, rounds=4, rank=2, fusion=fusion)
        v, r = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
        out = enc(v, r)
        assert out.shape == (3, 6, 8)
        # Causal along the stripes: changing the last stripe leaves earlier outputs unchanged.
        r2 = r.clone()
        r2[:, -1] += 1.0
        out2 = enc(v, r2)
        torch.testing.assert_close(out[:, :-1], out2[:, :-1])
        assert not torch.allclose(out[:, -1], out2[:, -1])
    with pytest.raises(ValueError):
        enc(torch.randn(3, 6, 8), torch.randn(2, 6, 8))


def test_instance_norm_parts_pairing_and_centres() -> None:
    fmap = torch.randn(2, 3, 6, 2) * 5 + 7
    normed = FeatureInstanceNorm(3)(fmap)
    torch.testing.assert_close(normed.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)
    parts = horizontal_parts(fmap, 3)
    assert parts.shape == (2, 3, 3)
    torch.testing.assert_close(parts[:, 1], fmap[:, :, 2:4].mean(dim=(2, 3)))
    torch.testing.assert_close(horizontal_parts(fmap, 3, "max")[:, 0], fmap[:, :, :2].amax(dim=(2, 3)))

    iv, ir = pair_by_identity(torch.tensor([3, 3, 5, 7]), torch.tensor([5, 3, 9, 3, 3]))
    assert iv.tolist() == [0, 1, 2] and ir.tolist() == [1, 3, 0]
    iv, ir = pair_by_identity(LABELS, LABELS)
    assert iv.tolist() == ir.tolist() == [0, 1, 2, 3]

    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    centres, classes, inverse = class_centers(f, torch.tensor([4, 1, 4]))
    torch.testing.assert_close(centres, torch.tensor([[3.0, 2.0], [3.0, 2.5]]))
    assert classes.tolist() == [1, 4] and inverse.tolist() == [1, 0, 1]
    sub = subclass_labels(torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 2, 1]), torch.tensor([3, 3, 3, 3]))
    assert sub[0] == sub[1] and len({int(s) for s in sub}) == 3


def test_instance_norm_is_affine_by_default_and_matches_eq1_by_hand() -> None:
    # Eq. 1: IN(x) = gamma * (x - mu) / sqrt(sigma^2 + eps) + beta, per sample and channel, biased variance.
    # channel 0 = [[1, 3], [1, 3]]: mu 2, sigma^2 ((1 + 1 + 1 + 1) / 4) = 1
    #                                  -> x_hat = [[-1, 1], [-1, 1]] / sqrt(1 + eps)
    # channel 1 = [[0, 0], [4, 4]]: mu 2, sigma^2 (4 * 4 / 4) = 4    -> x_hat = [[-2, -2], [2, 2]] / sqrt(4 + eps)
    eps = 1e-5
    x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]], [[0.0, 0.0], [4.0, 4.0]]]])
    norm = FeatureInstanceNorm(2)
    assert isinstance(norm.gamma, nn.Parameter) and isinstance(norm.beta, nn.Parameter)
    assert {n for n, _ in norm.named_parameters()} == {"norm.weight", "norm.bias"}
    assert norm.gamma.requires_grad and norm.beta.requires_grad
    torch.testing.assert_close(norm.gamma.detach(), torch.ones(2))  # starts as the identity affine map
    torch.testing.assert_close(norm.beta.detach(), torch.zeros(2))
    with torch.no_grad():
        norm.gamma.copy_(torch.tensor([2.0, 0.5]))
        norm.beta.copy_(torch.tensor([1.0, -1.0]))
    r0, r1 = 1.0 / (1.0 + eps) ** 0.5, 2.0 / (4.0 + eps) ** 0.5
    # channel 0: 2 * (-+r0) + 1 ; channel 1: 0.5 * (-+r1) - 1
    expected = torch.tensor([[[[1 - 2 * r0, 1 + 2 * r0], [1 - 2 * r0, 1 + 2 * r0]],
                              [[-1 - 0.5 * r1, -1 - 0.5 * r1], [-1 + 0.5 * r1, -1 + 0.5 * r1]]]])
    out = norm(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # trained: L = out[0,0,0,1] + out[0,1,1,0] -> dL/dgamma = (x_hat_0(0,1), x_hat_1(1,0)) = (r0, r1), dL/dbeta = (1, 1)
    (out[0, 0, 0, 1] + out[0, 1, 1, 0]).backward()
    torch.testing.assert_close(norm.gamma.grad, torch.tensor([r0, r1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.beta.grad, torch.tensor([1.0, 1.0]))
    torch.optim.SGD(norm.parameters(), lr=0.1).step()
    torch.testing.assert_close(norm.gamma.detach(), torch.tensor([2.0 - 0.1 * r0, 0.5 - 0.1 * r1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.beta.detach(), torch.tensor([0.9, -1.1]))
    # the parameter-free option: no gamma/beta, output = x_hat
    plain = FeatureInstanceNorm(2, affine=False)
    assert plain.gamma is None and plain.beta is None and not list(plain.parameters())
    x_hat = torch.tensor([[[[-r0, r0], [-r0, r0]], [[-r1, -r1], [r1, r1]]]])
    torch.testing.assert_close(plain(x), x_hat, atol=1e-6, rtol=0)


def test_lt_classifier_is_a_bnneck_and_bias_free_linear_per_stripe_shared_or_per_modality() -> None:
    shared = ModalityIdentityClassifier(3, 2, parts=2)
    names = [n for n, p in shared.named_parameters() if p.requires_grad]
    assert names == ["necks.0.bn.weight", "necks.1.bn.weight", "heads.0.fc.weight", "heads.1.fc.weight"]  # no bias
    assert not shared.necks[0].bn.bias.requires_grad
    with torch.no_grad():
        shared.heads[0].fc.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]))
        shared.heads[1].fc.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0]]))
    shared.eval()  # the neck then uses its initial running statistics: y = x / sqrt(1 + 1e-5)
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])     # one sample, 2 stripes of 3 channels
    s = (1 + 1e-5) ** -0.5
    # stripe 0: [1 - 3, 0.5 + 4] = [-2, 4.5]; stripe 1: [5, -4 + 12] = [5, 8]; the same heads for both modalities
    for modality in (0, 1):
        torch.testing.assert_close(shared(x, modality), torch.tensor([[[-2.0, 4.5], [5.0, 8.0]]]) * s)
    split = ModalityIdentityClassifier(3, 2, parts=2, per_modality=True)
    assert len(split.heads) == 4
    split(x.repeat(2, 1, 1), 1).sum().backward()                 # modality 1 uses heads 2, 3
    assert all(split.heads[k].fc.weight.grad is None for k in (0, 1))
    assert all(split.heads[k].fc.weight.grad is not None for k in (2, 3))
    with pytest.raises(ValueError, match="modality must be 0"):
        shared(x, 2)
    with pytest.raises(ValueError, match="expected stripes"):
        shared(x.flatten(1), 0)


def test_lt_stays_bounded_at_the_recipe_lr_when_labels_carry_no_signal() -> None:
    # Regression: a single linear map on the concatenated 6 x C stripe means let L_t run away at lr 0.1 (to 2e10 on
    # synthetic SYSU; here, on 60 steps of random labels, to ~2,600). Per-stripe BNNeck heads keep it at the scale
    # of AGW's own CE (observed max 21 here).
    method = _method(erasing="none")
    optimizer = torch.optim.SGD(method.param_groups(0.1, 5e-4), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    values = []
    for step in range(60):
        rgb, ir = _u8(step)
        labels = torch.randint(0, NUM_CLASSES, (4,), generator=g)
        batch = method.make_batch(rgb, ir, labels, labels, torch.Generator().manual_seed(step), RGB_CAMS, IR_CAMS)
        terms = method.training_step(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        values.append(terms["t"].item())
    assert all(map(math.isfinite, values)) and max(values) < 60, max(values)


# ---------------------------------------------------------------------------------------------------------------------
# Batches


def test_make_batch_is_agw_augmentation_rgb_first() -> None:
    method = _method(erasing="paper")
    rgb, ir = _u8(0)
    batch = method.make_batch(rgb, ir, LABELS, LABELS + 0, torch.Generator().manual_seed(3), RGB_CAMS, IR_CAMS)
    t = agw_train_transform(H, W, erasing=0.8, erasing_area=(0.2, 0.8), erasing_ratio=0.3)
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(batch.images, torch.cat([t(rgb, g), t(ir, g)]))
    assert batch.modalities.tolist() == [0] * 4 + [1] * 4
    assert batch.labels.tolist() == LABELS.tolist() * 2
    assert batch.camids.tolist() == RGB_CAMS.tolist() + IR_CAMS.tolist()
    assert _batch(method, cams=False).camids.tolist() == [-1] * 8
    # the AGW preset erases less than the paper's: different images for the same seed
    other = _method(erasing="agw").make_batch(rgb, ir, LABELS, LABELS, torch.Generator().manual_seed(3))
    assert not torch.equal(other.images, batch.images)


# ---------------------------------------------------------------------------------------------------------------------
# Loss terms


def test_training_step_returns_every_weighted_term_and_their_sum() -> None:
    method = _method()
    torch.manual_seed(0)
    terms = method.training_step(_batch(method))
    assert set(terms) == set(DEFAULT_WEIGHTS) | {"loss"}
    assert all(torch.isfinite(v) for v in terms.values())
    total = sum(v for k, v in terms.items() if k != "loss")
    torch.testing.assert_close(terms["loss"], total)
    # weights scale the reported terms
    method2 = _method(weights={"global": 3.0})
    torch.manual_seed(0)
    terms2 = method2.training_step(_batch(method2))
    torch.testing.assert_close(terms2["global"], 2 * terms["global"])


def _raise(*args, **kwargs):
    raise AssertionError("a switched-off term was computed")


@pytest.mark.parametrize("term, function", [
    ("wrt", "weighted_regularized_triplet"),
    ("div", "modality_diversity"),
    ("local", "local_complement"),
    ("global", "global_complement"),
    ("sub", "subclass_center"),
    ("intra", "intra_center"),
    ("inter", "inter_center"),
])
def test_a_switched_off_term_is_absent_and_not_computed(monkeypatch, term: str, function: str) -> None:
    method = _method(weights={term: 0.0})
    monkeypatch.setattr(msc, function, _raise)
    terms = method.training_step(_batch(method))
    assert term not in terms
    assert set(terms) == (set(DEFAULT_WEIGHTS) - {term}) | {"loss"}


def test_with_every_term_on_each_loss_function_is_called_once(monkeypatch) -> None:
    """The counterpart of the switch-off test: the patched names are what computes the terms."""
    calls: dict[str, int] = {}

    def recorder(name: str):
        real = getattr(msc, name)

        def wrapped(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)
        return wrapped

    names = ["weighted_regularized_triplet", "modality_diversity", "local_complement", "global_complement",
             "subclass_center", "intra_center", "inter_center", "cross_entropy"]
    for name in names:
        monkeypatch.setattr(msc, name, recorder(name))
    method = _method()
    method.training_step(_batch(method))
    assert calls == {**{n: 1 for n in names}, "cross_entropy": 3}  # ce + one per modality for L_t


def test_identity_losses_switch_off(monkeypatch) -> None:
    calls: list[int] = []
    real = msc.cross_entropy

    def counting(logits, labels, *a, **k):
        calls.append(int(logits.shape[0]))
        return real(logits, labels, *a, **k)

    monkeypatch.setattr(msc, "cross_entropy", counting)
    method = _method(weights={"ce": 0.0})
    terms = method.training_step(_batch(method))
    # L_t: one CE per modality, over its 4 samples x 6 stripes
    assert "ce" not in terms and "t" in terms and calls == [24, 24]
    calls.clear()
    method = _method(weights={"t": 0.0})
    assert "t" not in method.training_step(_batch(method)) and calls == [8]
    monkeypatch.setattr(msc, "cross_entropy", _raise)
    method = _method(weights={"t": 0.0, "ce": 0.0})
    assert not {"t", "ce"} & set(method.training_step(_batch(method)))


def test_all_msclnet_terms_off_is_agw_star_and_runs_no_training_only_module(monkeypatch) -> None:
    off = {k: 0.0 for k in ("t", "div", "local", "global", "sub", "intra", "inter")}
    method = _method(weights=off)
    monkeypatch.setattr(method.synergy, "forward", _raise)
    monkeypatch.setattr(method.instance_norm, "forward", _raise)
    assert set(method.training_step(_batch(method))) == {"ce", "wrt", "loss"}
    # only div on: instance norm runs, the synergy encoder does not
    method = _method(weights={**off, "div": 0.5})
    monkeypatch.setattr(method.synergy, "forward", _raise)
    assert set(method.training_step(_batch(method))) == {"ce", "wrt", "div", "loss"}


def test_local_variants_differ_and_corrected_is_non_negative() -> None:
    values = {}
    for variant in ("as_printed", "corrected"):
        method = _method(local_variant=variant, weights={"local": 1.0})
        values[variant] = float(method.training_step(_batch(method))["local"])
    assert values["corrected"] >= 0.0
    assert values["as_printed"] != pytest.approx(values["corrected"])


def test_subclass_terms_need_cameras() -> None:
    method = _method()
    with pytest.raises(DataError, match="camera"):
        method.training_step(_batch(method, cams=False))
    method = _method(weights={"sub": 0.0, "intra": 0.0})
    assert "inter" in method.training_step(_batch(method, cams=False))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="MSCLNet has no loss term 'lcoal'"):
        _method(weights={"lcoal": 1.0})
    with pytest.raises(ConfigError):
        _method(weights={"div": -1.0})
    with pytest.raises(ConfigError):
        _method(local_variant="fixed")
    with pytest.raises(ConfigError):
        _method(erasing="strong")
    with pytest.raises(ConfigError, match="unbounded"):
        _method(inter_margin=None, feature_norm="none")


# ---------------------------------------------------------------------------------------------------------------------
# Learning, gradients, optimiser groups


def test_a_few_sgd_steps_lower_the_total_loss() -> None:
    method = _method(local_variant="corrected")
    batch = _batch(method)
    opt = torch.optim.SGD(method.param_groups(lr=0.02, weight_decay=5e-4), momentum=0.9)
    losses = []
    for _ in range(8):
        terms = method.training_step(batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"]))
    assert losses[-1] < losses[0] - 0.1, losses


def _grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_gradients_reach_the_synergy_encoder() -> None:
    method = _method()
    method.training_step(_batch(method))["loss"].backward()
    for name, p in method.synergy.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("mode", ["synergy", "all"])
def test_complement_losses_update_only_the_encoder_by_default(mode: str) -> None:
    only_local = {k: 0.0 for k in DEFAULT_WEIGHTS}
    only_local["local"] = 1.0
    method = _method(weights=only_local, complement_grad=mode)
    method.training_step(_batch(method))["loss"].backward()
    assert _grad_norm(method.synergy.parameters()) > 0
    backbone = _grad_norm(method.model.parameters())
    if mode == "synergy":
        assert backbone == 0.0
    else:
        assert backbone > 0.0


def test_cascade_on_synergy_trains_the_backbone_through_the_encoder() -> None:
    only_cascade = {k: 0.0 for k in DEFAULT_WEIGHTS}
    only_cascade.update(intra=1.0, inter=1.0)
    method = _method(weights=only_cascade, synergy_subclass="infrared")
    method.training_step(_batch(method))["loss"].backward()
    assert _grad_norm(method.synergy.parameters()) > 0
    assert _grad_norm(method.model.parameters()) > 0


def test_param_groups_split_head_backbone_and_training_only_modules() -> None:
    method = _method(backbone_lr_mult=0.1, synergy_lr_mult=0.5)
    groups = {g["name"]: g for g in method.param_groups(lr=0.1, weight_decay=5e-4)}
    assert set(groups) == {"head", "backbone", "msclnet"}
    assert groups["head"]["lr"] == 0.1
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["msclnet"]["lr"] == pytest.approx(0.05)
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in method.parameters() if p.requires_grad}
    trainable = {id(p) for p in method.training_only_parameters() if p.requires_grad}   # not the necks' fixed bias
    assert {id(p) for p in groups["msclnet"]["params"]} == trainable


# ---------------------------------------------------------------------------------------------------------------------
# Test time


def test_eval_output_does_not_depend_on_the_training_only_modules(monkeypatch) -> None:
    method = _method()
    reference = copy.deepcopy(method.model).eval()
    with torch.no_grad():
        for p in method.synergy.parameters():
            p.normal_()
    monkeypatch.setattr(method.synergy, "forward", _raise)
    monkeypatch.setattr(method.instance_norm, "forward", _raise)
    method.eval()
    x = _batch(method).images
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    with torch.no_grad():
        got, want = method.model(x, modality), reference(x, modality)
    torch.testing.assert_close(got.bn, want.bn, rtol=0, atol=0)
    torch.testing.assert_close(got.pooled, want.pooled, rtol=0, atol=0)
    # a fresh model loaded from the method's model weights alone reproduces the method's eval features
    fresh = _model(seed=7)
    fresh.load_state_dict(method.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, modality).bn, got.bn, rtol=0, atol=0)


def test_a_batch_without_cross_modality_pairs_is_refused() -> None:
    method = _method()
    rgb, ir = _u8(0)
    batch = method.make_batch(rgb, ir, LABELS, LABELS + 2, torch.Generator().manual_seed(0), RGB_CAMS, IR_CAMS)
    with pytest.raises(DataError, match="both an RGB and an IR image"):
        method.training_step(batch)


def test_lt_gradient_reaches_only_its_own_classifier_and_the_in_backbone_path() -> None:
    # Only L_t on: its gradient must reach L_t's classifier, the IN's gamma/beta and the backbone, not AGW's head.
    off = {k: 0.0 for k in DEFAULT_WEIGHTS if k != "t"}
    method = _method(weights=off)
    assert method.instance_norm.gamma is not None  # affine IN is the default (Eq. 1)
    terms = method.training_step(_batch(method))
    assert set(terms) == {"t", "loss"}
    terms["loss"].backward()
    assert method.t_classifier.heads[0].fc.weight.grad.abs().sum() > 0
    assert method.instance_norm.gamma.grad.abs().sum() > 0 and method.instance_norm.beta.grad.abs().sum() > 0
    backbone = [p for n, p in method.model.named_parameters() if "layer4" in n and p.grad is not None]
    assert backbone and sum(float(p.grad.abs().sum()) for p in backbone) > 0
    for p in method.model.head_parameters():  # AGW's BNNeck + classifier: untouched
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0
    assert all(p.grad is None for p in method.synergy.parameters())
    ids = {id(p) for g in method.param_groups(0.1, 5e-4) if g["name"] == "msclnet" for p in g["params"]}
    assert id(method.t_classifier.heads[0].fc.weight) in ids and id(method.instance_norm.gamma) in ids


def test_msclnet_defaults_are_the_papers_erasing_and_affine_in() -> None:
    method = _method()
    erasing = [op for op in method.transform.ops if type(op).__name__ == "RandomErasing"]
    assert erasing and erasing[0].p == pytest.approx(0.8) and erasing[0].area == (0.2, 0.8)  # paper Sec. 4.2
    assert isinstance(method.instance_norm.gamma, nn.Parameter)
    # ... and the recipes' settings carry the affine IN of Eq. 1 (not only the module's default)
    from vireid.config import load_config

    root = Path(__file__).resolve().parents[1]
    for recipe in ("sysu", "regdb"):
        assert load_config(root / "configs" / "msclnet" / f"{recipe}.yaml").method.instance_norm_affine is True
    assert msc.MSCLNetSettings().instance_norm_affine is True
