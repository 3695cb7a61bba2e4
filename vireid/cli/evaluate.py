"""``vireid evaluate FEATURES.npz --protocol P``: protocol-exact metrics of any model's features file."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import replace
from typing import Any

NAME = "evaluate"
HELP = "Evaluate a features file (.npz) with a published protocol (Rank-k, mAP, mINP, JSON)."

EPILOG = textwrap.dedent("""\
    features file (.npz; extra keys ignored, rows in any order):
      features    float32 [N, D]   one embedding per test image (L2-normalised here, Euclidean distance)
      pids        int64 [N]        identity as the dataset names it (SYSU-MM01: 4-digit folder number;
                                   RegDB / SYSU-MM02: the label in the list file; LLCM: the PPPP folder)
      camids      int64 [N]        camera as the dataset names it (SYSU-MM01 1..6; RegDB 1 visible, 2 thermal;
                                   SYSU-MM02 the cam column of its list files; LLCM K of camK)
      modalities  int64 [N]        0 visible, 1 infrared
      paths       str [N]          path relative to the dataset root, as in the layout or list files
    The file must hold the whole test pool: the sysu and llcm galleries are drawn from the sorted file list of
    every folder, the sysu-official galleries index into it.

    protocols:
      sysu           SYSU-MM01 AGW-style: IR queries vs one random RGB image per (id, camera), random.seed(t),
                     trials 0..N-1; --mode all|indoor; single-shot only
      sysu-official  SYSU-MM01 galleries from exp/rand_perm_cam.mat (needs --dataset-root); --shots 1|10
      regdb          RegDB: give one .npz per trial (e.g. trial1.npz ... trial10.npz): per-trial rows + mean
      sysu-mm02      SYSU-MM02 one split; --direction v2i|i2v|both
      llcm           LLCM: all query-modality images vs one random image per (id, camera); --direction v2i|i2v|both

    CMC: each protocol's published flavour by default (--cmc auto): identity-level for sysu, sysu-official,
    sysu-mm02 and llcm, standard for regdb. --cmc identity|standard overrides it; AML's code (wuancong/CMAM,
    get_unique) counts RegDB and SYSU-MM02 at identity level: --cmc identity --direction both.

    re-ranking: --rerank applies k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) in the float16 arithmetic of
    the published reference (reid-strong-baseline re_ranking), which published "+re-ranking" numbers carry;
    --rerank-precision float32 keeps V and the Jaccard distance in float32 instead.

    The evaluation runs on the CPU with NumPy (torch is not loaded); --device cuda computes distances on a GPU.

    examples:
      vireid evaluate feats.npz --protocol sysu --mode indoor --json out/sysu_indoor.json --plot
      vireid evaluate regdb_t*.npz --protocol regdb --direction i2v --json out/regdb_i2v.json
      vireid evaluate regdb_t*.npz --protocol regdb --cmc identity --direction both --json out/regdb_aml.json
      vireid evaluate regdb_t1.npz --protocol regdb --rerank --rerank-precision float32
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("features", nargs="+", metavar="FEATURES.npz",
                        help="features file; for --protocol regdb one file per trial")
    parser.add_argument("--protocol", required=True,
                        choices=("sysu", "sysu-official", "regdb", "sysu-mm02", "llcm"), help="evaluation protocol")
    parser.add_argument("--mode", choices=("all", "indoor"), default=None,
                        help="SYSU-MM01 search mode (default: all)")
    parser.add_argument("--shots", type=int, choices=(1, 10), default=None,
                        help="sysu-official: gallery images per (id, camera) (default: 1)")
    parser.add_argument("--trials", type=int, default=None, metavar="N",
                        help="trials/runs to average (default: 10; regdb: the number of files; sysu-mm02: 1)")
    parser.add_argument("--direction", choices=("v2i", "i2v", "both"), default=None,
                        help="v2i = visible queries vs infrared gallery, i2v = the reverse, both = each in one run, "
                             "reported per direction (default: v2i; sysu/sysu-official are always i2v)")
    parser.add_argument("--cmc", choices=("auto", "standard", "identity"), default="auto",
                        help="CMC flavour: auto = the protocol's published one (default), or override it")
    parser.add_argument("--dataset-root", default=None, metavar="DIR",
                        help="dataset folder; needed by sysu-official (exp/rand_perm_cam.mat); for sysu/llcm it "
                             "also restricts to the listed test ids and checks the file holds every test image")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    parser.add_argument("--rerank-precision", choices=("float16", "float32"), default=None,
                        help="arithmetic of --rerank: float16 = the published reference's (default), float32")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--plot", action="store_true", help="also write the CMC curve as OUT.png next to --json")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default: NumPy, no torch), cuda, cuda:1, ... or auto (cuda when available)")
    parser.add_argument("--memory-mb", type=float, default=512.0, metavar="MB",
                        help="working-memory budget of the metric computation (default: 512)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve defaults per protocol and refuse options that do not apply (instead of ignoring them)."""
    from vireid.errors import FeaturesError

    p = args.protocol
    n_files = len(args.features)
    if n_files > 1 and p != "regdb":
        raise FeaturesError(f"{n_files} features files given; only --protocol regdb takes several (one per trial)")
    sysu = p in ("sysu", "sysu-official")
    if not sysu and args.mode is not None:
        raise FeaturesError(f"--mode applies to SYSU-MM01 only (sysu, sysu-official), not to {p}")
    if sysu and args.direction in ("v2i", "both"):
        raise FeaturesError(f"{p} is always IR queries vs RGB gallery (i2v); drop --direction {args.direction}")
    if args.rerank_precision is not None and not args.rerank:
        raise FeaturesError("--rerank-precision applies to re-ranking: give --rerank too")
    if p != "sysu-official" and args.shots not in (None, 1):
        hint = "; multi-shot exists only in --protocol sysu-official" if p == "sysu" else ""
        raise FeaturesError(f"--shots {args.shots} does not apply to {p}{hint}")
    trials = args.trials
    if trials is not None and trials < 1:
        raise FeaturesError(f"--trials must be at least 1, got {trials}")
    if p == "regdb":
        if trials is not None and trials != n_files:
            raise FeaturesError(f"--trials {trials} but {n_files} RegDB features file(s) given; RegDB takes one "
                                "file per trial")
        trials = n_files
    elif p == "sysu-mm02":
        if trials not in (None, 1):
            raise FeaturesError("sysu-mm02 has one fixed split; --trials does not apply")
        trials = 1
    elif trials is None:
        trials = 10
    if args.plot and args.json is None:
        raise FeaturesError("--plot writes the CMC curve next to the JSON: give --json OUT.json too")
    return {
        "mode": (args.mode or "all") if sysu else None,
        "shots": (args.shots or 1) if p == "sysu-official" else (1 if p == "sysu" else None),
        "direction": "i2v" if sysu else (args.direction or "v2i"),
        "trials": trials,
    }


_PROTOCOL_DATASET = {"sysu": "sysu_mm01", "sysu-official": "sysu_mm01", "regdb": "regdb", "sysu-mm02": "sysu_mm02",
                     "llcm": "llcm"}


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse a non-positive --memory-mb, a --dataset-root that is missing or holds another dataset, and a --json
    path that cannot be written -- before any features file is read."""
    from vireid.errors import FeaturesError
    from vireid.outputs import check_writable_file

    if not args.memory_mb > 0:
        raise FeaturesError(f"--memory-mb {args.memory_mb:g}: must be a positive number of megabytes")
    if args.dataset_root is not None:
        from vireid.data.datasets.common import check_dataset_root  # the dataset parsers: only when a root is given

        check_dataset_root(args.dataset_root, _PROTOCOL_DATASET[args.protocol])
    if args.json is not None:
        check_writable_file(args.json, "--json file")


def _device(name: str) -> str:
    """The compute device: "cpu" stays NumPy (torch is not imported); anything else is checked with torch."""
    from vireid.errors import FeaturesError

    if name == "cpu":
        return name
    try:
        import torch
    except ImportError:
        raise FeaturesError(f"--device {name} needs PyTorch, which is not installed; use --device cpu") from None
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise FeaturesError(f"--device {name}: not usable here ({str(exc).splitlines()[0]})") from None
    return device


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vireid.evaluation.features import load_features
    from vireid.evaluation.protocols import build_protocol, evaluate_protocol
    from vireid.evaluation.report import (
        format_table,
        plot_cmc,
        summarize_trials,
        write_json,
    )

    opts = _options(args)
    _check_inputs(args)  # issue 12: memory budget, --dataset-root, writable --json, before any work
    device = _device(args.device)
    precision = args.rerank_precision or "float16"

    per_trial = []
    plan = None
    for number, path in enumerate(args.features, start=1):
        fs = load_features(path)
        file_plan = build_protocol(args.protocol, fs, mode=opts["mode"] or "all", shots=int(opts["shots"] or 1),
                                   trials=None if args.protocol == "regdb" else int(opts["trials"]),
                                   direction=str(opts["direction"]), dataset_root=args.dataset_root, cmc=args.cmc)
        result = evaluate_protocol(fs.features, file_plan, rerank=args.rerank, rerank_precision=precision,
                                   device=None if device == "cpu" else device, memory_budget_mb=args.memory_mb,
                                   progress=len(file_plan.trials) > 1)
        if args.protocol == "regdb":  # one trial (per direction) per file: number the trials 1..n by file
            file_plan = replace(file_plan, trials=[replace(t, index=number) for t in file_plan.trials])
        plan = file_plan if plan is None else replace(plan, trials=plan.trials + file_plan.trials)
        per_trial.extend(result.per_trial)
    assert plan is not None
    summary = summarize_trials(plan, per_trial, rerank=args.rerank, rerank_precision=precision)
    print(format_table(summary))
    if args.json is not None:
        out = write_json(args.json, summary)
        print(f"wrote {out}")
        if args.plot:
            png = plot_cmc(Path(args.json).with_suffix(".png"), summary)
            print(f"wrote {png}")
    return 0
