"""The promotion rule. The candidate and the current model are scored the same way on the current dataset, on the
two things a user meets:
- naming the place: accuracy and macro F1 on the test split (a background output is ignored there);
- "not one of our places": the share of the validation split's background photos (none of our places) that the
  model accepts as one of ours, by its own calibrated unknown rule (metadata.json's score and threshold).
The candidate is promoted only if it is not worse than the current model on either, within tolerances of a few
photos. A first model (or one replacing a model that cannot be scored on this dataset) has nothing to beat, so it
must clear minimums instead: accuracy clearly above what always naming the commonest place scores, and, where the
dataset has background photos, an unknown rule that rejects most of them."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locator.core import config, images
from locator.core.errors import UserError
from locator.data import dataset
from locator.runs import runs

METRICS = ("test_accuracy", "macro_f1")   # what the promotion rule compares on the test split
GATE = "background_false_accept"          # ... and on the validation background photos
_EPS = 1e-9                               # a figure equal to its limit passes, whatever the float rounding


@dataclass
class Verdict:
    promote: bool
    reason: str          # in words, for the log, report.json, history.jsonl and the printed "decision:" line
    new: dict            # the candidate's figures
    old: dict | None     # the current model's, when it could be scored here
    test_photos: int
    background_photos: int   # validation photos of none of our places


@dataclass
class Photos:
    """Photos both models are scored on: the dataset's packed arrays, and the files behind them for a model that
    reads another size or crop (normalised by images.normalise at its own size, as predict.py gives it photos)."""
    x: np.ndarray
    files: object         # () -> the files behind the rows, read only for a model that needs them
    mode: str

    def __len__(self):
        return len(self.x)

    def for_model(self, meta: dict) -> np.ndarray:
        size, mode = list(meta["input_size"]), meta.get("resize_mode") or self.mode
        if size == list(self.x.shape[1:3]) and mode == self.mode:
            return self.x
        out = np.zeros((len(self.x), *size, 3), np.uint8)
        for i, f in enumerate(self.files()):
            try:
                out[i] = images.normalise(f, size[0], mode)
            except (OSError, images.ImageRejected) as e:
                raise UserError(f"{f}: cannot score on it ({e}); run preprocess.py and dataset.py again")
        return out


def score(run, x: Photos, y, classes, neg: Photos | None = None) -> dict:
    """A run's figures: test metrics on (x, y) and its false accept on `neg`, computed here the same way for the
    candidate and the current model, each on the photos at its own input size."""
    from locator.core.metrics import classification_metrics, summary
    from locator.train import finish

    runs.env_threads()
    net, meta = runs.load(run)
    probs = finish.predict(net, x.for_model(meta))[:, :len(classes)]  # a background output is no answer here
    m = classification_metrics(y, probs.argmax(1), classes)
    return summary(m) | {"per_place_f1": {p["index"]: p["f1"] for p in m["per_place"] if p["support"]},
                        GATE: false_accept(net, meta, neg, len(classes))}


def false_accept(net, meta: dict, neg: Photos | None, classes: int):
    """The share of `neg` (photos of none of our places) the run accepts as one of our places by its own unknown
    rule; None without such photos, or for a run whose metadata holds no calibrated threshold."""
    from locator.predict.predictor import acceptance, accepted
    from locator.train import finish

    rule = meta.get("unknown") or {}
    if neg is None or not len(neg) or rule.get("threshold") is None:
        return None
    _, sc = acceptance(finish.predict(net, neg.for_model(meta)), classes, bool(meta.get("background")),
                       rule.get("score"))
    return round(float(accepted(sc, rule["threshold"]).mean()), 4)


def comparable(meta: dict, classes) -> str:
    """Why a model cannot be scored on this dataset ("" if it can): other places. Another input size is no
    reason: each model gets the test photos at its own size."""
    if runs.class_difference(meta, [(c["index"], c["name"]) for c in classes]) is not None:
        return "its places differ from the dataset's (the place table changed)"
    return ""


def judge(cand, cur, cur_meta: dict, folder, tolerance: float = config.PROMOTE_TOLERANCE,
          gate_tolerance: float = config.PROMOTE_GATE_TOLERANCE) -> Verdict:
    """Score the candidate (and the current model, when it can be scored on this dataset) and decide."""
    classes = dataset.load_classes(folder)
    root = Path(folder).parent
    try:
        mode = dataset.read_summary(folder).get("resize_mode", config.RESIZE_MODE)
    except UserError:
        mode = config.RESIZE_MODE
    x, y, _ = dataset.load_split(folder, "test", mmap=False)
    x = Photos(x, lambda: dataset.photo_paths(root, "test"), mode)
    neg = dataset.load_negatives(folder, "val")
    neg = None if neg is None else Photos(neg, lambda: dataset.photo_paths(root, "val", negatives=True), mode)
    bg = 0 if neg is None else len(neg)
    new, old = score(cand, x, y, classes, neg), None
    if cur is None:
        alone = "no current model yet"
    else:
        why = comparable(cur_meta, classes) if cur_meta else "its metadata is unreadable"
        alone = f"the current model {cur.name} cannot be scored on this dataset: {why}" if why else ""
        if not why:
            old = score(cur, x, y, classes, neg)
    if alone:
        ok, reason = first_model(new, chance(y), bg, alone)
    else:
        ok, reason = decide(new, old, tolerance, gate_tolerance)
    return Verdict(ok, reason, new, old, int(len(y)), bg)


def chance(y) -> float:
    """The test accuracy of a model that learnt nothing: always naming the commonest place of the split."""
    y = np.asarray(y)
    return float(np.bincount(y).max() / len(y)) if len(y) else 0.0


def decide(new: dict, old: dict, tolerance: float, gate_tolerance: float = config.PROMOTE_GATE_TOLERANCE):
    """(promote?, reason). The candidate must not trail the current model by more than `tolerance` on accuracy or
    macro F1, nor accept more than `gate_tolerance` more of the validation background photos. When only one of
    them has a background figure the unknown rule is not compared, and the reason says so."""
    worse = [f"{k} {new[k]:.4f} < {old[k]:.4f} - {tolerance:g}" for k in METRICS
             if new[k] < old[k] - tolerance - _EPS]
    fa_new, fa_old = new.get(GATE), old.get(GATE)
    if fa_new is not None and fa_old is not None:
        gate = f"background false accept {fa_new:.1%} vs {fa_old:.1%}; tolerance {gate_tolerance * 100:g} points"
        if fa_new > fa_old + gate_tolerance + _EPS:
            worse.append(f"it accepts {fa_new:.1%} of the validation background photos (none of our places) as one "
                         f"of ours, the current model {fa_old:.1%} (more than {gate_tolerance * 100:g} points worse)")
    elif fa_new is None and fa_old is None:
        gate = "the unknown rule is not compared: no background photos in the validation split"
    else:
        gate = (f"the unknown rule is not compared: the {'candidate' if fa_new is None else 'current model'} has no "
                "background false-accept figure (no calibrated threshold), so accuracy and macro F1 decide")
    if worse:
        return False, "candidate worse than the current model: " + "; ".join(worse)
    return True, ("not worse than the current model (" +
                  ", ".join(f"{k} {new[k]:.4f} vs {old[k]:.4f}" for k in METRICS) +
                  f"; tolerance {tolerance:g}; {gate})")


def first_model(new: dict, chance_accuracy: float, background: int, alone: str,
                min_skill: float = config.PROMOTE_FIRST_MIN_SKILL,
                max_false_accept: float = config.PROMOTE_FIRST_MAX_FALSE_ACCEPT):
    """(promote?, reason) for a candidate with no model to compare with (`alone` says why). Its test accuracy must
    close `min_skill` of the gap between `chance_accuracy` and 1; where the validation split has `background`
    photos, its unknown rule must be calibrated and accept at most `max_false_accept` of them."""
    floor = chance_accuracy + min_skill * (1 - chance_accuracy)
    acc, fa = new["test_accuracy"], new.get(GATE)
    short = []
    if acc < floor - _EPS:
        short.append(f"test accuracy {acc:.4f} is below the minimum {floor:.4f} (always naming the commonest place "
                     f"scores {chance_accuracy:.4f})")
    if background and fa is None:
        short.append(f"it has no calibrated unknown rule, and the validation split has {background} background "
                     "photos to hold it to")
    elif background and fa > max_false_accept + _EPS:
        short.append(f"it accepts {fa:.1%} of the {background} validation background photos (none of our places) "
                     f"as one of ours, more than the {max_false_accept:.0%} a first model may")
    if short:
        return False, f"{alone}, and the candidate misses the first model's minimums: " + "; ".join(short)
    gate = (f"background false accept {fa:.1%} <= {max_false_accept:.0%}" if background
            else "no background photos in the validation split to hold its unknown rule to")
    return True, f"{alone}; the candidate clears the first model's minimums (test accuracy {acc:.4f} >= {floor:.4f}; " \
                 f"{gate})"


def headline(m):
    return {k: m.get(k) for k in (*METRICS, GATE)} if m else None
