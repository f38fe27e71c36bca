"""Classification metrics of a closed test set (accuracy, macro F1, per place, confusion), the same for
cnn.py's test split, predict.py's evaluation mode and pipeline.py's promotion rule."""
import numpy as np

from locator.core.tables import format_table

# The headline numbers of a test: metadata.json's `metrics`, the candidate's and current model's in pipeline.py's
# report
SUMMARY_KEYS = ("test_accuracy", "macro_f1", "macro_precision", "macro_recall", "test_photos")


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


def summary(metrics: dict) -> dict:
    """The SUMMARY_KEYS of classification_metrics (or of metadata.json's `metrics`)."""
    return {k: metrics[k] for k in SUMMARY_KEYS}


def summary_table(metrics: dict) -> str:
    """A compact per-place table plus the totals, for the end of a run."""
    rows = [[p["index"], p["name"][:34], round(p["precision"], 2), round(p["recall"], 2), round(p["f1"], 2),
             p["support"]] for p in metrics["per_place"]]
    return (format_table(["idx", "place", "prec", "recall", "f1", "photos"], rows) +
            f"\ntest accuracy {metrics['test_accuracy']:.2%}   macro F1 {metrics['macro_f1']:.3f}   "
            f"photos {metrics['test_photos']}")
