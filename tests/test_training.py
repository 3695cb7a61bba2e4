"""End-to-end supervised training on synthetic data: `vireid.training.train`, `vireid train`, `vireid test`.

What is covered here (the engine's DDP and SIGKILL-resume behaviour is covered on a toy method in test_engine*.py):

* each supervised method (AGW, CAJ, MSCLNet, DEEN) lowers its training loss on a synthetic SYSU-MM01 and ends well
  above chance on the sysu protocol, writing every artefact of a run;
* the `vireid train` command: ``--set`` overrides reach the run, a second run into the same folder is refused,
  ``--resume`` continues without repeating steps;
* `vireid test` and `vireid evaluate` agree on the features file the test wrote;
* RegDB: the trial rule of `vireid test` and ``data.trials`` (one run per trial, the mean reported);
* model selection never sees test identities (`split_train_val`);
* bad input ends in one line (ConfigError / exit status 2), never a traceback.

Everything runs on CPU at 64x32 with a half-width ResNet-18, on datasets written once per session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vireid.config import load_config
from vireid.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "configs" / "demo.yaml"
SYSU_IDS = 40        # 24 train / 8 val / 8 test identities
REGDB_IDS = 20       # 10 train / 10 test identities per trial

# Method runs: small enough for a 2-core CPU, long enough that every method is far above chance with seed 0:
# 8 epochs x 20 steps of 4 identities x 4 RGB + 4 IR images; the test Rank-1 is averaged over 10 gallery draws
# (cheap at 8 test identities, and it keeps the number from hinging on one lucky draw).
EPOCHS, STEPS, LOG_EVERY = 8, 20, 5


# --------------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict[str, Path]:
    """Synthetic SYSU-MM01 and RegDB written once, and one image-cache folder shared by every run."""
    from vireid.data.synthetic import write_synthetic

    base = tmp_path_factory.mktemp("train_data")
    write_synthetic("sysu_mm01", base / "SYSU-MM01", ids=SYSU_IDS, seed=0)
    write_synthetic("regdb", base / "RegDB", ids=REGDB_IDS, seed=0)
    return {"sysu": base / "SYSU-MM01", "regdb": base / "RegDB", "cache": base / "cache"}


def small(synth: dict[str, Path], out: Path, *extra: str, dataset: str = "sysu") -> list[str]:
    """Overrides that turn configs/demo.yaml into a CPU-test-sized run into ``out``."""
    ov = [f"data.root={synth[dataset]}", f"data.cache_dir={synth['cache']}", "data.height=64", "data.width=32",
          "data.workers=0", "model.arch=resnet18_half", "model.pretrained=none", "model.non_local=false",
          "train.device=cpu", "train.threads=2", "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_epochs=0",
          "train.milestones=[]", "train.log_every=2", "train.eval_every=100", "eval.trials=3", f"output_dir={out}",
          # pinned here so that changes to the demo recipe do not change these tests
          "method={name: agw}", "augment.pad=6", "augment.erasing=0.0", "augment.adaptive_gray=0.0",
          "train.lr=0.1", "sampler.num_ids=8", "sampler.num_instances=4"]
    if dataset == "regdb":
        ov += ["data.dataset=regdb", "data.trial=1"]
    return ov + list(extra)


def cli_process(*args: str) -> subprocess.CompletedProcess:
    """Run the `vireid` command line in a fresh process (what a user runs)."""
    env = dict(os.environ, PYTHONWARNINGS="default", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "vireid", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``vireid.cli.main(args)`` in this process (saves a torch import per call); same result object."""
    from vireid.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["vireid", *args], code, out.getvalue(), err.getvalue())


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert exit status 2 and a single `vireid: error:` line on stderr (no traceback); return the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("vireid: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def person(path: str) -> str:
    """RegDB: the person is the image's folder (Visible/<n>/... and Thermal/<n>/... name the same person)."""
    return Path(str(path)).parts[1]


def log_rows(out: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]


_RUNS: dict[str, tuple[Path, dict]] = {}

# The method section of each "learns" run: the recipe defaults, except CAJ's metric loss. CAJ's official ESD starts
# slower (Rank-1 17.2 vs 30.5 with WRT at this budget, seed 0, torch 2.14.1); its value is pinned by hand-computed
# cases in test_losses.py.
LEARNS = {"agw": "{name: agw}", "caj": "{name: caj, metric_loss: wrt}", "msclnet": "{name: msclnet}",
          "deen": "{name: deen}"}


def method_run(synth: dict[str, Path], base: Path, method: str, seed: int = 0) -> tuple[Path, dict]:
    """Train ``method`` once per session and seed, and return (output_dir, results)."""
    from vireid.training import train

    key = method if seed == 0 else f"{method}_seed{seed}"
    if key not in _RUNS:
        out = base / key
        # DEEN reads only model.arch / model.pretrained: the demo's model.non_local=false goes back to its default
        own = ["model.non_local=true"] if method == "deen" else []
        cfg = load_config(DEMO_YAML, small(synth, out, f"method={LEARNS[method]}", f"train.epochs={EPOCHS}",
                                           f"train.steps_per_epoch={STEPS}", f"train.log_every={LOG_EVERY}",
                                           "sampler.num_ids=4", "eval.trials=10", f"seed={seed}", *own))
        _RUNS[key] = (out, train(cfg, progress=False))
    return _RUNS[key]


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("method_runs")


# --------------------------------------------------------------------------------------------------------------------
# each method learns


@pytest.mark.slow
@pytest.mark.parametrize("method", ["agw", "caj", "msclnet", "deen"])
def test_method_lowers_loss_and_beats_chance(synth, runs_dir, method):
    out, results = method_run(synth, runs_dir, method)
    rows = log_rows(out)
    assert len(rows) == EPOCHS * STEPS // LOG_EVERY                # one row per 5-step window
    assert {r["epoch"] for r in rows} == set(range(EPOCHS))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    print(f"{method}: loss {first:.3f} -> {last:.3f}, test Rank-1 {results['rank1']:.2f} mAP {results['mAP']:.2f}")
    assert np.isfinite(last) and last < 0.8 * first

    # the test result: the sysu protocol on the synthetic test identities, 10 gallery draws
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "sysu" and saved["trials"] == 10 and saved["dataset"] == "sysu_mm01"
    assert saved["rank1"] == pytest.approx(results["rank1"])
    assert saved["selected_checkpoint"] == "best.pt"                # validated at the last epoch
    num_test_ids = len(np.unique(np.load(out / "test_features.npz")["pids"]))
    assert num_test_ids == 8
    chance = 100.0 / num_test_ids
    # observed with seed 0, 2 threads: torch 2.14.1 (CUDA build on CPU) AGW 24.8, CAJ 30.5, MSCLNet 31.3, DEEN 20.0;
    # an earlier torch build gave AGW 32.5, CAJ 31.3 (chance 12.5). The floor, 1.5x chance, sits below the
    # build-to-build spread; DEEN, whose four embedding branches share 160 steps, gets 1.3x.
    rank1 = saved["rank1"]
    if method == "msclnet":
        # MSCLNet's seven terms make this 160-step run seed- and CPU-sensitive: on an AVX2 machine (same torch)
        # seeds 0 / 1 / 2 gave 6.41 / 20.16 / 24.06 (16 epochs: 13.44 / 18.12 / 30.94), so it is judged on the median
        # of three seeds, with DEEN's floor
        rank1 = float(np.median([rank1] + [method_run(synth, runs_dir, method, seed)[1]["rank1"] for seed in (1, 2)]))
    assert rank1 >= (1.5 if method in ("agw", "caj") else 1.3) * chance, (rank1, saved["rank1"])
    assert 0 < saved["mAP"] <= 100 and saved["cmc"][-1] >= saved["rank1"]

    for name in ("best.pt", "last.pt", "test_features.npz", "test_results.json", "cmc.png", "log.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    feats = np.load(out / "test_features.npz")
    assert feats["features"].shape[0] == len(feats["pids"]) == len(feats["paths"])
    assert np.allclose(np.linalg.norm(feats["features"], axis=1), 1.0, atol=1e-4)   # L2-normalised BN features
    val = log_rows(out, "val")
    assert [r["epoch"] for r in val] == [EPOCHS - 1] and 0 <= val[0]["mAP"] <= 100
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["meta"]["method"] == method and ckpt["meta"]["dataset"] == "sysu_mm01"
    assert ckpt["meta"]["num_classes"] == 24                         # train ids minus the held-out val ids
    if method == "msclnet":  # the synergy encoder is trained (in last.pt's method state) but not in the model
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        assert any(k.startswith("synergy.") for k in last["method"])
        assert not any("synergy" in k for k in ckpt["model"])


# --------------------------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="session")
def cli_run(synth, tmp_path_factory) -> dict:
    """`vireid train` for one epoch of 2 steps, a refused rerun, then `--resume` to epoch 2."""
    out = tmp_path_factory.mktemp("cli") / "run"
    first = cli_process("train", str(DEMO_YAML), "--quiet", "--set",
                        *small(synth, out, "train.epochs=1", "train.log_every=1", "train.steps_per_epoch=3"))
    rows_after_first = log_rows(out) if (out / "log.jsonl").is_file() else []
    again = cli_process("train", str(DEMO_YAML), "--quiet", "--set", *small(synth, out, "train.epochs=1"))
    resumed = cli_process("train", str(DEMO_YAML), "--quiet", "--resume", "--set",
                  *small(synth, out, "train.epochs=2", "train.log_every=1", "train.steps_per_epoch=3"))
    return {"out": out, "first": first, "rows_first": rows_after_first, "again": again, "resumed": resumed}


@pytest.mark.slow
def test_cli_train_overrides_refusal_and_resume(cli_run):
    first, out = cli_run["first"], cli_run["out"]
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Rank-1" in first.stdout
    rows = cli_run["rows_first"]
    # --set train.epochs=1 steps_per_epoch=3 log_every=1 reached the run: one epoch, three logged steps
    assert [(r["epoch"], r["step"], r["global_step"]) for r in rows] == [(0, 0, 1), (0, 1, 2), (0, 2, 3)]

    line = one_line_error(cli_run["again"])
    assert "last.pt exists" in line and "--resume" in line

    resumed = cli_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = log_rows(out)
    assert [(r["epoch"], r["global_step"]) for r in rows] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["progress"] == {"epoch": 2, "step_in_epoch": 0, "global_step": 6}


@pytest.mark.slow
def test_cli_test_agrees_with_evaluate(synth, cli_run, tmp_path):
    out = cli_run["out"]
    assert cli_run["resumed"].returncode == 0
    test_dir = tmp_path / "test"
    proc = cli("test", str(out / "last.pt"), "--out", str(test_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = json.loads((test_dir / "test_results.json").read_text())
    assert tested["protocol"] == "sysu" and tested["trials"] == 3
    proc = cli("evaluate", str(test_dir / "test_features.npz"), "--protocol", "sysu", "--trials", "3",
               "--dataset-root", str(synth["sysu"]), "--json", str(tmp_path / "evaluated.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "evaluated.json").read_text())
    for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "num_query", "num_gallery"):
        assert tested[key] == pytest.approx(evaluated[key], abs=1e-9), key
    assert tested["cmc"] == pytest.approx(evaluated["cmc"], abs=1e-9)
    assert [t["rank1"] for t in tested["per_trial"]] == pytest.approx([t["rank1"] for t in evaluated["per_trial"]])


@pytest.mark.slow
def test_cli_rejects_foreign_and_mismatched_checkpoints(cli_run, tmp_path):
    out = cli_run["out"]
    junk = tmp_path / "random.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    line = one_line_error(cli("test", str(junk)))
    assert str(junk) in line and "checkpoint" in line

    # a checkpoint whose weights are of another architecture than the config it carries
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    ckpt["meta"]["config_yaml"] = ckpt["meta"]["config_yaml"].replace("arch: resnet18_half", "arch: resnet18")
    assert "arch: resnet18\n" in ckpt["meta"]["config_yaml"]
    other = tmp_path / "other_arch.pt"
    torch.save(ckpt, other)
    line = one_line_error(cli("test", str(other)))
    assert "does not fit this model" in line and "shape mismatch" in line


# --------------------------------------------------------------------------------------------------------------------
# RegDB trials


@pytest.fixture(scope="session")
def regdb_runs(synth, tmp_path_factory) -> dict:
    from vireid.training import train

    out = tmp_path_factory.mktemp("regdb") / "run"
    cfg = load_config(DEMO_YAML, small(synth, out, "data.trials=[1, 2]", "train.steps_per_epoch=3",
                                       "sampler.num_ids=4", dataset="regdb"))
    return {"out": out, "results": train(cfg, progress=False)}


@pytest.mark.slow
def test_regdb_trials_train_separately_and_report_the_mean(regdb_runs):
    out, results = regdb_runs["out"], regdb_runs["results"]
    per = []
    for t in (1, 2):
        sub = out / f"trial_{t}"
        for name in ("last.pt", "results.json", "test_features.npz", "test_results.json"):
            assert (sub / name).is_file(), (t, name)
        ckpt = torch.load(sub / "last.pt", map_location="cpu", weights_only=True)
        assert ckpt["meta"]["trial"] == t and ckpt["meta"]["dataset"] == "regdb"
        r = json.loads((sub / "results.json").read_text())
        assert r["trial"] == t and r["protocol"] == "regdb"
        per.append(r)
    # the two trials test on different people (RegDB labels restart at 0 per list: compare the person folders)
    people = [{person(p) for p in np.load(out / f"trial_{t}" / "test_features.npz")["paths"]} for t in (1, 2)]
    assert len(people[0]) == len(people[1]) == 10 and people[0] != people[1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["trials"] == 2 and saved["protocol"] == "regdb"
    for key in ("rank1", "mAP", "mINP"):
        assert saved[key] == pytest.approx((per[0][key] + per[1][key]) / 2)
        assert results[key] == pytest.approx(saved[key])
    assert saved["std"]["rank1"] == pytest.approx(abs(per[0]["rank1"] - per[1]["rank1"]) / 2)


@pytest.mark.slow
def test_regdb_test_refuses_another_trial(regdb_runs, tmp_path):
    ckpt = regdb_runs["out"] / "trial_1" / "last.pt"
    line = one_line_error(cli("test", str(ckpt), "--trial", "2", "--out", str(tmp_path / "refused")))
    assert "1" in line and "2" in line and "trial" in line.lower()
    assert not (tmp_path / "refused" / "test_results.json").exists()

    with pytest.warns(UserWarning, match="trial") as caught:
        proc = cli("test", str(ckpt), "--trial", "2", "--allow-trial-mismatch", "--out", str(tmp_path / "allowed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(str(w.message) for w in caught)
    assert "1" in text and "2" in text
    tested = json.loads((tmp_path / "allowed" / "test_results.json").read_text())
    assert tested["trial"] == 2
    assert list(np.load(tmp_path / "allowed" / "test_features.npz")["paths"]) == \
        list(np.load(regdb_runs["out"] / "trial_2" / "test_features.npz")["paths"])


# --------------------------------------------------------------------------------------------------------------------
# model selection never sees the test set


def test_split_train_val_sysu_holds_out_exactly_the_val_ids(synth):
    from vireid import build
    from vireid.data.pools import split_train_val
    from vireid.evaluation.validation import validation_plan

    cfg = load_config(DEMO_YAML, small(synth, synth["sysu"].parent / "unused"))
    ds = build.dataset_from_config(cfg.data)
    val_ids, test_ids = set(ds.info["val_ids"]), set(ds.info["test_ids"])
    train, val = split_train_val(ds, "holdout", 0.1, seed=0)
    train_pids, val_pids = {s.pid for s in train}, {s.pid for s in val}
    assert len(val_ids) == 8 and len(test_ids) == 8
    assert val_pids == val_ids                                       # exactly the official val ids
    assert not train_pids & val_ids and not (train_pids | val_pids) & test_ids
    assert train_pids | val_pids == {s.pid for s in ds.train}        # nothing else dropped
    assert sorted({s.label for s in train}) == list(range(len(train_pids))) == list(range(24))
    assert all(s.label == -1 for s in val)                           # no training label for held-out ids
    assert len(train) + len(val) == len(ds.train)
    plan = validation_plan(val)
    q, g = plan.trials[0].query, plan.trials[0].gallery
    assert set(plan.pids.tolist()) == val_ids and len(q) + len(g) == len(val)
    assert plan.direction == "i2v"

    train_all, none = split_train_val(ds, "none", 0.1, seed=0)
    assert none == [] and {s.pid for s in train_all} == train_pids | val_ids


@pytest.mark.parametrize("trial", [1, 2])
def test_split_train_val_regdb_holds_out_training_ids(synth, trial):
    from vireid import build
    from vireid.data.pools import split_train_val

    cfg = load_config(DEMO_YAML, small(synth, synth["regdb"].parent / "unused", f"data.trial={trial}",
                                       dataset="regdb"))
    ds = build.dataset_from_config(cfg.data)
    # RegDB list labels restart at 0 in the train and the test lists: the person is the image folder
    train_people, test_people = {person(s.path) for s in ds.train}, {person(s.path) for s in ds.test}
    assert len(train_people) == 10 and len(test_people) == 10 and not train_people & test_people
    train, val = split_train_val(ds, "holdout", 0.2, seed=3)
    val_people = {person(s.path) for s in val}
    assert len(val_people) == 2 and val_people < train_people        # a subset of the training ids
    assert not {person(s.path) for s in train} & val_people and not val_people & test_people
    assert len({s.pid for s in val}) == 2 and all(s.label == -1 for s in val)
    assert {s.label for s in train} == set(range(8)) and len(train) + len(val) == len(ds.train)
    assert split_train_val(ds, "holdout", 0.2, seed=3)[1] == val     # deterministic in the seed
    with pytest.raises(Exception, match="too few"):
        split_train_val(ds, "holdout", 0.95, seed=0)


# --------------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("method, terms", [("agw", "ce, wrt, triplet"), ("caj", "ce, wrt, triplet"),
                                           ("msclnet", "ce, wrt, div")])
def test_unknown_loss_weight_is_a_one_line_config_error(method, terms):
    from vireid import build

    cfg = load_config(DEMO_YAML, [f"method={{name: {method}}}", "method.weights.foo=1", "augment.adaptive_gray=0",
                                  "model.arch=resnet18_half",
                                  "model.pretrained=none", "model.non_local=false", "data.height=64",
                                  "data.width=32"])
    from vireid.methods.agw import AGW
    from vireid.methods.caj import CAJ
    from vireid.methods.msclnet import MSCLNetMethod

    model = build.model_from_config(cfg.model, 5)
    with pytest.raises(ConfigError) as info:
        if method == "msclnet":
            MSCLNetMethod(model, 5, weights=cfg.method.weights)
        else:
            {"agw": AGW, "caj": CAJ}[method](model, height=64, width=32, weights=cfg.method.weights)
    msg = str(info.value)
    assert "\n" not in msg and "foo" in msg and terms in msg


@pytest.fixture(scope="session")
def mm02(tmp_path_factory) -> Path:
    """A synthetic SYSU-MM02 (unlabelled training images), for the supervised-method refusal."""
    from vireid.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("mm02") / "SYSU-MM02"
    write_synthetic("sysu_mm02", root, ids=12, seed=0)
    return root


def test_unsupervised_dataset_is_refused_in_one_line(synth, mm02, tmp_path):
    from vireid.training import train

    cfg = load_config(DEMO_YAML, small(synth, tmp_path / "mm02", "data.dataset=sysu_mm02", f"data.root={mm02}"))
    with pytest.raises(ConfigError) as info:
        train(cfg, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "sysu_mm02" in msg and "AML" in msg
    assert not (tmp_path / "mm02" / "last.pt").exists()


def test_cli_bad_training_input_exits_2_without_traceback(synth, mm02, tmp_path):
    line = one_line_error(cli("train", str(DEMO_YAML), "--set",
                              *small(synth, tmp_path / "foo", "method.weights.foo=1")))
    assert "foo" in line and "ce, wrt, triplet" in line
    line = one_line_error(cli("train", str(DEMO_YAML), "--set",
                              *small(synth, tmp_path / "mm02", "data.dataset=sysu_mm02", f"data.root={mm02}")))
    assert "sysu_mm02" in line and "AML" in line
    line = one_line_error(cli("test", str(tmp_path / "missing.pt")))
    assert "not found" in line


@pytest.mark.slow
def test_torchrun_two_processes_train_validate_and_test(synth, tmp_path):
    """`torchrun --nproc_per_node 2 -m vireid train` (gloo on CPU) runs the whole pipeline: every rank validates
    through the same barrier (a rank without the validate callback deadlocked here once), only rank 0 writes, and
    the test results land."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vireid",
         "train",
         str(DEMO_YAML), "--quiet", "--set", *small(synth, out, "train.epochs=2", "train.steps_per_epoch=3",
                                                      "train.threads=1", "train.eval_every=1")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = log_rows(out, "val")
    assert [r["epoch"] for r in rows] == [0, 1]          # validated after each epoch, logged once (rank 0 only)
    train_rows = log_rows(out)
    assert len({r["global_step"] for r in train_rows}) == len(train_rows)   # no row written twice
    assert max(r["global_step"] for r in train_rows) == 6
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["meta"]["world_size"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "sysu" and 0.0 <= results["rank1"] <= 100.0
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "log.jsonl", "results.json", "test_features.npz"}
