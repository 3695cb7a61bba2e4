"""Every parser on a tiny hand-written layout yields exactly the expected records, labels and info."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import _layouts as L  # tests/ is on sys.path (pytest rootdir-relative import of test modules)
from vireid.data.datasets import DATASETS, dataset_name, load_dataset, register_dataset
from vireid.data.records import Sample
from vireid.errors import DataError


def S(path: str, pid: int, cam: int, mod: int, label: int = -1, twin: str | None = None) -> Sample:
    return Sample(path, pid, cam, mod, label, twin)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_aliases() -> None:
    assert list(DATASETS) == ["sysu_mm01", "regdb", "sysu_mm02", "llcm", "market1501", "market1501_gen"]
    assert dataset_name("SYSU-MM01") == "sysu_mm01"
    assert dataset_name("Market1501-Gen") == "market1501_gen"
    assert dataset_name("regdb") == "regdb"


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("sysu_mm03", tmp_path)
    assert str(err.value) == ("unknown dataset 'sysu_mm03'; known datasets: sysu_mm01, regdb, sysu_mm02, llcm, "
                              "market1501, market1501_gen")


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("SYSU-MM01", lambda root, options, log: None)  # type: ignore[arg-type,return-value]
    assert "SYSU-MM01" not in DATASETS


# ----------------------------------------------------------------------------------------------- SYSU-MM01
SYSU_TRAIN = [
    S("cam1/0001/0001.jpg", 1, 1, 0, 0), S("cam1/0001/0002.jpg", 1, 1, 0, 0), S("cam3/0001/0001.jpg", 1, 3, 1, 0),
    S("cam2/0004/0001.jpg", 4, 2, 0, 1), S("cam6/0004/0001.jpg", 4, 6, 1, 1), S("cam6/0004/0002.jpg", 4, 6, 1, 1),
    S("cam3/0007/0001.jpg", 7, 3, 1, 2), S("cam4/0007/0001.jpg", 7, 4, 0, 2),
]
SYSU_TEST = [
    S("cam1/0002/0001.jpg", 2, 1, 0), S("cam1/0002/0002.jpg", 2, 1, 0), S("cam2/0002/0001.jpg", 2, 2, 0),
    S("cam3/0002/0001.jpg", 2, 3, 1), S("cam6/0002/0001.jpg", 2, 6, 1),
    S("cam5/0009/0001.jpg", 9, 5, 0), S("cam6/0009/0001.jpg", 9, 6, 1),
]


def test_sysu_mm01_records(tmp_path: Path) -> None:
    ds = load_dataset("sysu_mm01", L.write_sysu_mm01(tmp_path), check_images=True)
    assert ds.name == "sysu_mm01" and ds.root == tmp_path
    assert ds.train == SYSU_TRAIN
    assert ds.val == SYSU_TRAIN[6:]
    assert ds.test == SYSU_TEST
    assert ds.info["train_ids"] == [1, 4] and ds.info["val_ids"] == [7] and ds.info["test_ids"] == [2, 9]
    assert ds.info["rand_perm_cam"] is None
    assert ds.num_classes == 3
    assert ds.problems == []
    assert ds.summary()["train"]["modalities"] == {"rgb": 4, "ir": 4}


def test_sysu_mm01_accepts_trailing_newline_and_rand_perm(tmp_path: Path) -> None:
    L.write_sysu_mm01(tmp_path, rand_perm=True)
    L.write_text(tmp_path / "exp/test_id.txt", "2,9\n")
    L.write_text(tmp_path / "exp/val_id.txt", "7\r\n")
    ds = load_dataset("sysu_mm01", tmp_path)
    assert ds.test == SYSU_TEST and ds.val == SYSU_TRAIN[6:]
    assert ds.info["rand_perm_cam"] == "exp/rand_perm_cam.mat"
    assert ds.problems == []


def test_sysu_mm01_unlisted_folder_is_a_warning_not_data(tmp_path: Path) -> None:
    L.write_sysu_mm01(tmp_path)
    L.image(tmp_path / "cam1/0050/0001.jpg")
    L.image(tmp_path / "cam6/0050/0001.jpg")
    L.image(tmp_path / "cam6/0050/0002.jpg")
    ds = load_dataset("sysu_mm01", tmp_path)
    assert ds.train == SYSU_TRAIN
    assert [str(p) for p in ds.problems] == [
        "cam1/0050/: identity 50 is in none of exp/*_id.txt; its images are not used (3 images in 2 folders)"]
    assert ds.problems[0].severity == "warning"


# --------------------------------------------------------------------------------------------------- RegDB
def regdb_records(trial: int = 1) -> tuple[list[Sample], list[Sample]]:
    def rec(folder: str, kind: str, pid: int, k: int, label: int, train: bool) -> Sample:
        return S(f"{folder}/{pid}/{L.regdb_name(pid, kind, k)}", label, 1 if folder == "Visible" else 2,
                 0 if folder == "Visible" else 1, label if train else -1)

    train = [rec(f, k, pid, i, lab, True) for f, k in (("Visible", "v"), ("Thermal", "t"))
             for pid, lab in ((285, 1), (3, 0)) for i in range(2)]
    test = [rec(f, k, 10, i, 0, False) for f, k in (("Visible", "v"), ("Thermal", "t")) for i in range(2)]
    return train, test


@pytest.mark.parametrize("trial", [1, 10])
def test_regdb_records(tmp_path: Path, trial: int) -> None:
    ds = load_dataset("RegDB", L.write_regdb(tmp_path, trial=trial), trial=trial, check_images=True)
    train, test = regdb_records()
    assert ds.train == train
    assert ds.test == test
    assert ds.val == []
    assert ds.info["trial"] == trial and ds.num_classes == 2
    assert ds.problems == []


def test_regdb_other_trial_files_missing_names_them(tmp_path: Path) -> None:
    L.write_regdb(tmp_path, trial=1)
    with pytest.raises(DataError) as err:
        load_dataset("regdb", tmp_path, trial=2)
    assert str(err.value).startswith(
        "idx/train_visible_2.txt: missing; it should list the visible train images of trial 2, one "
        "'<relpath> <label>' per line (and 3 more problems; run `vireid data check")


# ----------------------------------------------------------------------------------------------- SYSU-MM02
@pytest.mark.parametrize("final_newline", [True, False])
def test_sysu_mm02_records(tmp_path: Path, final_newline: bool) -> None:
    ds = load_dataset("sysu-mm02", L.write_sysu_mm02(tmp_path, final_newline=final_newline))
    assert ds.train == [S("train/cam1/0007_0001.jpg", 7, 1, 0), S("train/cam2/0007_0002.jpg", 7, 2, 1),
                        S("train/cam3/0008_0001.jpg", 8, 3, 1)]
    assert ds.test == [S("test/cam1/0001_0001.jpg", 1, 1, 0), S("test/cam1/0002_0001.jpg", 2, 1, 0),
                       S("test/cam2/0001_0002.jpg", 1, 2, 1), S("test/cam3/0002_0002.jpg", 2, 3, 1)]
    assert ds.info["labeled"] is False and ds.num_classes == 0
    assert ds.info["test_ids"] == [1, 2]
    assert ds.problems == []


# ---------------------------------------------------------------------------------------------------- LLCM
def test_llcm_records(tmp_path: Path) -> None:
    ds = load_dataset("LLCM", L.write_llcm(tmp_path), check_images=True)
    assert ds.train == [S("train_vis/cam1/0005/0005_c01_0001.jpg", 5, 1, 0, 1),
                        S("train_vis/cam2/0003/0003_c02_0001.jpg", 3, 2, 0, 0),
                        S("train_nir/cam4/0003/0003_c04_0001.jpg", 3, 4, 1, 0),
                        S("train_nir/cam4/0005/0005_c04_0001.jpg", 5, 4, 1, 1)]
    assert ds.test == [S("test_vis/cam1/0011/0011_c01_0001.jpg", 11, 1, 0),
                       S("test_vis/cam9/0011/0011_c09_0001.jpg", 11, 9, 0),
                       S("test_nir/cam2/0011/0011_c02_0001.jpg", 11, 2, 1),
                       S("test_vis/cam3/0012/0012_c03_0001.jpg", 12, 3, 0),
                       S("test_nir/cam8/0012/0012_c08_0001.jpg", 12, 8, 1)]
    assert ds.info["train_ids"] == [3, 5] and ds.info["test_ids"] == [11, 12]
    assert ds.problems == []


# -------------------------------------------------------------------------------------------------- Market
def test_market1501_ground_truth(tmp_path: Path) -> None:
    ds = load_dataset("market1501", L.write_market1501(tmp_path), check_images=True)
    assert ds.train == [S("bounding_box_train/0002_c1s1_000451_03.jpg", 2, 1, 0, 0),
                        S("bounding_box_train/0002_c2s1_000301_01.jpg", 2, 2, 0, 0),
                        S("bounding_box_train/0007_c3s1_000101_02.jpg", 7, 3, 0, 1)]
    assert ds.test == [S("query/0010_c1s1_000004_00.jpg", 10, 1, 0),
                       S("bounding_box_test/0000_c2s1_000002_00.jpg", 0, 2, 0),
                       S("bounding_box_test/0010_c4s1_000003_01.jpg", 10, 4, 0)]
    assert ds.info["num_query"] == 1
    assert ds.info["dropped"] == {"junk images (pid -1) in bounding_box_test/": 1}
    assert ds.problems == []


GEN_TRAIN_GT = [
    S("market1501_train/0002_c1s1_000451_03.jpg", 2, 1, 0, 0, "market1501_train_sysumm01/0002_c1s1_000451_03.jpg"),
    S("market1501_train/0002_c2s1_000301_01.jpg", 2, 2, 0, 0, "market1501_train_sysumm01/0002_c2s1_000301_01.jpg"),
    S("market1501_train/0007_c3s1_000101_02.jpg", 7, 3, 0, 1, "market1501_train_sysumm01/0007_c3s1_000101_02.jpg"),
]
GEN_TEST = [S("market1501_test/0000_c2s1_000002_00.jpg", 0, 2, 0),
            S("market1501_test/0010_c4s1_000003_01.jpg", 10, 4, 0)]


def test_market1501_gen_pseudo_labels(tmp_path: Path) -> None:
    ds = load_dataset("market1501_gen", L.write_market1501_gen(tmp_path), check_images=True)
    # pseudo 12 -> label 0, pseudo 40 -> label 1; 0007_c3s1 has no pseudo label and is dropped
    assert ds.train == [
        S("market1501_train/0002_c1s1_000451_03.jpg", 2, 1, 0, 1, "market1501_train_sysumm01/0002_c1s1_000451_03.jpg"),
        S("market1501_train/0002_c2s1_000301_01.jpg", 2, 2, 0, 0, "market1501_train_sysumm01/0002_c2s1_000301_01.jpg"),
    ]
    assert ds.test == GEN_TEST
    assert ds.info["target"] == "sysumm01" and ds.info["labels"] == "pseudo" and ds.num_classes == 2
    assert ds.info["dropped"] == {"junk images (pid -1) in market1501_test/": 1,
                                  "market1501_train (no pseudo label)": 1}
    assert [(p.severity, str(p)) for p in ds.problems] == [
        ("warning", "market1501_train/: 1 of 3 training images have no pseudo label in pplr_pseudo_labels.pth "
                    "and were dropped")]


def test_market1501_gen_ground_truth_and_target(tmp_path: Path) -> None:
    L.write_market1501_gen(tmp_path, targets=("sysumm01", "regdb"), pplr=False)
    assert load_dataset("market1501_gen", tmp_path, labels="ground_truth").train == GEN_TRAIN_GT
    ds = load_dataset("market1501_gen", tmp_path, labels="ground_truth", target="RegDB")
    assert [s.twin for s in ds.train] == [s.twin.replace("sysumm01", "regdb") for s in GEN_TRAIN_GT]  # type: ignore
    assert ds.problems == []


def test_market1501_gen_numpy_labels_load_without_unsafe_pickle(tmp_path: Path) -> None:
    L.write_market1501_gen(tmp_path, pplr=False)
    entries = [(p, np.int64(l), np.int64(c)) for p, l, c in L.PPLR_ENTRIES]
    torch.save(entries, tmp_path / "pplr_pseudo_labels.pth")
    ds = load_dataset("market1501_gen", tmp_path)
    assert [s.label for s in ds.train] == [1, 0]


def test_market1501_gen_plain_pickle_and_tensor_labels(tmp_path: Path) -> None:
    L.write_market1501_gen(tmp_path, pplr=False)
    with open(tmp_path / "pplr_pseudo_labels.pth", "wb") as f:
        pickle.dump([(p, l, c) for p, l, c in L.PPLR_ENTRIES], f)
    assert [s.label for s in load_dataset("market1501_gen", tmp_path).train] == [1, 0]
    torch.save([(p, torch.tensor(l), c) for p, l, c in L.PPLR_ENTRIES], tmp_path / "pplr_pseudo_labels.pth")
    assert [s.label for s in load_dataset("market1501_gen", tmp_path).train] == [1, 0]


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("PWNED"),))


def test_market1501_gen_refuses_arbitrary_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    L.write_market1501_gen(tmp_path, pplr=False)
    monkeypatch.chdir(tmp_path)
    torch.save([("0002_c1s1_000451_03.jpg", 1, _Boom())], tmp_path / "pplr_pseudo_labels.pth")
    with pytest.raises(DataError, match=r"^pplr_pseudo_labels.pth: cannot be read .*refused to unpickle"):
        load_dataset("market1501_gen", tmp_path)
    with open(tmp_path / "pplr_pseudo_labels.pth", "wb") as f:
        pickle.dump([("0002_c1s1_000451_03.jpg", 1, _Boom())], f)
    with pytest.raises(DataError, match=r"^pplr_pseudo_labels.pth: cannot be read .*refused to unpickle"):
        load_dataset("market1501_gen", tmp_path)
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------ against the synthetic generator
# Every parser on its synthetic layout yields exactly the records the generator says it wrote (its manifest).
synthetic = pytest.importorskip("vireid.data.synthetic")

SYNTH_IDS = {"sysu_mm01": 12, "regdb": 8, "sysu_mm02": 10, "llcm": 10, "market1501": 8, "market1501_gen": 8}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            root = tmp_path_factory.mktemp("synth") / name
            cache[name] = synthetic.write_synthetic(name, root, ids=SYNTH_IDS[name], seed=3, size=(32, 16))
        return cache[name]

    return get


def _by_path(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: s.path)


def test_synthetic_sysu_mm01(synth: Callable[[str], Any]) -> None:
    m = synth("sysu_mm01")
    ds = load_dataset("sysu_mm01", m.root, check_images=True)
    assert ds.problems == []
    train_ids = sorted(m.splits["train_ids"] + m.splits["val_ids"])
    label = {pid: i for i, pid in enumerate(train_ids)}
    key = lambda s: (s.pid, s.camid, s.path)  # noqa: E731 - the parser's documented order
    expect = lambda ids, lab: sorted(  # noqa: E731
        (S(i.relpath, i.pid, i.camid, i.modality, lab.get(i.pid, -1)) for i in m.images if i.pid in ids), key=key)
    assert ds.train == expect(set(train_ids), label)
    assert ds.val == expect(set(m.splits["val_ids"]), label)
    assert ds.test == expect(set(m.splits["test_ids"]), {})
    assert len(ds.train) + len(ds.test) == len(m.images)
    assert (ds.info["train_ids"], ds.info["val_ids"], ds.info["test_ids"]) == (
        m.splits["train_ids"], m.splits["val_ids"], m.splits["test_ids"])
    assert ds.info["rand_perm_cam"] == ("exp/rand_perm_cam.mat" if "exp/rand_perm_cam.mat" in m.files else None)


@pytest.mark.parametrize("trial", [1, 7])
def test_synthetic_regdb(synth: Callable[[str], Any], trial: int) -> None:
    m = synth("regdb")
    ds = load_dataset("regdb", m.root, trial=trial, check_images=True)
    assert ds.problems == []
    split = m.trials[trial - 1]
    for records, ids, train in ((ds.train, split["train_ids"], True), (ds.test, split["test_ids"], False)):
        label = {pid: i for i, pid in enumerate(ids)}
        assert _by_path(records) == _by_path([
            S(i.relpath, label[i.pid], i.camid, i.modality, label[i.pid] if train else -1)
            for i in m.images if i.pid in label])
    assert ds.info["trial"] == trial


def test_synthetic_sysu_mm02(synth: Callable[[str], Any]) -> None:
    m = synth("sysu_mm02")
    ds = load_dataset("sysu_mm02", m.root, check_images=True)
    assert ds.problems == []
    assert _by_path(ds.train) == _by_path(
        [S(i.relpath, i.pid, i.camid, i.modality) for i in m.images if i.relpath.startswith("train/")])
    assert _by_path(ds.test) == _by_path(
        [S(i.relpath, i.pid, i.camid, i.modality) for i in m.images if i.relpath.startswith("test/")])
    assert len(ds.train) + len(ds.test) == len(m.images)
    assert ds.info["test_ids"] == m.splits["test_ids"]


def test_synthetic_llcm(synth: Callable[[str], Any]) -> None:
    m = synth("llcm")
    ds = load_dataset("llcm", m.root, check_images=True)
    assert ds.problems == []
    label = {pid: i for i, pid in enumerate(m.splits["train_ids"])}
    assert _by_path(ds.train) == _by_path(
        [S(i.relpath, i.pid, i.camid, i.modality, label[i.pid]) for i in m.images if i.relpath.startswith("train_")])
    assert _by_path(ds.test) == _by_path(
        [S(i.relpath, i.pid, i.camid, i.modality) for i in m.images if i.relpath.startswith("test_")])
    assert (ds.info["train_ids"], ds.info["test_ids"]) == (m.splits["train_ids"], m.splits["test_ids"])


def test_synthetic_market1501(synth: Callable[[str], Any]) -> None:
    m = synth("market1501")
    ds = load_dataset("market1501", m.root, check_images=True)
    assert ds.problems == []
    train = [i for i in m.images if i.relpath.startswith("bounding_box_train/")]
    label = {pid: n for n, pid in enumerate(sorted({i.pid for i in train}))}
    assert ds.train == _by_path([S(i.relpath, i.pid, i.camid, 0, label[i.pid]) for i in train])
    query = [S(i.relpath, i.pid, i.camid, 0) for i in m.images if i.relpath.startswith("query/")]
    gallery = [S(i.relpath, i.pid, i.camid, 0) for i in m.images
               if i.relpath.startswith("bounding_box_test/") and i.pid != -1]
    assert ds.test == _by_path(query) + _by_path(gallery)
    junk = sum(1 for i in m.images if i.pid == -1)
    assert ds.info["dropped"] == ({"junk images (pid -1) in bounding_box_test/": junk} if junk else {})


@pytest.mark.parametrize("labels", ["pseudo", "ground_truth"])
def test_synthetic_market1501_gen(synth: Callable[[str], Any], labels: str) -> None:
    m = synth("market1501_gen")
    ds = load_dataset("market1501_gen", m.root, target="sysumm02", labels=labels, check_images=True)
    originals = [i for i in m.images if i.relpath.startswith("market1501_train/")]
    if labels == "pseudo":
        kept = [i for i in originals if i.relpath.split("/")[1] in m.pseudo_labels]
        value = {i.relpath: m.pseudo_labels[i.relpath.split("/")[1]] for i in kept}
    else:
        kept, value = originals, {i.relpath: i.pid for i in originals}
    rank = {v: n for n, v in enumerate(sorted(set(value.values())))}
    assert ds.train == _by_path([
        S(i.relpath, i.pid, i.camid, 0, rank[value[i.relpath]], i.relpath.replace("_train/", "_train_sysumm02/"))
        for i in kept])
    assert ds.test == _by_path([S(i.relpath, i.pid, i.camid, 0) for i in m.images
                                if i.relpath.startswith("market1501_test/") and i.pid != -1])
    twins = {i.relpath for i in m.images if i.relpath.startswith("market1501_train_sysumm02/")}
    assert {s.twin for s in ds.train} <= twins
    dropped = len(originals) - len(kept)
    assert [str(p) for p in ds.problems] == ([
        f"market1501_train/: {dropped} of {len(originals)} training images have no pseudo label in "
        f"pplr_pseudo_labels.pth and were dropped"] if dropped else [])
