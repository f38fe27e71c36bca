"""Do the converted backbones still see what ImageNet taught them? Each backbone with its own ImageNet classifier
(the 1000-class layer the pinned package ships beside the features) classifies real photos of animals and food.

    python bench/imagenet_check.py --photos ../shared/datasets/negatives/photos

A wrong conversion (padding, epsilon, input scaling, a transposed kernel) keeps the shapes and loses the classes:
most animal photos then land outside ImageNet's animal classes (0-397) and food outside its food classes
(923-969). The table gives, per backbone and folder, the share of photos whose top-1 and top-5 fall in the
folder's range, and the commonest top-1 classes.
"""
import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from locator.core import cpu, images  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.train import backbones  # noqa: E402
from locator.train.weights import read_torch_legacy  # noqa: E402

RANGES = {"animals": range(0, 398), "food": range(923, 970)}   # ImageNet's class numbers for these kinds


def classifier(name):
    """(kernel (1280, 1000), bias) of the ImageNet head in the backbone's own file."""
    state = read_torch_legacy(backbones.weights_file(name))
    key = "_fc" if backbones.BACKBONES[name].family == "lite" else "classifier.1"
    return state[f"{key}.weight"].T, state[f"{key}.bias"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="a folder with animals/ and food/ subfolders")
    ap.add_argument("--backbones", default=",".join(n for n in backbones.BACKBONES if backbones.default_file(n)))
    args = ap.parse_args()
    rows = []
    for name in args.backbones.split(","):
        net, (w, b) = backbones.build(name), classifier(name)
        size = backbones.BACKBONES[name].size
        for kind, want in RANGES.items():
            files = sorted(p for p in (args.photos / kind).iterdir() if p.is_file())
            x = np.stack([images.normalise(f, size, "crop") for f in files]).astype(np.float32)
            top = np.argsort(-(net.predict(x, batch_size=32, verbose=0) @ w + b), 1)[:, :5]
            rows.append([name, kind, len(files), f"{np.isin(top[:, 0], want).mean():.0%}",
                         f"{np.isin(top, want).any(1).mean():.0%}",
                         " ".join(f"{c}x{n}" for c, n in Counter(top[:, 0].tolist()).most_common(4))])
    print(f"CPU: {cpu.cpu_model()}")
    print(format_table(["backbone", "photos of", "photos", "top-1 in range", "top-5 in range",
                        "commonest top-1 (class x photos)"], rows))


if __name__ == "__main__":
    main()
