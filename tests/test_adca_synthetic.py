"""ADCA learns cross-modal retrieval on synthetic data from a transferable start (issue 13 item 3), as a user runs it:
the two shipped configs, ``configs/adca/synthetic_source.yaml`` (the stand-in for ImageNet weights: AML's stage 1 on
other synthetic people) and then ``configs/adca/synthetic.yaml`` (ADCA, unsupervised, both stages), unmodified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _train(config: str, cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "vireid", "train", str(REPO / config), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.slow
def test_adca_learns_from_a_transferable_start_on_synthetic_data(tmp_path):
    """Measured on torch 2.14.1, 2 CPU threads (AMD EPYC): the start (the source backbone with ADCA's own neck)
    Rank-1 9.66 -> 15.60 after stage 1 -> 18.74 final (seed 0; seeds 1 and 2 of the ADCA run: 10.00 -> 21.14,
    9.71 -> 21.66); chance 4.35. From random init the same recipe stays at chance (docs/recipes/adca.md). About 5
    minutes on 2 idle cores."""
    from vireid.data.synthetic import write_synthetic

    data = tmp_path / "vireid-adca"
    write_synthetic("market1501_gen", data / "market1501_gen", ids=400, seed=0)
    write_synthetic("sysu_mm01", data / "SYSU-MM01", ids=120, seed=0)
    _train("configs/adca/synthetic_source.yaml", tmp_path)
    source = json.loads((data / "source" / "results.json").read_text())
    chance = 100 / 23  # 23 test identities, one gallery image per identity and camera
    assert source["final"]["rank1"] >= 2 * chance, source["final"]  # the start transfers to the target

    _train("configs/adca/synthetic.yaml", tmp_path)
    run = data / "run"
    res = json.loads((run / "results.json").read_text())
    start, stage1, final = (res[k]["rank1"] for k in ("untrained", "stage1", "final"))
    print(f"adca synthetic: start {start:.2f} stage 1 {stage1:.2f} final {final:.2f} (chance {chance:.2f})")
    assert final >= start + 5 and final >= 3 * chance, (start, stage1, final)
    assert res["final"]["mAP"] > res["untrained"]["mAP"]
    for stage in ("stage1", "stage2"):
        train = _rows(run / stage / "log.jsonl", "train")
        first, last = ([r["loss"] for r in train if r["epoch"] == e] for e in (0, 7))
        assert len(first) >= 3 and sum(last) / len(last) < sum(first) / len(first), (stage, first, last)
        clusters = _rows(run / stage / "log.jsonl", "cluster")
        assert [r["epoch"] for r in clusters] == list(range(8))
        assert all("oracle_cma_precision" in r and r["ari_rgb"] > 0.1 for r in clusters)
    assert sum(r["cma_pairs"] for r in _rows(run / "stage2" / "log.jsonl", "cluster")) > 0
