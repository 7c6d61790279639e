"""Evaluation figures: accuracy, per-class accuracy, confusion matrix, and the PNG plots written
beside a model (learning curves, confusion matrix, a grid of misclassified test images)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOT_DPI = 80
MISCLASSIFIED_SHOWN = 36


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def summarize(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    predictions = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, predictions, len(classes))
    per_class = counts.diagonal() / np.maximum(counts.sum(axis=1), 1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "size": int(len(labels)),
        "per_class_accuracy": {name: round(float(a), 4) for name, a in zip(classes, per_class)},
        "confusion_matrix": counts.tolist(),
    }


def plot_learning_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(8, 3.2))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def plot_confusion_matrix(counts: np.ndarray, classes: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.2))
    ax.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        color = "white" if value > counts.max() / 3 else "black"
        ax.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def plot_misclassified(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path
) -> None:
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    # The most confident mistakes first: the most telling ones.
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:MISCLASSIFIED_SHOWN]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{classes[labels[index]]} -> {classes[predictions[index]]}", fontsize=6)
    fig.suptitle("misclassified test images (true -> predicted)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def write_report(
    directory: Path,
    *,
    summary: dict,
    history: list[dict],
    classes: list[str],
    test_images: np.ndarray,
    test_labels: np.ndarray,
    probabilities: np.ndarray,
) -> None:
    """Write report.json (test summary, learning history) and the three plots into `directory`."""
    plot_learning_curves(history, directory / "learning_curves.png")
    plot_confusion_matrix(np.array(summary["confusion_matrix"]), classes, directory / "confusion_matrix.png")
    plot_misclassified(test_images, test_labels, probabilities, classes, directory / "misclassified.png")
    report = {"test": summary, "classes": classes, "history": history}
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")


def plot_reliability(reliability: dict, path: Path, title: str = "") -> None:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for key, style in (("before", "o--"), ("after", "s-")):
        bins = [b for b in reliability.get(key, []) if b["count"]]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=f"{key} temperature scaling")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} reliability (15 bins)".strip())
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
