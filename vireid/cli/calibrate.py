"""``vireid calibrate FEATURES.npz --far 1e-3``: distance thresholds for target false-accept rates, ROC, EER."""

from __future__ import annotations

import argparse
import textwrap

NAME = "calibrate"
HELP = "Thresholds for target false-accept rates from a labelled features file (ROC, EER)."

EPILOG = textwrap.dedent("""\
    Pairs: every visible x infrared pair of the file (cross-modal only); same pid = genuine, else impostor.
    Distance: Euclidean between L2-normalised features (0..2). Rule: accept a pair when distance <= threshold.

    For a requested FAR f with n impostor pairs sorted by distance a_1 <= a_2 <= ..., k = floor(f * n): the
    threshold is the largest float64 below a_(k+1), so at most k impostors are accepted (achieved FAR <= f) and
    no larger threshold keeps that bound on this data. EER = min over thresholds of max(FAR, FRR).
    Works in chunks of visible rows within --memory-mb.

    writes OUT/calibration.json (counts, EER, thresholds, ROC, histograms) and OUT/calibration.png.

    example:
      vireid calibrate runs/agw/test_features.npz --far 1e-4 1e-3 1e-2 --out calib/
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("features", metavar="FEATURES.npz", help="labelled features file (pids known)")
    parser.add_argument("--far", type=float, nargs="+", default=None, metavar="F",
                        help="false-accept rates (default: 1e-4 1e-3 1e-2 1e-1)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the features file's)")
    parser.add_argument("--memory-mb", type=float, default=256.0, metavar="MB",
                        help="working-memory budget of the pair distances (default: 256)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vireid.errors import ConfigError
    from vireid.evaluation.features import load_features
    from vireid.inference.calibrate import (
        DEFAULT_FARS,
        calibrate,
        format_calibration,
        write_calibration,
    )
    from vireid.outputs import check_writable_dir

    if not args.memory_mb > 0:
        raise ConfigError(f"--memory-mb {args.memory_mb:g}: must be a positive number of megabytes")
    out = Path(args.out) if args.out is not None else Path(args.features).resolve().parent
    if args.out is not None or Path(args.features).is_file():  # a missing file is load_features' message
        check_writable_dir(out, "--out folder" if args.out is not None else "output folder (the features file's)")
    fs = load_features(args.features)
    cal = calibrate(fs.features, fs.pids, fs.modalities, args.far or DEFAULT_FARS, memory_mb=args.memory_mb,
                    source=str(args.features))
    print(format_calibration(cal))
    js, png = write_calibration(out, cal)
    print(f"wrote {js}")
    print(f"wrote {png}")
    return 0
