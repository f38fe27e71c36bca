"""The model's test metrics and the pictures a person looks at (training curves, confusion matrix, worst mistakes)."""
import csv

import numpy as np

from locator.core.fsio import atomic_path


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_history(csv_path) -> dict:
    """Keras CSVLogger's file -> {metric: [values per epoch]} (it spans resumed runs).

    An epoch logged twice (a run killed after logging it but before its backup redoes it) counts once: the
    last row, the one the training continued from. A row torn by the kill is dropped."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = list(rows[0]) if rows else []
    by_epoch = {}
    for r in rows:
        try:
            values = {k: float(r[k]) for k in keys}
        except (TypeError, ValueError):
            continue
        by_epoch[int(values.get("epoch", len(by_epoch)))] = values
    return {k: [by_epoch[e][k] for e in sorted(by_epoch)] for k in keys}


def plot_history(history: dict, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in history:
                ax.plot(np.arange(1, len(history[prefix + key]) + 1), history[prefix + key], label=label)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(matrix, names, path, title="Confusion matrix (test split)") -> None:
    plt = _plt()
    cm = np.asarray(matrix)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.42 * n + 3), max(4, 0.42 * n + 2)))
    with np.errstate(invalid="ignore"):
        norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    short = [s[:24] for s in names]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def plot_mistakes(x, y_true, probs, names, path, k: int = 24) -> int:
    """Grid of the k most confident mistakes: photo, true place, predicted place, confidence. Returns how many."""
    plt = _plt()
    y_pred = probs.argmax(1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]])][:k]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(x[i])
        ax.set_title(f"true: {names[y_true[i]][:18]}\npred: {names[y_pred[i]][:18]}\n{probs[i, y_pred[i]]:.0%}",
                     fontsize=7)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test split", ha="center")
    _save(fig, path)
    plt.close(fig)
    return len(wrong)
