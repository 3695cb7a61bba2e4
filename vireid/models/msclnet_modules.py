"""Training-only building blocks of MSCLNet (ECCV 2022; SPEC 5): instance normalisation of feature maps, horizontal
part split, a Mogrifier LSTM cell, the synergistic encoder S and batch identity / sub-class centres.

None of these modules is part of :class:`~vireid.models.VIReIDModel`: at test time MSCLNet uses only the two-stream
backbone (the modality-specific extractors theta_v / theta_r), so :class:`~vireid.methods.msclnet.MSCLNetMethod` holds
these modules *beside* ``self.model`` and the saved model carries none of their weights. MSCLNet has no public code;
every size and shape below is our choice, documented here and in docs/methods/msclnet.md.

Shapes: a feature map is ``[B, C, h, w]`` (layer4 output); a part sequence is ``[B, T, C]`` (T horizontal stripes,
top to bottom); a synergistic part sequence has the same shape as the modality part sequences it was made from.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BNNeck, LinearClassifier

__all__ = [
    "FeatureInstanceNorm",
    "ModalityIdentityClassifier",
    "MogrifierLSTMCell",
    "SynergyEncoder",
    "class_centers",
    "horizontal_parts",
    "pair_by_identity",
    "subclass_labels",
]


class FeatureInstanceNorm(nn.Module):
    """Instance normalisation of a feature map: per sample and per channel, over the spatial positions (MSCLNet Eq. 1).

    For sample n, channel c, with ``mu_nc`` and ``sigma²_nc`` the mean and the biased (divide by h·w) variance of
    ``x[n, c]`` over its h·w positions::

        IN(x)[n, c, i, j] = gamma_c · (x[n, c, i, j] − mu_nc) / sqrt(sigma²_nc + eps) + beta_c

    Eq. 1 of the paper prints the learnable ``gamma``, ``beta``, so ``affine=True`` is the default (gamma starts at 1,
    beta at 0, both trained with the other training-only modules); ``affine=False`` drops them (gamma = 1, beta = 0
    fixed), the parameter-free variant. The statistics always come from the sample itself, in train and eval alike
    (no running statistics).

    Why: MSCLNet normalises each modality's map before the synergy encoder and the diversity loss, removing
    per-image, per-channel statistics (brightness/contrast-like style that differs between RGB and IR) and bounding the
    features' scale, which keeps ``-KL`` of the diversity term from growing without limit (with ``affine`` the scale
    is gamma's, a per-channel parameter rather than a per-image statistic).
    Note that after instance normalisation the spatial *mean* of every channel is ``beta_c`` for every image: a global
    average pool of the normalised map carries no information about the image, which is why the method builds its
    descriptors from horizontal parts (see :func:`horizontal_parts`) rather than from a global average.
    """

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        # track_running_stats=False: statistics always come from the sample itself, in train and eval alike.
        self.norm = nn.InstanceNorm2d(channels, affine=affine, eps=eps, track_running_stats=False)

    @property
    def gamma(self) -> nn.Parameter | None:
        """Eq. 1's per-channel scale ``[C]`` (None when ``affine=False``)."""
        return self.norm.weight

    @property
    def beta(self) -> nn.Parameter | None:
        """Eq. 1's per-channel shift ``[C]`` (None when ``affine=False``)."""
        return self.norm.bias

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.dim() != 4:
            raise ValueError(f"expected a feature map [B, C, h, w], got shape {tuple(fmap.shape)}")
        return self.norm(fmap)


class ModalityIdentityClassifier(nn.Module):
    """L_t's own identity classifiers (MSCLNet Eq. 4): logits ``p̂(f̂)`` of the *instance-normalised* stripes.

    Eq. 4 is a cross-entropy on "the logistic probability of visible and infrared features" ``p̂^v(f̂^v)``,
    ``p̂^r(f̂^r)``, i.e. on the normalised features f̂, not on the model's BNNeck logits; the paper names no
    classifier. We give L_t classifiers of their own (training-only, like the synergy encoder), so that L_t trains
    them and, through f̂, the instance norm and the backbone, but never AGW's classifier (reusing AGW's logits would
    only re-weight AGW's CE, by 1 + 2·1.25 = 3.5 with the paper's λ_t).

    Input: the stripe descriptors ``[N, parts, C]`` of f̂ (the global mean of an instance-normalised map is a
    constant, so f̂ is read in the 6 stripes the paper's L_local already uses). One classifier per stripe, as PCB
    does: each is a BNNeck (bias fixed at 0) then a bias-free linear map with weights ~ N(0, 0.001) -- AGW's own
    head, on a C-dimensional input. (A single linear map on the raw 6·C concatenation diverged at the recipe's lr
    0.1: L_t grew to 2e10 in 8 synthetic epochs.) ``per_modality=False`` (default): one set shared by both
    modalities (one identity space, as AGW's); ``True``: a visible and an infrared set (Eq. 4 writes ``p̂^v`` and
    ``p̂^r`` separately).
    """

    def __init__(self, channels: int, num_classes: int, parts: int = 6, per_modality: bool = False,
                 std: float = 0.001) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"L_t's classifier needs num_classes >= 1, got {num_classes}")
        if parts < 1:
            raise ValueError(f"L_t's classifier needs parts >= 1, got {parts}")
        self.per_modality, self.parts = per_modality, parts
        count = (2 if per_modality else 1) * parts
        self.necks = nn.ModuleList(BNNeck(channels) for _ in range(count))
        self.heads = nn.ModuleList(LinearClassifier(channels, num_classes, std) for _ in range(count))

    def forward(self, stripes: torch.Tensor, modality: int) -> torch.Tensor:
        """Logits ``[N, parts, num_classes]`` of the stripes ``[N, parts, C]`` of one modality (0 RGB, 1 IR)."""
        if modality not in (0, 1):
            raise ValueError(f"modality must be 0 (visible) or 1 (infrared), got {modality}")
        if stripes.dim() != 3 or stripes.shape[1] != self.parts:
            raise ValueError(f"expected stripes [N, {self.parts}, C], got shape {tuple(stripes.shape)}")
        first = modality * self.parts if self.per_modality else 0
        return torch.stack([self.heads[first + k](self.necks[first + k](stripes[:, k]))
                            for k in range(self.parts)], dim=1)


def horizontal_parts(fmap: torch.Tensor, parts: int = 6, pool: Literal["avg", "max"] = "avg") -> torch.Tensor:
    """Split a feature map ``[B, C, h, w]`` into ``parts`` horizontal stripes and pool each: ``[B, parts, C]``.

    Stripes follow :func:`torch.nn.functional.adaptive_avg_pool2d` bins, so ``h`` need not be a multiple of
    ``parts`` (18 rows -> 6 stripes of 3 rows at 288x144; a 2x1 map of a 64x32 test image -> overlapping bins).
    """
    if fmap.dim() != 4:
        raise ValueError(f"expected a feature map [B, C, h, w], got shape {tuple(fmap.shape)}")
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if pool == "avg":
        pooled = F.adaptive_avg_pool2d(fmap, (parts, 1))
    elif pool == "max":
        pooled = F.adaptive_max_pool2d(fmap, (parts, 1))
    else:
        raise ValueError(f"part pool {pool!r} is unknown; expected 'avg' or 'max'")
    return pooled.squeeze(-1).transpose(1, 2)  # [B, C, parts] -> [B, parts, C]


class _Gate(nn.Module):
    """A bias-free linear map ``in -> out``, full rank or factorised as ``out x k`` times ``k x in``."""

    def __init__(self, in_features: int, out_features: int, rank: int | None) -> None:
        super().__init__()
        if rank is None:
            self.proj: nn.Module = nn.Linear(in_features, out_features, bias=False)
        else:
            if rank < 1:
                raise ValueError(f"mogrifier rank must be >= 1 or None, got {rank}")
            self.proj = nn.Sequential(nn.Linear(in_features, rank, bias=False),
                                      nn.Linear(rank, out_features, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MogrifierLSTMCell(nn.Module):
    """Mogrifier LSTM cell (Melis, Kocisky & Blunsom, ICLR 2020).

    Before the ordinary LSTM update, the input ``x`` and the previous hidden state ``h`` gate each other for
    ``rounds`` = r rounds (i = 1..r)::

        odd i:   x <- 2 * sigmoid(Q_i h) * x
        even i:  h <- 2 * sigmoid(R_i x) * h

    then ``(h', c') = LSTMCell(x, (h, c))``. Each round has its own matrix (Q_1, Q_3, ... and R_2, R_4, ...), without
    bias, as in the paper. The factor 2 makes a zero pre-activation the identity, so a freshly initialised mogrifier
    starts close to a plain LSTM. ``rounds=0`` *is* ``torch.nn.LSTMCell`` (the wrapped cell is exposed as ``.lstm``).

    Defaults: r = 5 (the value Melis et al. found best for LSTM language models and the usual choice since; MSCLNet
    does not state r). ``rank`` = None uses full matrices; an integer k factorises each Q_i / R_i into two
    rank-k maps, the paper's device for large inputs (here the input is ``2C`` = 4,096 for ResNet-50).
    """

    def __init__(self, input_size: int, hidden_size: int, rounds: int = 5, rank: int | None = None) -> None:
        super().__init__()
        if rounds < 0:
            raise ValueError(f"mogrifier rounds must be >= 0, got {rounds}")
        self.input_size, self.hidden_size, self.rounds = input_size, hidden_size, rounds
        self.lstm = nn.LSTMCell(input_size, hidden_size)
        # q[j] serves round 2j+1 (updates x from h); r[j] serves round 2j+2 (updates h from x).
        self.q = nn.ModuleList(_Gate(hidden_size, input_size, rank) for _ in range((rounds + 1) // 2))
        self.r = nn.ModuleList(_Gate(input_size, hidden_size, rank) for _ in range(rounds // 2))

    def mogrify(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The r rounds of mutual gating; returns the modulated ``(x, h)``."""
        for i in range(1, self.rounds + 1):
            if i % 2 == 1:
                x = 2.0 * torch.sigmoid(self.q[i // 2](h)) * x
            else:
                h = 2.0 * torch.sigmoid(self.r[i // 2 - 1](x)) * h
        return x, h

    def forward(self, x: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``x`` [B, input_size], ``state`` = (h, c) each [B, hidden_size] (zeros when None)."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        x, h = self.mogrify(x, h)
        return self.lstm(x, (h, c))


class SynergyEncoder(nn.Module):
    """The synergistic encoder S of MSCLNet: a Mogrifier LSTM run over paired visible / infrared part sequences.

    Input: part sequences ``v`` and ``r`` of *paired* samples (same identity; the sampler gives K RGB + K IR per
    identity and we pair the i-th RGB with the i-th IR image of that identity), each ``[N, T, C]``, T stripes from top
    to bottom. Output: synergistic part features ``f^s`` ``[N, T, C]`` -- one per stripe, the same dimension as the
    modality parts, so the complement losses can compare stripe t of f^v with stripe t of f^s.

    ``fusion`` (how the two modalities enter the recurrence; the paper says only "paired feature sequences"):

    - ``"concat"`` (default): step t reads ``[v_t ; r_t]`` (input ``2C``); output t is the hidden state after step t.
    - ``"interleave"``: the sequence is ``v_1, r_1, v_2, r_2, ...`` (input ``C``, 2T steps); output t is the hidden
      state after ``r_t``, i.e. after the cell has seen both modalities of stripe t.

    Each output hidden state (``hidden_size``, default 512 -- not given by the paper) goes through a shared linear
    projection back to ``C``. The recurrence starts from zeros and is unidirectional (top to bottom).
    """

    def __init__(self, channels: int, hidden_size: int = 512, rounds: int = 5, rank: int | None = None,
                 fusion: Literal["concat", "interleave"] = "concat") -> None:
        super().__init__()
        if fusion not in ("concat", "interleave"):
            raise ValueError(f"synergy fusion {fusion!r} is unknown; expected 'concat' or 'interleave'")
        self.channels, self.fusion = channels, fusion
        input_size = 2 * channels if fusion == "concat" else channels
        self.cell = MogrifierLSTMCell(input_size, hidden_size, rounds, rank)
        self.proj = nn.Linear(hidden_size, channels)

    def forward(self, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if v.shape != r.shape or v.dim() != 3:
            raise ValueError(f"paired part sequences must both be [N, T, C] of one shape; got {tuple(v.shape)} "
                             f"and {tuple(r.shape)}")
        if v.shape[2] != self.channels:
            raise ValueError(f"part features have {v.shape[2]} channels; the encoder was built for {self.channels}")
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        outputs = []
        for t in range(v.shape[1]):
            if self.fusion == "concat":
                state = self.cell(torch.cat([v[:, t], r[:, t]], dim=1), state)
            else:
                state = self.cell(v[:, t], state)
                state = self.cell(r[:, t], state)
            outputs.append(state[0])
        return self.proj(torch.stack(outputs, dim=1))


def pair_by_identity(labels_v: torch.Tensor, labels_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(iv, ir)`` pairing visible and infrared samples of the same identity, for the synergy encoder.

    Within each identity the j-th visible sample (in batch order) is paired with the j-th infrared sample; an
    identity with more samples in one modality pairs only ``min(n_v, n_r)`` of them, and an identity present in one
    modality only is left out. With the cross-modality sampler (K RGB + K IR per identity, same identity order) this
    is simply ``rgb[i] <-> ir[i]``. Returns two long tensors of equal length (possibly empty).
    """
    labels_v, labels_r = labels_v.reshape(-1), labels_r.reshape(-1)
    if labels_v.shape == labels_r.shape and bool(torch.equal(labels_v, labels_r)):
        idx = torch.arange(labels_v.numel(), device=labels_v.device)
        return idx, idx.to(labels_r.device)
    iv: list[torch.Tensor] = []
    ir: list[torch.Tensor] = []
    for y in torch.unique(labels_v):
        a = torch.nonzero(labels_v == y).flatten()
        b = torch.nonzero(labels_r == y).flatten()
        n = min(a.numel(), b.numel())
        if n:
            iv.append(a[:n])
            ir.append(b[:n])
    if not iv:
        empty = torch.zeros(0, dtype=torch.long, device=labels_v.device)
        return empty, empty.to(labels_r.device)
    return torch.cat(iv), torch.cat(ir)


def class_centers(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean feature of every class present in the batch.

    Returns ``(centers [K, D], classes [K] sorted ascending, inverse [N])`` where ``inverse[i]`` is the row of
    sample i's class in ``centers``. Differentiable with respect to ``features``.
    """
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = features.new_zeros(classes.numel(), features.shape[1]).index_add(0, inverse, features)
    counts = torch.bincount(inverse, minlength=classes.numel()).to(features.dtype).unsqueeze(1)
    return sums / counts, classes, inverse


def subclass_labels(labels: torch.Tensor, *cams: torch.Tensor) -> torch.Tensor:
    """Consecutive sub-class ids 0..S-1 for the tuples ``(label, cam_1, cam_2, ...)`` of every sample.

    MSCLNet's sub-class is (identity, camera). A synergistic feature is made from a visible and an infrared image,
    so the method passes both cameras: the sub-class is (identity, visible camera, infrared camera). Unknown cameras
    (-1) simply form one sub-class per identity.
    """
    keys = torch.stack([labels.reshape(-1).long(), *(c.reshape(-1).long() for c in cams)], dim=1)
    _, ids = torch.unique(keys, dim=0, return_inverse=True)
    return ids
