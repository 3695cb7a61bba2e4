"""``vireid extract``: features equal ``extract_features`` on the same images, paths/ids/modalities as documented,
auto modality right on synthetic RGB vs IR images, every bad input a one-line error with exit status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _checkpoint import tiny_run
from vireid.checkpoints import load_trained_model
from vireid.cli import main
from vireid.data.cache import ImageCache
from vireid.inference.extract import extract_features
from vireid.inference.images import DEFAULT_IR_THRESHOLD, ir_scores, layout_ids

IR_CAMS = (3, 6)


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best.pt, synthetic SYSU-MM01 root) of the tiny run, trained once per session (shared by test_search)."""
    base = tmp_path_factory.getbasetemp() / "practitioner_tiny"
    run = tiny_run(base)
    return run / "best.pt", base / "SYSU-MM01"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def copy_ids(sysu: Path, dest: Path, pids: list[int]) -> list[str]:
    """Copy every image of ``pids`` (all cameras, SYSU layout kept) to ``dest``; returns sorted relative paths."""
    rels = []
    for f in sorted(sysu.glob("cam*/*/*.jpg")):
        if int(f.parent.name) in pids:
            rel = f.relative_to(sysu)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / rel)
            rels.append(rel.as_posix())
    return sorted(rels)


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def reference_features(ckpt: Path, root: Path, rels: list[str], modalities: np.ndarray, batch_size: int,
                       cache_dir: Path) -> np.ndarray:
    """What the library's own extraction gives: ImageCache of the images + extract_features, checkpoint settings."""
    model, cfg, _ = load_trained_model(ckpt)
    cache = ImageCache.open_or_build(root, rels, cfg.data.height, cfg.data.width, cache_dir=cache_dir, workers=0,
                                     progress=False)
    return extract_features(model, cache, modalities, batch_size=batch_size, flip=cfg.eval.flip,
                            feature=cfg.eval.feature)


@pytest.fixture(scope="module")
def subset(tiny, tmp_path_factory):
    """Two identities (all six cameras: RGB and IR) in SYSU layout."""
    dest = tmp_path_factory.mktemp("subset") / "SYSU-MM01"
    rels = copy_ids(tiny[1], dest, [5, 8])
    return dest, rels


def test_folder_auto_equals_extract_features(tiny, subset, tmp_path, capsys):
    ckpt, _ = tiny
    root, rels = subset
    out = tmp_path / "f.npz"
    code, stdout, err = run_cli(["extract", ckpt, "--images", root, "--modality", "auto", "--out", out,
                                 "--batch-size", 8], capsys)
    assert code == 0, err
    assert f"{len(rels)} images" in stdout
    data = np.load(out)
    assert list(data["paths"]) == rels  # relative to the folder, sorted
    cams = np.array([int(r.split("/")[0][3:]) for r in rels])
    pids = np.array([int(r.split("/")[1]) for r in rels])
    truth = np.isin(cams, IR_CAMS).astype(np.int64)
    assert 0 < truth.sum() < len(truth)
    np.testing.assert_array_equal(data["modalities"], truth)  # auto decided every image right
    np.testing.assert_array_equal(data["pids"], pids)  # parsed from camK/PPPP/
    np.testing.assert_array_equal(data["camids"], cams)
    scores = data["modality_auto_score"]
    assert scores.shape == (len(rels),)
    assert (scores[truth == 1] < DEFAULT_IR_THRESHOLD).all() and (scores[truth == 0] > DEFAULT_IR_THRESHOLD).all()
    assert float(data["modality_auto_threshold"]) == DEFAULT_IR_THRESHOLD
    assert Path(str(data["root"])) == root
    ref = reference_features(ckpt, root, rels, truth, 8, tmp_path / "cache")
    assert data["features"].dtype == np.float32 and data["features"].shape == ref.shape
    np.testing.assert_allclose(data["features"], ref, rtol=0, atol=1e-6)
    # the score is the mean channel spread of the image the model sees (resized)
    cache = ImageCache.open_or_build(root, rels, 64, 32, cache_dir=tmp_path / "cache", workers=0, progress=False)
    np.testing.assert_allclose(scores, ir_scores(cache.batch(np.arange(len(rels)))))


def test_list_file_labels_root_and_fixed_modality(tiny, subset, tmp_path, capsys):
    ckpt, _ = tiny
    root, rels = subset
    chosen = rels[::4]
    rng = np.random.default_rng(0)
    shuffled = [chosen[i] for i in rng.permutation(len(chosen))]
    lines = ["# path pid camid"]
    for i, rel in enumerate(shuffled):
        lines.append(f"{rel} {100 + i} {7}" if i % 2 == 0 else rel)  # labels given on some lines only
    lst = tmp_path / "lists" / "images.txt"
    lst.parent.mkdir()
    lst.write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "g.npz"
    code, _, err = run_cli(["extract", ckpt, "--images", lst, "--root", root, "--modality", "IR", "--out", out,
                            "--batch-size", 4], capsys)
    assert code == 0, err
    data = np.load(out)
    assert list(data["paths"]) == sorted(chosen)
    expect_pid = {rel: (100 + i if i % 2 == 0 else -1) for i, rel in enumerate(shuffled)}
    expect_cam = {rel: (7 if i % 2 == 0 else -1) for i, rel in enumerate(shuffled)}
    assert list(data["pids"]) == [expect_pid[r] for r in sorted(chosen)]  # from the list, not the layout
    assert list(data["camids"]) == [expect_cam[r] for r in sorted(chosen)]
    assert (data["modalities"] == 1).all()
    assert "modality_auto_score" not in data.files
    ref = reference_features(ckpt, root, sorted(chosen), np.ones(len(chosen), np.int64), 4, tmp_path / "cache")
    np.testing.assert_allclose(data["features"], ref, rtol=0, atol=1e-6)

    # without --root the paths are relative to the list's folder; ids still come from the full path's layout
    first = next(r for r in rels if r.startswith("cam1/"))
    inside = Path(first).relative_to("cam1").as_posix()
    lst2 = root / "cam1" / "mine.txt"
    lst2.write_text(f"{inside}\n")
    code, _, err = run_cli(["extract", ckpt, "--images", lst2, "--modality", "rgb", "--out", tmp_path / "h.npz"],
                           capsys)
    assert code == 0, err
    d2 = np.load(tmp_path / "h.npz")
    assert list(d2["paths"]) == [inside]
    assert list(d2["pids"]) == [int(first.split("/")[1])]  # cam1/PPPP/NNNN.jpg
    assert list(d2["camids"]) == [1]
    lst2.unlink()


def test_root_above_folder_and_threshold_option(tiny, subset, tmp_path, capsys):
    ckpt, _ = tiny
    root, rels = subset
    out = tmp_path / "f.npz"
    code, _, err = run_cli(["extract", ckpt, "--images", root / "cam1", "--root", root.parent, "--modality", "auto",
                            "--ir-threshold", 255, "--out", out], capsys)
    assert code == 0, err
    data = np.load(out)
    assert list(data["paths"]) == [f"{root.name}/{r}" for r in rels if r.startswith("cam1/")]
    assert (data["modalities"] == 1).all()  # every spread is below 255: all called infrared
    assert float(data["modality_auto_threshold"]) == 255.0


def test_layout_ids():
    assert layout_ids("/data/SYSU-MM01/cam3/0012/0004.jpg") == (12, 3)
    assert layout_ids("LLCM/test_nir/cam7/0420/x.jpg") == (420, 7)
    assert layout_ids("RegDB/Thermal/285/female_t_0001_285.bmp") == (285, 2)
    assert layout_ids("RegDB/Visible/17/a.bmp") == (17, 1)
    assert layout_ids("Market/query/0002_c1s1_000451_03.jpg") == (2, 1)
    assert layout_ids("bounding_box_test/-1_c3s2_000001_01.jpg") == (-1, 3)
    assert layout_ids("photos/holiday/img_001.jpg") == (-1, -1)


def test_ir_scores_hand_computed():
    gray = np.full((1, 2, 2, 3), 77, np.uint8)
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 0] = (255, 0, 0)     # spread 255
    img[0, 0, 1] = (10, 20, 30)    # spread 20
    img[0, 1, 0] = (5, 5, 5)       # spread 0
    img[0, 1, 1] = (200, 100, 150)  # spread 100
    np.testing.assert_allclose(ir_scores(np.concatenate([gray, img])), [0.0, (255 + 20 + 0 + 100) / 4])


def one_line_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("vireid: error: "), err
    return lines[0]


def test_bad_inputs(tiny, subset, tmp_path, capsys):
    ckpt, _ = tiny
    root, rels = subset
    out = tmp_path / "x.npz"

    broken = tmp_path / "broken"
    shutil.copytree(root / "cam1", broken)
    (broken / "0005" / "zzz_not_an_image.jpg").write_text("hello, I am text")
    line = one_line_error(*run_cli(["extract", ckpt, "--images", broken, "--modality", "rgb", "--out", out],
                                   capsys)[::2])
    assert "zzz_not_an_image.jpg" in line and "cannot decode" in line

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    line = one_line_error(*run_cli(["extract", ckpt, "--images", empty, "--modality", "rgb", "--out", out],
                                   capsys)[::2])
    assert "no images" in line

    bare = tmp_path / "bare.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, bare)
    line = one_line_error(*run_cli(["extract", bare, "--images", root, "--modality", "rgb", "--out", out],
                                   capsys)[::2])
    assert "not a vireid checkpoint" in line

    ck = torch.load(ckpt, weights_only=True)
    ck["meta"]["config_yaml"] = ck["meta"]["config_yaml"].replace("resnet18_half", "resnet18")
    other = tmp_path / "other_arch.pt"
    torch.save(ck, other)
    line = one_line_error(*run_cli(["extract", other, "--images", root, "--modality", "rgb", "--out", out],
                                   capsys)[::2])
    assert "does not fit" in line

    line = one_line_error(*run_cli(["extract", ckpt, "--images", root, "--modality", "thermal", "--out", out],
                                   capsys)[::2])
    assert "--modality 'thermal'" in line and "rgb" in line

    line = one_line_error(*run_cli(["extract", ckpt, "--images", tmp_path / "nowhere", "--modality", "rgb",
                                    "--out", out], capsys)[::2])
    assert "nowhere" in line

    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(f"{rels[0]} 1 1\n{rels[1]} one 1\n")
    line = one_line_error(*run_cli(["extract", ckpt, "--images", bad_list, "--root", root, "--modality", "rgb",
                                    "--out", out], capsys)[::2])
    assert "bad.txt:2:" in line

    dup = tmp_path / "dup.txt"
    dup.write_text(f"{rels[0]}\n{rels[0]}\n")
    line = one_line_error(*run_cli(["extract", ckpt, "--images", dup, "--root", root, "--modality", "rgb",
                                    "--out", out], capsys)[::2])
    assert "dup.txt:2:" in line and "first on line 1" in line

    line = one_line_error(*run_cli(["extract", ckpt, "--images", root / "cam1", "--root", tmp_path / "elsewhere",
                                    "--modality", "rgb", "--out", out], capsys)[::2])
    assert "not under the root" in line

    line = one_line_error(*run_cli(["extract", ckpt, "--images", root, "--modality", "rgb", "--ir-threshold", 3,
                                    "--out", out], capsys)[::2])
    assert "--ir-threshold applies to --modality auto only" in line

    line = one_line_error(*run_cli(["extract", ckpt, "--images", root, "--modality", "rgb", "--device", "tpu:9",
                                    "--out", out], capsys)[::2])
    assert "--device tpu:9" in line
    assert not out.exists()


def test_agw_format_checkpoint_extracts_like_the_vireid_one(tiny, subset, tmp_path, capsys):
    """`--checkpoint-format agw`: the tiny run's weights saved in AGW's key layout give the same features file as
    the vireid checkpoint they came from (same size and flip given on the command line)."""
    import torch

    from test_convert import their_agw_state

    ckpt, _ = tiny
    model, cfg, _ = load_trained_model(ckpt)
    agw = tmp_path / "sysu_agw_best.t"
    torch.save({"net": their_agw_state(model.state_dict()), "epoch": 1}, agw)
    root, _ = subset
    outs = {}
    for name, extra in (("vireid", [ckpt]), ("agw", [agw, "--checkpoint-format", "agw", "--size", cfg.data.height,
                                                     cfg.data.width, "--flip", "on" if cfg.eval.flip else "off"])):
        outs[name] = tmp_path / f"{name}.npz"
        code, _, err = run_cli(["extract", *extra, "--images", root, "--modality", "auto", "--out", outs[name],
                                "--device", "cpu"], capsys)
        assert code == 0, err
    a, b = np.load(outs["vireid"]), np.load(outs["agw"])
    assert list(a["paths"]) == list(b["paths"]) and np.array_equal(a["modalities"], b["modalities"])
    np.testing.assert_allclose(a["features"], b["features"], atol=1e-6)
    code, _, err = run_cli(["extract", agw, "--images", root, "--modality", "rgb", "--out", tmp_path / "x.npz"], capsys)
    assert code == 2 and "not a vireid checkpoint" in err and "--checkpoint-format agw" in err
