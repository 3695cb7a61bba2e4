"""Protocol options for AML's evaluation: the CMC flavour override and both directions in one run.

AML's code (wuancong/CMAM @ 21d258fb, fastreid/evaluation/eval_regdb.py:30-66) counts the CMC of RegDB and SYSU-MM02
at identity level (``get_unique``: each gallery identity counted at its first, stable occurrence) and evaluates
query-RGB/gallery-IR and the swap in one run (reid_evaluation.py:134-148). The values below are computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from vireid.errors import FeaturesError
from vireid.evaluation.features import validate_features
from vireid.evaluation.protocols import build_protocol, evaluate_protocol


def unit(deg: float) -> list[float]:
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))]


def tiny_regdb():
    """Visible: a1 (id 1, 0 deg), b1 (id 2, 90 deg). Thermal: ta1 (id 1, 60), tb1 (id 2, 20), tb2 (id 2, 30),
    tc (id 3, 10). Distances grow with the angle between the unit vectors."""
    rows = [("Visible/1/a1.bmp", 1, 1, 0, 0), ("Visible/2/b1.bmp", 2, 1, 0, 90),
            ("Thermal/1/ta1.bmp", 1, 2, 1, 60), ("Thermal/2/tb1.bmp", 2, 2, 1, 20),
            ("Thermal/2/tb2.bmp", 2, 2, 1, 30), ("Thermal/3/tc.bmp", 3, 2, 1, 10)]
    return validate_features(np.array([unit(r[4]) for r in rows], np.float32), [r[1] for r in rows],
                             [r[2] for r in rows], [r[3] for r in rows], np.array([r[0] for r in rows]))


# v2i. a1 (0 deg) sees tc (id 3), tb1 (id 2), tb2 (id 2), ta1 (id 1): first match at rank 3 (standard); distinct ids
# 3, 2, 1 -> identity rank 2; AP 1/4. b1 (90 deg) sees ta1 (id 1), tb2 (id 2), tb1 (id 2), tc: rank 1 either way;
# AP (1/2 + 2/3) / 2 = 7/12. mAP = (1/4 + 7/12) / 2 = 5/12.
V2I_STANDARD = [0.0, 50.0, 50.0, 100.0, 100.0]
V2I_IDENTITY = [0.0, 50.0, 100.0, 100.0, 100.0]
V2I_MAP = 100 * 5 / 12
# i2v. ta1 (60): b1 (30 deg away) then a1 (60): rank 1. tb1 (20): a1 then b1: rank 1. tb2 (30): a1 then b1: rank 1.
# tc (id 3) has no gallery image: invalid. AP 1/2 each; the gallery has one image per id, so both CMCs agree.
I2V = [0.0, 100.0, 100.0, 100.0, 100.0]


def test_regdb_standard_and_identity_cmc_by_hand():
    fs = tiny_regdb()
    std = evaluate_protocol(fs.features, build_protocol("regdb", fs)).summary()
    idl = evaluate_protocol(fs.features, build_protocol("regdb", fs, cmc="identity")).summary()
    assert std["cmc_kind"] == "standard" and idl["cmc_kind"] == "identity"
    assert std["cmc"][:5] == pytest.approx(V2I_STANDARD) and idl["cmc"][:5] == pytest.approx(V2I_IDENTITY)
    assert std["mAP"] == pytest.approx(V2I_MAP) and idl["mAP"] == pytest.approx(V2I_MAP)
    # the override also works at evaluation time, and "auto" keeps the protocol's own
    late = evaluate_protocol(fs.features, build_protocol("regdb", fs), cmc="identity").summary()
    assert late["cmc"][:5] == pytest.approx(V2I_IDENTITY)
    auto = evaluate_protocol(fs.features, build_protocol("regdb", fs, cmc="identity"), cmc="auto").summary()
    assert auto["cmc"][:5] == pytest.approx(V2I_IDENTITY)


def test_both_directions_in_one_call():
    fs = tiny_regdb()
    plan = build_protocol("regdb", fs, cmc="identity", direction="both")
    assert plan.direction == "both" and [t.direction for t in plan.trials] == ["v2i", "i2v"]
    result = evaluate_protocol(fs.features, plan)
    parts = result.by_direction()
    assert list(parts) == ["v2i", "i2v"]
    assert parts["v2i"].per_trial[0].cmc[:5].tolist() == pytest.approx([v / 100 for v in V2I_IDENTITY])
    assert parts["i2v"].per_trial[0].num_valid == 3 and parts["i2v"].per_trial[0].num_query == 4
    s = result.summary()
    assert s["direction"] == "both" and s["cmc_kind"] == "identity"
    assert s["v2i"]["direction"] == "v2i" and s["i2v"]["direction"] == "i2v"
    assert s["v2i"]["cmc"][:5] == pytest.approx(V2I_IDENTITY) and s["v2i"]["mAP"] == pytest.approx(V2I_MAP)
    assert s["i2v"]["cmc"][:5] == pytest.approx(I2V) and s["i2v"]["mAP"] == pytest.approx(50.0)
    assert s["i2v"]["num_query"] == 4 and s["i2v"]["num_gallery"] == 2
    # each direction equals its own one-direction evaluation
    for d in ("v2i", "i2v"):
        alone = evaluate_protocol(fs.features, build_protocol("regdb", fs, cmc="identity", direction=d)).summary()
        assert alone["cmc"] == s[d]["cmc"] and alone["mAP"] == s[d]["mAP"]


def test_both_directions_with_rerank_and_sysu_mm02():
    fs = tiny_regdb()
    both = evaluate_protocol(fs.features, build_protocol("regdb", fs, direction="both"), rerank=True,
                             rerank_precision="float32").summary()
    assert both["rerank"] is True and both["rerank_precision"] == "float32"
    for d in ("v2i", "i2v"):
        alone = evaluate_protocol(fs.features, build_protocol("regdb", fs, direction=d), rerank=True,
                                  rerank_precision="float32").summary()
        assert alone["mAP"] == both[d]["mAP"]
    # SYSU-MM02: identity-level by default; both directions work there too
    rows = [("test/cam1/0001_0.jpg", 1, 1, 0, 0), ("test/cam1/0002_0.jpg", 2, 1, 0, 90),
            ("test/cam2/0001_0.jpg", 1, 2, 1, 60), ("test/cam2/0002_0.jpg", 2, 2, 1, 20),
            ("test/cam3/0002_1.jpg", 2, 3, 1, 30), ("test/cam3/0003_0.jpg", 3, 3, 1, 10)]
    mm = validate_features(np.array([unit(r[4]) for r in rows], np.float32), [r[1] for r in rows],
                           [r[2] for r in rows], [r[3] for r in rows], np.array([r[0] for r in rows]))
    s = evaluate_protocol(mm.features, build_protocol("sysu-mm02", mm, direction="both")).summary()
    assert s["cmc_kind"] == "identity" and s["v2i"]["cmc"][:5] == pytest.approx(V2I_IDENTITY)
    s = evaluate_protocol(mm.features, build_protocol("sysu-mm02", mm, cmc="standard")).summary()
    assert s["cmc"][:5] == pytest.approx(V2I_STANDARD)


def test_option_errors():
    fs = tiny_regdb()
    with pytest.raises(FeaturesError, match="unknown cmc 'rank'"):
        build_protocol("regdb", fs, cmc="rank")
    with pytest.raises(FeaturesError, match="unknown direction"):
        build_protocol("regdb", fs, direction="sideways")
    with pytest.raises(FeaturesError, match="unknown cmc"):
        evaluate_protocol(fs.features, build_protocol("regdb", fs), cmc="rank")
    with pytest.raises(FeaturesError, match="re-ranking precision"):
        evaluate_protocol(fs.features, build_protocol("regdb", fs), rerank=True, rerank_precision="int8")
    plan = build_protocol("regdb", fs, direction="i2v")
    with pytest.raises(FeaturesError, match="not 'v2i'"):
        plan.for_direction("v2i")
