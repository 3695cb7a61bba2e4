"""vireid report: a self-contained HTML page of a run, checked statically and in a real headless Chromium.

The browser test loads the page (plus a tiny injected script that counts decoded images into document.title),
reads the DOM back with --dump-dom, checks the console stayed silent, takes a screenshot and checks that it is not
blank. It is skipped when /usr/bin/chromium is absent (CI installs it first, see .ci/run).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vireid.cli import main
from vireid.inference.report_html import (
    ReportError,
    _average_precision,
    build_report,
    locate_run,
    worst_and_best_queries,
)

CHROMIUM = Path("/usr/bin/chromium")
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
COUNT_IMAGES = ("<script>window.addEventListener('load', function () { var ok = 0, all = document.images;"
                " for (var i = 0; i < all.length; i++) { if (all[i].complete && all[i].naturalWidth > 0) ok++; }"
                " document.title = 'decoded ' + ok + ' of ' + all.length; });</script>")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The shared tiny trained run (built once per session; same folder as the other practitioner-tool tests)."""
    from _checkpoint import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp() / "practitioner_tiny")


@pytest.fixture(scope="module")
def page(tiny: Path, tmp_path_factory) -> Path:
    return build_report(tiny, tmp_path_factory.mktemp("report") / "report.html")


class _Collect(HTMLParser):
    """Tags with their attributes, and the text of every <td> with a data-metric attribute per table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: list[tuple[str | None, str, str]] = []  # (row, metric, text)
        self._row: str | None = None
        self._metric: str | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr":
            self._row = a.get("data-row") or a.get("data-group")
        if tag == "td" and "data-metric" in a:
            self._metric = a["data-metric"]

    def handle_endtag(self, tag):
        if tag == "td":
            self._metric = None

    def handle_data(self, data):
        if self._metric is not None and data.strip():
            self.cells.append((f"{self._table}:{self._row}", self._metric, data.strip()))


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def _results(tiny: Path) -> dict:
    return json.loads((tiny / "results.json").read_text())


# --------------------------------------------------------------------------------------------------------------------
# the page itself


def test_page_is_self_contained_and_shows_the_results(page: Path, tiny: Path) -> None:
    text = page.read_text(encoding="utf-8")
    parsed = _parse(text)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "<style>" in text
    for tag, attrs in parsed.tags:
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith("data:image/png;base64,"), (tag, attrs[name][:60])
    assert not re.search(r"url\(\s*['\"]?https?:", text)

    images = [a for t, a in parsed.tags if t == "img"]
    figures = sorted(a["data-figure"] for a in images)
    assert figures == ["cmc", "ranked-best", "ranked-worst", "spread", "training"]
    for a in images:  # every image is a real PNG
        img = Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 100

    results = _results(tiny)
    cells = {(row, metric): value for row, metric, value in parsed.cells}
    for key in METRIC_KEYS:
        assert cells[("metrics:trained", key)] == f"{results[key]:.2f}"
    for i, trial in enumerate(results["per_trial"]):
        assert [v for row, m, v in parsed.cells if row == "per-trial:None"][i * 6:(i + 1) * 6] == \
            [f"{trial[k]:.2f}" for k in METRIC_KEYS]
    assert f"<td>{results['num_query']}</td>" in text and f"<td>{results['num_gallery']}</td>" in text


def test_ranked_lists_reproduce_the_reported_first_trial_map(page: Path, tiny: Path) -> None:
    """The page recomputes distances and AP from test_features.npz with its own AP code; the first trial's mAP
    must equal the one the evaluation wrote."""
    text = page.read_text()
    recomputed = float(re.search(r'<span id="recomputed-map">([\d.]+)</span>', text).group(1))
    assert recomputed == pytest.approx(_results(tiny)["per_trial"][0]["mAP"], abs=0.006)
    groups = re.findall(r'<tr data-group="(worst|best)"><td>\w+</td><td><code>([^<]+)</code></td><td>([\d.]+)</td>',
                        text)
    assert [g for g, _, _ in groups] == ["worst"] * 4 + ["best"] * 4
    worst = [float(ap) for g, _, ap in groups if g == "worst"]
    best = [float(ap) for g, _, ap in groups if g == "best"]
    assert worst == sorted(worst) and best == sorted(best, reverse=True) and max(worst) <= min(best)
    assert all(path.startswith(("cam3/", "cam6/")) for _, path, _ in groups)  # IR queries (sysu protocol)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install -y chromium)")
def test_page_in_headless_chromium(page: Path, tiny: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", COUNT_IMAGES + "</body>"), encoding="utf-8")
    n_images = page.read_text().count("<img ")
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--virtual-time-budget=10000"]

    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile1'}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no JavaScript errors, no failed resource loads
    title = re.search(r"<title>([^<]*)</title>", dom.stdout).group(1)
    assert title == f"decoded {n_images} of {n_images}" and n_images == 5
    results = _results(tiny)
    for key in METRIC_KEYS:
        assert re.search(rf'data-metric="{key}" data-value="[\d.]+">{results[key]:.2f}</td>', dom.stdout), key

    shot = tmp_path / "page.png"
    snap = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,2400",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert snap.returncode == 0 and shot.is_file(), snap.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (2400, 1280, 3)
    assert pixels.std() > 20  # not blank
    header = pixels[:40, :, :].reshape(-1, 3).mean(axis=0)
    assert header[2] > header[0] + 30  # the dark-blue page header was painted
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 500  # figures, not flat colour
    shutil.copy(shot, page.parent / "screenshot.png")  # kept next to the page for a human look


# --------------------------------------------------------------------------------------------------------------------
# the demo's folder, missing pieces, bad inputs


def _copy_run(tiny: Path, dest: Path, *, checkpoint: bool = True) -> Path:
    dest.mkdir(parents=True)
    for name in ("results.json", "test_results.json", "log.jsonl", "test_features.npz", "cmc.png"):
        shutil.copy(tiny / name, dest / name)
    if checkpoint:
        shutil.copy(tiny / "best.pt", dest / "best.pt")
    return dest


def test_demo_folder_shows_trained_and_untrained(tiny: Path, tmp_path: Path, capsys) -> None:
    demo = tmp_path / "vireid-demo"
    _copy_run(tiny, demo / "run")
    trained = _results(tiny)
    untrained = {"rank1": 7.25, "rank5": 31.5, "rank10": 58.0, "rank20": 99.0, "mAP": 12.125, "mINP": 6.5,
                 "cmc": list(np.linspace(7.25, 99.0, 20)), "num_query": 39, "num_gallery": 15}
    brief = {k: trained[k] for k in (*METRIC_KEYS, "cmc", "num_query", "num_gallery")}
    (demo / "report").mkdir()
    (demo / "report" / "results.json").write_text(json.dumps(
        {"dataset": "synthetic sysu_mm01", "chance_rank1": 8.33, "untrained": untrained, "trained": brief}))
    assert main(["report", str(demo)]) == 0
    out = demo / "report" / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    cells = {(row, m): v for row, m, v in _parse(out.read_text()).cells}
    for key in METRIC_KEYS:
        assert cells[("metrics:untrained", key)] == f"{untrained[key]:.2f}"
        assert cells[("metrics:trained", key)] == f"{trained[key]:.2f}"
    run = locate_run(demo / "report")  # the report/ subfolder is understood too
    assert run.run_dir == demo / "run" and run.untrained == untrained


def test_unreachable_dataset_root_is_said_on_the_page(tiny: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny, tmp_path / "run")
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    ckpt["meta"]["config_yaml"] = ckpt["meta"]["config_yaml"].replace(
        f"root: {tiny.parent / 'SYSU-MM01'}", "root: /nonexistent/datasets/SYSU-MM01")
    assert "/nonexistent/datasets/SYSU-MM01" in ckpt["meta"]["config_yaml"]
    ckpt["meta"]["dataset_root"] = "/nonexistent/datasets/SYSU-MM01"  # the absolute root it stores (issue 12)
    torch.save(ckpt, run / "best.pt")
    results = json.loads((run / "results.json").read_text())
    results["checkpoint"] = str(run / "best.pt")
    (run / "results.json").write_text(json.dumps(results))
    text = build_report(run).read_text()
    assert "/nonexistent/datasets/SYSU-MM01" in text and "is not reachable from this machine" in text
    assert 'data-figure="ranked-' not in text
    assert text.count('<tr data-group="worst">') == 4  # the AP table still comes from the features


def test_run_with_results_only(tmp_path: Path, tiny: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    results = _results(tiny)
    results.pop("checkpoint")
    (run / "test_results.json").write_text(json.dumps(results))
    text = build_report(run).read_text()
    assert "No log.jsonl" in text and "No test_features.npz" in text and "no checkpoint" in text
    assert 'data-figure="cmc"' in text and 'data-figure="spread"' in text


def test_unreadable_log_lines_are_reported(tiny: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny, tmp_path / "run", checkpoint=False)
    lines = (run / "log.jsonl").read_text().splitlines()
    lines.insert(2, '{"kind": "train", "loss": ')
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    text = build_report(run).read_text()
    assert "log.jsonl:3: not JSON" in text and 'data-figure="training"' in text


def test_bad_folders_are_one_line_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"rank1": 1.0,\n "mAP": }\n')
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"accuracy": 0.9}))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    cases = [(tmp_path / "absent", "no such folder"), (afile, "is a file"),
             (empty, "no results.json or test_results.json"), (broken, "results.json:2: not valid JSON"),
             (other, "has no rank1/rank5/rank10/rank20/mAP/mINP")]
    for folder, needle in cases:
        with pytest.raises(ReportError) as exc:
            build_report(folder)
        assert needle in str(exc.value) and "\n" not in str(exc.value)
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err


# --------------------------------------------------------------------------------------------------------------------
# helpers against hand-computed values


def test_average_precision_and_query_choice() -> None:
    # matches at ranks 2 and 4: (1/2 + 2/4) / 2
    assert _average_precision(np.array([False, True, False, True])) == pytest.approx(0.5)
    assert _average_precision(np.array([True, True, False])) == pytest.approx(1.0)
    assert np.isnan(_average_precision(np.array([False, False])))
    ap = np.array([0.5, np.nan, 0.1, 0.9, 0.1, 0.7])
    worst, best = worst_and_best_queries(ap, 2)
    assert worst.tolist() == [2, 4] and best.tolist() == [3, 5]
    worst, best = worst_and_best_queries(np.array([0.3, 0.6, np.nan]), 4)  # never the same query twice
    assert worst.tolist() == [0] and best.tolist() == [1]


def test_aml_run_folder_final_untrained_phase_log_and_clustering_figure(tiny: Path, tmp_path: Path) -> None:
    """An AML output_dir: results.json holds untrained / stage1 / final summaries, the log is the final phase's, and
    the clustering diagnostics figure is embedded."""
    run = tmp_path / "aml"
    phase = _copy_run(tiny, run / "stage2_B")
    trained = _results(tiny)
    untrained = {**trained, "rank1": 3.5, "mAP": 4.25}
    final = {**trained, "checkpoint": str(phase / "best.pt")}
    (run / "results.json").write_text(json.dumps({"method": "aml", "untrained": untrained, "stage1": trained,
                                                  "final": final}))
    shutil.copy(tiny / "test_features.npz", run / "test_features.npz")
    shutil.copy(tiny / "cmc.png", run / "clustering.png")
    found = locate_run(run)
    assert found.results["rank1"] == trained["rank1"] and found.untrained["rank1"] == 3.5
    assert found.log_path == phase / "log.jsonl" and found.checkpoint_path == phase / "best.pt"
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text()
    cells = {(row, m): v for row, m, v in _parse(text).cells}
    assert (cells[("metrics:untrained", "rank1")] == "3.50"
            and cells[("metrics:trained", "mAP")] == f"{trained['mAP']:.2f}")
    assert "Re-clustering diagnostics" in text
    assert base64.b64encode((run / "clustering.png").read_bytes()).decode("ascii") in text
