"""``vireid export CHECKPOINT --format onnx``: ONNX feature extractor(s), verified against PyTorch."""

from __future__ import annotations

import argparse
import textwrap

from vireid.cli._checkpoint import add_checkpoint_source_options

NAME = "export"
HELP = "Export a checkpoint's feature extractor to ONNX (verified with onnxruntime)."

EPILOG = textwrap.dedent("""\
    graphs:
      per-modality     visible.onnx + infrared.onnx: images float32 [B,3,H,W] -> features float32 [B,D]
      modality-input   model.onnx: (images [B,3,H,W], modality int64 [B], 0 visible / 1 infrared) -> features
    images are RGB, (pixel/255 - ImageNet mean) / ImageNet std, at the checkpoint's data.height x data.width;
    features are L2-normalised (compare with Euclidean distance or cosine similarity). export.json next to the
    files records all of this and the measured ONNX-vs-PyTorch difference (must be <= 1e-4).

    examples:
      vireid export runs/agw_sysu/best.pt --format onnx --out deploy/ --batch dynamic
      vireid export runs/agw_sysu/best.pt --graph modality-input --out deploy/agw.onnx --flip
      vireid export sysu_agw_best.t --checkpoint-format agw --size 288 144 --out deploy/
    needs onnx and onnxruntime: pip install -e ".[export]"
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", help="a vireid checkpoint (best.pt / last.pt of a run), or see "
                                           "--checkpoint-format")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    parser.add_argument("--out", metavar="FILE|DIR", default=None,
                        help="per-modality: folder (or NAME.onnx -> NAME_visible.onnx, NAME_infrared.onnx); "
                             "modality-input: FILE.onnx or a folder (default: CHECKPOINT_FOLDER/onnx)")
    parser.add_argument("--graph", choices=("per-modality", "modality-input"), default="per-modality",
                        help="one graph per modality, or one graph with a modality input (default: per-modality)")
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default: 17)")
    parser.add_argument("--batch", default="1", metavar="dynamic|N",
                        help="batch axis: 'dynamic' or a fixed size (default: 1)")
    parser.add_argument("--feature", choices=("bn", "pooled"), default=None,
                        help="bn = after the BNNeck (reported), pooled = before it "
                             "(default: the config's eval.feature)")
    parser.add_argument("--flip", action="store_true",
                        help="average the features of the image and its mirror image inside the graph")
    add_checkpoint_source_options(parser)


def run(args: argparse.Namespace) -> int:
    from vireid.inference.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, graph=args.graph, opset=args.opset, batch=args.batch,
                               feature=args.feature, flip=args.flip, checkpoint_format=args.checkpoint_format,
                               size=tuple(args.size) if args.size else None, arch=args.arch)
    for path in result.files:
        diff = result.max_abs_diff.get(path.rsplit("/", 1)[-1], float("nan"))
        print(f"wrote {path}  (onnxruntime vs PyTorch on random images: max abs difference {diff:.2e})")
    print(f"wrote {result.metadata}  (inputs {result.height}x{result.width}, {result.feature_dim}-d "
          f"L2-normalised '{result.feature}' features, batch {result.batch}, opset {result.opset})")
    return 0
