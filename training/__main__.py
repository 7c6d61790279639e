"""Command line: `python -m training {train,evaluate,download} --help`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from training.data import DATASETS, DatasetNotFound, download_dataset, get_spec, resolve_data_dir
from training.download import DownloadError
from training.export import ExportRefused
from training.folders import FOLDER_PREFIX, NORMALIZATIONS, FolderDatasetError, FolderOptions, folder_path
from training.idx import IdxError
from training.models import ACTIVATIONS, ARCHITECTURES, DEFAULT_OPTIONS
from training import real_clothes
from training.photos import RESIZE_METHODS
from training.pipeline import ModelCheckFailed, PhotoAugmentation, evaluate_published, train_and_publish
from training.train import OPTIMIZERS, SCHEDULES, TrainConfig


def dataset_name(text: str) -> str:
    """A named dataset, or folder:PATH (a folder of your own pictures)."""
    if text in DATASETS or (text.startswith(FOLDER_PREFIX) and len(text) > len(FOLDER_PREFIX)):
        return text
    choices = ", ".join(repr(name) for name in sorted(DATASETS))
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {choices}), or folder:PATH for a folder of your own pictures "
        "with one sub-folder per class"
    )


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,128, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones that say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder holding the dataset's IDX files (default: fashion-mnist "
        f"{DATASETS['fashion-mnist'].default_dir}, mnist {DATASETS['mnist'].default_dir}; "
        "with --download: data/<dataset>/ in the project)",
    )
    group.add_argument(
        "--download", action="store_true",
        help="fetch missing files from the known mirrors first (sha256-checked, written atomically)",
    )
    group.add_argument(
        "--mirror", action="append", default=[], metavar="URL",
        help="extra base URL to try before the built-in mirrors (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train MNIST / Fashion-MNIST classifiers, or classifiers of a folder of your own pictures, and "
        "publish them as ONNX models with a model card.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,calibrate,download}")

    train = commands.add_parser(
        "train", help="train, export to ONNX, check parity, publish models/<name>/<next version>/",
        description="Train a classifier, export it to ONNX, check the export against PyTorch on the test "
        "images, and publish model.onnx, model.json (the card), report.json and plots as the next version.",
        formatter_class=HelpFormatter,
    )
    train.add_argument("--dataset", required=True, type=dataset_name, metavar="{fashion-mnist,mnist,folder:PATH}",
                       help="which dataset to learn: a named one, or folder:PATH, a folder of your own pictures with "
                       "one sub-folder per class (and train/ and test/ above them, if you have chosen a test split)")
    add_data_options(train)
    train.add_argument("--validation-fraction", type=float, default=0.1,
                       help="share of the training images held out to choose the best epoch")
    train.add_argument("--limit-train", type=int, default=None, metavar="N",
                       help="train on only the first N training images (quick trials)")

    folder_defaults, augment_defaults = FolderOptions(), PhotoAugmentation()
    pictures = train.add_argument_group("folders of pictures (--dataset folder:PATH)")
    pictures.add_argument("--image-size", type=int, default=folder_defaults.image_size,
                          help="the model's input is IMAGE_SIZE x IMAGE_SIZE pixels, e.g. 32, 64, 96")
    pictures.add_argument("--resize", default=folder_defaults.resize, choices=RESIZE_METHODS,
                          help="resize-crop: shorter side to --resize-shorter, then the centre square; "
                          "resize: squeeze the whole picture square")
    pictures.add_argument("--resize-shorter", type=int, default=None,
                          help="resize-crop's shorter side (default floor(image size / 0.875), e.g. 73 for 64)")
    pictures.add_argument("--normalize", default=folder_defaults.normalize, choices=NORMALIZATIONS,
                          help="the mean / std the card declares: the training pictures' own, or ImageNet's")
    pictures.add_argument("--test-fraction", type=float, default=folder_defaults.test_fraction,
                          help="share of each class held out for the test split when PATH has no train/ and test/")
    pictures.add_argument("--crop-scale", type=float, default=augment_defaults.min_scale,
                          help="augmentation: random resized crops cover at least this share of the picture "
                          "(1: no random crops)")
    pictures.add_argument("--color-jitter", type=float, default=augment_defaults.jitter,
                          help="augmentation: brightness, contrast and saturation vary by up to this factor (0: none)")

    model = train.add_argument_group("model")
    model.add_argument("--arch", default="convnet", choices=ARCHITECTURES,
                       help="softmax regression, MLP, LeCun 1989 convnet, LeNet-5, or the batch-norm convnet")
    model.add_argument("--hidden", type=int_list, default=None,
                       help="hidden layer sizes, e.g. 256,128 (mlp and lenet5, default 256,128 and 120,84; "
                       "convnet uses the first as its dense layer, default 128)")
    model.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS), help="MLP activation")
    model.add_argument("--channels", type=int_list, default=None,
                       help="the pictures' channels for folder:PATH, 1 (grey) or 3 (RGB, the default); "
                       "two sizes, e.g. 16,32, mean --widths, as they always have")
    model.add_argument("--widths", type=int_list, default=None,
                       help="channels of the two convolution stages (lenet5 default 6,16; convnet 16,32)")
    model.add_argument("--dropout", type=float, default=None, help="dropout rate (mlp default 0.2, lenet5 0.1, convnet 0.3)")

    defaults = TrainConfig()
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum number of epochs")
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    opt.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
                     help="AdamW, or SGD with Nesterov momentum 0.9")
    opt.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="weight decay")
    opt.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES, help="learning-rate schedule")
    opt.add_argument("--shift", type=int, default=defaults.shift,
                     help="augmentation: random shifts of up to this many pixels")
    opt.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                     help="augmentation: random horizontal mirroring (default: on for folders of pictures, "
                     "off for the named datasets)")
    opt.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, help="label smoothing")
    opt.add_argument("--photo-mix", type=float, default=defaults.photo_mix,
                     help="train on what serving produces: share of each batch drawn from a pool of synthetic "
                     "photos run through the service's preprocessing (0: clean pictures only; the named datasets)")
    opt.add_argument("--photo-pool", type=int, default=1000,
                     help="how many training pictures get a processed photo (with --photo-mix; cached in data/photo-mix/)")
    opt.add_argument("--real-photos", type=Path, default=None, metavar="DIR",
                     help="fashion-mnist: also learn from real phone photos of clothes, DIR being the folder of "
                     "github.com/alexeygrigorev/clothing-dataset-small (its train/ photos as "
                     "tests/data/real_clothes_train.csv labels them), run through the service's preprocessing "
                     "(cached in data/real-clothes/)")
    opt.add_argument("--real-mix", type=float, default=0.2,
                     help="with --real-photos: share of each batch drawn from the real photos")
    opt.add_argument("--real-balance", type=float, default=defaults.real_balance,
                     help="with --real-photos: each real photo drawn with weight count(its class) ** -REAL_BALANCE "
                     "(0: as they come, 1: every class as often)")
    opt.add_argument("--init-from", type=Path, default=None, metavar="MODEL_ONNX",
                     help="start from a published model's weights (same --arch and options) and fine-tune it; "
                     "its batch norms stay frozen")
    opt.add_argument("--patience", type=int, default=defaults.patience,
                     help="stop after this many epochs without a better validation accuracy "
                     "(with onecycle, counted from the end of its 30%% warm-up)")
    opt.add_argument("--seed", type=int, default=defaults.seed, help="random seed (split, init, order)")
    opt.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for PyTorch")

    out = train.add_argument_group("output")
    out.add_argument("--name", default=None, help="model name (default: <dataset>-<arch>)")
    out.add_argument("--models-dir", type=Path, default=Path("models"), help="model repository folder")
    out.add_argument("--no-progress", action="store_true", help="no progress bar, only the final summary")

    evaluate = commands.add_parser(
        "evaluate", help="check a published model against its card and measure its test accuracy",
        description="Check model.onnx against model.json (sha256, embedded card) and measure its test "
        "accuracy with ONNX Runtime on the dataset named in the card.",
    )
    evaluate.add_argument("model", type=Path, help="a published version folder, e.g. models/mnist-convnet/1")
    add_data_options(evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit calibration and typicality on a published version, publish the next version",
        description="Fit the temperature (validation split) and the typicality score (training split) of a published "
        "model, measure them on its test split, and publish the same weights with both folded into the graph as "
        "the next version, with the card's calibration and typicality sections and a reliability diagram.",
    )
    calibrate.add_argument("model", type=Path, help="a published version folder, e.g. models/mnist-convnet/1")
    calibrate.add_argument("--layers", default=None, choices=["input", "penultimate", "all", "none"],
                           help="Mahalanobis members of the typicality score beside the energy score: the picture "
                           "(pooled), also the input of the last linear layer, also the input of every linear layer, "
                           "or none (default: input; a refit: the card's)")
    calibrate.add_argument("--components", type=int, default=None, help="principal components of the picture's subspace (default 64)")
    calibrate.add_argument("--directions", type=int, default=None,
                           help="keep only this many directions (the least varying within a class) of each layer's Mahalanobis member")
    for member, what in (("within", "the PCA-within member (spread inside the subspace)"), ("statistics", "the picture-statistics member"),
                         ("energy", "the energy member"), ("extent", "the extent member (how far the object reaches the frame's edges)"),
                         ("outlier-exposure", "the outlier head, fitted to tell the training pictures from drawings that are "
                          "none of the classes (training/doodles.py)")):
        calibrate.add_argument(f"--{member}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"{what} (default: fit_trust's; a refit: the card's)")
    calibrate.add_argument("--refit-typicality", action="store_true",
                           help="refit only the typicality of this served version, in place (same weights and "
                           "temperature), on the training split and on synthetic photos and enlarged PNG uploads of it "
                           "through the service's preprocessing; the threshold also holds the test pictures sent as "
                           "uploads to the flag rate")
    calibrate.add_argument("--real-photos", type=Path, default=None, metavar="DIR",
                           help="with --refit-typicality, for a version that learned from real photos of clothes: the "
                           "clothing dataset's folder (train/ and validation/ in it, docs/photos.md)")
    add_data_options(calibrate)

    download = commands.add_parser("download", help="fetch a dataset's files (sha256-checked)",
                                   description="Download a dataset's IDX files from the known mirrors.",
                                   formatter_class=HelpFormatter)
    download.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="which dataset")
    add_data_options(download)
    return parser


def split_channels(args: argparse.Namespace) -> tuple[int, tuple[int, ...] | None]:
    """(the pictures' channels, the convolution widths) from --channels and --widths."""
    picture_channels, widths = 3, args.widths
    if args.channels is not None and len(args.channels) == 1:
        picture_channels = args.channels[0]
        if picture_channels not in (1, 3):
            raise SystemExit(f"error: --channels for pictures is 1 (grey) or 3 (RGB), got {picture_channels}")
    elif args.channels is not None:
        if widths is not None:
            raise SystemExit("error: give the convolution widths once, as --widths (or the older --channels A,B)")
        widths = args.channels
    if widths is not None and len(widths) != 2:
        raise SystemExit("error: --widths takes two sizes, e.g. 16,32")
    return picture_channels, widths


def run_train(args: argparse.Namespace) -> int:
    if not 0.0 <= args.photo_mix <= 1.0:
        raise SystemExit(f"error: --photo-mix is a share in [0, 1], got {args.photo_mix}")
    folder = args.dataset.startswith(FOLDER_PREFIX)
    real_mix = args.real_mix if args.real_photos else 0.0
    if args.real_photos and args.dataset != "fashion-mnist":
        raise SystemExit("error: --real-photos are photos of clothes: for --dataset fashion-mnist")
    if not 0.0 <= real_mix <= 1.0 or args.photo_mix + real_mix > 1.0:
        raise SystemExit(f"error: --real-mix is a share in [0, 1] and, with --photo-mix, at most 1 in all, got {real_mix}")
    if args.real_photos and not args.real_photos.is_dir():
        raise SystemExit(f"error: --real-photos {args.real_photos} is not a folder")
    if folder and args.photo_mix > 0:
        raise SystemExit("error: --photo-mix is for the named datasets (mnist, fashion-mnist)")
    picture_channels, widths = split_channels(args)
    if not folder and args.channels is not None and len(args.channels) == 1:
        raise SystemExit("error: --channels 1|3 is for folders of pictures; the named datasets are grey 28x28")
    if folder and args.shift:
        raise SystemExit("error: --shift is for the 28x28 datasets; pictures are augmented by --crop-scale")
    hflip = folder if args.hflip is None else args.hflip
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, shift=args.shift, hflip=hflip,
        label_smoothing=args.label_smoothing, patience=args.patience, seed=args.seed, threads=args.threads,
        photo_mix=args.photo_mix, photo_pool=args.photo_pool if args.photo_mix > 0 else 0,
        init_from=str(args.init_from) if args.init_from else None,
        real_mix=real_mix, real_balance=args.real_balance if real_mix else 0.0,
        real_photos=str(real_clothes.MANIFEST.relative_to(real_clothes.PROJECT_ROOT)) if real_mix else None,
    )
    folder_options = augmentation = None
    if folder:
        folder_options = FolderOptions(
            image_size=args.image_size, channels=picture_channels, resize=args.resize,
            resize_shorter=args.resize_shorter, normalize=args.normalize, test_fraction=args.test_fraction,
        )
        augmentation = PhotoAugmentation(min_scale=args.crop_scale, hflip=hflip, jitter=args.color_jitter)
    arch_options: dict = {}
    defaults = DEFAULT_OPTIONS.get(args.arch, {})
    if args.arch == "mlp":
        arch_options = {"hidden": args.hidden or defaults["hidden"], "activation": args.activation}
    elif args.arch in ("lenet5", "convnet"):
        arch_options = {"channels": widths or defaults["channels"], "hidden": args.hidden or defaults["hidden"]}
    if args.dropout is not None and args.arch in ("mlp", "lenet5", "convnet"):
        arch_options["dropout"] = args.dropout
    default_name = f"{folder_path(args.dataset).resolve().name if folder else args.dataset}-{args.arch}"
    version_dir, card = train_and_publish(
        dataset=args.dataset, arch=args.arch, name=args.name or default_name,
        models_dir=args.models_dir, config=config, arch_options=arch_options, data_dir=args.data_dir,
        download=args.download, mirrors=args.mirror, validation_fraction=args.validation_fraction,
        limit_train=args.limit_train, progress=not args.no_progress,
        folder_options=folder_options, augmentation=augmentation, real_photos=args.real_photos,
    )
    metrics, training = card["metrics"], card["training"]
    print(
        f"published {version_dir}: test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_split']}, "
        f"validation {metrics['validation_accuracy']:.4f}, {card['architecture']['parameters']} parameters, "
        f"{training['epochs']} epochs in {training['wall_time_s']:.0f}s ({training['images_per_s']:.0f} images/s)"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if not (args.model / "model.json").is_file():
        raise SystemExit(
            f"error: {args.model} holds no model.json; pass a version folder such as models/mnist-convnet/1"
        )
    result = evaluate_published(args.model, args.data_dir, download=args.download)
    print(json.dumps(result, indent=2))
    return 0 if result["agrees_with_card"] else 1


def typicality_choices(args: argparse.Namespace) -> dict:
    """The typicality members `calibrate`'s options chose, as a card's `typicality.fit_options` names them (None: not
    chosen, the default or the card's)."""
    return {"layers": args.layers, "components": args.components, "within": args.within, "statistics": args.statistics,
            "energy": args.energy, "extent": args.extent, "directions": args.directions,
            "outlier_exposure": args.outlier_exposure}


def run_calibrate(args: argparse.Namespace) -> int:
    from training.trust import AlreadyCalibrated, calibrate_published

    if not (args.model / "model.json").is_file():
        raise SystemExit(f"error: {args.model} holds no model.json; pass a version folder such as models/mnist-convnet/1")
    options = {k: v for k, v in typicality_choices(args).items() if v is not None}
    if args.real_photos is not None and not args.real_photos.is_dir():
        raise SystemExit(f"error: --real-photos {args.real_photos} is not a folder")
    if args.real_photos is not None and not args.refit_typicality:
        raise SystemExit("error: --real-photos goes with --refit-typicality")
    if args.refit_typicality:
        from training.trust import MissingRealPhotos, refit_typicality_in_place

        try:
            card = refit_typicality_in_place(args.model, args.data_dir, download=args.download, options=options,
                                             real_photos=args.real_photos)
        except MissingRealPhotos as refusal:
            raise SystemExit(f"error: {refusal}") from None
        typicality = card["typicality"]
        print(f"refitted {args.model} in place: typicality ({typicality['method']}) threshold {typicality['threshold']:.4f} "
              f"flags {typicality['flagged_share']:.1%} of the test pictures, {typicality['flagged_share_served']}")
        return 0
    try:
        version_dir, card = calibrate_published(args.model, args.data_dir, download=args.download, options=options)
    except AlreadyCalibrated as refusal:
        raise SystemExit(f"error: {refusal}") from None
    calibration, typicality = card["calibration"], card["typicality"]
    print(
        f"published {version_dir}: temperature {calibration['temperature']:.4f}, test ECE {calibration['ece_before']:.4f} -> "
        f"{calibration['ece_after']:.4f}, accuracy {calibration['accuracy']:.4f}; typicality ({typicality['method']}) "
        f"threshold {typicality['threshold']:.4f} flags {typicality['flagged_share']:.1%} of the test pictures"
    )
    return 0


def run_download(args: argparse.Namespace) -> int:
    spec = get_spec(args.dataset)
    directory = resolve_data_dir(spec, args.data_dir, download=True)
    download_dataset(spec, directory, args.mirror)
    print(f"{spec.name}: all files present and checked in {directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runners = {"train": run_train, "evaluate": run_evaluate, "calibrate": run_calibrate, "download": run_download}
    try:
        return runners[args.command](args)
    except (DatasetNotFound, IdxError, DownloadError, FolderDatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ExportRefused, ModelCheckFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
