"""``vireid report RUN_DIR``: one self-contained HTML page of a run (metrics, CMC, trials, ranked lists, curves)."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "Write a self-contained HTML report of a run folder or of the demo's folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="output folder of `vireid train` (results.json, log.jsonl, test_features.npz, best.pt) "
                             "or the demo's folder (vireid-demo/)")
    parser.add_argument("--out", metavar="FILE.html", default=None,
                        help="where to write the page (default: RUN_DIR/report.html; demo: vireid-demo/report/)")
    parser.add_argument("--queries", type=int, default=4, metavar="N",
                        help="how many worst and best queries to draw (default: 4 each)")
    parser.add_argument("--top", type=int, default=8, metavar="K", help="gallery matches per query (default: 8)")


def run(args: argparse.Namespace) -> int:
    from vireid.inference.report_html import build_report

    out = build_report(args.run_dir, args.out, queries=args.queries, top=args.top)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, self-contained: open it in any browser)")
    return 0
