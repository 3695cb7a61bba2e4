"""``vireid test CHECKPOINT``: extract test features with a trained model (features file) and evaluate them."""

from __future__ import annotations

import argparse

NAME = "test"
HELP = "Test a checkpoint: write the test features file and evaluate it with the protocol."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a vireid checkpoint (best.pt or last.pt of a run)")
    parser.add_argument("--protocol", choices=["sysu", "sysu-official", "regdb", "sysu-mm02", "llcm"],
                        help="default: the dataset's standard protocol")
    parser.add_argument("--mode", choices=["all", "indoor"])
    parser.add_argument("--direction", choices=["v2i", "i2v"])
    parser.add_argument("--trials", type=int)
    parser.add_argument("--trial", type=int, help="RegDB trial under test (default: the checkpoint's)")
    parser.add_argument("--allow-trial-mismatch", action="store_true",
                        help="only warn when the RegDB trial under test differs from the training trial")
    parser.add_argument("--dataset-root", help="dataset folder (default: the one the model was trained on)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip-averaged features (default: the recipe's eval.flip)")
    parser.add_argument("--out", help="folder for test_features.npz, test_results.json, cmc.png "
                                      "(default: the checkpoint's folder)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vireid.engine.lock import lock_run_folder
    from vireid.outputs import check_writable_dir
    from vireid.testing import test_checkpoint

    check_test_options(args)
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent
    # before any work: the output folder must be writable, and not a folder a training run is writing into
    # (a missing checkpoint is reported by test_checkpoint, without creating its folder first)
    lock = lock_run_folder(out, "--out folder") if Path(args.checkpoint).is_file() else None
    if lock is None:
        check_writable_dir(out, "--out folder")
    root = args.dataset_root if args.dataset_root is not None else stored_dataset_root(args.checkpoint)
    try:
        test_checkpoint(args.checkpoint, out_dir=args.out, protocol=args.protocol, mode=args.mode,
                        direction=args.direction, trials=args.trials, dataset_root=root,
                        trial=args.trial, allow_trial_mismatch=args.allow_trial_mismatch, flip=args.flip)
    finally:
        if lock is not None:
            lock.release()
    return 0


def stored_dataset_root(checkpoint: str) -> str | None:
    """The absolute dataset root a checkpoint stored (meta.dataset_root), when its config's ``data.root`` is a
    relative path that does not resolve from this working directory; else None (the config's root is used)."""
    from pathlib import Path

    import torch
    import yaml

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        meta = ckpt.get("meta") or {}
        data = (yaml.safe_load(meta.get("config_yaml") or "") or {}).get("data") or {}
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by test_checkpoint itself
        return None
    configured = Path(str(data.get("root") or "")).expanduser()
    stored = meta.get("dataset_root")
    if configured.is_dir() or not isinstance(stored, str) or not Path(stored).is_dir():
        return None
    return stored


def check_test_options(args: argparse.Namespace) -> None:
    """Refuse option values that cannot be right, before the checkpoint is loaded."""
    from vireid.errors import ConfigError

    if args.trial is not None and not 1 <= args.trial <= 10:
        raise ConfigError(f"--trial {args.trial}: RegDB trials are 1..10")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: must be at least 1")
