"""Engine: LR schedules against hand values, checkpoints (round trip, atomicity, safe loading, RegDB trial rule,
clear errors), the trainer on the toy method (loss goes down, gradient accumulation equals the full batch,
per-step schedules, AMP/channels_last paths), logs."""

from __future__ import annotations

import json
import math
import os
import random
import warnings

import numpy as np
import pytest
import torch

from _toy import ListSampler, ToyMethod, ToyNet, make_fetch, toy_data, toy_validate  # tests/ is on sys.path
from vireid.data.sampling import CrossModalIdentitySampler
from vireid.engine import (
    JsonlLogger,
    Trainer,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    make_meta,
    read_jsonl,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from vireid.engine import checkpoint as ckpt_mod
from vireid.engine import schedules as S
from vireid.errors import CheckpointError

# ------------------------------------------------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize("epoch, factor", [(0, 0.1), (4, 0.5), (8, 0.9), (9, 1.0), (10, 1.0), (19, 1.0), (20, 0.1),
                                           (49, 0.1), (50, 0.01), (80, 0.01)])
def test_agw_schedule_boundaries(epoch, factor):
    assert S.agw_factor(epoch) == pytest.approx(factor, rel=1e-12)
    assert S.warmup_multistep(10, [20, 50], 0.1)(epoch) == pytest.approx(factor, rel=1e-12)


def test_generic_warmup_multistep():
    f = S.warmup_multistep(warmup_epochs=0, milestones=[3, 5], gamma=0.5)
    assert [f(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError):
        S.warmup_multistep(2, [5, 3], 0.1)


@pytest.mark.parametrize("epoch, lr", [(0, 0.1), (19, 0.1), (20, 0.05), (49, 0.05), (50, 0.01), (99, 0.01),
                                       (100, 0.001), (199, 0.001)])
def test_msclnet_schedule_boundaries(epoch, lr):
    assert S.msclnet_lr(epoch) == pytest.approx(lr, rel=1e-12)
    assert S.msclnet_factor(epoch) * S.MSCLNET_BASE_LR == pytest.approx(lr, rel=1e-12)


def test_aml_stage1_hand_values():
    f, base = S.aml_stage1(), 3.5e-4
    floor = 7.7e-7 / base
    assert f(0) == pytest.approx(0.01)
    assert f(1000) == pytest.approx(0.505)
    assert f(1999) == pytest.approx(0.01 + 0.99 * 1999 / 2000)
    assert f(2000) == 1.0 and f(5000) == 1.0 and f(9000) == pytest.approx(1.0)
    assert f(12000) == pytest.approx((1 + floor) / 2)            # half-way through the cosine
    assert f(10500) == pytest.approx(floor + (1 - floor) * (1 + math.cos(math.pi / 4)) / 2)
    assert f(15000) * base == pytest.approx(7.7e-7, rel=1e-9)
    assert f(20000) * base == pytest.approx(7.7e-7, rel=1e-9)
    values = [f(t) for t in range(9000, 15001, 250)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_aml_stage2_hand_values():
    f, base = S.aml_stage2(), 1e-4
    floor = 7.7e-7 / base
    assert f(0) == pytest.approx(0.01)
    assert f(2000) == pytest.approx(1.0)
    assert f(7000) == pytest.approx((1 + floor) / 2)
    assert f(12000) * base == pytest.approx(7.7e-7, rel=1e-9)


# ------------------------------------------------------------------------------------------------------------------
# RNG states and checkpoints


def test_rng_state_round_trip_restores_every_stream():
    g = torch.Generator().manual_seed(5)
    seed_everything(3)
    state = get_rng_state(g)
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    set_rng_state(state, g)
    second = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


def _save_toy(path, *, dataset="regdb", trial=3, value=1.0):
    model = ToyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 16, 8), torch.zeros(2, dtype=torch.long))[1].sum().backward()
    opt.step()
    with torch.no_grad():
        model.classifier.bias.fill_(value)
    g = torch.Generator().manual_seed(1)
    save_checkpoint(path, model_state=model.state_dict(), method_state=model.state_dict(),
                    optimizer_state=opt.state_dict(), scheduler_state={"unit": "epoch"}, scaler_state=None,
                    rng_state=get_rng_state(g), progress={"epoch": 2, "step_in_epoch": 5, "global_step": 19},
                    meta=make_meta(config_yaml="a: 1\n", dataset=dataset, trial=trial, method="toy",
                                   best_metric=12.5))
    return model, opt


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    model, opt = _save_toy(path)
    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw["format"] == "vireid-checkpoint"
    ck = load_checkpoint(path, expect_dataset="regdb", expect_trial=3)
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v)
    assert ck["progress"] == {"epoch": 2, "step_in_epoch": 5, "global_step": 19}
    meta = ck["meta"]
    assert meta["config_yaml"] == "a: 1\n" and meta["dataset"] == "regdb" and meta["trial"] == 3
    assert meta["method"] == "toy" and meta["best_metric"] == 12.5
    from vireid import __version__
    assert meta["vireid_version"] == __version__ and "git_commit" in meta
    opt2 = torch.optim.SGD(ToyNet().parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ck["optimizer"])
    moms = [s["momentum_buffer"] for s in opt.state.values()]
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(opt2.state.values(), moms))
    assert isinstance(ck["rng"], list) and isinstance(ck["rng"][0]["numpy"][1], list)
    fresh = ToyNet()
    load_model_state(fresh, ck["model"], path)
    assert torch.equal(fresh.classifier.bias, model.classifier.bias)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _save_toy(path, value=1.0)

    def crash(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        _save_toy(path, value=2.0)
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert torch.all(ck["model"]["classifier.bias"] == 1.0)  # the old checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind
    _save_toy(path, value=2.0)
    assert torch.all(load_checkpoint(path)["model"]["classifier.bias"] == 2.0)


def test_regdb_trial_mismatch_is_refused_or_warned(tmp_path):
    path = tmp_path / "regdb_t3.pt"
    _save_toy(path, dataset="regdb", trial=3)
    expected = (f"checkpoint {path} was trained on RegDB trial 3 but trial 5 is under test; testing on another "
                "trial leaks training identities — use the trial-5 checkpoint (or --allow-trial-mismatch to only "
                "warn)")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect_dataset="regdb", expect_trial=5)
    assert str(err.value) == expected
    with pytest.warns(UserWarning) as rec:
        ck = load_checkpoint(path, expect_dataset="regdb", expect_trial=5, strict_trial=False)
    assert [str(w.message) for w in rec] == [expected]
    assert ck["meta"]["trial"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, expect_dataset="regdb", expect_trial=3)   # same trial: silent


def test_trial_rule_only_for_regdb(tmp_path):
    path = tmp_path / "sysu.pt"
    _save_toy(path, dataset="sysu_mm01", trial=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, expect_dataset="sysu_mm01", expect_trial=4)  # SYSU trials are gallery draws


def test_not_a_checkpoint_errors_are_one_line(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(ToyNet().state_dict(), bare)
    good = tmp_path / "good.pt"
    _save_toy(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "vireid-checkpoint", "x": np.zeros(3)}, unsafe)
    cases = {bare: "not a vireid checkpoint (a bare state dict", truncated: "corrupt or truncated",
             empty: "corrupt or truncated", unsafe: "refusing to unpickle",
             tmp_path / "missing.pt": "checkpoint not found", tmp_path: "it is a directory"}
    for path, needle in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert needle in msg and str(path) in msg and "\n" not in msg, msg


def test_load_model_state_names_mismatching_keys(tmp_path):
    state = ToyNet(width=8).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_model_state(ToyNet(width=4), state, "ck.pt")
    msg = str(err.value)
    assert msg.startswith("ck.pt: checkpoint does not fit this model") and "stem_rgb.weight (checkpoint [8, 3, 3, 3]"\
        " vs model [4, 3, 3, 3])" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="missing keys bn.weight, bn.bias, bn.running_mean"):
        load_model_state(ToyNet(batchnorm=True), state, "ck.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys stem_rgb.weight, stem_rgb.bias, stem_ir.weight \(\+"):
        load_model_state(torch.nn.Linear(2, 2), state, "ck.pt")


# ------------------------------------------------------------------------------------------------------------------
# trainer


def _trainer(tmp_path, *, sampler=None, epochs=2, lr=0.3, accum=1, method=None, **kw):
    torch.manual_seed(0)
    data = toy_data()
    method = method or ToyMethod()
    opt = torch.optim.SGD(method.param_groups(lr, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    sampler = sampler or CrossModalIdentitySampler(data[2], data[3], num_ids=4, num_instances=2, seed=0)
    kw.setdefault("lr_lambda", None)
    trainer = Trainer(method, opt, kw.pop("lr_lambda"), sampler, make_fetch(data), epochs=epochs,
                      grad_accum_steps=accum, out_dir=tmp_path, seed=0, log_every=1, progress=False,
                      meta=make_meta(dataset="toy", method="toy"), **kw)
    return trainer, method, data


def test_trainer_lowers_loss_and_keeps_best(tmp_path):
    data = toy_data()
    trainer, method, _ = _trainer(tmp_path, epochs=4, validate=toy_validate(data), select_metric="acc")
    acc_before = toy_validate(data)(method.model)["acc"]
    summary = trainer.fit()
    rows = list(read_jsonl(tmp_path / "log.jsonl"))
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(train) == 4 * 7 and len(val) == 4 and summary["global_step"] == 28
    first = np.mean([r["loss"] for r in train if r["epoch"] == 0])
    last = np.mean([r["loss"] for r in train if r["epoch"] == 3])
    assert last < 0.75 * first, (first, last)
    assert {"ce", "reg", "loss", "lr", "img_per_s", "time", "epoch", "step"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(train[0]["ce"] + train[0]["reg"], rel=1e-6)
    best = max(val, key=lambda r: r["acc"])
    assert summary["best_metric"] == best["acc"] > max(acc_before, 100 / 6)
    ck_best = load_checkpoint(tmp_path / "best.pt")
    assert ck_best["meta"]["best_epoch"] == best["epoch"] and ck_best["optimizer"] is None
    ck_last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck_last["progress"] == {"epoch": 4, "step_in_epoch": 0, "global_step": 28}
    for k, v in method.state_dict().items():
        assert torch.equal(ck_last["method"][k], v)


def _half_and_full_samplers(num_steps: int):
    """Half batches (2 ids x 2 images per modality) and the full batches made of consecutive pairs of them."""
    rng = np.random.default_rng(0)
    halves = []
    for _ in range(num_steps):
        ids = rng.choice(6, size=2, replace=False)
        rgb = [int(i * 8 + rng.integers(8)) for i in ids for _ in range(2)]
        ir = [int(i * 8 + rng.integers(8)) for i in ids for _ in range(2)]
        halves.append((rgb, ir))
    fulls = [(sum((h[0] for h in halves[i:i + 2]), []), sum((h[1] for h in halves[i:i + 2]), []))
             for i in range(0, num_steps, 2)]
    return ListSampler(halves), ListSampler(fulls)


@pytest.mark.parametrize("num_half_steps", [4, 5])  # 5: the epoch's last group has one micro-batch
def test_grad_accumulation_equals_full_batch(tmp_path, num_half_steps):
    halves, fulls = _half_and_full_samplers(num_half_steps)
    t_acc, m_acc, _ = _trainer(tmp_path / "acc", sampler=halves, accum=2, epochs=2)
    t_full, m_full, _ = _trainer(tmp_path / "full", sampler=fulls, accum=1, epochs=2)
    t_half, m_half, _ = _trainer(tmp_path / "half", sampler=halves, accum=1, epochs=2)
    for t in (t_acc, t_full, t_half):
        t.fit()
    assert t_acc.global_step == t_full.global_step == 2 * math.ceil(num_half_steps / 2)
    diffs = [float((a - b).abs().max()) for a, b in zip(m_acc.state_dict().values(), m_full.state_dict().values())]
    assert max(diffs) < 1e-6
    # and it is not trivially so: stepping on every half batch gives other weights
    other = [float((a - b).abs().max()) for a, b in zip(m_half.state_dict().values(), m_full.state_dict().values())]
    assert max(other) > 1e-3


def test_per_step_schedule_and_max_steps(tmp_path):
    trainer, _, _ = _trainer(tmp_path, epochs=5, lr_lambda=lambda t: 1.0 / (t + 1), schedule_unit="step",
                             max_steps=10)
    summary = trainer.fit()
    rows = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert summary["global_step"] == 10 and len(rows) == 10
    # the row after optimiser step g (global_step g + 1) shows the lr that step used: 0.3 / (g + 1)
    assert [r["lr_head"] for r in rows] == pytest.approx([0.3 / (g + 1) for g in range(10)])
    assert [r["lr_backbone"] for r in rows] == pytest.approx([0.03 / (g + 1) for g in range(10)])
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["progress"] == {"epoch": 1, "step_in_epoch": 3, "global_step": 10}  # 7 steps per epoch


def test_per_epoch_schedule_sets_lr_each_epoch(tmp_path):
    trainer, _, _ = _trainer(tmp_path, epochs=3, lr_lambda=S.warmup_multistep(2, [2], 0.1))
    trainer.fit()
    rows = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    by_epoch = {r["epoch"]: r["lr_head"] for r in rows}
    assert by_epoch == pytest.approx({0: 0.15, 1: 0.3, 2: 0.03})


def test_resume_into_another_dataset_is_refused(tmp_path):
    trainer, _, _ = _trainer(tmp_path, epochs=1)
    trainer.fit()
    other, _, _ = _trainer(tmp_path, epochs=2)
    other.meta["dataset"] = "regdb"
    with pytest.raises(CheckpointError, match="dataset='toy' but this run has dataset='regdb'"):
        other.resume()
    fresh, _, _ = _trainer(tmp_path / "new", epochs=1)
    assert fresh.resume() is False  # nothing to resume in a fresh out_dir


def test_sampler_sharded_for_another_rank_is_refused(tmp_path):
    data = toy_data()
    sampler = CrossModalIdentitySampler(data[2], data[3], num_ids=4, num_instances=2, rank=1, world_size=2)
    with pytest.raises(ValueError, match="sharded for rank 1 of 2"):
        _trainer(tmp_path, sampler=sampler)


def test_channels_last_and_bf16_paths_train(tmp_path):
    ref, m_ref, _ = _trainer(tmp_path / "ref", epochs=1)
    cl, m_cl, _ = _trainer(tmp_path / "cl", epochs=1, channels_last=True)
    bf, m_bf, _ = _trainer(tmp_path / "bf", epochs=1, amp="bf16")
    for t in (ref, cl, bf):
        t.fit()
    assert m_cl.model.stem_rgb.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(m_ref.state_dict().values(), m_cl.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    loss_ref = [r["loss"] for r in read_jsonl(tmp_path / "ref" / "log.jsonl")]
    loss_bf = [r["loss"] for r in read_jsonl(tmp_path / "bf" / "log.jsonl")]
    assert np.isfinite(loss_bf).all() and loss_bf[0] == pytest.approx(loss_ref[0], rel=0.05)  # bf16 really ran
    assert loss_bf != loss_ref


def test_fp16_uses_a_grad_scaler(tmp_path):
    trainer, _, _ = _trainer(tmp_path, epochs=1, amp="fp16")
    assert trainer.scaler.is_enabled()
    trainer.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0


def test_jsonl_logger_truncates_rows_after_resume_point(tmp_path):
    with JsonlLogger(tmp_path / "log.jsonl") as log:
        for g in range(1, 6):
            log.log({"kind": "train", "global_step": g, "loss": torch.tensor(float(g)), "bad": float("nan")})
        log.truncate_after(3)
        log.log({"kind": "train", "global_step": 4, "loss": 40.0})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "tr')  # a line torn by a crash
    rows = list(read_jsonl(tmp_path / "log.jsonl"))
    assert [(r["global_step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert rows[0]["bad"] == "nan"
    JsonlLogger(tmp_path / "off" / "log.jsonl", enabled=False).log({"a": 1})
    assert not (tmp_path / "off").exists()
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["kind"] == "train"
    assert os.path.getsize(tmp_path / "log.jsonl") > 0
