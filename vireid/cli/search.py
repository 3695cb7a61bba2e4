"""``vireid search CHECKPOINT --probe IMG... --gallery DIR|FEATURES.npz``: rank a gallery for each probe image."""

from __future__ import annotations

import argparse
import textwrap

from vireid.cli._checkpoint import add_checkpoint_options

NAME = "search"
HELP = "Search an RGB gallery with IR probe images (by default): ranked table, JSON, picture."

EPILOG = textwrap.dedent("""\
    The probes are embedded as --probe-modality (default ir); a gallery DIR or list file is embedded as
    --gallery-modality (default rgb); a gallery FEATURES.npz (from vireid extract with the same checkpoint) is
    loaded and must have the model's feature dimension. Ranking: Euclidean distance between L2-normalised
    features, ties broken by gallery row (the file's rows are sorted by path).

    index: exact (faiss IndexFlatIP, re-scored in float64; torch when faiss is missing: same results) or ivf
    (faiss IndexIVFFlat, approximate: scans --nprobe of --nlist clusters; for galleries of millions).

    writes OUT/results.json (every probe with its top-K: path, distance, pid/camid when known) and
    OUT/ranked.png (probe + top-K with distances; green/red frames when the identities are known).

    examples:
      vireid search runs/agw/best.pt --probe ir_frames/0001.jpg --gallery gallery.npz --top 10
      vireid search runs/agw/best.pt --probe a.jpg b.jpg --probe-modality auto --gallery rgb_crops/ --out hits
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", help="a vireid checkpoint (best.pt or last.pt of a run)")
    parser.add_argument("--probe", required=True, nargs="+", metavar="IMG", help="probe image file(s)")
    parser.add_argument("--gallery", required=True, metavar="DIR|LIST|FEATURES.npz",
                        help="gallery folder, list file, or features file of the same model")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="matches per probe (default: 10)")
    parser.add_argument("--out", default="search_results", metavar="DIR",
                        help="folder for results.json and ranked.png (default: search_results)")
    parser.add_argument("--probe-modality", default="ir", metavar="ir|rgb|auto", help="default: ir")
    parser.add_argument("--gallery-modality", default="rgb", metavar="rgb|ir|auto",
                        help="for a gallery DIR or list (default: rgb)")
    parser.add_argument("--gallery-root", default=None, metavar="DIR",
                        help="folder the gallery paths are relative to (features file: default the root stored by "
                             "vireid extract, else the file's folder)")
    parser.add_argument("--ir-threshold", type=float, default=None, metavar="SPREAD",
                        help="auto modality: mean channel spread below which an image is infrared (default: 4.0)")
    parser.add_argument("--index", default="exact", metavar="exact|ivf", help="default: exact")
    parser.add_argument("--nprobe", type=int, default=8, metavar="N", help="ivf: clusters scanned (default: 8)")
    parser.add_argument("--nlist", type=int, default=None, metavar="N",
                        help="ivf: clusters built (default: sqrt(gallery size), at most size/39)")
    parser.add_argument("--picture-probes", type=int, default=16, metavar="N",
                        help="probes drawn in ranked.png (default: 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's eval.batch_size")
    add_checkpoint_options(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import sys

    from vireid.cli._checkpoint import check_positive, checkpoint_options
    from vireid.errors import ConfigError
    from vireid.inference.embed import Embedder
    from vireid.inference.gallery import load_gallery
    from vireid.inference.images import (
        DEFAULT_IR_THRESHOLD,
        image_files,
        parse_modality,
    )
    from vireid.inference.search import search
    from vireid.inference.search_report import (
        draw_search_grid,
        format_search_table,
        search_report,
        write_search_json,
    )
    from vireid.outputs import check_writable_dir

    probe_mod = parse_modality(args.probe_modality, "--probe-modality")
    gallery_mod = parse_modality(args.gallery_modality, "--gallery-modality")
    if args.index not in ("exact", "ivf"):
        raise ConfigError(f"--index {args.index!r}: unknown index; use exact or ivf")
    if args.top < 1:
        raise ConfigError(f"--top {args.top}: must be at least 1")
    if args.ir_threshold is not None and "auto" not in (probe_mod, gallery_mod):
        raise ConfigError("--ir-threshold applies to --probe-modality auto or --gallery-modality auto only")
    threshold = DEFAULT_IR_THRESHOLD if args.ir_threshold is None else args.ir_threshold
    check_positive(args, "batch_size", "picture_probes")
    out = check_writable_dir(args.out, "--out folder")  # before the model is loaded and the gallery embedded
    probes = image_files(args.probe)
    embedder = Embedder.load(args.checkpoint, device=args.device, batch_size=args.batch_size,
                               **checkpoint_options(args))
    emb = embedder.embed(probes, probe_mod, ir_threshold=threshold)  # first: a bad probe fails before the gallery
    gallery = load_gallery(args.gallery, embedder, modality=gallery_mod, root=args.gallery_root,
                           ir_threshold=threshold)
    result = search(emb.features, gallery.features, args.top, index=args.index, nprobe=args.nprobe,
                    nlist=args.nlist, device=str(embedder.device))
    if args.index == "ivf" and result.backend != "faiss-ivf":
        print("note: faiss is not installed; --index ivf fell back to the exact torch search", file=sys.stderr)
    report = search_report(probes, emb.modalities, emb.auto_scores, gallery, result, embedder.describe())
    print(format_search_table(report))
    js = write_search_json(out / "results.json", report)
    print(f"wrote {js}")
    png, why = draw_search_grid(report, gallery, out / "ranked.png", max_probes=max(1, args.picture_probes))
    if png is not None:
        print(f"wrote {png}")
    else:
        print(f"vireid: warning: no picture: {why}", file=sys.stderr)
    return 0
