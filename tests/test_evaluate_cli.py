"""``vireid evaluate``: the JSON equals the library result; every bad input is a one-line error, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_protocols import (
    exact_features,
    llcm_rows,
    mm02_rows,
    rand_perm_mat,
    regdb_rows,
    sysu_rows,
)
from vireid.cli import main
from vireid.evaluation import build_protocol, evaluate_protocol, load_features

JSON_KEYS = {"protocol", "mode", "direction", "trials", "rerank", "rank1", "rank5", "rank10", "rank20", "mAP",
             "mINP", "cmc", "per_trial", "num_query", "num_gallery"}


def write_npz(path: Path, rows, seed: int = 0, **override) -> Path:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    arrays = {
        "features": exact_features(len(rows), rng),
        "pids": np.array([r[1] for r in rows], np.int64),
        "camids": np.array([r[2] for r in rows], np.int64),
        "modalities": np.array([r[3] for r in rows], np.int64),
        "paths": np.array([r[0] for r in rows]),
        "extra_key": np.zeros(3),  # ignored
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("protocol,rows_fn,extra", [
    ("sysu", sysu_rows, ["--mode", "indoor"]),
    ("sysu", sysu_rows, ["--trials", "3"]),
    ("llcm", llcm_rows, ["--direction", "i2v"]),
    ("sysu-mm02", mm02_rows, []),
])
def test_json_equals_library(tmp_path, capsys, protocol, rows_fn, extra):
    npz = write_npz(tmp_path / "f.npz", rows_fn(0))
    out = tmp_path / "res" / "r.json"
    code, stdout, err = run_cli(["evaluate", npz, "--protocol", protocol, "--json", out, "--plot", *extra], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert JSON_KEYS <= set(data)
    assert len(data["cmc"]) == 20
    fs = load_features(npz)
    kw = dict(zip(extra[::2], extra[1::2]))
    plan = build_protocol(protocol, fs, mode=kw.get("--mode", "all"), direction=kw.get("--direction", "v2i"),
                          trials=int(kw["--trials"]) if "--trials" in kw else (1 if protocol == "sysu-mm02" else 10))
    lib = evaluate_protocol(fs.features, plan).summary()
    for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "num_query", "num_gallery", "trials"):
        assert data[k] == pytest.approx(lib[k], abs=1e-9), k
    assert data["cmc"] == pytest.approx(lib["cmc"])
    assert data["trials"] == len(data["per_trial"])
    assert 0 <= data["mAP"] <= 100 and data["rank20"] >= data["rank1"]
    assert data["rerank"] is False
    assert (out.with_suffix(".png")).stat().st_size > 1000
    assert "Rank-1" in stdout and "mean" in stdout
    if protocol == "sysu":
        assert data["direction"] == "i2v" and data["mode"] == kw.get("--mode", "all")
    else:
        assert data["mode"] is None


def test_regdb_several_files(tmp_path, capsys):
    files = [write_npz(tmp_path / f"t{i}.npz", regdb_rows(i), seed=i) for i in range(1, 4)]
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(["evaluate", *files, "--protocol", "regdb", "--direction", "i2v", "--json", out],
                                capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["trials"] == 3 and [r["trial"] for r in data["per_trial"]] == [1, 2, 3]
    per = []
    for f in files:
        fs = load_features(f)
        per.append(evaluate_protocol(fs.features, build_protocol("regdb", fs, direction="i2v")).summary())
    for k in ("rank1", "mAP", "mINP"):
        assert [r[k] for r in data["per_trial"]] == pytest.approx([p[k] for p in per])
        assert data[k] == pytest.approx(np.mean([p[k] for p in per]))
        assert data["std"][k] == pytest.approx(np.std([p[k] for p in per]))


def test_sysu_official_cli(tmp_path, capsys):
    npz = write_npz(tmp_path / "f.npz", sysu_rows(3), seed=3)
    fs = load_features(npz)
    rand_perm_mat(tmp_path / "SYSU" / "exp" / "rand_perm_cam.mat", fs)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["evaluate", npz, "--protocol", "sysu-official", "--shots", "10",
                            "--dataset-root", tmp_path / "SYSU", "--json", out], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    plan = build_protocol("sysu-official", fs, shots=10, dataset_root=tmp_path / "SYSU")
    assert data["mAP"] == pytest.approx(evaluate_protocol(fs.features, plan).summary()["mAP"])
    assert data["shots"] == 10
    # missing rand_perm_cam.mat
    code, _, err = run_cli(["evaluate", npz, "--protocol", "sysu-official", "--dataset-root", tmp_path], capsys)
    assert code == 2 and "rand_perm_cam.mat" in err and len(err.strip().splitlines()) == 1


def bad_cases(tmp_path: Path):
    rows = sysu_rows(0)
    n = len(rows)
    feats = exact_features(n, np.random.default_rng(0))
    nan_feats = feats.copy()
    nan_feats[3, 0] = np.nan
    return [
        ("missing key", write_npz(tmp_path / "a.npz", rows, camids=None), ["--protocol", "sysu"], "missing key"),
        ("lengths", write_npz(tmp_path / "b.npz", rows, pids=np.ones(n - 1, np.int64)), ["--protocol", "sysu"],
         f"has {n - 1} rows but 'features' has {n}"),
        ("nan", write_npz(tmp_path / "c.npz", rows, features=nan_feats), ["--protocol", "sysu"], "NaN or infinite"),
        ("int features", write_npz(tmp_path / "d.npz", rows, features=np.ones((n, 4), np.int64)),
         ["--protocol", "sysu"], "'features' must be a float array"),
        ("string pids", write_npz(tmp_path / "e.npz", rows, pids=np.array([str(r[1]) for r in rows])),
         ["--protocol", "sysu"], "'pids' must be an integer array"),
        ("regdb path in sysu", write_npz(tmp_path / "f.npz", regdb_rows(0)), ["--protocol", "sysu"],
         "not a SYSU-MM01 test image path"),
        ("sysu path in regdb", write_npz(tmp_path / "g.npz", rows), ["--protocol", "regdb"],
         "not a RegDB test image path"),
        ("no valid query", write_npz(tmp_path / "h.npz", [(p, pid + 1000 * mod, cam, mod)
                                                          for p, pid, cam, mod in regdb_rows(0)]),
         ["--protocol", "regdb"], "no valid query"),
        ("not a file", tmp_path / "nope.npz", ["--protocol", "sysu"], "no such features file"),
        ("not an npz", _text(tmp_path / "x.npz"), ["--protocol", "sysu"], "not a readable .npz"),
        ("object paths", write_npz(tmp_path / "i.npz", rows, paths=np.array([r[0] for r in rows], dtype=object)),
         ["--protocol", "sysu"], "stored as Python objects"),
        ("shots for sysu", write_npz(tmp_path / "j.npz", rows), ["--protocol", "sysu", "--shots", "10"],
         "sysu-official"),
        ("mode for regdb", write_npz(tmp_path / "k.npz", regdb_rows(0)), ["--protocol", "regdb", "--mode", "all"],
         "--mode applies"),
        ("several files", write_npz(tmp_path / "l.npz", rows), [str(tmp_path / "l.npz"), "--protocol", "sysu"],
         "only --protocol regdb"),
        ("plot without json", write_npz(tmp_path / "m.npz", rows), ["--protocol", "sysu", "--plot"], "--json"),
        ("v2i for sysu", write_npz(tmp_path / "n.npz", rows), ["--protocol", "sysu", "--direction", "v2i"], "i2v"),
        ("trials vs files", write_npz(tmp_path / "o.npz", regdb_rows(0)), ["--protocol", "regdb", "--trials", "10"],
         "one file per trial"),
    ]


def _text(p: Path) -> Path:
    p.write_text("hello")
    return p


def test_bad_inputs_one_line_errors(tmp_path, capsys):
    for name, path, args, msg in bad_cases(tmp_path):
        code, out, err = run_cli(["evaluate", path, *args], capsys)
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("vireid: error:"), (name, err)
        assert msg in lines[0], (name, lines[0])
        assert "Traceback" not in err


@pytest.mark.parametrize("args", [["--protocol", "nope"], ["--protocol", "sysu", "--mode", "outdoor"],
                                  ["--protocol", "regdb", "--direction", "x2y"]])
def test_unknown_choices_rejected_by_argparse(tmp_path, capsys, args):
    npz = write_npz(tmp_path / "f.npz", regdb_rows(0))
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(npz), *args])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_rerank_flag(tmp_path, capsys):
    import torch

    from vireid.evaluation.metrics import evaluate_ranking, l2_normalize
    from vireid.evaluation.rerank import k_reciprocal_rerank

    npz = write_npz(tmp_path / "f.npz", regdb_rows(0, n_ids=8), seed=0)
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(["evaluate", npz, "--protocol", "regdb", "--rerank", "--json", out], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["rerank"] is True and "re-ranked" in stdout
    fs = load_features(npz)
    f = l2_normalize(torch.from_numpy(fs.features))
    q, g = np.nonzero(fs.modalities == 0)[0], np.nonzero(fs.modalities == 1)[0]
    expected = evaluate_ranking(k_reciprocal_rerank(f[q].numpy(), f[g].numpy()), fs.pids[q], fs.pids[g]).summary()
    for k in ("rank1", "rank5", "mAP", "mINP"):
        assert data[k] == pytest.approx(expected[k], abs=1e-9)
    plain = evaluate_protocol(fs.features, build_protocol("regdb", fs)).summary()
    assert data["cmc"] != plain["cmc"] or data["mAP"] != plain["mAP"]  # re-ranking changed something


@pytest.mark.parametrize("dataset,protocol,extra", [
    ("sysu_mm01", "sysu-official", ["--shots", "10"]),
    ("sysu_mm01", "sysu", ["--mode", "indoor"]),
    ("llcm", "llcm", ["--direction", "i2v"]),
])
def test_end_to_end_on_synthetic_layout(tmp_path, capsys, dataset, protocol, extra):
    """Synthetic dataset in the real layout -> parser records -> features file -> vireid evaluate --dataset-root."""
    from vireid.data.datasets import load_dataset
    from vireid.data.synthetic import write_synthetic
    from vireid.evaluation import save_features

    root = tmp_path / dataset
    write_synthetic(dataset, root)
    test = load_dataset(dataset, root).test
    feats = np.random.default_rng(0).standard_normal((len(test), 16)).astype(np.float32)
    npz = save_features(tmp_path / "f.npz", feats, [s.pid for s in test], [s.camid for s in test],
                        [int(s.modality) for s in test], [s.path for s in test])
    out = tmp_path / "r.json"
    code, _, err = run_cli(["evaluate", npz, "--protocol", protocol, "--dataset-root", root, "--json", out, *extra],
                           capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["trials"] == 10 and data["num_query"] > 0 and data["num_gallery"] > 0
    # dropping one test image must be refused: the galleries depend on every folder's full file list
    fs = load_features(npz)
    keep = np.arange(len(fs)) != 0
    np.savez(tmp_path / "g.npz", features=fs.features[keep], pids=fs.pids[keep], camids=fs.camids[keep],
             modalities=fs.modalities[keep], paths=fs.paths[keep])
    code, _, err = run_cli(["evaluate", tmp_path / "g.npz", "--protocol", protocol, "--dataset-root", root, *extra],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_cmc_identity_both_directions_several_files(tmp_path, capsys):
    """AML's RegDB evaluation: identity-level CMC, both directions in one run, one file per trial."""
    files = [write_npz(tmp_path / f"t{i}.npz", regdb_rows(i), seed=i) for i in range(1, 3)]
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(["evaluate", *files, "--protocol", "regdb", "--cmc", "identity", "--direction",
                                 "both", "--json", out, "--plot"], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["direction"] == "both" and data["cmc_kind"] == "identity" and data["protocol"] == "regdb"
    assert "direction=v2i" in stdout and "direction=i2v" in stdout and "cmc=identity" in stdout
    assert out.with_suffix(".png").stat().st_size > 1000
    for d in ("v2i", "i2v"):
        assert data[d]["direction"] == d and [r["trial"] for r in data[d]["per_trial"]] == [1, 2]
        per = []
        for f in files:
            fs = load_features(f)
            per.append(evaluate_protocol(fs.features, build_protocol("regdb", fs, direction=d,
                                                                     cmc="identity")).summary())
        assert [r["mAP"] for r in data[d]["per_trial"]] == pytest.approx([p["mAP"] for p in per])
        assert data[d]["rank1"] == pytest.approx(np.mean([p["rank1"] for p in per]))
        assert data[d]["cmc"] == pytest.approx(np.mean([p["cmc"] for p in per], axis=0).tolist())


def test_rerank_precision_flag(tmp_path, capsys):
    from vireid.evaluation.metrics import evaluate_ranking, l2_normalize
    from vireid.evaluation.rerank import k_reciprocal_rerank

    npz = write_npz(tmp_path / "f.npz", regdb_rows(0, n_ids=8), seed=0)
    fs = load_features(npz)
    f = l2_normalize(fs.features)
    q, g = np.nonzero(fs.modalities == 0)[0], np.nonzero(fs.modalities == 1)[0]
    for precision in ("float16", "float32"):
        out = tmp_path / f"{precision}.json"
        code, _, err = run_cli(["evaluate", npz, "--protocol", "regdb", "--rerank", "--rerank-precision", precision,
                                "--json", out], capsys)
        assert code == 0, err
        data = json.loads(out.read_text())
        assert data["rerank_precision"] == precision
        dist = k_reciprocal_rerank(f[q], f[g], precision=precision, normalize=False)
        expected = evaluate_ranking(dist, fs.pids[q], fs.pids[g]).summary()
        assert data["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)


@pytest.mark.parametrize("args,msg", [
    (["--protocol", "sysu", "--direction", "both"], "always IR queries"),
    (["--protocol", "regdb", "--rerank-precision", "float32"], "give --rerank too"),
])
def test_new_option_errors(tmp_path, capsys, args, msg):
    rows = sysu_rows(0) if "sysu" in args else regdb_rows(0)
    npz = write_npz(tmp_path / "f.npz", rows)
    code, _, err = run_cli(["evaluate", npz, *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err


def test_evaluate_imports_only_what_it_uses(tmp_path):
    """A short command should not pay for modules it does not use: ``vireid evaluate`` of a features file without
    --dataset-root loads no dataset parsers (nor PIL through them), and with stderr not a terminal, where the
    progress bars would stay silent, not tqdm either -- nor SciPy, scikit-learn, YAML or matplotlib."""
    import subprocess
    import sys

    sysu = write_npz(tmp_path / "s.npz", sysu_rows(0))
    script = (
        "import sys\n"
        "from vireid.cli import main\n"
        f"assert main(['evaluate', {str(sysu)!r}, '--protocol', 'sysu', '--json', {str(tmp_path / 's.json')!r}]) == 0\n"
        "heavy = ('torch', 'tqdm', 'PIL', 'scipy', 'sklearn', 'yaml', 'matplotlib', 'vireid.data.datasets')\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "LOADED []"
    assert json.loads((tmp_path / "s.json").read_text())["trials"] == 10


def test_evaluation_does_not_import_torch(tmp_path):
    """Issue 11 item 8: the features-file path is NumPy/SciPy. In a fresh interpreter, importing vireid.evaluation
    and running the evaluate command (protocols, metrics, CPU re-ranking, both directions) leaves torch unloaded."""
    import subprocess
    import sys

    sysu = write_npz(tmp_path / "s.npz", sysu_rows(0))
    regdb = write_npz(tmp_path / "r.npz", regdb_rows(0))
    script = (
        "import sys\n"
        "import vireid, vireid.cli, vireid.evaluation\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "from vireid.cli import main\n"
        f"assert main(['evaluate', {str(sysu)!r}, '--protocol', 'sysu', '--json', {str(tmp_path / 's.json')!r}]) == 0\n"
        f"assert main(['evaluate', {str(regdb)!r}, '--protocol', 'regdb', '--rerank', '--cmc', 'identity',\n"
        "             '--direction', 'both']) == 0\n"
        "assert 'torch' not in sys.modules, 'evaluate'\n"
        "print('no torch')\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("no torch")
