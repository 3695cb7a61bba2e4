"""Batched, device-agnostic training and evaluation transforms (SPEC 3-6).

Every op works on a whole batch ``[B, 3, H, W]`` at once, on whatever device the batch lives on (CPU, CUDA, or the
``meta`` device for shape checks). Random parameters are drawn *per sample* from an explicit CPU
``torch.Generator`` and then moved to the batch's device, so the same seed gives the same augmentation on every
device and no op touches global random state. Randomness is drawn in a fixed order, one small tensor per op, so
results depend only on the generator's seed and the batch size.

Spaces and order. Cached images are uint8 0..255. The pipelines apply geometric ops (pad + crop, flip) to uint8 (the
padding is exact black, as ``transforms.Pad(10)`` on a PIL image in the reference code), then convert to float in
[0, 1] (colour jitter works there), then ImageNet-normalise; random erasing, channel exchange, adaptive gray and the
AML gray view come *after* normalisation, as in the AGW/CAJ reference code. Fill values of random erasing are
therefore normalised-space values unless stated otherwise (see :class:`RandomErasing`).

Each op is a small class with ``sample(x, generator) -> params`` (CPU tensors) and ``apply(x, params)``;
``op(x, generator)`` does both. Splitting the two lets a caller apply the *same* crop/flip/box to two batches (the
aligned AML blend). Pipelines for the recipes::

    t = agw_train_transform(288, 144, erasing=0.5)          # AGW*/MSCLNet: pad-crop, flip, normalise, erasing
    g = torch.Generator().manual_seed(seed)
    x = t(batch_to_tensor(cache.batch(idx), device="cuda"), g)   # float32 normalised [B, 3, 288, 144]

    rgb, rgb_ex, ir = caj_train_views(288, 144)(rgb_u8, ir_u8, g)  # CAJ's three views
    x, x_t = aml_stage1_transform(384, 128)(rgb_u8, fake_ir_u8, g)  # AML stage 1 pair
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from vireid.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASING_MEAN = (0.4914, 0.4822, 0.4465)
"""The per-channel constant the AGW/CAJ random erasing writes (the CIFAR mean), written into the *normalised*
tensor. In pixel terms that is mean + value * std = (0.598, 0.564, 0.506), a light gray."""
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""ITU-R 601 luma weights used by CAJ's grayscale and torchvision's ``rgb_to_grayscale``."""

AGW_ERASING = {"p": 0.5, "area": (0.02, 0.4), "ratio": 0.3}
"""Random erasing of the AGW family (AGW*, CAJ, MSCLNet default)."""
MSCLNET_PAPER_ERASING = {"p": 0.8, "area": (0.2, 0.8), "ratio": 0.3}
"""Random erasing as printed in the MSCLNet paper (p 0.8, area 0.2-0.8); unusually strong, offered for ablation."""

Fill = Literal["imagenet_mean", "zero", "random", "mean_pixel"]
Params = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# Checks and random numbers


def _check_batch(x: torch.Tensor, what: str = "image batch") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{what} must be a tensor [B, 3, H, W], got {shape}; convert cache batches with "
                        "vireid.data.cache.batch_to_tensor")


def _check_generator(g: torch.Generator) -> None:
    if not isinstance(g, torch.Generator) or g.device.type != "cpu":
        raise DataError(f"transforms need an explicit CPU torch.Generator (got {g!r}); create one with "
                        "torch.Generator().manual_seed(seed)")


def _uniform(g: torch.Generator, shape: Sequence[int], lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Uniform [lo, hi) float64 samples on the CPU (float64 so that integer draws like floor(u * n) are exact)."""
    return lo + (hi - lo) * torch.rand(tuple(shape), generator=g, dtype=torch.float64)


def _const(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A [1, 3, 1, 1] constant with the dtype and device of ``like``."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Functional ops (deterministic given their parameters)


def to_float(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 0..255 -> float in [0, 1] (``dtype``, default float32); float input is taken as already in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.to(dtype or torch.float32) / 255.0
    if not x.is_floating_point():
        raise DataError(f"image batch must be uint8 or floating point, got {x.dtype}")
    return x if dtype is None else x.to(dtype)


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of a float batch in [0, 1] (ImageNet statistics by default)."""
    return (x - _const(mean, x)) / _const(std, x)


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of :func:`normalize`: back to [0, 1] pixel space (not clamped)."""
    return x * _const(std, x) + _const(mean, x)


def to_uint8(x: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """A (normalised) float batch as uint8 0..255 for visualisation: denormalise, clamp, round."""
    if normalized:
        x = denormalize(x)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def pad_crop(x: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad`` on every side, then crop H x W at per-sample offsets ``top``, ``left`` in [0, 2*pad].

    ``out[b, :, i, j] = padded[b, :, top[b] + i, left[b] + j]``; top = left = pad is the identity.
    """
    if pad == 0:
        return x
    b, _, h, w = x.shape
    top, left = top.to(x.device, torch.long), left.to(x.device, torch.long)
    padded = F.pad(x, (pad, pad, pad, pad))
    # all (2p+1)^2 crop windows as a view [B, 2p+1, 2p+1, C, H, W]; pick one per sample (one indexed copy,
    # about 2x faster on CPU than two gathers)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 1, 4, 5)
    return windows[torch.arange(b, device=x.device), top, left]


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where ``mask`` [B] is true."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def erase(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
          fill: torch.Tensor) -> torch.Tensor:
    """Overwrite the box rows ``top..top+height-1``, columns ``left..left+width-1`` of each sample with ``fill``.

    ``fill`` broadcasts against the batch ([1, 3, 1, 1] constant or [B, 3, H, W] noise). ``height == 0`` leaves a
    sample untouched.
    """
    b, _, h, w = x.shape
    dev = x.device
    top, left, height, width = (t.to(dev, torch.long).view(b, 1) for t in (top, left, height, width))
    rows = torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w)
    in_rows = (rows >= top) & (rows < top + height)
    in_cols = (cols >= left) & (cols < left + width)
    box = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return torch.where(box, fill.to(device=dev, dtype=x.dtype), x)


def channel_copy(x: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """Copy channel ``channel[b]`` (0 R, 1 G, 2 B) of each sample into all three channels."""
    return _channel(x, channel).expand_as(x).contiguous()


def _channel(x: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """Channel ``channel[b]`` of each sample: [B, 1, H, W] (advanced indexing: much faster than gather on CPU)."""
    b = x.shape[0]
    return x[torch.arange(b, device=x.device), channel.to(x.device, torch.long)].unsqueeze(1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma [B, 1, H, W]."""
    return (GRAY_WEIGHTS[0] * x[:, 0] + GRAY_WEIGHTS[1] * x[:, 1] + GRAY_WEIGHTS[2] * x[:, 2]).unsqueeze(1)


def _gray_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean luma per sample [B, 1, 1, 1]; luma is linear, so this is the weighted sum of the channel means."""
    m = x.mean(dim=(2, 3))
    return (GRAY_WEIGHTS[0] * m[:, 0] + GRAY_WEIGHTS[1] * m[:, 1] + GRAY_WEIGHTS[2] * m[:, 2]).view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``0.2989 R + 0.5870 G + 0.1140 B`` copied to three channels (CAJ, torchvision weights)."""
    return _gray(x).expand_as(x).contiguous()


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision semantics on [0, 1] floats: ``clamp(factor * x, 0, 1)``, per-sample ``factor`` [B]."""
    return (x * factor.to(x.device, x.dtype).view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision semantics on [0, 1] floats: blend with the mean of the grayscale image, clamp to [0, 1]."""
    f = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (f * x + (1 - f) * _gray_mean(x)).clamp(0, 1)


def blend_fake_ir(fake_ir: torch.Tensor, gray: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """AML's stage-1 target-style image: ``alpha * fake_ir + (1 - alpha) * gray`` (both normalised; alpha 0.2)."""
    if fake_ir.shape != gray.shape:
        raise DataError(f"fake-IR batch {tuple(fake_ir.shape)} and gray batch {tuple(gray.shape)} differ in shape; "
                        "pass the twins of the same images at the same size")
    return alpha * fake_ir + (1 - alpha) * gray


# ---------------------------------------------------------------------------------------------------------------------
# Random ops: sample(x, g) -> params (CPU), apply(x, params); op(x, g) does both


class Op(abc.ABC):
    """Base class: a batched op whose random parameters are drawn by :meth:`sample` and used by :meth:`apply`."""

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {}

    @abc.abstractmethod
    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Transform ``x`` with the parameters :meth:`sample` drew (deterministic given ``params``)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        _check_generator(generator)
        return self.apply(x, self.sample(x, generator))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class CheckSize(Op):
    """Refuses a batch of another size than the pipeline was built for (a cache built at another size)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise DataError(f"image batch is {x.shape[-2]}x{x.shape[-1]} but the transform expects "
                            f"{self.height}x{self.width}; build the image cache at data.height/data.width")
        return x


class ToFloatNormalize(Op):
    """uint8 -> float (``dtype``; float input kept) -> ImageNet normalisation. Deterministic."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 dtype: torch.dtype | None = None) -> None:
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return normalize(to_float(x, self.dtype), self.mean, self.std)
        # fused: x * 1/(255 std) - mean/std in one pass after the conversion (equal to the two-step form to ~1 ulp)
        xf = x.to(self.dtype or torch.float32)
        scale = 1.0 / (255.0 * torch.tensor(self.std, dtype=torch.float64))
        shift = -torch.tensor(self.mean, dtype=torch.float64) / torch.tensor(self.std, dtype=torch.float64)
        return torch.addcmul(shift.to(xf).view(1, 3, 1, 1), xf, scale.to(xf).view(1, 3, 1, 1))


class ToFloat(Op):
    """uint8 -> float in [0, 1] without normalisation (before colour jitter)."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return to_float(x, self.dtype)


class Normalize(Op):
    """ImageNet normalisation of a float batch in [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return normalize(x, self.mean, self.std)


class RandomPadCrop(Op):
    """``Pad(pad)`` with zeros + ``RandomCrop(H, W)``: per-sample offsets uniform in {0, ..., 2*pad} (torchvision)."""

    def __init__(self, pad: int = 10) -> None:
        if pad < 0:
            raise DataError(f"pad={pad} is invalid; expected an integer >= 0")
        self.pad = pad

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        b = x.shape[0]
        return {"top": torch.randint(0, 2 * self.pad + 1, (b,), generator=generator),
                "left": torch.randint(0, 2 * self.pad + 1, (b,), generator=generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return pad_crop(x, self.pad, params["top"], params["left"])


class RandomHorizontalFlip(Op):
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        _check_p(p, "flip")
        self.p = p

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {"mask": _uniform(generator, (x.shape[0],)) < self.p}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return hflip(x, params["mask"])


class RandomErasing(Op):
    """Random erasing (Zhong et al.) in the torchreid/AGW/CAJ parameterisation, vectorised over the batch.

    With probability ``p`` a sample gets one box. Up to ``attempts`` (100) candidate boxes are drawn per sample:
    area fraction uniform in ``area`` = (sl, sh) of H*W, aspect h/w in [ratio, 1/ratio] -- *uniform* by default, as
    the torchreid/AGW/CAJ/fast-reid code does (``random.uniform(r1, 1/r1)``); ``aspect="log_uniform"`` gives
    torchvision's convention. Box sides are ``round(sqrt(area * aspect))`` and ``round(sqrt(area / aspect))``
    (round half to even, as Python's ``round``). The first candidate with h < H and w < W (strict, as the reference)
    is used; its top-left corner is uniform over the positions where it fits. A sample with no fitting candidate in
    100 attempts is left unchanged (reference behaviour).

    Fill (written into the tensor this op receives; the pipelines pass it the *normalised* batch):

    - ``"imagenet_mean"``: the per-channel constants (0.4914, 0.4822, 0.4465) that the AGW/CAJ code writes after
      normalisation (CAJ's "channel random erasing"); in pixel terms a light gray (0.598, 0.564, 0.506).
    - ``"zero"``: 0 (in the normalised space: the ImageNet mean colour).
    - ``"random"``: i.i.d. standard normal per pixel and channel (torchvision ``value="random"``); drawn on the CPU
      for the full batch, so it costs B*3*H*W normals.
    - ``"mean_pixel"``: the ImageNet mean pixel (0.485, 0.456, 0.406), AML/fast-reid's fill on 0..255 images before
      the model normalises them. With ``normalized=True`` (the tensor is already normalised) that is exactly 0;
      with ``normalized=False`` (a [0, 1] pixel tensor) the mean values themselves.
    - a tuple of three numbers: written as given.
    """

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4), ratio: float = 0.3,
                 fill: Fill | tuple[float, float, float] = "imagenet_mean",
                 aspect: Literal["uniform", "log_uniform"] = "uniform", normalized: bool = True,
                 attempts: int = 100) -> None:
        _check_p(p, "erasing")
        lo, hi = area
        if not 0.0 < lo <= hi <= 1.0:
            raise DataError(f"erasing area={area!r} is invalid; expected (min, max) with 0 < min <= max <= 1")
        if not 0.0 < ratio <= 1.0:
            raise DataError(f"erasing ratio={ratio!r} is invalid; expected r1 in (0, 1] (aspect in [r1, 1/r1])")
        if aspect not in ("uniform", "log_uniform"):
            raise DataError(f"erasing aspect={aspect!r} is invalid; expected 'uniform' or 'log_uniform'")
        if isinstance(fill, str):
            if fill not in ("imagenet_mean", "zero", "random", "mean_pixel"):
                raise DataError(f"erasing fill={fill!r} is invalid; expected imagenet_mean, zero, random, mean_pixel "
                                "or three numbers")
        elif len(tuple(fill)) != 3:
            raise DataError(f"erasing fill={fill!r} is invalid; give one value per channel (three numbers)")
        self.p, self.area, self.ratio, self.fill, self.aspect = p, (lo, hi), ratio, fill, aspect
        self.normalized, self.attempts = normalized, attempts

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        b, _, h, w = x.shape
        do = _uniform(generator, (b,)) < self.p
        frac = _uniform(generator, (b, self.attempts), *self.area)
        if self.aspect == "uniform":
            aspect = _uniform(generator, (b, self.attempts), self.ratio, 1.0 / self.ratio)
        else:
            aspect = torch.exp(_uniform(generator, (b, self.attempts), math.log(self.ratio), -math.log(self.ratio)))
        target = frac * (h * w)
        eh = torch.round(torch.sqrt(target * aspect)).long()
        ew = torch.round(torch.sqrt(target / aspect)).long()
        fits = (eh < h) & (ew < w)
        first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
        do &= fits.any(dim=1)
        eh = torch.where(do, eh.gather(1, first).squeeze(1), 0)
        ew = torch.where(do, ew.gather(1, first).squeeze(1), 0)
        u_top, u_left = _uniform(generator, (b,)), _uniform(generator, (b,))
        params = {"top": torch.floor(u_top * (h - eh + 1)).long(), "left": torch.floor(u_left * (w - ew + 1)).long(),
                  "height": eh, "width": ew}
        if self.fill == "random":
            params["noise"] = torch.randn((b, 3, h, w), generator=generator, dtype=torch.float32)
        return params

    def fill_tensor(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """The fill values for batch ``x`` ([1, 3, 1, 1], or [B, 3, H, W] noise)."""
        if self.fill == "random":
            return params["noise"].to(x.device, x.dtype)
        if self.fill == "imagenet_mean":
            return _const(ERASING_MEAN, x)
        if self.fill == "zero":
            return _const((0.0, 0.0, 0.0), x)
        if self.fill == "mean_pixel":
            return _const((0.0, 0.0, 0.0) if self.normalized else IMAGENET_MEAN, x)
        return _const(tuple(self.fill), x)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return erase(x, params["top"], params["left"], params["height"], params["width"], self.fill_tensor(x, params))


class ChannelExchange(Op):
    """CAJ channel exchange / AML gray view: copy one uniformly chosen channel (R, G or B) into all three."""

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        return {"channel": torch.randint(0, 3, (x.shape[0],), generator=generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return channel_copy(x, params["channel"])


RandomChannelGray = ChannelExchange
"""AML's "gray" view is the same operation: a random channel copied to all three, after normalisation."""


class AdaptiveGray(Op):
    """CAJ adaptive gray: per sample, 1/4 each copy R, G or B into all three channels; otherwise (1/4) convert to
    grayscale (0.2989 R + 0.5870 G + 0.1140 B) with probability ``p``, else leave unchanged.

    With p = 0.5 the outcomes R, G, B, gray, unchanged have probabilities 1/4, 1/4, 1/4, 1/8, 1/8. Applied to the
    normalised tensor, as CAJ does (the weights then mix normalised channels).
    """

    def __init__(self, p: float = 0.5) -> None:
        _check_p(p, "adaptive_gray")
        self.p = p

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        b = x.shape[0]
        choice = torch.randint(0, 4, (b,), generator=generator)
        gray = _uniform(generator, (b,)) < self.p
        # mode: 0, 1, 2 copy that channel; 3 grayscale; 4 unchanged
        return {"mode": torch.where(choice < 3, choice, torch.where(gray, 3, 4))}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        mode = params["mode"].to(x.device).view(-1, 1, 1, 1)
        single = torch.where(mode == 3, _gray(x), _channel(x, params["mode"].clamp(max=2)))  # [B, 1, H, W]
        return torch.where(mode < 4, single, x)


class ColorJitter(Op):
    """Brightness and contrast jitter with torchvision semantics, on float images in [0, 1].

    Factors are uniform in [max(0, 1 - brightness), 1 + brightness] and [max(0, 1 - contrast), 1 + contrast];
    brightness multiplies (then clamps to [0, 1]), contrast blends with the mean of the sample's grayscale image.
    torchvision applies its ops in a random order per image; here each sample draws one of the two orders with
    probability 1/2, the same distribution. The whole jitter is applied with probability ``p`` (1 = always, as
    ``transforms.ColorJitter``; fast-reid wraps it in ``RandomApply``). Unlike PIL, intermediate results are not
    rounded to uint8.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.15, p: float = 1.0) -> None:
        if brightness < 0 or contrast < 0:
            raise DataError(f"color jitter ({brightness}, {contrast}) is invalid; expected non-negative strengths")
        _check_p(p, "color_jitter p")
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        b = x.shape[0]
        return {
            "apply": _uniform(generator, (b,)) < self.p,
            "brightness": _uniform(generator, (b,), max(0.0, 1 - self.brightness), 1 + self.brightness),
            "contrast": _uniform(generator, (b,), max(0.0, 1 - self.contrast), 1 + self.contrast),
            "contrast_first": _uniform(generator, (b,)) < 0.5,
        }

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        # Both ops are "clamp(a * x + c)" per sample: brightness a = fb, c = 0; contrast a = fc,
        # c = (1 - fc) * mean luma. Two such stages, with (a, c) chosen per sample by the drawn order, compute
        # either order in one pass each instead of computing both orders.
        def col(t: torch.Tensor) -> torch.Tensor:
            return t.to(x.device, x.dtype).view(-1, 1, 1, 1)

        fb, fc, first = col(params["brightness"]), col(params["contrast"]), col(params["contrast_first"]) > 0
        zero = torch.zeros_like(fb)
        c1 = torch.where(first, (1 - fc) * _gray_mean(x), zero)
        y = torch.addcmul(c1, torch.where(first, fc, fb), x).clamp_(0, 1)
        c2 = torch.where(first, zero, (1 - fc) * _gray_mean(y))
        y = torch.addcmul(c2, torch.where(first, fb, fc), y).clamp_(0, 1)
        if self.p >= 1.0:
            return y
        return torch.where(col(params["apply"]) > 0, y, x)


class Compose:
    """Apply ops in order, each drawing its parameters from the same generator.

    Not an :class:`Op` itself: each op samples its parameters on the previous op's output, so a pipeline has no
    parameters to draw up front. Called like an op: ``pipeline(x_uint8, generator)``.
    """

    def __init__(self, ops: Sequence[Op]) -> None:
        self.ops = list(ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        _check_generator(generator)
        for op in self.ops:
            x = op.apply(x, op.sample(x, generator))
        return x

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(op) for op in self.ops)
        return f"Compose([\n  {inner}\n])"


def _check_p(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise DataError(f"{name} probability {p!r} is invalid; expected a number in [0, 1]")


# ---------------------------------------------------------------------------------------------------------------------
# Recipe pipelines


def eval_transform(height: int, width: int, dtype: torch.dtype | None = None) -> Compose:
    """Evaluation: uint8 [B, 3, H, W] (already resized by the cache) -> float normalised. No randomness.

    ``dtype`` (here and in the other pipelines): the float type uint8 input becomes (None = float32); a float input
    in [0, 1] keeps its dtype unless ``dtype`` is given.
    """
    return Compose([CheckSize(height, width), ToFloatNormalize(dtype=dtype)])


def agw_train_transform(height: int, width: int, pad: int = 10, flip: float = 0.5, erasing: float = 0.0,
                        erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                        erasing_fill: Fill | tuple[float, float, float] = "imagenet_mean",
                        erasing_aspect: Literal["uniform", "log_uniform"] = "uniform",
                        dtype: torch.dtype | None = None) -> Compose:
    """AGW (SPEC 3): pad 10 + random crop, flip 0.5, ImageNet normalisation; ``erasing`` > 0 adds random erasing
    after normalisation (AGW* / MSCLNet: 0.5 with the AGW parameters, or :data:`MSCLNET_PAPER_ERASING`)."""
    ops: list[Op] = [CheckSize(height, width), RandomPadCrop(pad), RandomHorizontalFlip(flip),
                     ToFloatNormalize(dtype=dtype)]
    if erasing > 0:
        ops.append(RandomErasing(erasing, erasing_area, erasing_ratio, erasing_fill, erasing_aspect))
    return Compose(ops)


class CAJViews:
    """CAJ's three training views (SPEC 4) of an RGB batch and an IR batch.

    ``views(rgb_u8, ir_u8, g) -> (rgb, rgb_exchanged, ir)``: each view is pad-crop, flip, normalise and channel
    random erasing (p 0.5, area 2-40%, aspect 0.3-3.33, per-channel constant fill); the second RGB view is an
    independent augmentation of the same images followed by channel exchange (as the reference transforms each view
    separately); the IR view ends with adaptive gray. Labels: ``[y_rgb, y_rgb, y_ir]``.
    """

    def __init__(self, height: int, width: int, pad: int = 10, flip: float = 0.5, erasing: float = 0.5,
                 erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                 adaptive_gray: float = 0.5, dtype: torch.dtype | None = None) -> None:
        self.base = agw_train_transform(height, width, pad, flip, erasing, erasing_area, erasing_ratio,
                                        "imagenet_mean", dtype=dtype)
        self.exchange = ChannelExchange()
        self.gray = AdaptiveGray(adaptive_gray)

    def __call__(self, rgb: torch.Tensor, ir: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v1 = self.base(rgb, generator)
        v2 = self.exchange(self.base(rgb, generator), generator)
        v3 = self.gray(self.base(ir, generator), generator)
        return v1, v2, v3


def caj_train_views(height: int, width: int, pad: int = 10, flip: float = 0.5, erasing: float = 0.5,
                    adaptive_gray: float = 0.5, dtype: torch.dtype | None = None) -> CAJViews:
    """The CAJ recipe's three views (see :class:`CAJViews`)."""
    return CAJViews(height, width, pad, flip, erasing, adaptive_gray=adaptive_gray, dtype=dtype)


def aml_train_transform(height: int, width: int, pad: int = 10, flip: float = 0.5, brightness: float = 0.2,
                        contrast: float = 0.15, jitter_p: float = 1.0, erasing: float = 0.5,
                        erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3,
                        dtype: torch.dtype | None = None) -> Compose:
    """One AML image (SPEC 6, stages 1 and 2): pad-crop, flip, colour jitter (brightness 0.2, contrast 0.15) on
    [0, 1], normalisation, random erasing p 0.5 filled with the mean pixel (0 after normalisation).

    The output is normalised, so an AML model must not normalise again inside ``forward``.
    """
    return Compose([
        CheckSize(height, width), RandomPadCrop(pad), RandomHorizontalFlip(flip), ToFloat(dtype),
        ColorJitter(brightness, contrast, jitter_p), Normalize(),
        RandomErasing(erasing, erasing_area, erasing_ratio, "mean_pixel", normalized=True),
    ])


class AMLStage1Transform:
    """AML stage-1 pair (SPEC 6): ``(x, x_t)`` from RGB images and their fake-IR twins.

    ``x = aug(rgb)``; ``x_t = alpha * aug'(fake_ir) + (1 - alpha) * gray(x)`` with ``gray`` a random channel copied
    to all three (after normalisation) and alpha = 0.2. By default (``aligned=False``) the twin is augmented
    independently of x, as the reference does, so the blend is not spatially aligned; ``aligned=True`` gives the
    twin the same crop, flip and erasing box as x (colour jitter stays independent).
    """

    def __init__(self, height: int, width: int, pad: int = 10, flip: float = 0.5, brightness: float = 0.2,
                 contrast: float = 0.15, jitter_p: float = 1.0, erasing: float = 0.5,
                 erasing_area: tuple[float, float] = (0.02, 0.4), erasing_ratio: float = 0.3, alpha: float = 0.2,
                 aligned: bool = False, dtype: torch.dtype | None = None) -> None:
        _check_p(alpha, "fake-IR blend alpha")
        self.pipeline = aml_train_transform(height, width, pad, flip, brightness, contrast, jitter_p, erasing,
                                            erasing_area, erasing_ratio, dtype)
        self.gray = RandomChannelGray()
        self.alpha, self.aligned = alpha, aligned

    def __call__(self, rgb: torch.Tensor, fake_ir: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(rgb, "RGB batch")
        _check_batch(fake_ir, "fake-IR batch")
        _check_generator(generator)
        if rgb.shape != fake_ir.shape:
            raise DataError(f"RGB batch {tuple(rgb.shape)} and fake-IR batch {tuple(fake_ir.shape)} differ; "
                            "pass each image's twin, cached at the same size")
        if not self.aligned:
            x = self.pipeline(rgb, generator)
            twin = self.pipeline(fake_ir, generator)
        else:
            x, twin = rgb, fake_ir
            for op in self.pipeline.ops:
                params = op.sample(x, generator)
                shared = isinstance(op, (RandomPadCrop, RandomHorizontalFlip, RandomErasing))
                twin_params = params if shared else op.sample(twin, generator)
                x, twin = op.apply(x, params), op.apply(twin, twin_params)
        return x, blend_fake_ir(twin, self.gray(x, generator), self.alpha)


def aml_stage1_transform(height: int = 384, width: int = 128, pad: int = 10, flip: float = 0.5,
                         brightness: float = 0.2, contrast: float = 0.15, jitter_p: float = 1.0,
                         erasing: float = 0.5, erasing_area: tuple[float, float] = (0.02, 0.4),
                         erasing_ratio: float = 0.3, alpha: float = 0.2, aligned: bool = False,
                         dtype: torch.dtype | None = None) -> AMLStage1Transform:
    """The AML stage-1 pair transform with the SPEC 6 defaults (see :class:`AMLStage1Transform`)."""
    return AMLStage1Transform(height, width, pad, flip, brightness, contrast, jitter_p, erasing, erasing_area,
                              erasing_ratio, alpha, aligned, dtype)
