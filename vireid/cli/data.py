"""``vireid data check ROOT --dataset NAME``: parse a dataset layout, list every problem, say whether it is usable."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "data"
HELP = "Check a dataset layout: image counts and every problem found."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="parse ROOT, print counts and every problem; exit 1 when unusable",
                           description="Parse ROOT as --dataset in collect mode (every problem listed, none raised), "
                                       "decode every image unless --no-images, and print a summary. "
                                       "Exit status: 0 usable, 1 errors found, 2 bad arguments or missing root.")
    check.add_argument("root", metavar="ROOT", help="the dataset folder")
    check.add_argument("--dataset", required=True, metavar="NAME",
                       help="sysu_mm01, regdb, sysu_mm02, llcm, market1501 or market1501_gen")
    check.add_argument("--trial", type=int, default=None,
                       help="RegDB: check only this trial 1..10 (default: all ten trials' list files)")
    check.add_argument("--target", default="sysumm01", help="market1501_gen twins: sysumm01, sysumm02 or regdb")
    check.add_argument("--labels", default="pseudo", choices=("pseudo", "ground_truth"),
                       help="market1501_gen training labels (default pseudo)")
    check.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    check.add_argument("--no-images", dest="images", action="store_false",
                       help="skip decoding every image (faster; corrupt files go unnoticed)")


def run(args: argparse.Namespace) -> int:
    from vireid.data.datasets import dataset_name, load_dataset

    name = dataset_name(args.dataset)
    if name == "regdb" and args.trial is None:
        return _check_regdb_trials(args)
    dataset = load_dataset(name, args.root, trial=1 if args.trial is None else args.trial, target=args.target,
                           labels=args.labels, check_images=args.images, strict=False)
    errors = len(dataset.errors)
    if args.json:
        report = {
            "dataset": name,
            "root": str(dataset.root),
            "usable": errors == 0,
            "summary": dataset.summary(),
            "dropped": dataset.info.get("dropped", {}),
            "problems": [p.to_dict() for p in dataset.problems],
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_report(name, dataset))
    return 1 if errors else 0


def _check_regdb_trials(args: argparse.Namespace) -> int:
    """RegDB: every trial trains and tests on its own list files, so check all ten (each image decoded once)."""
    from vireid.data.datasets import common, load_dataset
    from vireid.data.datasets.regdb import TRIALS
    from vireid.data.records import Problem

    trials = {t: load_dataset("regdb", args.root, trial=t, check_images=False, strict=False) for t in TRIALS}
    problems: list[Problem] = []
    seen: set[tuple[Any, ...]] = set()
    for ds in trials.values():  # a problem of the folders shows up in every trial: list it once
        for p in ds.problems:
            key = (p.severity, p.message, p.file, p.line)
            if key not in seen:
                seen.add(key)
                problems.append(p)
    first = trials[TRIALS[0]]
    if args.images:
        log = common.ProblemLog()
        common.check_images(first.root, [s for ds in trials.values() for s in (*ds.train, *ds.test)], log)
        problems += log.problems
    errors = sum(p.severity == "error" for p in problems)
    if args.json:
        print(json.dumps({"dataset": "regdb", "root": str(first.root), "usable": errors == 0, "trials": list(TRIALS),
                          "summary": {str(t): ds.summary() for t, ds in trials.items()},
                          "problems": [p.to_dict() for p in problems]}, indent=2))
    else:
        lines = [f"regdb at {first.root} (trials {TRIALS[0]}..{TRIALS[-1]}: every trial's list files)", "",
                 (f"{'trial':<6} {'train':>7} {'ids':>6} {'rgb':>7} {'ir':>7}   {'test':>7} {'ids':>6} {'rgb':>7} "
                  f"{'ir':>7}")]
        for t, ds in trials.items():
            s = ds.summary()
            tr, te = s["train"], s["test"]
            lines.append(f"{t:<6} {tr['images']:>7} {tr['identities']:>6} {tr['modalities']['rgb']:>7} "
                         f"{tr['modalities']['ir']:>7}   {te['images']:>7} {te['identities']:>6} "
                         f"{te['modalities']['rgb']:>7} {te['modalities']['ir']:>7}")
        lines += _problem_lines(problems)
        print("\n".join(lines))
    return 1 if errors else 0


def _problem_lines(problems: list[Any]) -> list[str]:
    """The problems, then the verdict line."""
    lines = [""] + [f"{p.severity}: {p}" for p in problems] if problems else []
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    lines.append("")
    if errors:
        lines.append(f"NOT USABLE: {errors} error{'s' if errors != 1 else ''}, "
                     f"{warnings} warning{'s' if warnings != 1 else ''}; fix the errors above")
    else:
        lines.append(f"usable: 0 errors, {warnings} warning{'s' if warnings != 1 else ''}")
    return lines


def format_report(name: str, dataset: Any) -> str:
    """The human-readable report: counts table, cameras table, dropped images, problems, verdict."""
    summary = dataset.summary()
    lines = [f"{name} at {dataset.root}"]
    if "trial" in dataset.info:
        lines[0] += f" (trial {dataset.info['trial']})"
    header = f"{'split':<6} {'images':>7} {'ids':>6} {'labels':>6} {'rgb':>7} {'ir':>7}"
    lines += ["", header]
    for split, s in summary.items():
        lines.append(f"{split:<6} {s['images']:>7} {s['identities']:>6} {s['labels']:>6} "
                     f"{s['modalities']['rgb']:>7} {s['modalities']['ir']:>7}")
    cams = sorted({int(c) for s in summary.values() for c in s["cameras"]})
    if cams:
        lines += ["", f"{'split':<6} " + " ".join(f"{'cam' + str(c):>7}" for c in cams)]
        for split, s in summary.items():
            lines.append(f"{split:<6} " + " ".join(f"{s['cameras'].get(str(c), 0):>7}" for c in cams))
    for what, count in dataset.info.get("dropped", {}).items():
        lines.append(f"dropped: {count} {what}")
    lines += _problem_lines(list(dataset.problems))
    return "\n".join(lines)
