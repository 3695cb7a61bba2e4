"""DDP: two CPU processes (torchrun, gloo) train the toy method for a few steps.

Checks: parameters identical on both ranks, only rank 0 wrote files, and the result equals one process training on
the same global batches (the sampler's shards concatenate to the single-process batch; losses are means of
per-sample terms and the toy model has no BatchNorm, so averaged shard gradients = the global-batch gradient).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vireid.engine import load_checkpoint, read_jsonl

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ARGS = ["--epochs", "2", "--num-ids", "4", "--validate"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine: this test is about the CPU path
    return env


def _run(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode(errors="replace")[-4000:]


@pytest.mark.slow  # torchrun + 3 processes importing torch: ~25 s on 2 busy cores
def test_two_process_ddp_matches_single_process(tmp_path):
    ddp_out, ddp_dump = tmp_path / "ddp", tmp_path / "ddp_dump"
    one_out, one_dump = tmp_path / "single", tmp_path / "single_dump"
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(TESTS / "_toy.py"), "--out", str(ddp_out), "--dump", str(ddp_dump), *ARGS])
    single = _run([sys.executable, str(TESTS / "_toy.py"), "--out", str(one_out), "--dump", str(one_dump), *ARGS])
    _finish(ddp)
    _finish(single)

    rank0 = torch.load(ddp_dump / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_dump / "rank1.pt", weights_only=True)
    ref = torch.load(one_dump / "rank0.pt", weights_only=True)
    for k in ref:
        assert torch.equal(rank0[k], rank1[k]), f"{k} differs between ranks"
        diff = float((rank0[k] - ref[k]).abs().max())
        assert diff < 1e-5, f"{k}: DDP vs single process differ by {diff}"
    # the weights moved: the comparison above is not between two untouched initialisations (N(0, 0.1)-ish init)
    assert float(ref["model.classifier.weight"].abs().max()) > 0.05

    # only rank 0 wrote: one set of files, one log row per step (rank 1 appending would double them)
    assert sorted(p.name for p in ddp_out.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    ddp_rows = [r for r in read_jsonl(ddp_out / "log.jsonl") if r["kind"] == "train"]
    one_rows = [r for r in read_jsonl(one_out / "log.jsonl") if r["kind"] == "train"]
    assert len(ddp_rows) == len(one_rows) == 2 * 7
    # logged losses are the mean over ranks = the single process's loss on the global batch
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in one_rows], abs=1e-5)
    ck = load_checkpoint(ddp_out / "last.pt")
    assert ck["meta"]["world_size"] == 2 and len(ck["rng"]) == 2  # every rank's random streams, for resume
    assert not torch.equal(ck["rng"][0]["generator"], ck["rng"][1]["generator"])
    for k, v in ck["method"].items():
        assert torch.equal(v, rank0[k])
