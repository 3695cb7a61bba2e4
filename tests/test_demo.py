"""`vireid demo` end to end: synthetic SYSU-MM01 -> untrained baseline -> training -> report folder.

Run through the real command line (a fresh process, as a newcomer runs it) with a small dataset and 2 epochs; the
full-size demo's accuracy target is measured by hand (see the issue), not here. A second run into the same folder
reuses the dataset instead of rendering it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.setdefault("VIREID_CACHE", str(out / "cache"))
    return subprocess.run([sys.executable, "-m", "vireid", "demo", "--out", str(out), "--ids", "30", "--epochs", "2",
                           "--device", "cpu", "--quiet", *extra], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)


def _dataset_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_demo_writes_a_sane_report_and_reuses_its_dataset(tmp_path):
    out = tmp_path / "demo"
    proc = demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = out / "report"

    res = json.loads((report / "results.json").read_text())
    assert {"untrained", "trained", "chance_rank1"} <= set(res)
    assert res["identities"] == 30
    test_ids = res["test_identities"]
    assert test_ids >= 5
    # chance = 1 / #gallery identities (every test identity has an RGB image in each trial's gallery)
    assert res["chance_rank1"] == pytest.approx(100.0 / test_ids)
    for which in ("untrained", "trained"):
        r = res[which]
        assert 0.0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= r["rank20"] <= 100.0, (which, r)
        assert 0.0 < r["mAP"] <= 100.0 and 0.0 <= r["mINP"] <= r["mAP"] + 1e-9
        assert len(r["cmc"]) == 20 and r["cmc"][0] == pytest.approx(r["rank1"])
        assert all(a <= b + 1e-9 for a, b in zip(r["cmc"], r["cmc"][1:]))   # a CMC never decreases
        assert r["num_query"] > 0 and r["num_gallery"] >= test_ids
    assert res["trained"]["num_query"] == res["untrained"]["num_query"]      # the same protocol for both
    assert res["rank1_gain"] == pytest.approx(res["trained"]["rank1"] / res["untrained"]["rank1"])
    assert res["selected_checkpoint"] in ("best.pt", "last.pt")
    print(f"demo: chance {res['chance_rank1']:.2f} untrained {res['untrained']['rank1']:.2f} "
          f"trained {res['trained']['rank1']:.2f} in {res['seconds']:.0f} s")

    sizes = {}
    for name in ("cmc.png", "ranked_list.png", "training.png"):
        with Image.open(report / name) as im:
            im.verify()
        with Image.open(report / name) as im:
            sizes[name] = im.size
        assert sizes[name][0] >= 300 and sizes[name][1] >= 200, (name, sizes[name])
    # the ranked list: up to 6 probe rows with 8 matches each, so wider than tall
    assert sizes["ranked_list.png"][0] > sizes["ranked_list.png"][1] / 2
    assert (out / "run" / "best.pt").is_file() or (out / "run" / "last.pt").is_file()
    # the self-contained HTML page of the same run: every figure embedded, the trained Rank-1 in its table
    page = (report / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") >= 3
    assert f"{res['trained']['rank1']:.2f}" in page
    # the run's own log: two epochs of training
    rows = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines() if line.strip()]
    assert {r["epoch"] for r in rows if r["kind"] == "train"} == {0, 1}

    # rerun: the dataset is reused (no file rewritten), the run and the report are made again
    data_root = out / "SYSU-MM01"
    before = _dataset_files(data_root)
    assert len([f for f in before if f.endswith(".jpg")]) > 100
    report_mtime = (report / "results.json").stat().st_mtime_ns
    proc = demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _dataset_files(data_root) == before
    assert (report / "results.json").stat().st_mtime_ns > report_mtime
    again = json.loads((report / "results.json").read_text())
    # same seed, same data, same CPU: the same numbers
    assert again["trained"]["rank1"] == pytest.approx(res["trained"]["rank1"])
    assert again["untrained"]["rank1"] == pytest.approx(res["untrained"]["rank1"])
    assert (again["seed"], again["data_seed"]) == (0, 0)

    # --seed changes the run, not the dataset: the same people are tested (numbers comparable across seeds)
    proc = demo(out, "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _dataset_files(data_root) == before
    other = json.loads((report / "results.json").read_text())
    assert (other["seed"], other["data_seed"]) == (1, 0)
    assert other["chance_rank1"] == res["chance_rank1"] and other["test_identities"] == res["test_identities"]
    assert other["untrained"]["mAP"] != res["untrained"]["mAP"]  # another initialisation


@pytest.mark.slow
def test_the_demo_recipe_learns_on_a_shortened_run(tmp_path):
    """The demo recipe as a newcomer runs it (120 identities, seed 0), shortened to 8 epochs so that CI can afford it:
    trained Rank-1 at least 2.5x the untrained model's and 7 points above chance. Measured on torch 2.14.1, 2 CPU
    threads: 18.57 (14.40 on another machine) vs untrained 4.51, chance 4.35 (the full 24-epoch demo: 38.00 / 32.80;
    README table). A recipe or engine regression that stops the demo from learning fails here (about 3 minutes on 2
    idle cores)."""
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="2", VIREID_CACHE=str(out / "cache"))
    proc = subprocess.run([sys.executable, "-m", "vireid", "demo", "--out", str(out), "--epochs", "8", "--device",
                           "cpu", "--quiet"], capture_output=True, text=True, env=env, cwd=REPO, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "report" / "results.json").read_text())
    trained, untrained, chance = res["trained"]["rank1"], res["untrained"]["rank1"], res["chance_rank1"]
    print(f"demo: chance {chance:.2f} untrained {untrained:.2f} trained {trained:.2f} mAP {res['trained']['mAP']:.2f}")
    assert res["identities"] == 120
    assert trained >= 2.5 * untrained and trained >= chance + 7, (chance, untrained, trained)
    assert res["trained"]["mAP"] >= 2 * res["untrained"]["mAP"]
