"""The promotion rule: score the candidate and the current model the same way on the current test split, and
promote the candidate only if it is not worse (within a tolerance of one or two photos)."""
from locator.runs import runs

METRICS = ("test_accuracy", "macro_f1")   # what the promotion rule compares


def score(run, x, y, classes) -> dict:
    """A run's test metrics on (x, y), computed here the same way for the candidate and the current model."""
    from locator.core.metrics import classification_metrics, summary
    from locator.train import finish

    runs.env_threads()
    net, _ = runs.load(run)
    probs = finish.predict(net, x)[:, :len(classes)]  # a background output is no answer on a closed test set
    m = classification_metrics(y, probs.argmax(1), classes)
    return summary(m) | {"per_place_f1": {p["index"]: p["f1"] for p in m["per_place"] if p["support"]}}


def comparable(meta: dict, classes, input_size) -> str:
    """Why a model cannot be scored on this dataset ("" if it can): other places, or another image size."""
    if runs.class_difference(meta, [(c["index"], c["name"]) for c in classes]) is not None:
        return "its places differ from the dataset's (the place table changed)"
    if list(meta["input_size"]) != list(input_size):
        return f"it takes {meta['input_size']} images, the dataset has {list(input_size)}"
    return ""


def decide(new: dict, old, tolerance: float):
    """(promote?, reason). The candidate must not be worse than the current model by more than `tolerance` on
    accuracy or macro F1, both measured on the same, current test split."""
    if old is None:
        return True, "no current model to compare with"
    worse = [f"{k} {new[k]:.4f} < {old[k]:.4f} - {tolerance:g}" for k in METRICS
             if new[k] < old[k] - tolerance - 1e-9]
    if worse:
        return False, "candidate worse than the current model on the test split: " + "; ".join(worse)
    return True, ("not worse than the current model on the test split (" +
                  ", ".join(f"{k} {new[k]:.4f} vs {old[k]:.4f}" for k in METRICS) + f"; tolerance {tolerance:g})")


def headline(m):
    return {k: m[k] for k in METRICS} if m else None
