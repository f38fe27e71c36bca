"""Serving exports: models/serving/<model name>/<version>/, TensorFlow Serving's layout, made on promotion.

A version folder is a SavedModel whose `serving_default` signature takes uint8 pixels (N x H x W x 3, input
`pixels`) and returns the model's probabilities (output `probs`), so the real `tensorflow_model_server` serves
it unchanged. A copy of the run's metadata.json sits in `assets.extra/` (TF Serving's place for files that are
not part of the graph), so a version folder alone is enough to give place answers. Versions are integers; the
newest is served. A version is written into a temporary folder beside the others and renamed into place, so a
server polling the folder never sees half a version (TF Serving ignores names that are not numbers).
"""
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from locator.core import config
from locator.core.fsio import TMP_PREFIX, atomic_write_json, fsync_path, fsync_tree, lock_for, now_iso
from locator.runs import runs

log = logging.getLogger("serving")

SIGNATURE = "serving_default"
INPUT = "pixels"
OUTPUT = "probs"
EXTRA = "assets.extra"          # TF Serving convention: files the graph does not need (warmup data, ...)
EXPORT_INFO = "export.json"     # which run a version was exported from (for idempotent promotion and logs)


def model_dir(models, name: str = config.MODEL_NAME) -> Path:
    """models/serving/<name>/: the --model_base_path of tensorflow_model_server."""
    return config.serving_dir(models) / name


def is_version(name: str) -> bool:
    """A version folder's name: ASCII digits written as the number itself ("2", not "02", "²" or "٢", which
    str.isdigit() accepts and int() then refuses or reads as another folder's number)."""
    return name.isascii() and name.isdigit() and len(name) <= 18 and str(int(name)) == name


def versions(base) -> list:
    """Version numbers of the complete exports in a model folder, oldest first (temporary folders and any other
    name ignored, as TF Serving does)."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if is_version(p.name) and p.is_dir())


def read_metadata(version_dir) -> dict:
    """metadata.json of an exported version (validated like a run's)."""
    return runs.read_metadata(Path(version_dir) / EXTRA)


def export_info(version_dir) -> dict:
    try:
        return json.loads((Path(version_dir) / EXTRA / EXPORT_INFO).read_text())
    except (OSError, ValueError):
        return {}


def write_version(models, run, keep: int = config.SERVING_KEEP) -> Path:
    """Export a run as the next version of models/serving/<its model name>/ and return that version folder.

    Promoting the run that is already the newest version exports nothing (it returns that version), so a
    repeated promotion is harmless; any other run (a new one, or an older one brought back: a rollback) becomes
    a new, higher version, the one a server then loads. Only the newest `keep` versions are kept.
    """
    run = Path(run)
    meta = runs.read_metadata(run)
    base = model_dir(models, meta["name"])
    base.mkdir(parents=True, exist_ok=True)
    digest = _sha256(run / "model.h5")
    with lock_for(base / ".export"):  # two promotions at once must not pick the same version number
        _remove_temporaries(base)
        have = versions(base)
        newest = export_info(base / str(have[-1])) if have else {}
        if (newest.get("run"), newest.get("model_sha256")) == (run.name, digest):
            log.info("%s is already served as version %d of %s; nothing to export", run.name, have[-1], base)
            return base / str(have[-1])
        version = (have[-1] if have else 0) + 1
        tmp = base / f"{TMP_PREFIX}{os.getpid()}-{version}"
        try:
            _write_saved_model(run, meta, tmp)
            atomic_write_json(tmp / EXTRA / "metadata.json", meta)
            atomic_write_json(tmp / EXTRA / EXPORT_INFO, {"run": run.name, "model_sha256": digest,
                                                          "version": version, "exported": now_iso()})
            fsync_tree(tmp)
            os.rename(tmp, base / str(version))  # atomic: the version appears whole or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_path(base)
        for old in versions(base)[:-keep] if keep > 0 else []:
            shutil.rmtree(base / str(old), ignore_errors=True)  # derived files: the run itself stays
    log.info("exported %s as %s", run.name, base / str(version))
    return base / str(version)


def _write_saved_model(run: Path, meta: dict, out: Path) -> None:
    import tensorflow as tf
    from keras.export import ExportArchive

    model, _ = runs.load(run)
    h, w = meta["input_size"]
    archive = ExportArchive()
    archive.track(model)
    # Named input and output: TF Serving's row format then reads `instances` as pixels, and the metadata API and
    # saved_model_cli show `pixels` -> `probs` instead of Keras' generated names.
    archive.add_endpoint(name=SIGNATURE, fn=lambda pixels: {OUTPUT: model(pixels, training=False)},
                         input_signature=[tf.TensorSpec((None, h, w, 3), tf.uint8, name=INPUT)])
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.WARNING)  # "Assets written to: <temporary folder>" says nothing a user needs
    try:
        archive.write_out(str(out), verbose=False)
    finally:
        tf_log.setLevel(level)


def _remove_temporaries(base: Path) -> None:
    """Temporary folders of exports that died (we hold the export lock, so no live export owns one)."""
    for p in base.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Signature:
    """A loaded export's serving signature, with the `predict` method predictor.Predictor calls on its model.

    The concrete function is called directly: Keras' model.predict costs ~100 ms of set-up per call, more than
    the network itself for one photo.
    """

    def __init__(self, version_dir):
        import tensorflow as tf

        self._tf = tf
        self._saved = tf.saved_model.load(str(version_dir))  # keep a reference: the variables live in it
        if SIGNATURE not in self._saved.signatures:
            raise ValueError(f"no {SIGNATURE} signature (has: {', '.join(self._saved.signatures) or 'none'})")
        self.fn = self._saved.signatures[SIGNATURE]
        _, inputs = self.fn.structured_input_signature
        if list(inputs) != [INPUT] or inputs[INPUT].dtype != tf.uint8:
            raise ValueError(f"{SIGNATURE} must take one uint8 input named {INPUT!r}, takes {inputs}")
        self.input_shape = tuple(inputs[INPUT].shape)
        self.outputs = list(self.fn.structured_outputs)

    def __call__(self, x: np.ndarray) -> dict:
        """uint8 (N, H, W, 3) -> {output name: array}."""
        out = self.fn(**{INPUT: self._tf.constant(x, self._tf.uint8)})
        return {k: v.numpy() for k, v in out.items()}

    def predict(self, x, batch_size: int = 128, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, np.uint8)
        parts = [self(x[i:i + batch_size])[OUTPUT] for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def signature_defs(version_dir) -> dict:
    """The SignatureDefMap of a version as TF Serving's metadata API writes it (protobuf JSON mapping)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    graph = next(g for g in sm.meta_graphs if "serve" in g.meta_info_def.tags)
    return {"signature_def": {k: json_format.MessageToDict(v, preserving_proto_field_name=True)
                              for k, v in graph.signature_def.items()}}
