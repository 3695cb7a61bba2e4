"""DEEN and ADCA as a user runs them (issue 13 item 5): one `vireid train` command each, killed mid-run and resumed to
the same weights bit for bit, under torchrun with two processes, and shown by `vireid report` (tiny synthetic runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vireid.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMON = ["data.height=32", "data.width=16", "data.workers=0", "model.arch=resnet18_half", "model.pretrained=none",
          "train.device=cpu", "train.amp=none", "train.epochs=2", "train.steps_per_epoch=3", "train.checkpoint_every=1",
          "train.log_every=1", "eval.trials=2"]
RUNS = {
    # DEEN's LLCM recipe on a synthetic LLCM; ADCA's SYSU-MM01 recipe (both stages, CMA in stage 2)
    "deen": ("configs/deen/llcm.yaml", "llcm", ["sampler.num_ids=4", "sampler.num_instances=2"], "last.pt"),
    "adca": ("configs/adca/sysu.yaml", "sysu_mm01", ["method.rgb_ids=2", "method.ir_ids=2", "method.num_instances=4",
                                                     "method.k1=8", "method.k2=3"], "stage2/last.pt"),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    from vireid.data.synthetic import write_synthetic

    base = tmp_path_factory.mktemp("method_runs")
    write_synthetic("llcm", base / "LLCM", ids=24, seed=0)
    write_synthetic("sysu_mm01", base / "SYSU-MM01", ids=30, seed=0)
    return {"llcm": base / "LLCM", "sysu_mm01": base / "SYSU-MM01", "cache": base / "cache"}


def _args(name: str, datasets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    yaml, data, own, _ = RUNS[name]
    return ["train", str(REPO / yaml), "--quiet", "--set", f"data.root={datasets[data]}",
            f"data.cache_dir={datasets['cache']}", f"output_dir={out}", *COMMON, *own, *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["method"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deen", "adca"])
def test_one_command_kill_resume_and_report(name, datasets, tmp_path, monkeypatch):
    from vireid.engine.trainer import Trainer

    ckpt = RUNS[name][3]
    full = tmp_path / "full"
    assert main(_args(name, datasets, full)) == 0
    results = json.loads((full / "results.json").read_text())
    final = results.get("final", results)
    assert 0 <= final["rank1"] <= 100 and final["mAP"] > 0

    # interrupted right after the checkpoint at step 2 of the last phase (mid-epoch), then resumed with --resume
    killed = tmp_path / "killed"
    real = Trainer.save_last
    last_phase = Path(ckpt).parent.name

    def dying(self: Trainer) -> None:
        real(self)
        if self.out_dir.name == (last_phase or killed.name) and self.global_step == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "save_last", dying)
    assert main(_args(name, datasets, killed)) == 130  # "vireid: interrupted", as after Ctrl-C
    monkeypatch.setattr(Trainer, "save_last", real)
    assert torch.load(killed / ckpt, weights_only=True)["progress"]["global_step"] == 2
    assert main(_args(name, datasets, killed) + ["--resume"]) == 0
    a, b = _weights(full / ckpt), _weights(killed / ckpt)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    again = json.loads((killed / "results.json").read_text())
    assert again.get("final", again)["rank1"] == final["rank1"] and again.get("final", again)["mAP"] == final["mAP"]

    # the report finds the run, its method and (ADCA) the re-clustering figure
    assert main(["report", str(full)]) == 0
    page = (full / "report.html").read_text()
    assert f"{final['rank1']:.2f}" in page
    if name == "adca":
        assert (full / "clustering.png").is_file() and "Re-clustering diagnostics" in page
        rows = [json.loads(r) for r in (full / "stage2" / "log.jsonl").read_text().splitlines()]
        clusters = [r for r in rows if r["kind"] == "cluster"]
        assert [r["epoch"] for r in clusters] == [0, 1] and all("cma_pairs" in r and "ari_rgb" in r for r in clusters)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deen", "adca"])
def test_under_torchrun_two_processes(name, datasets, tmp_path):
    """`torchrun --nproc_per_node 2 -m vireid train ...` (gloo on CPU): both ranks train, rank 0 writes."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: a free rendezvous port per run (two torchrun tests on two xdist workers shared port 29500)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vireid", *_args(name, datasets, out, "train.threads=1")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(out / RUNS[name][3], weights_only=True)
    assert ck["meta"]["world_size"] == 2 and ck["progress"]["global_step"] == 6
    log = out / Path(RUNS[name][3]).parent / "log.jsonl"
    rows = [json.loads(r) for r in log.read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "train"]) == 6  # written once (rank 0), not per rank
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results.get("final", results)["rank1"] <= 100
