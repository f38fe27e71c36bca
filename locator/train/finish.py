"""After fit: the finished model is saved (model.h5), tested (metrics.json, plots), given its unknown threshold
(calibrated on validation) and described (metadata.json, written last: a run without it is unfinished)."""
from pathlib import Path

import numpy as np

from locator.core import config, cpu
from locator.core.fsio import atomic_path, atomic_write_json, now_iso
from locator.core.metrics import classification_metrics, summary
from locator.runs import runs
from locator.train import evaluate
from locator.train.fit import Data, Settings, uses_background, with_background


def predict(net, x, batch: int = 256) -> np.ndarray:
    """Class probabilities."""
    return net.predict(x, batch_size=batch, verbose=0)


def save_model(net, run: Path) -> Path:
    """model.h5 without optimizer state, written under a temporary .h5 name and renamed."""
    path = run / "model.h5"
    with atomic_path(path, suffix=".h5") as tmp:
        tmp.unlink()  # h5py refuses to open the empty temp file as an HDF5 file
        net.save(str(tmp), include_optimizer=False)
    return path


def test_metrics(net, data: Data, run: Path, plots: bool = True, answers=None) -> dict:
    """Test-split metrics (metrics.json) and, unless plots=False, the plots (nothing is chosen on the test split).
    `answers`: the model's probabilities per split where they are known already (see write_run)."""
    probs = (answers["test"] if answers else predict(net, data.x["test"]))[:, :len(data.classes)]  # closed set
    metrics = classification_metrics(data.y["test"], probs.argmax(1), data.classes)
    if plots:
        folder = run / "plots"
        names = [c["name"] for c in data.classes]
        hist = run / "logs" / "history.csv"
        if hist.exists():
            evaluate.plot_history(evaluate.read_history(hist), folder / "history.png")
        evaluate.plot_confusion(metrics["confusion"]["matrix"], names, folder / "confusion.png")
        evaluate.plot_mistakes(np.asarray(data.x["test"]), data.y["test"], probs, names, folder / "mistakes.png")
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def write_run(net, data: Data, run: Path, s: Settings, seconds: float, plots: bool = True, unknown=None,
              answers=None):
    """Everything after fit, in the order that keeps a run consistent: model.h5, test metrics, the unknown
    threshold, then metadata.json last (a run without it is unfinished). Returns (test metrics, metadata).

    `unknown`: metadata.json's unknown rule as given instead of calibrated (tests/servekit pins threshold 0, so
    that its tiny model names a place for every photo). `answers`: {val, test, neg_val, neg_test} probabilities
    the network gives, computed already (the embedding model's, from cached embeddings: the same numbers without
    decoding every photo again at full size)."""
    model_path = save_model(net, run)
    metrics = test_metrics(net, data, run, plots, answers)
    if unknown is None and answers:
        neg = {split: answers[f"neg_{split}"] for split in ("val", "test") if len(answers.get(f"neg_{split}", ()))}
        unknown = calibrate(answers["val"], answers["test"], neg, getattr(data, "neg_kind", None) or {},
                            len(data.classes), uses_background(data, s))
    meta = metadata(data, s, metrics, seconds, unknown if unknown is not None else calibrate_unknown(net, data, s))
    meta["metrics"]["model_mb"] = round(model_path.stat().st_size / 1e6, 2)
    atomic_write_json(run / "metadata.json", meta)
    return metrics, meta


def metadata(data: Data, s: Settings, metrics: dict, seconds: float, unknown: dict) -> dict:
    """metadata.json as docs/conventions.md defines it: everything a consumer (predict, serve, pipeline) reads.
    `seconds`: the training time of all the run's processes (fit.train's), which cnn.py --minutes plans by."""
    return {
        "name": s.name,
        "created": now_iso(),
        "arch": s.arch,
        "precision": s.precision,
        "cpu": {"model": cpu.cpu_model(), "native_bf16": cpu.cpu_has_native_bf16()},  # what chose the precision
        "epochs": 0 if s.arch == "embedding" else s.epochs,   # the embedding model's head is fitted, not epoched
        "input_size": s.extra.get("input_size") or data.input_size,   # the network's own, where it has one
        "resize_mode": s.extra.get("resize_mode") or data.resize_mode,
        "classes": data.classes,
        "background": uses_background(data, s),
        "dataset_fingerprint": data.fingerprint,
        "unknown": unknown,
        "metrics": summary(metrics) | {"train_seconds": round(seconds, 1)},
        "training": _training(data, s),
        "software": runs.software(),
    }


def _training(data: Data, s: Settings) -> dict:
    """How the run trained: the settings that shaped it (the embedding model has no epochs, rate or augmentation)."""
    photos = {"photos_per_epoch": int(len(with_background(data, "train", s)[0]))}
    if s.arch == "embedding":
        return photos | s.extra
    return photos | {"batch": s.batch, "lr": s.lr, "weight_decay": s.weight_decay,
                     "label_smoothing": s.label_smoothing, "augment": s.augment, "cutmix": s.cutmix, "seed": s.seed,
                     "ema": s.ema, "teacher": s.teacher or None, **s.extra}


def calibrate_unknown(net, data: Data, s: Settings, true_accept: float = config.UNKNOWN_TRUE_ACCEPT) -> dict:
    """The "not one of our places" rule of a network, set on the validation split (see `calibrate`)."""
    neg = {split: predict(net, data.neg[split]) for split in ("val", "test") if len(data.neg.get(split, ()))}
    return calibrate(predict(net, data.x["val"]), predict(net, data.x["test"]), neg,
                     getattr(data, "neg_kind", None) or {}, len(data.classes), uses_background(data, s), true_accept)


def calibrate(val, test, neg: dict, kinds: dict, n: int, bg: bool,
              true_accept: float = config.UNKNOWN_TRUE_ACCEPT) -> dict:
    """The "not one of our places" rule from a model's answers (probabilities of the validation and test place
    photos, `neg`: split -> answers for its background photos, `kinds`: split -> their kinds): for each score
    predictor.acceptance offers (one without a background output), the threshold that keeps `true_accept` of the
    validation place photos (aiming a few standard errors above it, config.UNKNOWN_MARGIN_Z, so that new photos
    reach the target too); the score kept is the one that then accepts the fewest validation background photos.
    False-accept rates are recorded per kind of background (landmark, everyday) and on the test split for the
    record. predict.py and serve.py read score and threshold from metadata.json."""
    from locator.predict.predictor import SCORES, acceptance, accepted

    def rates(score: str, threshold: float, split: str, probs) -> dict:
        _, sc = acceptance(probs, n, bg, score)
        ok = accepted(sc, threshold)
        out = {f"{split}_negatives_false_accept": round(float(ok.mean()), 4)}
        kind = np.asarray(kinds.get(split, ()))
        for k in sorted(set(kind.tolist())) if len(kind) == len(ok) else ():
            out[f"{split}_{k}_false_accept"] = round(float(ok[kind == k].mean()), 4)
        return out

    candidates = []
    spread = np.sqrt(true_accept * (1 - true_accept) / max(len(val), 1))   # standard error of a share on val
    aim = min(0.995, true_accept + config.UNKNOWN_MARGIN_Z * spread)
    for score in (SCORES if bg else ("max_softmax",)):
        _, sc = acceptance(val, n, bg, score)
        # "lower": the threshold is a validation score, so at least `aim` of them pass (no interpolation)
        threshold = float(np.quantile(sc, 1 - aim, method="lower"))
        ta = float(accepted(sc, threshold).mean())
        fa = rates(score, threshold, "val", neg["val"])["val_negatives_false_accept"] if "val" in neg else 0.0
        miss = ta < true_accept - 0.01
        # the scores that reach the target true accept, by fewest false accepts; if none does, the highest accept
        candidates.append((miss, -ta if miss else fa, score, threshold, ta, fa))
    _, _, score, threshold, ta, _ = min(candidates)
    out = {"score": score, "threshold": threshold, "true_accept": round(ta, 4), "false_accept": None,
           "calibrated_on": "val", "target_true_accept": true_accept, "aimed_true_accept": round(float(aim), 4),
           "compared": {c[2]: {"threshold": c[3], "val_true_accept": round(c[4], 4), "val_false_accept": c[5]}
                        for c in candidates}}
    _, test_score = acceptance(test, n, bg, score)
    out["test_true_accept"] = round(float(accepted(test_score, threshold).mean()), 4)
    for split, probs in neg.items():
        out.update(rates(score, threshold, split, probs))
    out["false_accept"] = out.get("val_negatives_false_accept")
    return out
