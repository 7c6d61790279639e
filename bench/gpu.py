"""GPU check: every model of a repository on ONNX Runtime's CUDA execution provider against its CPU one.

    python bench/gpu.py [--repository DIR] [--models a,b] [--mnist-dir DIR] [--fashion-dir DIR] [--out bench/results]

Needs a host with an NVIDIA GPU and onnxruntime-gpu's CUDA 13 / cuDNN 9 libraries. For every model
in the repository: the service's provider resolver must pick CUDA, and a session built as the service
builds it must run on CUDA; the CUDA and CPU sessions must agree over the model's whole test split
(largest probability difference, predicted class, accuracy; for a photo model, such as an imported one or
bench/resnet18.py's, over PHOTO_INPUTS photos made into its input by the service's own preprocessing, with
no labels and so no accuracy), shown beside a session with ONNX
Runtime's own CUDA defaults (TF32 on); one ONNX Runtime run is timed per batch size on each session,
with inputs and outputs in host memory as the service passes them; and a fresh session's first run
at each new batch size is timed with cuDNN's heuristic and exhaustive algorithm search. Writes
gpu.json and gpu.md; exits non-zero when CUDA cannot be used or the service's session disagrees."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.inference import runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from training.data import DATASETS, TEST_IMAGES, TEST_LABELS, verified_file  # noqa: E402
from training.idx import read_pair  # noqa: E402

CUDA = runtime.CUDA
BATCH_SIZES = (1, 8, 64, 256, 1024)
PHOTO_BATCH_SIZES = (1, 8, 32, 64)  # a ResNet-sized model: 1,000 times LeNet-5's work a picture
PHOTO_INPUTS = 256
NEW_BATCH_SIZES = (2, 5, 13, 29, 64)  # sizes a fresh session has not met, as a dynamic batcher forms them
# float32 kernels that sum in another order than the CPU's (cuDNN against MLAS) agree to about 1e-6; the
# predicted class may differ only on an exact near-tie.
MAX_PROBABILITY_DIFFERENCE = 1e-4
MAX_CLASS_DISAGREEMENTS = 0.0005  # fraction of the test split


def load_test_split(task: str, directories: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The task's official test split as float32 [N,1,28,28] in [0, 1] and int labels."""
    spec = next(spec for spec in DATASETS.values() if spec.task == task)
    folder = directories.get(spec.name, spec.default_dir)
    if spec.name == "mnist":  # the published t10k files, wherever they lie (Debian re-compresses Fashion-MNIST's)
        verified_file(spec.name, TEST_IMAGES, folder), verified_file(spec.name, TEST_LABELS, folder)
    images, labels = read_pair(folder / TEST_IMAGES, folder / TEST_LABELS, len(spec.classes))
    return (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), labels.astype(np.int64)


def photo_inputs(card: dict, count: int = PHOTO_INPUTS) -> np.ndarray:
    """`count` photos (bench/photo_inputs.py's JPEGs, mirrored, cropped and turned for variety) made into the
    model's input tensor by the service's own decoding and preprocessing, as uploads are."""
    from PIL import Image, ImageOps

    from bench.photo_inputs import sample_photos
    from service.imaging import picture_pixels
    from service.inference.card import parse_card
    from service.inference.model_input import ModelInput

    parsed, made = parse_card(card), []
    model_input = ModelInput(parsed.input)
    for index, jpeg in enumerate(sample_photos(5) * (count // 5 + 1)):
        if len(made) == count:
            break
        picture = Image.open(io.BytesIO(jpeg))
        picture = ImageOps.mirror(picture) if index % 2 else picture
        picture = picture.rotate(90 * (index // 5 % 4), expand=True).crop((0, 0, 480 - index % 97, 480))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        pixels, full_scale = picture_pixels(buffer.getvalue(), parsed, max_pixels=40_000_000)
        made.append(model_input.from_pixels(pixels[np.newaxis], full_scale))
    return np.concatenate(made)


def answers_logits(card: dict) -> bool:
    """An imported float16 model may answer logits, which the service turns into probabilities (docs/models.md)."""
    return card["output"].get("kind") == "logits"


def run_all(infer: runtime.InferFn, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([infer(images[start:start + batch]) for start in range(0, len(images), batch)])


def time_per_run(infer: runtime.InferFn, images: np.ndarray, batch: int, budget_s: float = 0.4) -> float:
    """Median seconds of one run on `batch` images, over as many runs as fit in the budget."""
    inputs = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    for _ in range(10):
        infer(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 5000):
        start = time.perf_counter()
        infer(inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def first_run_seconds(model_bytes: bytes, card: dict, settings: Settings, conv_algo_search: str, sample: np.ndarray) -> dict:
    """A fresh session's first run at each new batch size after the batch-1 warm-up the service does, against
    the same runs once warm: what a dynamic batcher pays the first time it forms a batch of that size."""
    session = runtime.create_session(model_bytes, runtime.ProviderResolver([CUDA]), intra_op_threads=settings.ort_intra_op_threads,
                                     inter_op_threads=settings.ort_inter_op_threads, cuda_conv_algo_search=conv_algo_search)
    infer = runtime.make_infer_fn(session, card["input"]["name"], card["output"]["name"], logits=answers_logits(card))
    runtime.warm_up(infer, len(card["classes"]), sample.shape[1:], sample.dtype)
    first = {}
    for batch in NEW_BATCH_SIZES:
        inputs = np.zeros((batch, *sample.shape[1:]), dtype=sample.dtype)
        start = time.perf_counter()
        infer(inputs)
        first[batch] = time.perf_counter() - start
    warm = {batch: time_per_run(infer, np.zeros_like(sample[:1]), batch, budget_s=0.05) for batch in NEW_BATCH_SIZES}
    return {"first": first, "warm": warm}


def check_model(model_dir: Path, directories: dict[str, Path], settings: Settings) -> dict:
    card = json.loads((model_dir / "model.json").read_text())
    model_bytes = (model_dir / "model.onnx").read_bytes()
    threads = {"intra_op_threads": settings.ort_intra_op_threads, "inter_op_threads": settings.ort_inter_op_threads}
    sessions = {
        # As the service builds it, and with ONNX Runtime's own CUDA defaults (TF32 on, exhaustive search).
        "cuda": runtime.create_session(model_bytes, runtime.ProviderResolver([CUDA]), **threads,
                                       cuda_conv_algo_search=settings.cuda_conv_algo_search),
        "cuda-ort-defaults": ort.InferenceSession(model_bytes, runtime.session_options(**threads), providers=[CUDA, runtime.CPU]),
        "cpu": runtime.create_session(model_bytes, runtime.ProviderResolver([runtime.CPU]), **threads),
    }
    infers = {key: runtime.make_infer_fn(s, card["input"]["name"], card["output"]["name"], logits=answers_logits(card))
              for key, s in sessions.items()}
    photo = card.get("preprocessing", {}).get("method") not in ("mnist-digit", "fashion-fit")
    images, labels = (photo_inputs(card), None) if photo else load_test_split(card["task"], directories)
    batch_sizes = PHOTO_BATCH_SIZES if photo else BATCH_SIZES
    answers = {key: run_all(infer, images) for key, infer in infers.items()}
    predicted = {key: probabilities.argmax(axis=1) for key, probabilities in answers.items()}
    gpu_keys = ("cuda", "cuda-ort-defaults")
    result = {
        "model": f"{card['name']}/{card['version']}",
        "providers": {key: s.get_providers() for key, s in sessions.items()},
        "test_images": len(images),
        "accuracy": {key: None if labels is None else float((p == labels).mean()) for key, p in predicted.items()},
        "max_probability_difference": {key: float(np.abs(answers[key] - answers["cpu"]).max()) for key in gpu_keys},
        "class_disagreements": {key: int((predicted[key] != predicted["cpu"]).sum()) for key in gpu_keys},
        "seconds_per_run": {
            key: {batch: time_per_run(infer, images, batch) for batch in batch_sizes} for key, infer in infers.items()
        },
        "first_runs": {search: first_run_seconds(model_bytes, card, settings, search, images[:1])
                       for search in ("heuristic", "exhaustive")},
    }
    result["ok"] = (
        result["providers"]["cuda"][0] == CUDA
        and result["max_probability_difference"]["cuda"] <= MAX_PROBABILITY_DIFFERENCE
        and result["class_disagreements"]["cuda"] <= MAX_CLASS_DISAGREEMENTS * len(images)
    )
    return result


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`", "",
        f"Machine: {report['machine']['gpu']}, {report['machine']['cpu']} ({report['machine']['cores']} cores), "
        f"onnxruntime-gpu {report['machine']['onnxruntime']}, Python {report['machine']['python']}.", "",
        f"Provider resolver with the service's default settings: {', '.join(report['resolved_providers'])}.", "",
        "Agreement with the CPU provider over each model's whole test split ('cuda': the service's session, TF32 off; "
        "'ORT defaults': TF32 on). The MNIST models were trained on the first 8,000 of these digits: the accuracy "
        "here compares providers, it is not a test accuracy.", "",
        "| model | providers (service's CUDA session) | images | accuracy cuda / CPU | max prob. difference cuda / ORT defaults "
        "| classes differing cuda / ORT defaults | ok |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for m in report["models"]:
        diff, classes = m["max_probability_difference"], m["class_disagreements"]
        accuracy = "photos, no labels" if m["accuracy"]["cpu"] is None else f"{m['accuracy']['cuda']:.4f} / {m['accuracy']['cpu']:.4f}"
        lines.append(f"| {m['model']} | {', '.join(m['providers']['cuda'])} | {m['test_images']:,} | "
                     f"{accuracy} | {diff['cuda']:.1e} / {diff['cuda-ort-defaults']:.1e} | "
                     f"{classes['cuda']} / {classes['cuda-ort-defaults']} | {'yes' if m['ok'] else 'NO'} |")
    lines += ["", "One ONNX Runtime run, median µs (inputs and outputs in host memory; CPU with the service's thread settings):"]
    for m in report["models"]:
        for key, runs in m["seconds_per_run"].items():
            sizes = sorted(int(b) for b in runs)
            if key == next(iter(m["seconds_per_run"])):
                lines += ["", "| model | session | " + " | ".join(f"batch {b}" for b in sizes) + f" | µs per image at batch {sizes[-1]} |",
                          "|---|---|" + "---:|" * (len(sizes) + 1)]
            lines.append(f"| {m['model']} | {key} | " + " | ".join(f"{runs[b] * 1e6:,.0f}" for b in sizes)
                         + f" | {runs[sizes[-1]] * 1e6 / sizes[-1]:.2f} |")
    lines += ["", "A fresh CUDA session's first run at a batch size it has not met (after the batch-1 warm-up), "
              "against the same size once warm, ms:", "",
              "| model | cuDNN algorithm search | " + " | ".join(f"batch {b}: first / warm" for b in NEW_BATCH_SIZES) + " |",
              "|---|---|" + "---:|" * len(NEW_BATCH_SIZES)]
    for m in report["models"]:
        for search, runs in m["first_runs"].items():
            lines.append(f"| {m['model']} | {search} | " + " | ".join(
                f"{runs['first'][b] * 1e3:.2f} / {runs['warm'][b] * 1e3:.2f}" for b in NEW_BATCH_SIZES) + " |")
    return "\n".join(lines) + "\n"


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no nvidia-smi"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository (default models/)")
    parser.add_argument("--models", help="comma-separated model names (default: every model in the repository)")
    parser.add_argument("--mnist-dir", type=Path, help="folder with MNIST's t10k IDX files (default datasets/mnist, vendored)")
    parser.add_argument("--fashion-dir", type=Path, help="folder with Fashion-MNIST's t10k IDX files")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    directories = {name: path for name, path in (("mnist", args.mnist_dir), ("fashion-mnist", args.fashion_dir)) if path}

    settings = Settings(model_repository=args.repository)
    resolver = runtime.ProviderResolver(settings.providers)
    resolved = resolver.usable()
    print("resolved providers:", resolved, "unusable:", resolver.unusable(), flush=True)
    if resolved[0] != CUDA:
        print("CUDA cannot be used here; nothing to compare", file=sys.stderr)
        return 1
    models = []
    wanted = set(args.models.split(",")) if args.models else None
    for model_dir in sorted(p for p in args.repository.glob("*/[0-9]*") if (p / "model.onnx").is_file()):
        if wanted is not None and model_dir.parent.name not in wanted:
            continue
        result = check_model(model_dir, directories, settings)
        print(json.dumps(result), flush=True)
        models.append(result)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    report = {
        "command": " ".join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"gpu": gpu_name(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "onnxruntime": metadata.version("onnxruntime-gpu")},
        "resolved_providers": resolved,
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(m["ok"] for m in models) else 1


if __name__ == "__main__":
    sys.exit(main())
