"""Reports: plain-text tables for the summaries the scripts print (per place, per split, benchmarks), and the
model's test metrics and the pictures a person looks at (curves, confusion matrix, worst mistakes)."""
import csv
from pathlib import Path

import numpy as np

from .fsio import atomic_path


def format_table(headers, rows, footer=None) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned; optional total row."""
    body = [list(map(_cell, r)) for r in rows]
    foot = [list(map(_cell, footer))] if footer else []
    head = [str(h) for h in headers]
    widths = [max(len(r[i]) for r in [head] + body + foot) for i in range(len(head))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(head), rule] + [line(r) for r in body]
    if foot:
        out += [rule, line(foot[0])]
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    return "" if v is None else str(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)




def confusion(y_true, y_pred, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return m


def classification_metrics(y_true, y_pred, classes) -> dict:
    """accuracy, macro precision/recall/F1, per-place P/R/F1/support, confusion matrix with names."""
    n = len(classes)
    cm = confusion(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # macro averages over the places that have test photos
    per_place = [{"class": c["class"], "index": c["index"], "name": c["name"], "precision": round(float(p), 4),
                  "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
                 for c, p, r, f, s in zip(classes, precision, recall, f1, support)]
    return {
        "test_accuracy": round(float(tp.sum() / max(1, cm.sum())), 4),
        "macro_precision": round(float(precision[present].mean()), 4) if present.any() else 0.0,
        "macro_recall": round(float(recall[present].mean()), 4) if present.any() else 0.0,
        "macro_f1": round(float(f1[present].mean()), 4) if present.any() else 0.0,
        "test_photos": int(cm.sum()),
        "per_place": per_place,
        "confusion": {"labels": [c["name"] for c in classes], "matrix": cm.tolist()},
    }


def summary_table(metrics: dict) -> str:
    """A compact per-place table plus the totals, for the end of a run."""
    rows = [[p["index"], p["name"][:34], round(p["precision"], 2), round(p["recall"], 2), round(p["f1"], 2),
             p["support"]] for p in metrics["per_place"]]
    return (format_table(["idx", "place", "prec", "recall", "f1", "photos"], rows) +
            f"\ntest accuracy {metrics['test_accuracy']:.2%}   macro F1 {metrics['macro_f1']:.3f}   "
            f"photos {metrics['test_photos']}")


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
