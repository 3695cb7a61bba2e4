"""``vireid evaluate FEATURES.npz --protocol P``: protocol-exact metrics of any model's features file."""

from __future__ import annotations

import argparse
import textwrap

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
      sysu-mm02      SYSU-MM02 one split; --direction v2i|i2v
      llcm           LLCM: all query-modality images vs one random image per (id, camera); --direction v2i|i2v

    examples:
      vireid evaluate feats.npz --protocol sysu --mode indoor --json out/sysu_indoor.json --plot
      vireid evaluate regdb_t*.npz --protocol regdb --direction i2v --json out/regdb_i2v.json
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
    parser.add_argument("--direction", choices=("v2i", "i2v"), default=None,
                        help="v2i = visible queries vs infrared gallery, i2v = the reverse (default: v2i; "
                             "sysu/sysu-official are always i2v)")
    parser.add_argument("--dataset-root", default=None, metavar="DIR",
                        help="dataset folder; needed by sysu-official (exp/rand_perm_cam.mat); for sysu/llcm it "
                             "also restricts to the listed test ids and checks the file holds every test image")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--plot", action="store_true", help="also write the CMC curve as OUT.png next to --json")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--memory-mb", type=float, default=512.0, metavar="MB",
                        help="working-memory budget of the metric computation (default: 512)")


def _options(args: argparse.Namespace) -> dict[str, object]:
    """Resolve defaults per protocol and refuse options that do not apply (instead of ignoring them)."""
    from vireid.errors import FeaturesError

    p = args.protocol
    n_files = len(args.features)
    if n_files > 1 and p != "regdb":
        raise FeaturesError(f"{n_files} features files given; only --protocol regdb takes several (one per trial)")
    sysu = p in ("sysu", "sysu-official")
    if not sysu and args.mode is not None:
        raise FeaturesError(f"--mode applies to SYSU-MM01 only (sysu, sysu-official), not to {p}")
    if sysu and args.direction == "v2i":
        raise FeaturesError(f"{p} is always IR queries vs RGB gallery (i2v); drop --direction v2i")
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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from vireid.errors import FeaturesError
    from vireid.evaluation.features import load_features
    from vireid.evaluation.protocols import build_protocol, evaluate_protocol
    from vireid.evaluation.report import format_table, plot_cmc, summarize_trials, write_json

    opts = _options(args)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise FeaturesError(f"--device {args.device}: not usable here ({str(exc).splitlines()[0]})") from None

    per_trial = []
    plan = None
    for path in args.features:
        fs = load_features(path)
        plan = build_protocol(args.protocol, fs, mode=opts["mode"] or "all", shots=int(opts["shots"] or 1),
                              trials=None if args.protocol == "regdb" else int(opts["trials"]),
                              direction=str(opts["direction"]), dataset_root=args.dataset_root)
        result = evaluate_protocol(fs.features, plan, rerank=args.rerank, device=device,
                                   memory_budget_mb=args.memory_mb, progress=len(plan.trials) > 1)
        per_trial.extend(result.per_trial)
    assert plan is not None
    indices = list(range(1, len(per_trial) + 1)) if args.protocol == "regdb" else None
    summary = summarize_trials(plan, per_trial, rerank=args.rerank, trial_indices=indices)
    print(format_table(summary))
    if args.json is not None:
        out = write_json(args.json, summary)
        print(f"wrote {out}")
        if args.plot:
            png = plot_cmc(Path(args.json).with_suffix(".png"), summary)
            print(f"wrote {png}")
    return 0
