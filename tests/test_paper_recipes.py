"""Paper recipes (issue #10 items 1, 2): the published training pool in every paper config, CAJ's ESD metric loss.

Expected values come from the official scripts: SYSU-MM01 trains on train + val ids (pre_process_sysu.py:24-25),
RegDB on all training ids of the trial, the last epoch kept; CAJ runs ``--method adp --square 1``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _layouts as L
from vireid.data.datasets import load_dataset
from vireid.data.pools import split_train_val
from vireid.losses import enhanced_squared_difference, weighted_regularized_triplet
from vireid.methods.caj import CAJ
from vireid.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ["agw/sysu.yaml", "agw/regdb.yaml", "caj/sysu.yaml", "caj/regdb.yaml", "msclnet/sysu.yaml",
                 "msclnet/regdb.yaml", "aml/sysu_mm01.yaml", "aml/sysu_mm02.yaml", "aml/regdb.yaml"]


def _show(config: str) -> str:
    done = subprocess.run([sys.executable, "-m", "vireid", "config", "show", str(ROOT / "configs" / config)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_configs_train_on_the_published_pool(config: str) -> None:
    shown = _show(config)
    lines = [line.strip() for line in shown.splitlines()]
    assert "validation: none" in lines, shown
    if config.startswith("caj/"):
        assert "metric_loss: esd" in lines, shown


def test_sysu_pool_without_validation_holds_train_and_val_ids(tmp_path: Path) -> None:
    ds = load_dataset("sysu_mm01", L.write_sysu_mm01(tmp_path))
    train_ids = {int(x) for x in L.SYSU_IDS["train"].split(",")}
    val_ids = {int(x) for x in L.SYSU_IDS["val"].split(",")}
    pool, val = split_train_val(ds, "none", 0.1, 0)
    assert {s.pid for s in pool} == train_ids | val_ids and val == []
    assert len({s.label for s in pool}) == len(train_ids) + len(val_ids) == 3
    held, val = split_train_val(ds, "holdout", 0.1, 0)  # the explicit option: val ids left out
    assert {s.pid for s in held} == train_ids and {s.pid for s in val} == val_ids


def test_caj_trains_with_esd_by_default_and_wrt_on_request() -> None:
    torch.manual_seed(0)
    model = build_model(arch="resnet18_half", num_classes=2, pretrained="none")
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 255, (4, 3, 64, 32), generator=g, dtype=torch.uint8)
    ir = torch.randint(0, 255, (4, 3, 64, 32), generator=g, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1])
    for metric, loss in (("esd", enhanced_squared_difference), ("wrt", weighted_regularized_triplet)):
        method = CAJ(model, height=64, width=32, metric_loss=metric)
        batch = method.make_batch(rgb, ir, y, y, torch.Generator().manual_seed(1))
        with torch.no_grad():
            terms = method.training_step(batch)
            out = model(batch.images, batch.modalities)  # train mode, batch statistics: the same forward again
        assert metric in terms and ({"esd", "wrt"} - {metric}).isdisjoint(terms)
        # the metric term is the chosen loss on the pooled feature of all three views, weight 1
        assert terms[metric].item() == pytest.approx(loss(out.pooled, batch.labels).item(), rel=1e-5, abs=1e-6)
    assert CAJ(model, height=64, width=32).metric_loss == "esd"
    with pytest.raises(ValueError, match="metric_loss"):
        CAJ(model, height=64, width=32, metric_loss="adp")


def test_eval_cmc_reaches_the_test_protocol(tmp_path):
    """`eval.cmc` (AML's identity-level CMC on RegDB / SYSU-MM02) is what the test plan of a run uses."""
    from vireid import build
    from vireid.config import load_config
    from vireid.data.synthetic import write_synthetic
    from vireid.testing import test_plan

    root = tmp_path / "RegDB"
    write_synthetic("regdb", root, ids=12, seed=0)
    for cmc, expected in (("auto", "standard"), ("identity", "identity")):
        cfg = load_config(ROOT / "configs/aml/regdb.yaml", [f"data.root={root}", f"eval.cmc={cmc}"])
        assert test_plan(cfg, build.dataset_from_config(cfg.data)).cmc == expected
