"""Tests of the cross-modality identity sampler and the AML anchor + cross-camera sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vireid.data.sampling import AnchorCrossCameraSampler, CrossModalIdentitySampler
from vireid.errors import DataError


def _sysu_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label arrays of the SYSU-MM01 training sizes: 22,258 RGB and 11,909 IR images of 395 identities."""
    rng = np.random.default_rng(seed)
    rgb = np.concatenate([np.arange(395), rng.integers(0, 395, 22258 - 395)])
    ir = np.concatenate([np.arange(395), rng.integers(0, 395, 11909 - 395)])
    return rng.permutation(rgb), rng.permutation(ir)


def test_epoch_length_on_sysu_sizes():
    rgb, ir = _sysu_like()
    s = CrossModalIdentitySampler(rgb, ir, num_ids=8, num_instances=4)
    assert len(s) == 696  # 22258 // 32 + 1
    assert len(list(s)) == 696
    # unlabeled images do not count
    rgb2 = np.concatenate([rgb, -np.ones(320, np.int64)])
    assert len(CrossModalIdentitySampler(rgb2, ir, 8, 4)) == 696
    assert len(CrossModalIdentitySampler(ir, ir, 8, 4)) == 11909 // 32 + 1 == 373


def test_step_structure_distinct_ids_and_aligned_labels():
    rgb, ir = _sysu_like()
    s = CrossModalIdentitySampler(rgb, ir, num_ids=8, num_instances=4, seed=3)
    for step, (r, i) in enumerate(s):
        assert len(r) == len(i) == 32
        lr, li = rgb[r], ir[i]
        np.testing.assert_array_equal(lr, li)  # rgb[i] and ir[i] same identity
        groups = lr.reshape(8, 4)
        assert (groups == groups[:, :1]).all()  # identity-major: 4 consecutive of one id
        assert len(set(groups[:, 0].tolist())) == 8  # distinct identities
        if step == 50:
            break


def test_only_ids_in_both_modalities_and_no_negative_labels():
    rgb = np.array([0, 0, 1, 1, 2, 2, -1, -1, 5])
    ir = np.array([1, 0, 2, 2, -1, 3, 3, 0])
    s = CrossModalIdentitySampler(rgb, ir, num_ids=3, num_instances=2, seed=1)
    assert s.identities.tolist() == [0, 1, 2]
    assert len(s) == 8 // 6 + 1 == 2
    seen_r, seen_i = set(), set()
    for e in range(20):
        s.set_epoch(e)
        for r, i in s:
            assert sorted(set(rgb[r].tolist())) == [0, 1, 2]
            seen_r.update(r), seen_i.update(i)
    assert seen_r == {0, 1, 2, 3, 4, 5}  # index 6, 7 (label -1) and 8 (id 5, RGB only) never drawn
    assert seen_i == {0, 1, 2, 3, 7}  # index 4 (-1) and 5, 6 (id 3, IR only) never drawn


def test_determinism_and_epochs_differ():
    rgb, ir = _sysu_like()
    a = CrossModalIdentitySampler(rgb, ir, seed=7)
    b = CrossModalIdentitySampler(rgb, ir, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(CrossModalIdentitySampler(rgb, ir, seed=8)) != first


def test_ddp_shards_concatenate_to_single_process():
    rgb, ir = _sysu_like()
    single = CrossModalIdentitySampler(rgb, ir, 8, 4, seed=5)
    ranks = [CrossModalIdentitySampler(rgb, ir, 8, 4, seed=5, rank=k, world_size=2) for k in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(3)
    for (r, i), (r0, i0), (r1, i1) in zip(single, *ranks):
        assert len(r0) == len(r1) == 16
        assert r0 + r1 == r and i0 + i1 == i
    assert len(ranks[0]) == len(single)
    with pytest.raises(DataError, match="not divisible by world_size=3"):
        CrossModalIdentitySampler(rgb, ir, 8, 4, world_size=3)
    with pytest.raises(DataError, match="rank=2 world_size=2"):
        CrossModalIdentitySampler(rgb, ir, 8, 4, rank=2, world_size=2)


def test_with_replacement_uniform_within_identity():
    # identity 0 has 1 RGB image: all K draws repeat it; identity 1 has 4: frequencies ~uniform
    rgb = np.array([0, 1, 1, 1, 1])
    ir = np.array([0, 1])
    s = CrossModalIdentitySampler(rgb, ir, num_ids=2, num_instances=4, seed=0)
    counts: Counter[int] = Counter()
    for e in range(400):
        s.set_epoch(e)
        for r, _ in s:
            counts.update(r)
    assert counts[0] == 400 * 1 * 4  # 1 step per epoch (5 // 8 + 1), 4 draws of index 0
    for j in (1, 2, 3, 4):
        assert abs(counts[j] / 1600 - 0.25) < 0.04


def test_too_few_common_ids():
    with pytest.raises(DataError, match="only 1 identities have both RGB and IR"):
        CrossModalIdentitySampler([0, 1], [0, 2], num_ids=2, num_instances=1)


# -- AML anchor + cross-camera ------------------------------------------------------------------------------------

def test_anchor_then_other_cameras_hand_built():
    # Reference: wuancong/CMAM@21d258fb fastreid/data/samplers/triplet_sampler.py:329-359 (BalancedIdentitySampler).
    # id 0: cam 1 -> idx 0, 1; cam 2 -> idx 2, 3, 4; cam 3 -> idx 5.  id 1: single camera (idx 6, 7, 8).
    # id 2: single image (idx 9).  label -1 at idx 10 is never drawn.  K = 4.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, -1])
    cams = np.array([1, 1, 2, 2, 2, 3, 1, 1, 1, 4, 2])
    s = AnchorCrossCameraSampler(labels, cams, num_ids=3, num_instances=4, seed=0)
    assert len(s) == 1
    repeats = 0
    for e in range(200):
        s.set_epoch(e)
        (batch,) = list(s)
        groups = np.array(batch).reshape(3, 4)
        assert 10 not in batch
        for g in groups:
            assert len(set(labels[g].tolist())) == 1
            lab, anchor, rest = labels[g[0]], g[0], g[1:]
            if lab == 0:
                # every one of the K-1 comes from another camera than the anchor's -- never the anchor's camera
                others = {j for j in range(6) if cams[j] != cams[anchor]}
                assert set(rest.tolist()) <= others
                # 3 (anchor in cam 2) or 4 (cam 1 / 3) other-camera images: fewer than K = 4 draws with
                # replacement only when there are < 4 of them (the reference tests len >= num_instances)
                repeats += len(set(rest.tolist())) < 3
            elif lab == 1:  # single camera: the K-1 come from the two non-anchor images, with replacement
                assert set(rest.tolist()) <= set(range(6, 9)) - {anchor}
            else:
                assert g.tolist() == [9, 9, 9, 9]
    assert repeats > 0  # with replacement does happen (P(no repeat | 3 or 4 candidates, replace) is 2/9 or 3/8)


def test_anchor_sampler_never_uses_anchor_camera_and_draws_with_replacement():
    # one identity: 1 image in cam 1, 2 images in cam 2, 20 images in cam 3; K = 16
    labels = np.zeros(23, dtype=int)
    cams = np.array([1] + [2] * 2 + [3] * 20)
    s = AnchorCrossCameraSampler(labels, cams, num_ids=1, num_instances=16, seed=3)
    seen = {1: 0, 2: 0, 3: 0}
    for e in range(300):
        s.set_epoch(e)
        (g,) = list(s)
        anchor, rest = g[0], np.array(g[1:])
        seen[int(cams[anchor])] += 1
        assert len(rest) == 15 and not (cams[rest] == cams[anchor]).any()
        n_other = int((cams != cams[anchor]).sum())  # 22 (anchor cam 1), 21 (cam 2), 3 (cam 3)
        if n_other >= 16:
            assert len(set(rest.tolist())) == 15  # without replacement
        else:
            assert set(rest.tolist()) <= {0, 1, 2} and len(rest) == 15  # 15 draws from 3 images
    assert min(seen.values()) > 0


def test_anchor_sampler_threshold_is_k_not_k_minus_1():
    # exactly K-1 = 3 other-camera images with K = 4: the reference draws WITH replacement (len >= K is False)
    labels = np.zeros(4, dtype=int)
    cams = np.array([1, 2, 3, 4])
    s = AnchorCrossCameraSampler(labels, cams, num_ids=1, num_instances=4, seed=0)
    distinct = []
    for e in range(100):
        s.set_epoch(e)
        (g,) = list(s)
        distinct.append(len(set(g[1:])))
        assert g[0] not in g[1:]
    assert min(distinct) < 3  # a permutation of the three would always give 3


def test_anchor_sampler_epoch_determinism_and_shards():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 50, 2000)
    cams = rng.integers(1, 7, 2000)
    s = AnchorCrossCameraSampler(labels, cams, num_ids=8, num_instances=16, seed=4)
    assert len(s) == 50 // 8 == 6
    batches = list(s)
    assert all(len(b) == 128 for b in batches)
    ids = [labels[b][::16] for b in batches]
    flat = np.concatenate(ids)
    assert len(set(flat.tolist())) == 48  # each identity at most once per epoch
    assert batches == list(AnchorCrossCameraSampler(labels, cams, 8, 16, seed=4))
    s.set_epoch(1)
    assert list(s) != batches
    shards = [AnchorCrossCameraSampler(labels, cams, 8, 16, seed=4, rank=k, world_size=4) for k in range(4)]
    for b, *parts in zip(batches, *shards):
        assert sum(parts, []) == b
    with pytest.raises(DataError, match="not divisible"):
        AnchorCrossCameraSampler(labels, cams, 8, 16, world_size=3)
    with pytest.raises(DataError, match="camids"):
        AnchorCrossCameraSampler(labels, cams[:-1])
