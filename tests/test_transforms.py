"""Tests of the batched transforms against hand-computed values and torchvision's functional ops."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from vireid.data import transforms as T
from vireid.errors import DataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_u8(b: int = 4, h: int = 12, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), generator=gen(seed), dtype=torch.uint8)


# -- normalisation -----------------------------------------------------------------------------------------------

def test_normalize_values_and_inverse():
    x = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    y = T.ToFloatNormalize()(x, gen())
    assert y.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]  # 2.2489, 2.4286, 2.64
    assert y.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    z = torch.zeros((1, 3, 1, 1), dtype=torch.uint8)
    assert T.ToFloatNormalize()(z, gen()).flatten().tolist() == pytest.approx([-2.1179, -2.0357, -1.8044], abs=1e-4)
    u = rand_u8()
    assert torch.equal(T.to_uint8(T.normalize(T.to_float(u))), u)
    assert torch.allclose(T.denormalize(T.normalize(T.to_float(u, torch.float64))), u.double() / 255, atol=1e-12)


# -- pad + crop, flip --------------------------------------------------------------------------------------------

def test_pad_crop_hand_computed_shift():
    x = torch.arange(1, 13, dtype=torch.uint8).view(1, 1, 4, 3).expand(1, 3, 4, 3).contiguous()
    # pad 1: top = left = 1 is the identity
    assert torch.equal(T.pad_crop(x, 1, torch.tensor([1]), torch.tensor([1])), x)
    # top 0 (starts on the zero row), left 2 (starts at original column 1): content moves down 1 and left 1
    out = T.pad_crop(x, 1, torch.tensor([0]), torch.tensor([2]))
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0], [8, 9, 0]]
    assert torch.equal(out[0, 1], out[0, 0]) and torch.equal(out[0, 2], out[0, 0])
    # per-sample offsets
    xb = torch.cat([x, x])
    outb = T.pad_crop(xb, 1, torch.tensor([2, 1]), torch.tensor([0, 1]))
    assert outb[0, 0].tolist() == [[0, 4, 5], [0, 7, 8], [0, 10, 11], [0, 0, 0]]
    assert torch.equal(outb[1], x[0])


def test_pad_crop_matches_torchvision_pad_then_crop():
    x = rand_u8(6, 16, 8)
    op = T.RandomPadCrop(3)
    p = op.sample(x, gen(1))
    out = op.apply(x, p)
    for b in range(6):
        ref = TF.crop(TF.pad(x[b], [3]), int(p["top"][b]), int(p["left"][b]), 16, 8)
        assert torch.equal(out[b], ref)


def test_pad_crop_offsets_cover_range():
    x = torch.zeros((2000, 3, 2, 2), dtype=torch.uint8)
    p = T.RandomPadCrop(2).sample(x, gen())
    assert sorted(p["top"].unique().tolist()) == [0, 1, 2, 3, 4]
    assert sorted(p["left"].unique().tolist()) == [0, 1, 2, 3, 4]


def test_hflip_exact_and_frequency():
    x = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 6).expand(2, 3, 2, 6)
    out = T.hflip(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert out[1, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    m = T.RandomHorizontalFlip(0.5).sample(torch.zeros(4000, 3, 1, 1), gen())["mask"]
    assert abs(m.double().mean().item() - 0.5) < 0.03
    assert not T.RandomHorizontalFlip(0.0).sample(torch.zeros(100, 3, 1, 1), gen())["mask"].any()


# -- random erasing ----------------------------------------------------------------------------------------------

def test_erase_box_and_imagenet_mean_fill_exact():
    x = torch.zeros((2, 3, 5, 4))
    op = T.RandomErasing(1.0, fill="imagenet_mean")
    params = {"top": torch.tensor([1, 0]), "left": torch.tensor([2, 0]), "height": torch.tensor([2, 0]),
              "width": torch.tensor([1, 0])}
    out = op.apply(x, params)
    box = torch.zeros((5, 4), dtype=torch.bool)
    box[1:3, 2:3] = True
    for c, v in enumerate((0.4914, 0.4822, 0.4465)):
        assert torch.equal(out[0, c][box], torch.full((2,), v))
        assert (out[0, c][~box] == 0).all()
    assert (out[1] == 0).all()  # height 0: untouched


@pytest.mark.parametrize("fill,expected", [("zero", (0.0, 0.0, 0.0)), ("mean_pixel", (0.0, 0.0, 0.0)),
                                           ((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))])
def test_erase_constant_fills(fill, expected):
    x = torch.full((64, 3, 20, 10), 7.0, dtype=torch.float64)
    op = T.RandomErasing(1.0, fill=fill)
    p = op.sample(x, gen())
    out = op.apply(x, p)
    assert out.dtype == torch.float64
    for b in range(64):
        t, l, h, w = (int(p[k][b]) for k in ("top", "left", "height", "width"))
        for c in range(3):
            assert (out[b, c, t:t + h, l:l + w] == expected[c]).all()
        assert (out[b] != 7.0).sum().item() == 3 * h * w


def test_mean_pixel_fill_in_pixel_space_and_random_fill():
    x = torch.full((8, 3, 20, 10), 0.9)
    op = T.RandomErasing(1.0, fill="mean_pixel", normalized=False)
    p = op.sample(x, gen())
    out = op.apply(x, p)
    t, l = int(p["top"][0]), int(p["left"][0])
    assert out[0, :, t, l].tolist() == pytest.approx([0.485, 0.456, 0.406])
    opr = T.RandomErasing(1.0, fill="random")
    pr = opr.sample(x, gen(3))
    outr = opr.apply(x, pr)
    erased = outr != 0.9
    assert torch.equal(outr[erased], pr["noise"][erased])  # box filled with the drawn N(0, 1) noise


@pytest.mark.parametrize("p,area,ratio", [(0.5, (0.02, 0.4), 0.3), (0.8, (0.2, 0.8), 0.3)])
def test_erasing_boxes_within_bounds(p, area, ratio):
    h, w = 96, 48
    x = torch.zeros((3000, 3, h, w))
    op = T.RandomErasing(p, area, ratio)
    prm = op.sample(x, gen())
    eh, ew, top, left = prm["height"], prm["width"], prm["top"], prm["left"]
    done = eh > 0
    frac = done.double().mean().item()
    assert frac <= p + 0.03 and frac > p - 0.1  # a few samples find no fitting box in 100 attempts (big areas)
    eh, ew, top, left = eh[done].double(), ew[done].double(), top[done], left[done]
    assert ((eh < h) & (ew < w)).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + eh <= h).all() and (left + ew <= w).all()
    # h = round(sqrt(A a)), w = round(sqrt(A / a)): undo the rounding with +-0.5
    assert ((eh + 0.5) * (ew + 0.5) >= area[0] * h * w).all()
    assert ((eh - 0.5) * (ew - 0.5) <= area[1] * h * w).all()
    assert ((eh + 0.5) / (ew - 0.5) >= ratio).all() and ((eh - 0.5) / (ew + 0.5) <= 1 / ratio).all()
    # number of erased pixels equals h*w per sample
    out = op.apply(torch.zeros((200, 3, h, w)), {k: v[:200] for k, v in prm.items()})
    assert torch.equal((out[:, 0] != 0).sum(dim=(1, 2)), (prm["height"] * prm["width"])[:200])


def test_erasing_aspect_uniform_vs_log_uniform():
    # small areas on a big image always fit, so the chosen aspect is the first draw
    x = torch.empty((4000, 3, 400, 400), device="meta")  # sample() only reads the shape
    for aspect, expected in (("uniform", (1 - 0.3) / (1 / 0.3 - 0.3)), ("log_uniform", 0.5)):
        p = T.RandomErasing(1.0, (0.05, 0.1), 0.3, aspect=aspect).sample(x, gen())
        tall_less_than_wide = (p["height"] < p["width"]).double().mean().item()
        assert abs(tall_less_than_wide - expected) < 0.03, aspect  # uniform: P(a < 1) = 0.7/3.033 = 0.231


# -- channel ops -------------------------------------------------------------------------------------------------

def test_grayscale_weights_and_torchvision():
    x = torch.eye(3).view(3, 3, 1, 1)  # pure R, pure G, pure B
    g = T.grayscale(x)
    assert g[:, 0, 0, 0].tolist() == pytest.approx([0.2989, 0.5870, 0.1140])
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 0], g[:, 2])
    y = torch.rand((2, 3, 4, 5), generator=gen())
    assert torch.allclose(T.grayscale(y), TF.rgb_to_grayscale(y, 3), atol=1e-6)


def test_channel_exchange_copies_one_original_channel():
    x = torch.randn((600, 3, 4, 2), generator=gen())
    op = T.ChannelExchange()
    p = op.sample(x, gen(1))
    out = op.apply(x, p)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    for b in range(600):
        assert torch.equal(out[b, 0], x[b, int(p["channel"][b])])
    freq = torch.bincount(p["channel"], minlength=3).double() / 600
    assert (abs(freq - 1 / 3) < 0.06).all()


def test_adaptive_gray_outcome_frequencies():
    n = 8000
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(n, 3, 2, 2).contiguous()
    out = T.AdaptiveGray(0.5)(x, gen())
    gray = 0.2989 * 1 + 0.5870 * 2 + 0.1140 * 3  # 1.8159
    pix = out[:, :, 0, 0]
    outcomes = {
        "R": (pix == 1.0).all(1), "G": (pix == 2.0).all(1), "B": (pix == 3.0).all(1),
        "gray": (abs(pix - gray) < 1e-6).all(1), "same": (pix == torch.tensor([1.0, 2.0, 3.0])).all(1),
    }
    total = sum(v.sum().item() for v in outcomes.values())
    assert total == n  # every sample is exactly one of the five outcomes
    expected = {"R": 0.25, "G": 0.25, "B": 0.25, "gray": 0.125, "same": 0.125}
    for k, v in outcomes.items():
        assert abs(v.double().mean().item() - expected[k]) < 0.02, k
    # p = 0: never gray, unchanged 1/4;  p = 1: gray 1/4
    out0 = T.AdaptiveGray(0.0)(x, gen())[:, :, 0, 0]
    assert not (abs(out0 - gray) < 1e-6).all(1).any()


# -- colour jitter, blend ----------------------------------------------------------------------------------------

def test_color_jitter_matches_torchvision_functional():
    x = torch.rand((6, 3, 5, 4), generator=gen(), dtype=torch.float64)
    op = T.ColorJitter(0.2, 0.15)
    p = op.sample(x, gen(2))
    out = op.apply(x, p)
    for b in range(6):
        bf, cf = float(p["brightness"][b]), float(p["contrast"][b])
        assert 0.8 <= bf <= 1.2 and 0.85 <= cf <= 1.15
        if p["contrast_first"][b]:
            ref = TF.adjust_brightness(TF.adjust_contrast(x[b], cf), bf)
        else:
            ref = TF.adjust_contrast(TF.adjust_brightness(x[b], bf), cf)
        assert torch.allclose(out[b], ref, atol=1e-6)
    # hand-computed: constant 0.5 gray image, brightness 1.2 -> 0.6; contrast leaves a flat image unchanged
    flat = torch.full((1, 3, 2, 2), 0.5)
    assert torch.allclose(T.adjust_brightness(flat, torch.tensor([1.2])), torch.full_like(flat, 0.6))
    # contrast blends with the gray mean 0.5 * (0.2989 + 0.5870 + 0.1140) = 0.49995 (the weights sum to 0.9999)
    expected = 1.15 * 0.5 + (1 - 1.15) * 0.49995
    assert T.adjust_contrast(flat, torch.tensor([1.15])).flatten().tolist() == pytest.approx([expected] * 12, abs=1e-7)
    assert torch.equal(T.ColorJitter(0.2, 0.15, p=0.0)(x, gen()), x)


def test_blend_arithmetic():
    a, b = torch.full((1, 3, 2, 2), 2.0), torch.full((1, 3, 2, 2), 1.0)
    assert torch.allclose(T.blend_fake_ir(a, b), torch.full_like(a, 0.2 * 2 + 0.8 * 1))
    assert torch.allclose(T.blend_fake_ir(a, b, alpha=0.5), torch.full_like(a, 1.5))
    with pytest.raises(DataError, match="differ in shape"):
        T.blend_fake_ir(a, b[..., :1])


# -- pipelines ---------------------------------------------------------------------------------------------------

def test_agw_pipeline_equals_torchvision_with_same_params():
    x = rand_u8(5, 14, 8)
    t = T.agw_train_transform(14, 8, pad=2, flip=0.5)
    out = t(x, gen(4))
    # replay the parameters from the same seed
    g = gen(4)
    crop = t.ops[1].sample(x, g)
    flip = t.ops[2].sample(x, g)
    for b in range(5):
        img = TF.crop(TF.pad(x[b], [2]), int(crop["top"][b]), int(crop["left"][b]), 14, 8)
        if flip["mask"][b]:
            img = TF.hflip(img)
        ref = TF.normalize(TF.convert_image_dtype(img, torch.float32), T.IMAGENET_MEAN, T.IMAGENET_STD)
        assert torch.allclose(out[b], ref, atol=1e-6)


def test_determinism_and_seed_sensitivity():
    x = rand_u8(8, 20, 10)
    pipes = [T.agw_train_transform(20, 10, erasing=0.5),
             T.agw_train_transform(20, 10, erasing=0.8, erasing_fill="random")]
    for t in pipes:
        assert torch.equal(t(x, gen(5)), t(x, gen(5)))
        assert not torch.equal(t(x, gen(5)), t(x, gen(6)))
    caj = T.caj_train_views(20, 10)
    a, b = caj(x, x, gen(1)), caj(x, x, gen(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    aml = T.aml_stage1_transform(20, 10)
    assert all(torch.equal(u, v) for u, v in zip(aml(x, x, gen(2)), aml(x, x, gen(2))))


def test_caj_views():
    x = rand_u8(6, 20, 10)
    rgb, ex, ir = T.caj_train_views(20, 10, erasing=0.0)(x, x, gen())
    assert rgb.shape == ex.shape == ir.shape == (6, 3, 20, 10) and rgb.dtype == torch.float32
    assert torch.equal(ex[:, 0], ex[:, 1]) and torch.equal(ex[:, 1], ex[:, 2])
    assert not torch.equal(rgb[:, 0], rgb[:, 1])


def test_aml_aligned_blend_identity():
    # no jitter/erasing, aligned, twin == rgb: x_t = 0.2 x + 0.8 * (one channel of x copied to all three)
    x = rand_u8(6, 20, 10)
    t = T.aml_stage1_transform(20, 10, brightness=0.0, contrast=0.0, erasing=0.0, aligned=True)
    xo, xt = t(x, x, gen(3))
    rest = (xt - 0.2 * xo) / 0.8
    assert torch.allclose(rest[:, 0], rest[:, 1], atol=1e-5) and torch.allclose(rest[:, 1], rest[:, 2], atol=1e-5)
    for b in range(6):
        assert min((rest[b, 0] - xo[b, c]).abs().max().item() for c in range(3)) < 1e-5
    # not aligned: the twin gets its own crop/flip, so the identity above breaks for some sample
    xo2, xt2 = T.aml_stage1_transform(20, 10, brightness=0.0, contrast=0.0, erasing=0.0)(x, x, gen(3))
    rest2 = (xt2 - 0.2 * xo2) / 0.8
    assert not torch.allclose(rest2[:, 0], rest2[:, 1], atol=1e-5)


def test_aml_erasing_fill_is_mean_pixel():
    x = torch.full((16, 3, 20, 10), 255, dtype=torch.uint8)
    out = T.aml_train_transform(20, 10, pad=0, flip=0.0, brightness=0.0, contrast=0.0, erasing=1.0)(x, gen())
    white = torch.tensor([(1 - m) / s for m, s in zip(T.IMAGENET_MEAN, T.IMAGENET_STD)]).view(1, 3, 1, 1)
    erased = (out == 0).all(1)
    assert erased.any(dim=(1, 2)).all()
    assert torch.allclose(out.masked_fill(erased.unsqueeze(1), 0),
                          (white.expand_as(out)).masked_fill(erased.unsqueeze(1), 0))


def test_dtypes_and_meta_device():
    x64 = rand_u8(3, 12, 6).double() / 255
    out = T.agw_train_transform(12, 6, erasing=0.5)(x64, gen())
    assert out.dtype == torch.float64
    meta = torch.empty((4, 3, 12, 6), dtype=torch.uint8, device="meta")
    for pipe in (T.agw_train_transform(12, 6, erasing=0.5), T.aml_train_transform(12, 6), T.eval_transform(12, 6)):
        y = pipe(meta, gen())
        assert y.device.type == "meta" and y.shape == (4, 3, 12, 6) and y.dtype == torch.float32
    views = T.caj_train_views(12, 6)(meta, meta, gen())
    assert all(v.device.type == "meta" for v in views)


def test_bad_input_errors():
    t = T.agw_train_transform(12, 6)
    with pytest.raises(DataError, match="expects 12x6"):
        t(rand_u8(2, 10, 6), gen())
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        t(torch.zeros((2, 12, 6), dtype=torch.uint8), gen())
    with pytest.raises(DataError, match="CPU torch.Generator"):
        t(rand_u8(2, 12, 6), None)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="erasing area"):
        T.RandomErasing(0.5, (0.5, 0.2))
    with pytest.raises(DataError, match="flip probability"):
        T.RandomHorizontalFlip(1.5)
    assert math.isclose(T.MSCLNET_PAPER_ERASING["p"], 0.8)
