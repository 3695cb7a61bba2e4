"""Resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted run (CPU).

The toy run uses every random stream a real run does — dropout (torch's global RNG), flips (the augmentation
generator), NumPy and Python jitter in ``fetch_batch`` — plus validation and best.pt, so a stream the checkpoint
forgot to restore would change the final weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _toy import ToyMethod, make_fetch, toy_data, toy_validate  # tests/ is on sys.path
from vireid.data.sampling import CrossModalIdentitySampler
from vireid.engine import Trainer, load_checkpoint, make_meta, read_jsonl, seed_everything

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOY_ARGS = ["--epochs", "3", "--ckpt-every", "2", "--dropout", "0.2", "--flip", "0.5", "--jitter", "--validate"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _toy(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "_toy.py"), "--out", str(out), *TOY_ARGS, *extra],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


def _progress(path: Path) -> dict[str, int] | None:
    try:
        return torch.load(path, weights_only=True)["progress"]
    except Exception:  # not written yet (the rename is atomic, so never a torn file)
        return None


def _train_losses(log: Path) -> list[tuple[int, float]]:
    return [(r["global_step"], r["loss"]) for r in read_jsonl(log) if r["kind"] == "train"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {float((a[k] - b[k]).abs().max())}"


@pytest.mark.slow  # three subprocesses, each importing torch: ~30 s on 2 busy cores
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = _toy(ref_dir)
    victim = _toy(run_dir, "--sleep", "0.15")

    # wait until a checkpoint from the middle of epoch 1 exists and the run has trained past it, then SIGKILL
    deadline = time.monotonic() + 90
    while True:
        assert victim.poll() is None, "the run ended before it could be killed; slow it down (--sleep)"
        assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
        progress = _progress(run_dir / "last.pt")
        if progress and progress["epoch"] == 1 and progress["step_in_epoch"] >= 3:
            steps = [g for g, _ in _train_losses(run_dir / "log.jsonl")]
            if max(steps) > progress["global_step"]:
                break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    at_kill = load_checkpoint(run_dir / "last.pt")["progress"]
    assert at_kill["epoch"] == 1 and 0 < at_kill["step_in_epoch"] < 7, at_kill  # killed mid-epoch
    assert max(g for g, _ in _train_losses(run_dir / "log.jsonl")) > at_kill["global_step"]  # work was lost

    _finish(_toy(run_dir, "--resume"))
    _finish(reference)

    ref, resumed = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert ref["progress"] == resumed["progress"] == {"epoch": 3, "step_in_epoch": 0, "global_step": 21}
    _assert_same_state(ref["method"], resumed["method"])
    for sa, sb in zip(ref["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        _assert_same_state(sa, sb)
    assert ref["meta"]["best_metric"] == resumed["meta"]["best_metric"]
    _assert_same_state(load_checkpoint(ref_dir / "best.pt")["model"], load_checkpoint(run_dir / "best.pt")["model"])
    # the log of the killed + resumed run reads like the uninterrupted one (rows after the checkpoint dropped)
    assert _train_losses(run_dir / "log.jsonl") == _train_losses(ref_dir / "log.jsonl")


def _in_process(out: Path, max_steps: int | None, resume: bool, seed: int = 0) -> ToyMethod:
    seed_everything(seed)
    data = toy_data()
    method = ToyMethod(flip=0.5, dropout=0.2)
    opt = torch.optim.SGD(method.param_groups(0.3, 5e-4), lr=0.3, momentum=0.9, nesterov=True)
    sampler = CrossModalIdentitySampler(data[2], data[3], num_ids=4, num_instances=2, seed=0)
    trainer = Trainer(method, opt, lambda e: 0.5 ** e, sampler, make_fetch(data, jitter=True), epochs=2,
                      grad_accum_steps=2, out_dir=out, seed=seed, log_every=3, progress=False, max_steps=max_steps,
                      checkpoint_every_steps=2, validate=toy_validate(data), select_metric="acc",
                      meta=make_meta(dataset="toy", method="toy"))
    if resume:
        assert trainer.resume()
    trainer.fit()
    return method


def test_resume_after_stop_in_process_matches_uninterrupted(tmp_path):
    """Stop after 3 optimiser steps (mid-epoch, with gradient accumulation), resume in a fresh trainer whose
    generators were seeded differently: the checkpoint's states must win."""
    full = _in_process(tmp_path / "full", None, False)
    _in_process(tmp_path / "split", 3, False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["progress"] == \
        {"epoch": 0, "step_in_epoch": 6, "global_step": 3}
    resumed = _in_process(tmp_path / "split", None, True, seed=123)
    _assert_same_state(full.state_dict(), resumed.state_dict())
