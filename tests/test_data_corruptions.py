"""Corrupted layouts: every problem is reported with its file (and line), through the API and through the CLI.

Each case builds a valid tiny layout (tests/_layouts.py), breaks one thing, and asserts
  * ``load_dataset(..., strict=True)`` raises a DataError whose message is exactly that problem (plus the count of
    the others), and
  * ``vireid data check`` exits 1 and prints that problem exactly once as ``error: FILE:LINE: message``, then the
    "NOT USABLE" verdict, with no traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

import _layouts as L  # tests/ is on sys.path (pytest rootdir-relative import of test modules)
from vireid.cli import main
from vireid.data.datasets import load_dataset
from vireid.data.images import load_image
from vireid.errors import DataError

IDS = "ONE line of comma-separated integers"
EXPECTED_ID = f"expected {IDS} (e.g. 1,2,4)"
SUFFIX = re.compile(r" \(and (\d+) more problems?; run `vireid data check .+ --dataset \w+` to list them\)$")


@dataclass
class Case:
    dataset: str
    build: Callable[[Path], Path]
    expected: str  # the problem line (FILE:LINE: message); a regex when ``regex`` is set
    options: dict = field(default_factory=dict)
    regex: bool = False


def _cli_options(options: dict) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        out += [f"--{key}", str(value)]
    return out


def _matches(case: Case, text: str) -> bool:
    return bool(re.fullmatch(case.expected, text)) if case.regex else text == case.expected


# ------------------------------------------------------------------------------------------ corruptions
def sysu(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        L.write_sysu_mm01(root)
        edit(root)
        return root
    return build


def regdb(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        L.write_regdb(root)
        edit(root)
        return root
    return build


def mm02(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        L.write_sysu_mm02(root)
        edit(root)
        return root
    return build


def gen(edit: Callable[[Path], None], pplr: bool = True) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        L.write_market1501_gen(root, pplr=pplr)
        edit(root)
        return root
    return build


def llcm(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        L.write_llcm(root)
        edit(root)
        return root
    return build


def write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: L.write_text(root / rel, text)


def append(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: L.write_text(root / rel, (root / rel).read_text() + text)


def nothing(root: Path) -> None:
    return None


V1 = "idx/train_visible_1.txt"
FIRST_V = f"Visible/285/{L.regdb_name(285, 'v', 0)}"
LIST_FMT = "'<relpath> <label>'"

CASES: dict[str, Case] = {
    "missing id file": Case("sysu_mm01", sysu(lambda r: (r / "exp/train_id.txt").unlink()),
                            f"exp/train_id.txt: missing; it should hold the training identities as {IDS} (e.g. 1,2,4)"),
    "id file over several lines": Case("sysu_mm01", sysu(write("exp/train_id.txt", "4\n1\n")),
                                       f"exp/train_id.txt:2: {EXPECTED_ID}, found 2 lines; join them with commas"),
    # spaces after commas are fine (tests/test_reliability_inputs.py); a non-breaking space is named
    "id file with a non-breaking space": Case("sysu_mm01", sysu(write("exp/test_id.txt", "2,\u00a09")),
                                              "exp/test_id.txt:1: bad token '<U+00A0>9': it contains a non-breaking "
                                              f"space (U+00A0); remove it; {EXPECTED_ID}"),
    "non-numeric id": Case("sysu_mm01", sysu(write("exp/val_id.txt", "7,x8")),
                           f"exp/val_id.txt:1: bad token 'x8'; {EXPECTED_ID}"),
    "empty id file": Case("sysu_mm01", sysu(write("exp/val_id.txt", "")),
                          f"exp/val_id.txt: empty; it should hold the validation identities; {EXPECTED_ID}"),
    "id without folder": Case("sysu_mm01", sysu(write("exp/train_id.txt", "4,1,3")),
                              "exp/train_id.txt:1: id 3 has no folder in any of cam1..cam6 (expected camK/0003/); "
                              "restore its images or remove it from the list"),
    "id in two splits": Case("sysu_mm01", sysu(write("exp/test_id.txt", "2,9,4")),
                             "exp/test_id.txt:1: id 4 is also listed in exp/train_id.txt; "
                             "each id belongs to one split"),
    "camera folder missing": Case("sysu_mm01", sysu(lambda r: [p.unlink() for p in (r / "cam5").rglob("*.jpg")]
                                                    and __import__("shutil").rmtree(r / "cam5")),
                                  "cam5/: camera folder missing; SYSU-MM01 has cam1..cam6 (ROOT/cam1..cam6/PPPP/"
                                  "NNNN.jpg and ROOT/exp/{train,val,test}_id.txt)"),
    "rand_perm without key": Case("sysu_mm01", sysu(lambda r: L.write_rand_perm(r / "exp/rand_perm_cam.mat", "perm")),
                                  "exp/rand_perm_cam.mat: has no variable 'rand_perm_cam' (found: perm); replace it "
                                  "with the official file or delete it (it is optional)"),
    "rand_perm garbage": Case("sysu_mm01", sysu(write("exp/rand_perm_cam.mat", "not a mat file")),
                              r"exp/rand_perm_cam\.mat: cannot be read by scipy\.io\.loadmat \(.+\); replace it with "
                              r"the official file or delete it \(it is optional\)", regex=True),
    "corrupt image": Case("sysu_mm01",
                          sysu(lambda r: (r / "cam3/0001/0001.jpg").write_bytes(
                              (r / "cam3/0001/0001.jpg").read_bytes()[:60])),
                          r"cam3/0001/0001\.jpg: cannot decode image \(.+\); replace the file or remove it from the "
                          r"list", regex=True),
    "garbage image": Case("llcm", llcm(write("test_nir/cam2/0011/0011_c02_0001.jpg", "garbage")),
                          r"test_nir/cam2/0011/0011_c02_0001\.jpg: cannot decode image \(.+\); replace the file or "
                          r"remove it from the list", regex=True),
    "empty line": Case("regdb", regdb(append(V1, "\n")),
                       f"{V1}:5: empty line; remove it (expected {LIST_FMT})"),
    "line without label": Case("regdb", regdb(append(V1, FIRST_V.replace("_00000_", "_00007_") + "\n")),
                               f"{V1}:5: line without a label: '{FIRST_V.replace('_00000_', '_00007_')}'; "
                               f"expected {LIST_FMT}"),
    "non-integer label": Case("regdb", regdb(append(V1, f"{FIRST_V} one\n")),
                              f"{V1}:5: label 'one' is not an integer; expected {LIST_FMT}"),
    "too many columns": Case("sysu_mm02", mm02(append("train.txt", "train/cam1/0007_0001.jpg 7 1 extra\n")),
                             "train.txt:4: expected 3 columns '<relpath> <pid> <cam>', found 4: "
                             "'train/cam1/0007_0001.jpg 7 1 extra'"),
    "path escaping root": Case("regdb", regdb(append(V1, "../outside/Visible/1/x.bmp 0\n")),
                               f"{V1}:5: path '../outside/Visible/1/x.bmp' escapes the dataset root ('..'); paths "
                               f"must stay inside it"),
    "absolute path": Case("regdb", regdb(append(V1, "/etc/passwd 0\n")),
                          f"{V1}:5: path '/etc/passwd' is absolute; paths must be relative to the dataset root"),
    "duplicated line": Case("regdb", regdb(lambda r: L.write_text(
                                r / V1, (r / V1).read_text() + (r / V1).read_text().splitlines(True)[2])),
                            f"{V1}:5: line 5 duplicates line 3; remove it (duplicates change the protocol's counts)"),
    "same image listed twice": Case("regdb", regdb(append(V1, f"{FIRST_V} 0\n")),
                                    f"{V1}:5: image '{FIRST_V}' is already listed on line 1; remove one of the two "
                                    f"lines"),
    "listed image missing": Case("regdb", regdb(lambda r: (r / FIRST_V).unlink()),
                                 f"{V1}:1: image '{FIRST_V}' does not exist under the dataset root; fix the path or "
                                 f"the root"),
    "path under neither modality folder": Case(
        "regdb", regdb(lambda r: (L.image(r / "Other/1/a.bmp"), append(V1, "Other/1/a.bmp 0")(r))),
        f"{V1}:5: path 'Other/1/a.bmp' is under neither Visible/ nor Thermal/; the top folder gives the modality"),
    "missing list file": Case("regdb", regdb(lambda r: (r / "idx/test_thermal_1.txt").unlink()),
                              "idx/test_thermal_1.txt: missing; it should list the thermal test images of trial 1, "
                              f"one {LIST_FMT} per line"),
    "SYSU-MM02 camera 4": Case("sysu_mm02", mm02(write("test_ir.txt",
                                                       "test/cam2/0001_0002.jpg 1 4\ntest/cam3/0002_0002.jpg 2 3\n")),
                               "test_ir.txt:1: camera 4 is not a SYSU-MM02 camera; expected 1 (RGB), 2 or 3 (NIR)"),
    "SYSU-MM02 RGB camera in IR list": Case(
        "sysu_mm02", mm02(write("test_ir.txt", "test/cam2/0001_0002.jpg 1 2\ntest/cam3/0002_0002.jpg 2 1")),
        "test_ir.txt:2: camera 1 is RGB, but test_ir.txt lists the near-infrared test images (cameras 2 and 3)"),
    "LLCM test id without images": Case("llcm", llcm(write("idx/test_id.txt", "11,12,13\n")),
                                        "idx/test_id.txt:1: id 13 has no images under test_vis/ or test_nir/ "
                                        "(expected camK/0013/); restore its images or remove it from the list"),
    "twin missing": Case("market1501_gen", gen(lambda r: (r / "market1501_train_sysumm01/0002_c1s1_000451_03.jpg")
                                               .unlink()),
                         "market1501_train_sysumm01/: twin of 0002_c1s1_000451_03.jpg is missing (1 image without "
                         "twin, 0 twins without image; originals and twins must correspond one-to-one by file name)"),
    "twin without original": Case("market1501_gen", gen(lambda r: L.image(r / "market1501_train_sysumm01/0001_c1.jpg")),
                                  "market1501_train_sysumm01/: twin 0001_c1.jpg has no original in market1501_train/ "
                                  "(0 images without twin, 1 twin without image; originals and twins must correspond "
                                  "one-to-one by file name)"),
    "pplr missing": Case("market1501_gen", gen(nothing, pplr=False),
                         "pplr_pseudo_labels.pth: missing; it should hold the PPLR pseudo labels, a torch-saved list "
                         "of (path, pseudo_pid, camid) (or pass --labels ground_truth)"),
    "pplr garbage": Case("market1501_gen", gen(lambda r: (r / "pplr_pseudo_labels.pth").write_bytes(b"\x00garbage")),
                         r"pplr_pseudo_labels\.pth: cannot be read as a torch-saved list of \(path, pseudo_pid, "
                         r"camid\) \(.+\); re-create it or pass --labels ground_truth", regex=True),
    "pplr labels another dataset": Case(
        "market1501_gen", gen(lambda r: __import__("torch").save([("/x/9_c1s1_1_1.jpg", 3, 1)],
                                                                 r / "pplr_pseudo_labels.pth")),
        "pplr_pseudo_labels.pth: no training image has a pseudo label (labels are matched by file name); is this "
        "the pplr_pseudo_labels.pth of this dataset?"),
    "pplr wrong entry": Case("market1501_gen", gen(lambda r: __import__("torch").save([("a.jpg", "x")],
                                                                                    r / "pplr_pseudo_labels.pth")),
                             "pplr_pseudo_labels.pth: entry 0 is ('a.jpg', 'x'); expected (path, pseudo_pid, ...) "
                             "with a str path and an int label"),
    "market bad file name": Case("market1501", lambda r: (L.write_market1501(r),
                                                          L.image(r / "query/c1_0001.jpg"))[0],
                                 "query/c1_0001.jpg: file name does not follow Market's PPPP_cCsS_FFFFFF_NN.jpg; "
                                 "rename or remove it"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_corruption_reported_by_api_and_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    root = case.build(tmp_path / "data")

    with pytest.raises(DataError) as err:
        load_dataset(case.dataset, root, check_images=True, **case.options)
    message = str(err.value)
    suffix = SUFFIX.search(message)
    first = message[: suffix.start()] if suffix else message
    assert _matches(case, first), message
    assert "\n" not in message

    collected = load_dataset(case.dataset, root, check_images=True, strict=False, **case.options)
    assert _matches(case, str(collected.errors[0]))
    assert (int(suffix.group(1)) if suffix else 0) == len(collected.problems) - 1

    code = main(["data", "check", str(root), "--dataset", case.dataset, *_cli_options(case.options)])
    out = capsys.readouterr()
    assert code == 1
    lines = out.out.splitlines()
    hits = [ln for ln in lines if ln.startswith("error: ") and _matches(case, ln[len("error: "):])]
    assert len(hits) == 1, out.out
    assert lines[-1].startswith("NOT USABLE: ")
    assert "Traceback" not in out.out + out.err and out.err.strip() == ""


def test_list_file_without_trailing_newline_works(tmp_path: Path) -> None:
    L.write_regdb(tmp_path)
    (tmp_path / V1).write_text((tmp_path / V1).read_text().rstrip("\n"))
    assert not (tmp_path / V1).read_text().endswith("\n")
    ds = load_dataset("regdb", tmp_path)
    assert len(ds.train) == 8 and ds.problems == []
    assert main(["data", "check", str(tmp_path), "--dataset", "regdb", "--trial", "1"]) == 0  # only trial 1 here


def test_crlf_list_file_works(tmp_path: Path) -> None:
    L.write_sysu_mm02(tmp_path)
    (tmp_path / "train.txt").write_bytes((tmp_path / "train.txt").read_bytes().replace(b"\n", b"\r\n"))
    ds = load_dataset("sysu_mm02", tmp_path)
    assert [s.path for s in ds.train] == [r for r, _, _ in L.MM02_TRAIN] and ds.problems == []


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_are_warnings_and_load_as_rgb(mode: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    L.write_regdb(tmp_path)
    rel = f"Thermal/3/{L.regdb_name(3, 't', 1)}"
    img = Image.new("RGB", (4, 8), (10, 20, 30)).convert(mode)
    img.save(tmp_path / rel, format="PNG" if mode == "RGBA" else "BMP")
    ds = load_dataset("regdb", tmp_path, check_images=True)  # strict: warnings never raise
    assert [(p.severity, str(p)) for p in ds.problems] == [("warning", f"{rel}: mode {mode} image converted to RGB")]
    assert rel in [s.path for s in ds.train]
    loaded = load_image(tmp_path / rel)
    assert loaded.mode == "RGB" and loaded.size == (4, 8)

    assert main(["data", "check", str(tmp_path), "--dataset", "regdb", "--trial", "1"]) == 0  # only trial 1 here
    lines = capsys.readouterr().out.splitlines()
    assert lines.count(f"warning: {rel}: mode {mode} image converted to RGB") == 1
    assert lines[-1] == "usable: 0 errors, 1 warning"


def test_many_converted_images_are_summarised(tmp_path: Path) -> None:
    L.write_regdb(tmp_path, per_id=6)
    for path in sorted((tmp_path / "Thermal").rglob("*.bmp")):
        Image.new("L", (4, 8), 7).save(path)
    ds = load_dataset("regdb", tmp_path, check_images=True, strict=False)
    assert len(ds.problems) == 11 and all(p.severity == "warning" for p in ds.problems)
    assert str(ds.problems[-1]) == "8 more mode L images converted to RGB (not listed)"


def test_no_images_flag_skips_decoding(tmp_path: Path) -> None:
    L.write_sysu_mm01(tmp_path)
    (tmp_path / "cam3/0001/0001.jpg").write_bytes(b"garbage")
    assert main(["data", "check", str(tmp_path), "--dataset", "sysu_mm01", "--no-images"]) == 0
    assert main(["data", "check", str(tmp_path), "--dataset", "sysu_mm01"]) == 1


# ---------------------------------------------------------------------- argument errors: one line, exit 2
def _one_line_exit_2(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"vireid: error: {expected}"]
    assert "Traceback" not in out.out + out.err


def test_wrong_dataset_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = ("unknown dataset 'sysu'; known datasets: sysu_mm01, regdb, sysu_mm02, llcm, market1501, "
                "market1501_gen")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("sysu", tmp_path)
    _one_line_exit_2(["data", "check", str(tmp_path), "--dataset", "sysu"], expected, capsys)


def test_nonexistent_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "nope"
    expected = f"{root}: dataset root does not exist; pass the folder that holds the dataset"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("regdb", root)
    _one_line_exit_2(["data", "check", str(root), "--dataset", "regdb"], expected, capsys)


@pytest.mark.parametrize("trial", [0, 11])
def test_regdb_trial_out_of_range(trial: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.write_regdb(tmp_path)
    expected = f"RegDB trial {trial} is out of range; use a trial from 1 to 10"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("regdb", tmp_path, trial=trial)
    _one_line_exit_2(["data", "check", str(tmp_path), "--dataset", "regdb", "--trial", str(trial)], expected, capsys)


def test_unknown_gen_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.write_market1501_gen(tmp_path)
    expected = "unknown market1501_gen target 'llcm'; use one of sysumm01, sysumm02, regdb"
    _one_line_exit_2(["data", "check", str(tmp_path), "--dataset", "market1501_gen", "--target", "llcm"],
                     expected, capsys)


def test_wrong_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = L.write_regdb(tmp_path / "RegDB")
    expected = (f"no cam1..cam6 folders in {root}; is this SYSU-MM01? (it looks like RegDB: use --dataset regdb) "
                "expected layout: ROOT/cam1..cam6/PPPP/NNNN.jpg and ROOT/exp/{train,val,test}_id.txt")
    with pytest.raises(DataError) as err:
        load_dataset("sysu_mm01", root)
    assert str(err.value) == expected
    assert main(["data", "check", str(root), "--dataset", "sysu_mm01"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (lines.count(f"error: {expected}") == 1
            and lines[-1] == "NOT USABLE: 1 error, 0 warnings; fix the errors above")


def test_wrong_layout_for_each_parser(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, start in (("regdb", "no Visible/, Thermal/ or idx/ folder in "),
                        ("sysu_mm02", "no train.txt, test_rgb.txt or test_ir.txt in "),
                        ("llcm", "no train_vis/, train_nir/, test_vis/ or test_nir/ folder in "),
                        ("market1501", "no bounding_box_train/, bounding_box_test/ or query/ folder in "),
                        ("market1501_gen", "no market1501_train/ or market1501_test/ folder in ")):
        with pytest.raises(DataError) as err:
            load_dataset(name, empty)
        assert str(err.value).startswith(start + str(empty) + "; is this "), name


# ----------------------------------------------------------------------------------------------- reports
def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.write_sysu_mm01(tmp_path)
    L.write_text(tmp_path / "exp/test_id.txt", "2,9,x")
    assert main(["data", "check", str(tmp_path), "--dataset", "SYSU-MM01", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "sysu_mm01" and report["root"] == str(tmp_path) and report["usable"] is False
    assert report["summary"]["train"]["images"] == 8 and report["summary"]["test"]["identities"] == 2
    assert report["summary"]["test"]["cameras"] == {"1": 2, "2": 1, "3": 1, "5": 1, "6": 2}
    assert report["problems"] == [{"severity": "error", "file": "exp/test_id.txt", "line": 1,
                                   "message": f"bad token 'x'; {EXPECTED_ID}"}]


def test_text_report_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.write_market1501(tmp_path)
    assert main(["data", "check", str(tmp_path), "--dataset", "market1501"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"market1501 at {tmp_path}"
    assert out[2].split() == ["split", "images", "ids", "labels", "rgb", "ir"]
    assert out[3].split() == ["train", "3", "2", "2", "3", "0"]
    assert out[4].split() == ["test", "3", "2", "0", "3", "0"]
    assert out[6].split() == ["split", "cam1", "cam2", "cam3", "cam4"]
    assert out[7].split() == ["train", "1", "1", "1", "0"]
    assert "dropped: 1 junk images (pid -1) in bounding_box_test/" in out
    assert out[-1] == "usable: 0 errors, 0 warnings"


def test_original_without_twin_is_left_out_in_collect_mode(tmp_path: Path) -> None:
    L.write_market1501_gen(tmp_path)
    (tmp_path / "market1501_train_sysumm01/0002_c1s1_000451_03.jpg").unlink()
    ds = load_dataset("market1501_gen", tmp_path, check_images=True, strict=False)
    assert [s.path for s in ds.train] == ["market1501_train/0002_c2s1_000301_01.jpg"]
    assert [p.severity for p in ds.problems] == ["error", "warning"]  # twin missing; no pseudo label for 0007
