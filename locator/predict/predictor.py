"""From photos to place answers: shared by predict.py and serve.py so that both answer exactly alike.

A Predictor holds one model run: it normalises photos with THE image function (images.normalise, with the
run's input size and resize mode), predicts in batches, applies the "unknown" rule stored in metadata.json and
turns a probability row into the place answer (index, name, confidence, top 3, coordinates, address, nearby).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locator.core import config, images
from locator.core.errors import UserError
from locator.core.places import PlaceTable
from locator.runs import runs

# The "unknown" scores a model with a background output can be calibrated with (metadata.json `unknown.score`
# names the one in use). cnn.py calibrates each on validation at the same true-accept rate and keeps the one that
# accepts the fewest validation background photos (train/finish.calibrate_unknown). Both give 0 when the
# background output beats every place: a background win is never accepted, whatever the threshold.
SCORES = ("max_softmax+background", "not_background")


def acceptance(probs: np.ndarray, classes: int, background: bool, score: str | None = None):
    """The "unknown" rule's inputs for a batch: (best place, score). A photo is accepted when score >= threshold.

    - without a background output: `max_softmax`, the best place's probability;
    - `max_softmax+background` (the default with a background output, the last column): the best place's
      probability, 0 when the background probability beats every place;
    - `not_background`: 1 - the background probability (how sure the model is that the photo shows one of our
      places, whichever), 0 when the background probability beats every place.
    train/finish.calibrate_unknown sets the threshold with this same function.
    """
    probs = np.asarray(probs)
    place = probs[:, :classes]
    best = place.argmax(1)
    top = place.max(1)
    if not background:
        return best, top
    won = probs[:, -1] > top
    score = score or "max_softmax+background"
    if score == "max_softmax+background":
        return best, np.where(won, 0.0, top)
    if score == "not_background":
        return best, np.where(won, 0.0, 1.0 - probs[:, -1])
    raise ValueError(f"unknown score {score!r}; one of {', '.join(SCORES)}")


def accepted(score, threshold: float):
    """THE acceptance rule: a score of 0 (the background output won) is never accepted, whatever the threshold."""
    score = np.asarray(score)
    return (score > 0) & (score >= threshold)


@dataclass
class Predictor:
    model: object        # keras.Model: uint8 pixels in, probabilities out
    meta: dict           # metadata.json
    table: PlaceTable
    run: Path
    threshold: float | None = None  # None: the one calibrated by cnn.py (metadata.json `unknown.threshold`)
    nearby_km: float = config.NEARBY_KM  # attractions farther than this are not "nearby"

    def __post_init__(self):
        if self.threshold is None:
            self.threshold = float((self.meta.get("unknown") or {}).get("threshold") or 0.0)

    @classmethod
    def load(cls, run, table: PlaceTable, threshold: float | None = None) -> "Predictor":
        """Load a run and check that its classes match the table (UserError otherwise)."""
        runs.check_classes(runs.read_metadata(run), table)  # before TensorFlow loads: a wrong table fails fast
        try:
            model, meta = runs.load(run)
        except (OSError, ValueError) as e:  # a truncated or foreign model.h5: the user's to fix, not a traceback
            raise UserError(f"{Path(run) / 'model.h5'}: cannot load the model ({type(e).__name__}: {str(e)[:160]})")
        return cls(model, meta, table, Path(run), threshold)

    @property
    def size(self) -> int:
        return int(self.meta["input_size"][0])

    @property
    def classes(self) -> int:
        return len(self.meta["classes"])

    def pixels(self, src) -> np.ndarray:
        """One photo (path, bytes or file object) -> uint8 (H, W, 3). Raises images.ImageRejected."""
        return images.normalise(src, size=self.size, mode=self.meta["resize_mode"])

    def probabilities(self, x: np.ndarray, batch: int = 128) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the model's outputs (N, classes [+1 background]) as float32."""
        if len(x) == 0:
            return np.zeros((0, self.classes + bool(self.meta.get("background"))), np.float32)
        return np.asarray(self.model.predict(np.asarray(x, np.uint8), batch_size=batch, verbose=0), np.float32)

    def decide(self, probs_row: np.ndarray):
        """(class or None for unknown, confidence, place probabilities). Background column, if any, is last."""
        place_probs = probs_row[: self.classes]
        best, score = acceptance(probs_row[None], self.classes, bool(self.meta.get("background")),
                                 (self.meta.get("unknown") or {}).get("score"))
        cls, conf = int(best[0]), float(place_probs[best[0]])
        return (cls if accepted(score[0], self.threshold) else None), conf, place_probs

    def answer(self, probs_row: np.ndarray, nearby: int = 5) -> dict:
        """The place answer for one photo, as predict.py's JSON and serve.py's /v1/locate give it."""
        cls, conf, place_probs = self.decide(probs_row)
        top = np.argsort(-place_probs)[:3]
        out = {
            "known": cls is not None,
            "index": None, "name": "unknown", "confidence": round(conf, 4),
            "top3": [{"index": self.table.by_class(int(c)).index, "name": self.table.by_class(int(c)).name,
                      "confidence": round(float(place_probs[c]), 4)} for c in top],
            "threshold": round(self.threshold, 4),
        }
        if cls is not None:
            p = self.table.by_class(cls)
            out.update(index=p.index, name=p.name, latitude=p.latitude, longitude=p.longitude,
                       address=p.address, description=p.description,
                       nearby=[{"name": a.name, "kind": a.kind, "km": round(km, 2)}
                               for a, km in self.table.nearby(p, nearby, self.nearby_km)])
        return out
