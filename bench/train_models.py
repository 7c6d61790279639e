"""Training benchmark: accuracy, size, training time and throughput of each shipped model.

    .venv/bin/python bench/train_models.py                       # cards + a fresh evaluation (about a minute)
    .venv/bin/python bench/train_models.py --retrain mnist-mlp   # also retrain from the card's recipe

For every model in models/ it reads the card (parameters, training wall time and images/s as
measured when the model was trained), checks model.onnx against the card and measures test
accuracy and inference images/s again with ONNX Runtime. --retrain trains the named models again
with the exact recipe their cards record (into a temporary folder, models/ stays untouched) and
reports the new run's figures beside the shipped ones.
Writes bench/results/training.json and bench/results/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.pipeline import evaluate_published, train_and_publish  # noqa: E402
from training.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def retrain(card: dict, models_dir: Path) -> dict:
    """Train again with the recipe the card records; return the new card."""
    training = card["training"]
    config = TrainConfig(**training["hyperparameters"], threads=os.cpu_count() or 1)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in card["architecture"]["options"].items()}
    _, new_card = train_and_publish(
        dataset=training["dataset"], arch=card["architecture"]["arch"], name=card["name"],
        models_dir=models_dir, config=config, arch_options=options, progress=False,
        validation_fraction=training["validation_size"] / (training["validation_size"] + training["train_size"]),
    )
    return new_card


def measure(version_dir: Path, retrain_it: bool) -> dict:
    card = json.loads((version_dir / "model.json").read_text())
    evaluation = evaluate_published(version_dir)
    row = {
        "model": card["name"],
        "version": card["version"],
        "arch": card["architecture"]["arch"],
        "parameters": card["architecture"]["parameters"],
        "test_split": card["metrics"]["test_split"],
        "test_accuracy": evaluation["test_accuracy"],
        "card_agrees": evaluation["agrees_with_card"],
        "epochs": card["training"]["epochs"],
        "train_wall_time_s": card["training"]["wall_time_s"],
        "train_images_per_s": card["training"]["images_per_s"],
        "inference_images_per_s": evaluation["inference_images_per_s"],
    }
    if retrain_it:
        with tempfile.TemporaryDirectory() as scratch:
            new = retrain(card, Path(scratch))
        row["retrained"] = {
            "test_accuracy": new["metrics"]["test_accuracy"],
            "epochs": new["training"]["epochs"],
            "train_wall_time_s": new["training"]["wall_time_s"],
            "train_images_per_s": new["training"]["images_per_s"],
        }
    return row


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Measured with `{command}` on {platform.machine()} with {os.cpu_count()} CPU cores.",
        "Training time and images/s are those recorded in each model card when it was trained;",
        "test accuracy and inference images/s (ONNX Runtime, CPU, batches of 1000) are measured again.",
        "",
        "| model | parameters | test accuracy | test split | epochs | training time "
        "| training images/s | inference images/s |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['test_accuracy']:.4f} | {r['test_split']} | {r['epochs']} "
            f"| {r['train_wall_time_s'] / 60:.1f} min | {r['train_images_per_s']:,.0f} "
            f"| {r['inference_images_per_s']:,.0f} |"
        )
    retrained = [r for r in rows if "retrained" in r]
    if retrained:
        lines += ["", "Retrained from the card's recipe:", "",
                  "| model | test accuracy | epochs | training time | training images/s |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in retrained:
            n = r["retrained"]
            lines.append(f"| {r['model']} | {n['test_accuracy']:.4f} | {n['epochs']} "
                         f"| {n['train_wall_time_s'] / 60:.1f} min | {n['train_images_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="model repository to measure")
    parser.add_argument("--retrain", nargs="*", default=[], metavar="NAME", help="models to train again")
    args = parser.parse_args()
    command = "python bench/train_models.py" + "".join(f" {a}" for a in sys.argv[1:])
    rows = []
    for name_dir in sorted(p for p in args.models_dir.iterdir() if p.is_dir()):
        versions = [p for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if versions:
            latest = max(versions, key=lambda p: int(p.name))
            print(f"measuring {name_dir.name}/{latest.name}", flush=True)
            rows.append(measure(latest, name_dir.name in args.retrain))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / "training.json", json.dumps({"command": command, "models": rows}, indent=2) + "\n")
    table = markdown(rows, command)
    write_atomically(RESULTS / "training.md", table)
    print(table)
    return 0 if all(r["card_agrees"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
