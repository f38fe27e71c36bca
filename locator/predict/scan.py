"""Predict a folder of photos: find them, decode them in threads while the model works on the previous batch, and
turn each photo into a Result (the place answer from Predictor, its EXIF GPS position, or why it is unreadable).

predict.py is the thin script on top; the benchmark and serve.py's tests use the same machinery.
"""
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locator.core import config, images
from locator.core.errors import UserError
from locator.predict import gps

log = logging.getLogger("predict")


@dataclass
class Photo:
    path: Path
    name: str                          # relative to the folder, "/"-separated: what the outputs show
    label: str | None = None           # evaluation: the index its subfolder names, config.UNKNOWN_FOLDER, or None


@dataclass
class Result:
    photo: Photo
    probs: np.ndarray | None = None    # the model's output row: places in class order [+ background last]
    answer: dict | None = None         # Predictor.answer(): index, name, confidence, top 3, place, nearby
    gps: dict | None = None            # EXIF position and the nearest place of the table
    pixels: np.ndarray | None = None   # what the model saw, kept for the contact sheet
    reason: str = ""                   # images.REASONS (or "unreadable") when the photo could not be used
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.answer is not None

    @property
    def status(self) -> str:
        """"place" (accepted), "unknown" (none of our places) or "unreadable"."""
        if not self.ok:
            return "unreadable"
        return "place" if self.answer["known"] else "unknown"


def find_photos(folder) -> list:
    """Every file below `folder` (recursively, sorted), hidden files and folders left out (.gitkeep, .DS_Store).
    Files that are not images are included on purpose: they are reported with their reason, not silently skipped.
    A missing folder is a UserError; an empty one gives []."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (put the photos to predict in {folder}/ or name another folder)")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                p = Path(root) / f
                found.append(Photo(p, p.relative_to(folder).as_posix()))
    return sorted(found, key=lambda ph: ph.name)


def demo_photos(data, table, per_place: int = config.DEMO_PER_PLACE) -> list:
    """Up to per_place photos a place from the dataset's test split (files_test.txt: the raw files behind its
    rows, relative to the data root), for a demonstration when the folder to predict is empty. `label` holds the
    place each one shows; [] without a dataset."""
    try:
        lines = (config.dataset_dir(data) / "files_test.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    known, chosen = {p.index for p in table}, {}
    for line in lines:
        parts = line.split("/")
        if len(parts) == 3 and parts[0] == config.raw_dir(Path()).name and parts[1] in known:
            path = Path(data) / line
            if len(chosen.setdefault(parts[1], [])) < per_place and path.is_file():
                chosen[parts[1]].append(Photo(path, f"test split/{line}", parts[1]))
    return [ph for index in sorted(chosen) for ph in chosen[index]]


def label_for(folder_name: str, table) -> str | None:
    """The place a folder name stands for: its hex index ("0a") or its folder name (first query term, e.g.
    "n_seoul_tower"); config.UNKNOWN_FOLDER for photos of none of our places; None for any other name."""
    name = folder_name.strip().lower()
    if name == config.UNKNOWN_FOLDER:
        return config.UNKNOWN_FOLDER
    for p in table.places:
        if name in (p.index, p.folder):
            return p.index
    return None


def label_photos(photos, table) -> int:
    """Label each photo by its top subfolder (evaluation mode); returns how many got a label."""
    for ph in photos:
        parts = ph.name.split("/")
        ph.label = label_for(parts[0], table) if len(parts) > 1 else None
    return sum(ph.label is not None for ph in photos)


def _read(predictor, photo: Photo) -> Result:
    """Decode one photo into the model's pixels and read its GPS position (runs in a worker thread)."""
    r = Result(photo)
    try:
        blob = photo.path.read_bytes()
        r.pixels = predictor.pixels(blob)  # THE normalisation: the run's input size and resize mode
    except images.ImageRejected as e:
        r.reason, r.detail = e.reason, e.detail
        return r
    except OSError as e:  # vanished or unreadable file: this photo fails, the others go on
        r.reason, r.detail = "unreadable", f"{type(e).__name__}: {e.strerror or e}"
        return r
    pos = gps.read_gps(blob)
    if pos is not None:
        place, km = predictor.table.nearest_place(*pos)
        r.gps = {"latitude": round(pos[0], 6), "longitude": round(pos[1], 6),
                 "nearest": {"index": place.index, "name": place.name, "km": round(km, 2)}}
    return r


def predict_photos(predictor, photos, batch: int = config.PREDICT_BATCH, workers: int = config.PREDICT_WORKERS,
                   progress: bool = True, keep_pixels: int = 0, nearby: int = config.NEARBY):
    """Yield a Result per photo, in order. Threads decode the next batch while the model predicts this one
    (Pillow releases the GIL while decoding and resizing); the model sees whole batches, since a call costs
    far more than one photo's share of a batch. Pixels are kept for the first `keep_pixels` photos only."""
    from tqdm import tqdm

    chunks = iter([photos[i:i + batch] for i in range(0, len(photos), batch)])
    pending = deque()
    done = 0
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(photos), unit="photo", desc="predicting", disable=not progress) as bar:

        def read_ahead():
            chunk = next(chunks, None)
            if chunk:
                pending.append([pool.submit(_read, predictor, ph) for ph in chunk])

        read_ahead()
        read_ahead()  # one batch decoding ahead of the model, not the whole folder: memory stays flat
        while pending:
            futures = pending.popleft()
            read_ahead()
            results = [f.result() for f in futures]
            readable = [r for r in results if r.pixels is not None]
            if readable:
                probs = predictor.probabilities(np.stack([r.pixels for r in readable]), batch=batch)
                for r, row in zip(readable, probs):
                    r.probs, r.answer = row, predictor.answer(row, nearby)
            for r in results:
                if done >= keep_pixels:
                    r.pixels = None
                done += 1
            bar.update(len(results))
            yield from results


def evaluate(results, table) -> dict | None:
    """Evaluation mode's numbers for the labelled photos, or None when none is labelled and readable.

    Accuracy and per-place precision/recall are top-1 over our places (closed set, as cnn.py's test accuracy),
    plus the open-set view at the threshold: the share of place photos accepted and accepted correctly, and the
    share of photos under unknown/ accepted (false accept)."""
    from locator.core.metrics import classification_metrics

    placed = [r for r in results if r.ok and r.photo.label not in (None, config.UNKNOWN_FOLDER)]
    others = [r for r in results if r.ok and r.photo.label == config.UNKNOWN_FOLDER]
    if not placed and not others:
        return None
    out = {}
    if placed:
        y_true = [int(r.photo.label, 16) for r in placed]                 # class number = int(index, 16)
        y_pred = [int(r.answer["top3"][0]["index"], 16) for r in placed]
        out = classification_metrics(y_true, y_pred, table.classes())
        out["true_accept"] = round(sum(r.answer["known"] for r in placed) / len(placed), 4)
        out["accepted_correct"] = round(sum(r.answer["index"] == r.photo.label for r in placed) / len(placed), 4)
    out["unknown_photos"] = len(others)
    out["false_accept"] = round(sum(r.answer["known"] for r in others) / len(others), 4) if others else None
    return out
