"""Output folders (issue #12, items 2 and 3): one run owns its folder; an unwritable output is one line up front.

The lock tests use real concurrent processes: a holder process that owns a folder (through the lock module, or a
real `vireid train`), and a second `vireid train` into the same folder that must fail at once naming the folder
and the holder's pid. A lock left by a process killed with SIGKILL must be recognised and taken over.

The writability tests run every command that writes something with its output under a regular file and under
/proc (we run as root in CI, so permission bits cannot make a folder read-only; /proc refuses new files to root
too). Each must exit 2 with one line naming the path, and must not have done the work first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vireid.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "configs" / "demo.yaml"
HOLDER = """
import sys, time
from vireid.engine.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 120)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests") + os.pathsep + os.environ.get(
        "PYTHONPATH", ""))


def _holder(folder: Path, seconds: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "locked", proc.stderr.read()  # type: ignore[union-attr]
    return proc


def _vireid(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vireid", *args], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=timeout, check=False)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vireid: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The shared tiny trained run (same folder as the other practitioner-tool tests)."""
    from _checkpoint import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp() / "practitioner_tiny")


# --------------------------------------------------------------------------------------------------------------------
# item 2: the run-folder lock


def test_second_train_into_a_locked_folder_fails_at_once_naming_folder_and_pid(tmp_path, tiny):
    from _checkpoint import tiny_overrides

    out = tmp_path / "run"
    holder = _holder(out)
    try:
        proc = _vireid("train", str(DEMO_YAML), "--quiet", "--set",
                       *tiny_overrides(tiny.parent / "SYSU-MM01", tmp_path / "cache", out))
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_error_line(proc.stderr)
    assert str(out) in line and f"pid {holder.pid}" in line, line
    # nothing of the second run reached the folder or the cache: it stopped before any work
    assert sorted(p.name for p in out.iterdir()) == [".vireid.lock"]
    assert not (tmp_path / "cache").exists()


def test_exactly_one_of_two_racing_processes_gets_the_folder(tmp_path):
    out = tmp_path / "race"
    script = ("import sys, time\nfrom vireid.engine.lock import RunLock, OutputError\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "try:\n    RunLock(sys.argv[1]).acquire()\nexcept OutputError as e:\n    print('busy', e); sys.exit(3)\n"
              "print('owner', flush=True); time.sleep(3)\n")
    for _ in range(3):  # a few rounds: the two start within a millisecond of each other
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", script, str(out), str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
        results = [(p.wait(timeout=60), p.stdout.read()) for p in procs]  # type: ignore[union-attr]
        codes = sorted(rc for rc, _ in results)
        assert codes == [0, 3], results
        owner = next(p for p, (rc, _) in zip(procs, results) if rc == 0)
        busy = next(text for rc, text in results if rc == 3)
        assert f"pid {owner.pid}" in busy
        assert not (out / ".vireid.lock").exists()  # released when the owner ended normally


def test_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    from vireid.engine.lock import LOCK_NAME, RunLock

    out = tmp_path / "run"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).is_file()  # a SIGKILL leaves the file behind
    lock = RunLock(out).acquire()
    try:
        assert lock.stale is not None and lock.stale["pid"] == holder.pid
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        RunLock(out).acquire().release()  # re-entrant in the owning process
        assert (out / LOCK_NAME).is_file()
    finally:
        lock.release()
    assert not (out / LOCK_NAME).exists()


def test_only_rank_zero_takes_the_lock_under_torchrun(tmp_path, monkeypatch):
    from vireid.engine.lock import LOCK_NAME, lock_run_folder

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert lock_run_folder(tmp_path / "a") is None and not (tmp_path / "a" / LOCK_NAME).exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    lock = lock_run_folder(tmp_path / "a")
    assert lock is not None and (tmp_path / "a" / LOCK_NAME).is_file()
    lock.release()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "2")  # only LOCAL_RANK set: local rank 0 locks
    assert lock_run_folder(tmp_path / "b") is None


@pytest.mark.slow
def test_concurrent_trains_then_kill_and_resume(tmp_path, tiny):
    """Two real `vireid train` into one folder: the second fails at once; the first is killed with SIGKILL;
    `--resume` takes over its stale lock and finishes; the log holds one run only."""
    from _checkpoint import tiny_overrides

    out = tmp_path / "run"
    sets = tiny_overrides(tiny.parent / "SYSU-MM01", tmp_path / "cache", out)
    sets = [s for s in sets if not s.startswith(("train.steps_per_epoch", "train.epochs"))]
    sets += ["train.steps_per_epoch=40", "train.epochs=3", "train.checkpoint_every=5"]
    first = subprocess.Popen([sys.executable, "-m", "vireid", "train", str(DEMO_YAML), "--quiet", "--set", *sets],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").is_file():  # it owns the folder and is training
            assert first.poll() is None and time.time() < deadline, first.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.2)
        second = _vireid("train", str(DEMO_YAML), "--quiet", "--set", *sets)
        assert first.poll() is None, "the first run ended before the second started; make it longer"
        assert second.returncode == 2
        line = _one_error_line(second.stderr)
        assert str(out) in line and f"pid {first.pid}" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = _vireid("train", str(DEMO_YAML), "--quiet", "--resume", "--set", *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"pid {first.pid}" in resumed.stderr and "no longer running" in resumed.stderr
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["global_step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run's log, no interleaving
    res = json.loads((out / "results.json").read_text())
    assert f"Rank-1 {res['rank1']:.2f}" in resumed.stdout
    assert not (out / ".vireid.lock").exists()


# --------------------------------------------------------------------------------------------------------------------
# item 3: unwritable outputs are one line before the work


def _blocked(tmp_path: Path) -> dict[str, Path]:
    afile = tmp_path / "a_file"
    afile.write_text("not a folder\n")
    return {"under a file": afile / "out", "under /proc": Path("/proc/vireid_no_such_dir/out")}


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _commands(tiny: Path, tmp_path: Path, bad: Path) -> dict[str, list[str]]:
    ckpt = str(tiny / "best.pt") if (tiny / "best.pt").is_file() else str(tiny / "last.pt")
    feats = str(tiny / "test_features.npz")
    images = str(tiny.parent / "SYSU-MM01" / "cam1")
    probe = str(next((tiny.parent / "SYSU-MM01" / "cam3").rglob("*.jpg")))
    root = str(tiny.parent / "SYSU-MM01")
    from _checkpoint import tiny_overrides

    sets = tiny_overrides(Path(root), tmp_path / "cache_unused", bad)
    return {
        "train": ["train", str(DEMO_YAML), "--quiet", "--set", *sets],
        "test": ["test", ckpt, "--out", str(bad)],
        "evaluate": ["evaluate", feats, "--protocol", "sysu", "--trials", "1", "--json", str(bad / "r.json")],
        "extract": ["extract", ckpt, "--images", images, "--modality", "rgb", "--out", str(bad / "g.npz"),
                    "--device", "cpu"],
        "search": ["search", ckpt, "--probe", probe, "--gallery", feats, "--out", str(bad), "--device", "cpu"],
        "calibrate": ["calibrate", feats, "--out", str(bad)],
        "report": ["report", str(tiny), "--out", str(bad / "r.html")],
        "export": ["export", ckpt, "--out", str(bad)],
        "demo": ["demo", "--out", str(bad), "--quiet", "--device", "cpu"],
        "synth": ["synth", "sysu_mm01", "--out", str(bad), "--quiet"],
    }


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
@pytest.mark.parametrize("command", ["train", "test", "evaluate", "extract", "search", "calibrate", "report",
                                     "export", "demo", "synth"])
def test_unwritable_output_is_one_line_before_the_work(command, where, tiny, tmp_path, capsys):
    if command == "export":
        pytest.importorskip("onnx")
    bad = _blocked(tmp_path)[where]
    argv = _commands(tiny, tmp_path, bad)[command]
    rc, err = _run_cli(argv, capsys)
    assert rc == 2, err
    line = _one_error_line(err)
    assert str(bad) in line or str(bad.parent) in line, line
    assert "is a file" in line if where == "under a file" else "cannot write" in line, line
    assert not (tmp_path / "cache_unused").exists()  # train: stopped before caching a single image


def test_unwritable_default_output_of_calibrate_and_test(tiny, tmp_path, capsys):
    """The default output folders (next to the input) are checked too: a features file on a read-only place."""
    feats = tmp_path / "feats.npz"
    feats.write_bytes((tiny / "test_features.npz").read_bytes())
    # an existing output FILE where the command wants a folder
    (tmp_path / "calib").write_text("x")
    rc, err = _run_cli(["calibrate", str(feats), "--out", str(tmp_path / "calib")], capsys)
    assert rc == 2 and "is a file, not a folder" in _one_error_line(err)


def test_evaluate_plot_and_json_into_a_folder_path(tiny, tmp_path, capsys):
    (tmp_path / "out.json").mkdir()
    rc, err = _run_cli(["evaluate", str(tiny / "test_features.npz"), "--protocol", "sysu", "--trials", "1",
                        "--json", str(tmp_path / "out.json")], capsys)
    assert rc == 2 and "is a folder" in _one_error_line(err)


def test_writable_outputs_still_work(tiny, tmp_path, capsys):
    """The checks do not get in the way: a new nested folder is fine and nothing is left behind by the probe."""
    out = tmp_path / "new" / "deeper"
    rc, err = _run_cli(["calibrate", str(tiny / "test_features.npz"), "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "calibration.png"]
    assert not [p for p in tmp_path.rglob(".vireid-write-probe-*")]


def test_check_writable_helpers(tmp_path):
    from vireid.outputs import OutputError, check_writable_dir, check_writable_file

    f = tmp_path / "f.txt"
    f.write_text("x")
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing created
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_dir(f)
    with pytest.raises(OutputError, match=r"because .*f\.txt is a file"):
        check_writable_dir(f / "sub" / "deeper")
    with pytest.raises(OutputError, match="cannot write"):
        check_writable_dir("/proc/vireid_x")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable_file(tmp_path)
    assert check_writable_file(f) == f and f.read_text() == "x"  # an existing file is left as it was
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["f.txt"])


# --------------------------------------------------------------------------------------------------------------------
# item 6: a report does not depend on the working directory


def test_report_from_another_folder_finds_the_images_of_a_relative_dataset_root(tiny, tmp_path):
    """Train with a relative data.root (as configs/*.yaml have), then run `vireid report` from another folder: the
    checkpoint stores the absolute dataset root, so the ranked lists are drawn instead of "not reachable"."""
    import torch

    from _checkpoint import tiny_overrides

    out = tmp_path / "elsewhere" / "run"  # not below the dataset's folder: only the stored root can find it
    sets = [s for s in tiny_overrides(tiny.parent / "SYSU-MM01", tmp_path / "cache", out)
            if not s.startswith("data.root=")] + ["data.root=SYSU-MM01"]
    trained = _vireid("train", str(DEMO_YAML), "--quiet", "--set", *sets, cwd=tiny.parent)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["meta"]["dataset_root"] == str((tiny.parent / "SYSU-MM01").resolve())
    other = tmp_path / "other"
    other.mkdir()
    rep = _vireid("report", str(out), "--out", str(other / "r.html"), cwd=other)
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (other / "r.html").read_text()
    assert 'data-figure="ranked-worst"' in page and "not reachable" not in page
    # `vireid test` from there too (the config's relative root does not resolve in `other`)
    tested = _vireid("test", str(out / "last.pt"), "--out", str(other / "t"), cwd=other)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert (other / "t" / "test_results.json").is_file()
