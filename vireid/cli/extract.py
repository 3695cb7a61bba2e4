"""``vireid extract CHECKPOINT --images DIR|LIST --out FEATURES.npz``: embed any images into a features file."""

from __future__ import annotations

import argparse
import textwrap

from vireid.cli._checkpoint import add_checkpoint_options

NAME = "extract"
HELP = "Embed a folder or list of images with a checkpoint into a features file (.npz)."

EPILOG = textwrap.dedent("""\
    images:
      DIR    every .jpg/.jpeg/.png/.bmp under it (recursive), sorted by path; paths relative to --root (default DIR)
      LIST   a text file, one image per line: "path", "path pid" or "path pid camid" (paths relative to --root,
             default the list's folder; '#' starts a comment line)

    identities (pids/camids columns): from the list when it has them; else read from a recognised layout
    (SYSU-MM01/LLCM .../camK/PPPP/name, RegDB .../Visible|Thermal/PPPP/name, Market-1501 PPPP_cC... names);
    else -1 (unknown).

    modality: rgb or ir feeds every image through that stem; auto decides per image: mean over pixels of
    max(R,G,B) - min(R,G,B) (0..255, on the resized image) below --ir-threshold means infrared (gray frames stored
    as 3 channels). The decision goes to the 'modalities' column, the score to 'modality_auto_score'.

    The checkpoint's input size, eval.flip and eval.feature are used. Rows are sorted by path.

    examples:
      vireid extract runs/agw/best.pt --images gallery/ --modality rgb --out gallery.npz
      vireid extract runs/agw/best.pt --images frames.txt --root /data/cams --modality auto --out frames.npz
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", help="a vireid checkpoint (best.pt or last.pt of a run)")
    parser.add_argument("--images", required=True, metavar="DIR|LIST", help="image folder or list file")
    parser.add_argument("--modality", required=True, metavar="rgb|ir|auto",
                        help="which stem the images go through; auto: decide per image")
    parser.add_argument("--out", required=True, metavar="FEATURES.npz", help="features file to write")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="folder the stored paths are relative to (default: DIR, or the list's folder)")
    parser.add_argument("--ir-threshold", type=float, default=None, metavar="SPREAD",
                        help="auto: mean channel spread below which an image is infrared (default: 4.0)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's eval.batch_size")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default: 2)")
    add_checkpoint_options(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vireid.cli._checkpoint import check_positive, checkpoint_options
    from vireid.errors import ConfigError
    from vireid.inference.embed import Embedder
    from vireid.inference.images import (
        DEFAULT_IR_THRESHOLD,
        collect_images,
        parse_modality,
    )
    from vireid.outputs import check_writable_file

    modality = parse_modality(args.modality)
    check_positive(args, "batch_size")
    check_writable_file(args.out, "--out file")  # before the model is loaded and every image embedded
    if args.ir_threshold is not None and modality != "auto":
        raise ConfigError(f"--ir-threshold applies to --modality auto only (got --modality {modality})")
    images = collect_images(args.images, args.root)
    embedder = Embedder.load(args.checkpoint, device=args.device, batch_size=args.batch_size, workers=args.workers,
                               **checkpoint_options(args))
    threshold = DEFAULT_IR_THRESHOLD if args.ir_threshold is None else args.ir_threshold
    result = embedder.embed(images, modality, ir_threshold=threshold)
    out = result.save(args.out)
    n_ir = int((result.modalities == 1).sum())
    known = int((images.pids >= 0).sum())
    print(f"{len(images)} images -> {out} ({embedder.feature_dim}-d, {embedder.height}x{embedder.width}, "
          f"flip {'on' if embedder.flip else 'off'}, feature {embedder.feature}, {embedder.device})")
    print(f"modalities: {len(images) - n_ir} rgb, {n_ir} ir" + (f" (auto, threshold {threshold:g})"
                                                              if modality == "auto" else ""))
    print(f"identities: {known} of {len(images)} rows labelled (from {images.labels}); "
          f"{len(np.unique(images.pids[images.pids >= 0]))} distinct pids; paths relative to {images.root}")
    return 0
