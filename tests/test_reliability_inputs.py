"""Bad and degenerate inputs (issue #12, items 4, 5 and 7): refused with one line that says what and where.

- zero-norm (all-zero) feature rows in evaluate, calibrate and search are refused with their count and the first
  row's index (a zero feature ties with everything and scored like a trained model);
- --memory-mb <= 0 and --batch-size 0 are refused; `evaluate --dataset-root` must exist and hold the protocol's
  dataset;
- `vireid data check`: a SYSU test split without IR images is an error, a dangling symlinked image is reported,
  RegDB checks all ten trials by default, a UTF-8 BOM and blank lines / spaces after commas in id files are fine,
  and refused invisible characters are named;
- hints: `test --trial 11` says trials are 1..10; a non-NPZ features file gets our message.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import _layouts as L  # tests/ is on sys.path
from vireid.cli import main
from vireid.data.datasets import load_dataset
from vireid.errors import DataError, FeaturesError


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vireid: error: ") and "Traceback" not in err, err
    return lines[0]


def sysu_pool(zero_rows: tuple[int, ...] = (), seed: int = 0) -> dict[str, np.ndarray]:
    """A complete SYSU-MM01-like test pool: 6 ids x 6 cameras x 2 images, random features; chosen rows zeroed."""
    rng = np.random.default_rng(seed)
    paths, pids, cams = [], [], []
    for pid in (2, 5, 9, 11, 14, 20):
        for cam in range(1, 7):
            for k in (1, 2):
                paths.append(f"cam{cam}/{pid:04d}/{k:04d}.jpg")
                pids.append(pid)
                cams.append(cam)
    feats = rng.normal(size=(len(paths), 16)).astype(np.float32)
    for r in zero_rows:
        feats[r] = 0.0
    cams_a = np.array(cams, np.int64)
    return {"features": feats, "pids": np.array(pids, np.int64), "camids": cams_a,
            "modalities": np.isin(cams_a, (3, 6)).astype(np.int64), "paths": np.array(paths)}


def write_pool(path: Path, **kw) -> Path:
    np.savez(path, **sysu_pool(**kw))
    return path


# --------------------------------------------------------------------------------------------------------------------
# item 4: degenerate inputs


def test_evaluate_refuses_zero_feature_rows_with_count_and_first_row(tmp_path, capsys):
    npz = write_pool(tmp_path / "z.npz", zero_rows=(7, 3, 40))
    assert main(["evaluate", str(npz), "--protocol", "sysu"]) == 2
    line = _one_line(capsys)
    assert "3 of 72 rows" in line and "row 3" in line and "zero" in line, line


def test_all_zero_features_are_refused_everywhere(tmp_path, capsys):
    """The issue's case: a features file of zeros scored Rank-1 21% / mAP 45% -- now every reader refuses it."""
    pool = sysu_pool()
    pool["features"][:] = 0.0
    npz = tmp_path / "zeros.npz"
    np.savez(npz, **pool)
    assert main(["evaluate", str(npz), "--protocol", "sysu"]) == 2
    assert "72 of 72 rows" in _one_line(capsys)
    assert main(["calibrate", str(npz), "--out", str(tmp_path / "c")]) == 2
    assert "72 of 72 rows" in _one_line(capsys)
    assert not (tmp_path / "c").exists()


def test_identical_feature_rows_are_refused(tmp_path, capsys):
    pool = sysu_pool()
    pool["features"][:] = pool["features"][0]
    np.savez(tmp_path / "same.npz", **pool)
    assert main(["calibrate", str(tmp_path / "same.npz"), "--out", str(tmp_path / "c")]) == 2
    assert "the same vector" in _one_line(capsys)


def test_calibrate_and_search_api_refuse_zero_rows():
    from vireid.inference.calibrate import calibrate
    from vireid.inference.search import search

    pool = sysu_pool(zero_rows=(5,))
    with pytest.raises(FeaturesError, match=r"1 of 72 rows .*row 5"):
        calibrate(pool["features"], pool["pids"], pool["modalities"])
    g = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    q = g[:3].copy()
    q[2] = 0.0
    with pytest.raises(FeaturesError, match=r"probe features: the probe set has 1 of 3 rows .*row 2"):
        search(q, g, 5)
    g[7] = 0.0
    with pytest.raises(FeaturesError, match=r"gallery features: the gallery has 1 of 10 rows .*row 7"):
        search(g[:3], g, 5)


def test_search_refuses_a_gallery_file_with_zero_rows(tmp_path, capsys):
    from vireid.evaluation.features import load_features

    npz = write_pool(tmp_path / "g.npz", zero_rows=(0,))
    with pytest.raises(FeaturesError, match=r"1 of 72 rows .*row 0"):
        load_features(npz)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_memory_budget_must_be_positive(value, tmp_path, capsys):
    npz = write_pool(tmp_path / "f.npz")
    assert main(["evaluate", str(npz), "--protocol", "sysu", "--memory-mb", value]) == 2
    assert f"--memory-mb {value}" in _one_line(capsys)
    assert main(["calibrate", str(npz), "--memory-mb", value]) == 2
    assert f"--memory-mb {value}" in _one_line(capsys)


def test_batch_size_zero_is_refused(tmp_path, capsys):
    img = L.image(tmp_path / "a.jpg")
    for argv in (["extract", str(tmp_path / "no.pt"), "--images", str(tmp_path), "--out", str(tmp_path / "o.npz"),
                  "--modality", "rgb", "--batch-size", "0"],
                 ["search", str(tmp_path / "no.pt"), "--probe", str(img), "--gallery", str(tmp_path),
                  "--batch-size", "0", "--out", str(tmp_path / "s")]):
        assert main(argv) == 2
        assert "--batch-size 0: must be at least 1" in _one_line(capsys)


def test_evaluate_dataset_root_is_checked(tmp_path, capsys):
    npz = write_pool(tmp_path / "f.npz")
    missing = tmp_path / "nope"
    assert main(["evaluate", str(npz), "--protocol", "sysu", "--dataset-root", str(missing)]) == 2
    line = _one_line(capsys)
    assert str(missing) in line and "no such folder" in line
    regdb = L.write_regdb(tmp_path / "RegDB")
    assert main(["evaluate", str(npz), "--protocol", "sysu", "--dataset-root", str(regdb)]) == 2
    line = _one_line(capsys)
    assert "looks like RegDB, not SYSU-MM01" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(npz), "--protocol", "sysu-official", "--dataset-root", str(empty)]) == 2
    assert "does not look like SYSU-MM01" in _one_line(capsys)


# --------------------------------------------------------------------------------------------------------------------
# item 5: vireid data check


def test_sysu_test_split_without_ir_images_is_an_error(tmp_path, capsys):
    root = L.write_sysu_mm01(tmp_path / "S")
    for cam in (3, 6):  # remove the IR folders of the test ids 2 and 9
        for pid in (2, 9):
            for f in (root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg"):
                f.unlink()
            (root / f"cam{cam}" / f"{pid:04d}").rmdir() if (root / f"cam{cam}" / f"{pid:04d}").exists() else None
    with pytest.raises(DataError, match="test split has no IR images"):
        load_dataset("sysu_mm01", root)
    assert main(["data", "check", str(root), "--dataset", "sysu_mm01"]) == 1
    out = capsys.readouterr().out
    assert "test split has no IR images" in out and out.splitlines()[-1].startswith("NOT USABLE")


def test_dangling_symlinked_image_is_reported(tmp_path, capsys):
    root = L.write_sysu_mm01(tmp_path / "S")
    link = root / "cam1" / "0002" / "0009.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    ds = load_dataset("sysu_mm01", root, strict=False)
    expected = (f"cam1/0002/0009.jpg: dangling symbolic link (its target {tmp_path / 'gone.jpg'} does not exist); "
                "restore the target or remove the link")
    assert [str(p) for p in ds.errors] == [expected]
    assert main(["data", "check", str(root), "--dataset", "sysu_mm01"]) == 1
    assert "error: cam1/0002/0009.jpg: dangling symbolic link" in capsys.readouterr().out


def test_dangling_symlink_in_a_list_file_is_named(tmp_path):
    root = L.write_regdb(tmp_path / "R")
    rel = f"Visible/285/{L.regdb_name(285, 'v', 0)}"
    (root / rel).unlink()
    os.symlink(tmp_path / "elsewhere.bmp", root / rel)
    ds = load_dataset("regdb", root, strict=False)
    assert any("dangling symbolic link" in str(p) and rel in str(p) for p in ds.errors), ds.problems


def _regdb_all_trials(root: Path) -> Path:
    for t in range(1, 11):
        L.write_regdb(root, trial=t)
    return root


def test_regdb_check_reads_all_ten_trials_by_default(tmp_path, capsys):
    root = _regdb_all_trials(tmp_path / "R")
    assert main(["data", "check", str(root), "--dataset", "regdb"]) == 0
    out = capsys.readouterr().out
    assert "trials 1..10" in out and out.splitlines()[-1] == "usable: 0 errors, 0 warnings"
    # a broken trial-7 list: found by default, named by its file and line
    v7 = root / "idx" / "train_visible_7.txt"
    v7.write_text(v7.read_text() + "Visible/285/nope.bmp 1\n")
    assert main(["data", "check", str(root), "--dataset", "regdb"]) == 1
    out = capsys.readouterr().out
    assert "error: idx/train_visible_7.txt:5: image 'Visible/285/nope.bmp' does not exist" in out
    assert out.splitlines()[-1].startswith("NOT USABLE: 1 error")
    # one trial on request: trial 1 alone is usable
    assert main(["data", "check", str(root), "--dataset", "regdb", "--trial", "1"]) == 0
    capsys.readouterr()
    (root / "idx" / "test_thermal_10.txt").unlink()
    assert main(["data", "check", str(root), "--dataset", "regdb", "--json"]) == 1
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["trials"] == list(range(1, 11)) and report["usable"] is False
    assert list(report["summary"]) == [str(t) for t in range(1, 11)]
    assert [p["file"] for p in report["problems"] if p["severity"] == "error"] == [
        "idx/train_visible_7.txt", "idx/test_thermal_10.txt"]


def test_bom_blank_lines_and_spaces_in_id_files_are_accepted(tmp_path):
    root = L.write_sysu_mm01(tmp_path / "S")
    L.write_text(root / "exp/train_id.txt", "\ufeff4, 1\n\n")
    L.write_text(root / "exp/val_id.txt", "\n7\r\n")
    L.write_text(root / "exp/test_id.txt", "\ufeff2,\t9 ")
    ds = load_dataset("sysu_mm01", root)
    assert ds.problems == [] and ds.info["train_ids"] == [1, 4] and ds.info["test_ids"] == [2, 9]


def test_bom_at_the_start_of_a_list_file_is_accepted(tmp_path):
    root = L.write_regdb(tmp_path / "R")
    v1 = root / "idx/train_visible_1.txt"
    v1.write_bytes(b"\xef\xbb\xbf" + v1.read_bytes())
    ds = load_dataset("regdb", root)
    assert ds.problems == [] and len(ds.train) == 8
    mm02 = L.write_sysu_mm02(tmp_path / "M")
    (mm02 / "test_ir.txt").write_bytes(b"\xef\xbb\xbf" + (mm02 / "test_ir.txt").read_bytes())
    assert load_dataset("sysu_mm02", mm02).problems == []


@pytest.mark.parametrize(("text", "name"), [("2,\u00a09", "non-breaking space (U+00A0)"),
                                            ("2,9\u200b", "zero-width space (U+200B)"),
                                            ("2,\ufeff9", "byte-order mark (U+FEFF)")])
def test_refused_invisible_characters_in_id_files_are_named(text, name, tmp_path):
    root = L.write_sysu_mm01(tmp_path / "S")
    L.write_text(root / "exp/test_id.txt", text)
    with pytest.raises(DataError) as err:
        load_dataset("sysu_mm01", root)
    message = str(err.value)
    assert message.startswith("exp/test_id.txt:1: ") and name in message, message
    assert "\u00a0" not in message and "\u200b" not in message and "\ufeff" not in message


def test_invisible_character_in_a_list_file_is_named(tmp_path):
    root = L.write_regdb(tmp_path / "R")
    v1 = root / "idx/train_visible_1.txt"
    lines = v1.read_text().splitlines(True)
    lines[1] = lines[1].replace(" ", "\u00a0")
    v1.write_text("".join(lines))
    with pytest.raises(DataError) as err:
        load_dataset("regdb", root)
    assert str(err.value).startswith("idx/train_visible_1.txt:2: ") and "non-breaking space (U+00A0)" in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# item 7: hints that lead somewhere


@pytest.mark.parametrize("trial", ["0", "11"])
def test_test_trial_out_of_range_says_1_to_10(trial, tmp_path, capsys):
    assert main(["test", str(tmp_path / "best.pt"), "--trial", trial]) == 2
    assert "trials are 1..10" in _one_line(capsys)


@pytest.mark.parametrize(("content", "what"), [(b"hello, not numpy\n", "text"),
                                               (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", "pickle")])
def test_non_npz_features_file_gets_our_message(content, what, tmp_path, capsys):
    bad = tmp_path / "f.npz"
    bad.write_bytes(content)
    assert main(["evaluate", str(bad), "--protocol", "sysu"]) == 2
    line = _one_line(capsys)
    assert "not a readable .npz file (it is not a zip archive" in line and "pickle" not in line.lower(), line


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_damaged_npz_member_gets_our_message(command, tmp_path, capsys):
    """A zip whose member's bytes changed after writing (bad CRC-32) names the damaged array, not a traceback."""
    good = tmp_path / "good.npz"
    np.savez(good, features=np.arange(24, dtype=np.float32).reshape(6, 4) + 1, pids=np.arange(6),
             camids=np.ones(6, np.int64), modalities=np.array([0, 1] * 3),
             paths=np.array([f"cam1/{i:04d}/0001.jpg" for i in range(6)]))
    raw = bytearray(good.read_bytes())
    raw[raw.find(b"features.npy") + 200] ^= 0xFF  # inside the stored features data (np.savez does not compress)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    argv = [command, str(bad)] + (["--protocol", "sysu"] if command == "evaluate" else [])
    assert main(argv) == 2
    line = _one_line(capsys)
    assert f"{bad}: the array 'features' is damaged (Bad CRC-32" in line and "write it again" in line, line


def test_npy_file_gets_our_message(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((3, 2), np.float32))
    assert main(["calibrate", str(tmp_path / "f.npy")]) == 2
    line = _one_line(capsys)
    assert "single array" in line and "np.savez" in line


DEMO_YAML = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.mark.parametrize(("override", "key"), [("train.epochs=abc", "train.epochs"),
                                               ("train.epochz=3", "train.epochz"),
                                               ("model.arch=foo", "model.arch")])
@pytest.mark.parametrize("command", ["train", "config"])
def test_bad_set_value_is_blamed_on_the_set_argument(command, override, key, tmp_path, capsys):
    argv = (["train", str(DEMO_YAML)] if command == "train" else ["config", "show", str(DEMO_YAML)])
    assert main([*argv, "--set", f"output_dir={tmp_path / 'run'}", override]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"vireid: error: --set {override}: ") and key in line, line
    assert "demo.yaml" not in line, line
    assert not (tmp_path / "run").exists()


def test_bad_value_in_the_yaml_file_is_still_blamed_on_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_YAML.read_text().replace("epochs: 24", "epochs: abc"))
    assert main(["config", "show", str(bad), "--set", "train.lr=0.01"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"vireid: error: {bad}: ") and "--set" not in line, line
