"""The command line of `python -m service import`: flags -> ImportOptions; a refusal prints why and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.inference.card import INTERPOLATIONS, PHOTO_METHODS

EXAMPLES = """examples:
  python -m service import resnet18.onnx --name resnet18 --labels imagenet.txt --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
  python -m service import model.onnx --name vit --labels labels.txt --config preprocessor_config.json
  python -m service import model.onnx --name convnext --labels labels.txt --config config.json --output-kind logits
  python -m service import model.onnx --name pets --labels labels.txt --config config.json --calibration-data pictures/
"""


def _numbers(count: int | None, what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
        if count is not None and len(values) != count or not values:
            raise argparse.ArgumentTypeError(f"{what} needs {count or 'one or more'} comma-separated numbers, got {text!r}")
        return values

    return parse


def _size(text: str) -> list[int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW or one number for a square, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--size must be HxW or one number for a square, got {text!r}")
    return values


def _crop_pct(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--crop-pct must be in (0, 1], got {text}")
    return value


def parser(prog: str = "python -m service import") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Publish an ONNX image classifier as the next version of a model in the repository. Preprocessing comes "
        "from --config (a Hugging Face preprocessor_config.json or a timm config.json) and/or the flags below; a flag "
        "overrides the config.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX file")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--labels", required=True, type=Path, help="labels, one a line in output order (or a JSON list / id2label)")
    p.add_argument("--config", type=Path, help="preprocessor_config.json (Hugging Face) or config.json / pretrained_cfg (timm)")
    p.add_argument("--model-repository", type=Path, help="the repository (default: $PIXELSERVE_MODEL_REPOSITORY or the shipped one)")
    p.add_argument("--task", default="image-classification", help="what the model classifies (groups the web page's list)")
    p.add_argument("--output-kind", choices=["logits", "probabilities"], help="what the output holds (default: read from the graph)")
    p.add_argument("--calibration-data", type=Path, metavar="FOLDER",
                   help="labelled pictures, one sub-folder per label (optionally inside train/, val/, test/): fit a "
                   "temperature and a typicality score with its out-of-distribution threshold, as for the shipped models")
    g = p.add_argument_group("preprocessing (each overrides the config)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: told by the graph)")
    g.add_argument("--channels", type=int, choices=[1, 3])
    g.add_argument("--color-order", choices=["RGB", "BGR", "L"])
    g.add_argument("--size", type=_size, help="HxW pictures are made at (default: the graph's)")
    g.add_argument("--method", choices=PHOTO_METHODS, help="resize-crop (default), resize or letterbox")
    g.add_argument("--resize-shorter", type=int, help="resize-crop: the shorter side before the centre crop")
    g.add_argument("--crop-pct", type=_crop_pct, help="resize-crop: the crop's share of the shorter side (default 0.875)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="Pillow filter (default bilinear)")
    g.add_argument("--range", type=_numbers(2, "--range"), help="lo,hi: 8-bit pixels 0..255 map onto [lo, hi] (default 0,1; write --range=-1,1 for a negative low)")
    g.add_argument("--mean", type=_numbers(None, "--mean"), help="per-channel mean subtracted after the range (default none)")
    g.add_argument("--std", type=_numbers(None, "--std"), help="per-channel std divided by after the mean")
    g.add_argument("--transparency", choices=["drop", "white"],
                   help="a transparent pixel: drop the alpha, keeping the colour under it (default; as Pillow's convert, "
                        "torchvision, timm and Hugging Face do) or composite it on white")
    g.add_argument("--pad-color", type=_numbers(None, "--pad-color"), help="letterbox: 0..255 per channel (default 114)")
    return p


def main(argv: list[str], prog: str = "python -m service import") -> int:
    args = parser(prog).parse_args(argv)
    from service.config import Settings
    from service.model_import import ImportOptions, ImportRefused, import_model

    settings = Settings()

    flags = {
        "layout": args.layout, "channels": args.channels, "color_order": args.color_order, "size": args.size,
        "method": args.method, "resize_shorter": args.resize_shorter, "crop_pct": args.crop_pct,
        "interpolation": args.interpolation, "range": args.range, "mean": args.mean, "std": args.std,
        "pad_color": [int(v) for v in args.pad_color] if args.pad_color else None, "transparency": args.transparency,
    }
    options = ImportOptions(
        model=args.model, name=args.name, labels=args.labels, config=args.config,
        repository=args.model_repository or settings.model_repository, task=args.task,
        output_kind=args.output_kind, flags=flags, calibration_data=args.calibration_data,
        max_image_pixels=settings.max_image_pixels,
    )
    try:
        version_dir = import_model(options)
    except ImportRefused as refusal:
        print(f"{prog}: refused: {refusal}", file=sys.stderr)
        return 2
    print(f"published {args.name} version {version_dir.name} at {version_dir}")
    if args.calibration_data is not None:
        print(calibration_summary(json.loads((version_dir / "model.json").read_text(encoding="utf-8"))))
    return 0


def calibration_summary(card: dict) -> str:
    """What the calibration fitted, in a few lines."""
    calibration, typicality = card["calibration"], card["typicality"]
    per_label = ", ".join(f"{label} {count}" for label, count in calibration["pictures_per_label"].items())
    return (
        f"calibrated: temperature {calibration['temperature']:.4g}; expected calibration error "
        f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on {calibration['measured_on']}\n"
        f"typicality ({typicality['method']}): threshold {typicality['threshold']:.4g}, flags "
        f"{typicality['flagged_share']:.1%} of the test pictures\n"
        f"pictures per label: {per_label}"
    )
