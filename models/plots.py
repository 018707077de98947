"""Learning curves and confusion matrices, committed beside the weights."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_confusion", "plot_learning_curves"]


def plot_learning_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], label="train (augmented)")
    loss_ax.plot(epochs, [row["val_loss"] for row in history], label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    acc_ax.plot(epochs, [100 * row["train_accuracy"] for row in history], label="train (augmented)")
    acc_ax.plot(epochs, [100 * row["val_accuracy"] for row in history], label="validation")
    if all("val_mixed_accuracy" in row for row in history):  # fine-tuning runs: the selection criterion
        acc_ax.plot(epochs, [100 * row["val_mixed_accuracy"] for row in history], label="validation, clean + degraded (mean)")
    lowest = min(100 * min(row["train_accuracy"], row.get("val_mixed_accuracy", 1.0)) for row in history)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(min(98.0, lowest - 0.2), 100), title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow([[min(v, 20) if i != j else 0 for j, v in enumerate(row)] for i, row in enumerate(matrix)], cmap="Reds")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="black" if i != j else "tab:blue")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, label="errors (off-diagonal, capped at 20)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
