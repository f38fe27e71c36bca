"""How well does "not one of our places" work? Train with some places kept out entirely, then measure.

    python bench/unknown_eval.py --data /tmp/real/data --holdout 04,09,0c,11,16 --epochs 50

The kept-out places' photos (all splits) play "somewhere else"; the dataset's negatives (dataset.py --negatives)
play everyday photos. For each variant (max softmax alone, and with a background class learnt from the training
negatives) the threshold is calibrated on the validation split exactly as cnn.py does, then the table gives the
true-accept rate on the known places' test photos and the false-accept rates on kept-out places and on the test
negatives. Targets (docs/conventions.md): <= 10% of kept-out places and <= 5% of everyday photos at >= 90% true accept.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from locator.core import config  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.data.dataset import SPLITS
from locator.predict.predictor import acceptance, accepted  # noqa: E402
from locator.train import finish, fit


def without(data: fit.Data, holdout: set):
    """(known-places Data with contiguous classes, photos of the kept-out places from every split)."""
    keep = [c for c in data.classes if c["index"] not in holdout]
    remap = np.full(len(data.classes), -1)
    remap[[c["class"] for c in keep]] = np.arange(len(keep))
    x, y, files, out = {}, {}, {}, []
    for s in SPLITS:
        known = remap[data.y[s]] >= 0
        x[s], y[s] = data.x[s][known], remap[data.y[s][known]].astype(np.int32)
        files[s] = [f for f, k in zip(data.files[s], known) if k]
        out.append(data.x[s][~known])
    classes = [{**c, "class": i} for i, c in enumerate(keep)]
    return fit.Data(x, y, files, classes, data.fingerprint, data.resize_mode, data.neg), np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=config.DATA)
    ap.add_argument("--holdout", default="04,09,0c,11,16", help="indexes of the places kept out of training")
    ap.add_argument("--epochs", type=int, default=config.EPOCHS)
    ap.add_argument("--true-accept", type=float, default=config.UNKNOWN_TRUE_ACCEPT)
    ap.add_argument("--variants", default="softmax,background")
    a = ap.parse_args()
    data = fit.load_data(config.dataset_dir(a.data))
    known, elsewhere = without(data, set(a.holdout.split(",")))
    rows = []
    for variant in a.variants.split(","):
        s = fit.Settings(epochs=a.epochs, background=(variant == "background"))
        with tempfile.TemporaryDirectory() as tmp:
            net, secs, _ = fit.train(known, Path(tmp), s, progress=True)
        unknown = finish.calibrate_unknown(net, known, s, a.true_accept)
        bg, n = fit.uses_background(known, s), len(known.classes)
        _, score = acceptance(finish.predict(net, elsewhere), n, bg)
        acc = float((finish.predict(net, known.x["test"])[:, :n].argmax(1) == known.y["test"]).mean())
        rows.append([variant, f"{acc:.1%}", f"{unknown['threshold']:.3f}", f"{unknown['test_true_accept']:.1%}",
                     f"{accepted(score, unknown['threshold']).mean():.1%}",
                     f"{unknown.get('test_negatives_false_accept', float('nan')):.1%}", f"{secs:.0f}"])
        print(format_table(["variant", "test acc", "threshold", "true accept", "FA kept-out places",
                            "FA everyday", "train s"], rows), flush=True)
    print(f"{len(known.classes)} known places, {len(elsewhere)} photos of {len(a.holdout.split(','))} kept-out "
          f"places, threshold for {a.true_accept:.0%} true accept on validation, {a.epochs} epochs")


if __name__ == "__main__":
    main()
