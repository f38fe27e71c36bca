"""Embeddings: each photo's pooled ImageNet features, computed once per photo and backbone, kept under data/.

`data/embeddings/<backbone>-<size>-<weights digest>/<sha256[:2]>/<sha256>.npy` holds float32 (views, features) for
the photo whose bytes hash to <sha256>: view 0 the photo as the model sees it (images.normalise at the
backbone's size, centre crop: the pixels predict.py and serve.py give the model), view 1 the same mirrored. The
key is the content, so a renamed or re-crawled photo is not embedded twice, and other weights or another size
never reuse old features. Each file is written to a temporary name and renamed (kill -9 leaves a photo embedded
or not, never half), so a re-run embeds only what is missing.

The backbone runs through TensorFlow Lite (XNNPACK), converted from the same Keras network that model.h5 holds:
3-4x Keras' graph mode on 2 cores for these depthwise networks, agreeing within 1e-4 (docs/results.md). Photos
are decoded in threads while the network runs. `lookup` (the cache) and `embed_decoded` (network + atomic writes)
are the work both runners share: `embed` here, and `raydist` on a Ray cluster (cnn.py --runner ray).
"""
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from locator.core import config, images
from locator.core.errors import UserError
from locator.core.fsio import atomic_path, atomic_write_bytes
from locator.train import backbones

log = logging.getLogger("embed")
VIEWS = ("centre", "mirrored")
CROP = "crop"          # a square from the middle, resized: the backbones were trained on centre crops


def embeddings_dir(data) -> Path:
    return Path(data) / "embeddings"


class Embedder:
    """One backbone, loaded once: uint8 photos (N, size, size, 3) -> float32 features (N, D)."""

    def __init__(self, name: str, weights=None, size: int | None = None, threads: int | None = None):
        if name not in backbones.BACKBONES:
            raise UserError(f"unknown backbone {name!r}; one of {', '.join(backbones.BACKBONES)}")
        self.name, self.size = name, size or backbones.BACKBONES[name].size
        self.weights = backbones.weights_file(name, weights)
        self.key = f"{name}-{self.size}-{backbones.file_digest(self.weights)[:12]}"
        self._run = None
        self.threads = threads      # TF Lite's threads (default: one per core); a Ray worker uses its CPUs'

    def folder(self, data) -> Path:
        return embeddings_dir(data) / self.key

    def tflite(self, data) -> Path:
        """This backbone's TF Lite file, converted once and kept beside its embeddings (a cluster's workers load
        the file the head converted on the shared data folder)."""
        import tensorflow as tf

        tflite = self.folder(data) / "backbone.tflite"
        if not tflite.exists():
            net = backbones.build(self.name, self.weights, self.size)
            atomic_write_bytes(tflite, tf.lite.TFLiteConverter.from_keras_model(net).convert())
        return tflite

    def _load(self, data):
        """The TF Lite interpreter of this backbone; Keras if TF Lite is not there."""
        import tensorflow as tf

        interpreter = getattr(getattr(tf, "lite", None), "Interpreter", None)
        if interpreter is None:
            net = backbones.build(self.name, self.weights, self.size)
            return lambda x: net.predict(x.astype(np.float32), batch_size=len(x), verbose=0)
        it = interpreter(model_path=str(self.tflite(data)), num_threads=self.threads or os.cpu_count() or 1)
        inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        shape = [0]

        def run(x):
            if shape[0] != len(x):
                it.resize_tensor_input(inp, [len(x), self.size, self.size, 3])
                it.allocate_tensors()
                shape[0] = len(x)
            it.set_tensor(inp, x.astype(np.float32))
            it.invoke()
            return it.get_tensor(out).copy()
        return run

    def __call__(self, pixels: np.ndarray, data=None) -> np.ndarray:
        if self._run is None:
            self._run = self._load(data if data is not None else config.DATA)
        return self._run(pixels)


def _path(folder: Path, digest: str) -> Path:
    return folder / digest[:2] / f"{digest}.npy"


def _read(path: Path):
    try:
        arr = np.load(path)
    except (OSError, ValueError, EOFError):
        return None  # missing or cut short: embedded again
    return arr if arr.ndim == 2 and arr.shape[0] == len(VIEWS) and arr.dtype == np.float32 else None


def _bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e}); run preprocess.py and dataset.py again")


def _decode(path: Path, size: int):
    """(sha256, pixels) of one photo; raises UserError naming the file if it cannot be decoded."""
    raw = _bytes(path)
    try:
        return hashlib.sha256(raw).hexdigest(), images.normalise(raw, size=size, mode=CROP)
    except images.ImageRejected as e:
        raise UserError(f"{path}: {e}; preprocess.py quarantines such photos: run it and dataset.py again")


def lookup(files, folder: Path):
    """(arrays, todo): each photo's cached array or None, and the indexes of the photos not cached."""
    out: list = [None] * len(files)
    todo = []
    for i, f in enumerate(files):   # the cache is keyed by content: read each photo's bytes once to hash them
        out[i] = _read(_path(folder, hashlib.sha256(_bytes(f)).hexdigest()))
        if out[i] is None:
            todo.append(i)
    return out, todo


def embed_decoded(decoded, embedder: Embedder, folder: Path, data=None) -> list:
    """Decoded photos [(sha256, pixels)] and their mirror images through the backbone in one call; each photo's
    (views, D) array written to the cache atomically (the caller syncs once) and returned, in order."""
    x = np.stack([p for _, p in decoded])
    feats = embedder(np.concatenate([x, x[:, :, ::-1]]), data)
    out = []
    for j, (digest, _) in enumerate(decoded):
        arr = np.stack([feats[j], feats[len(decoded) + j]]).astype(np.float32)
        with atomic_path(_path(folder, digest), fsync=False) as tmp:
            np.save(tmp, arr)
        out.append(arr)
    return out


def embed_batch(paths, embedder: Embedder, folder: Path, data=None, pool=None) -> list:
    """Decode photo files (in `pool`'s threads if given), embed and cache them: a Ray worker's batch."""
    decoded = list((pool.map if pool else map)(lambda f: _decode(f, embedder.size), paths))
    return embed_decoded(decoded, embedder, folder, data)


def embed(files, data, embedder: Embedder, batch: int = 32, workers: int = 0, progress: bool = True,
          stats: dict | None = None) -> np.ndarray:
    """float32 (N, views, D) for photo files, from the cache where it has them; the rest are decoded in threads,
    embedded in batches and cached. `stats` (a dict) receives {cached, embedded}."""
    from tqdm import tqdm

    folder = embedder.folder(data)
    files = [Path(f) for f in files]
    out, todo = lookup(files, folder)
    if stats is not None:
        stats.update(cached=len(files) - len(todo), embedded=len(todo))
    if todo:
        log.info("%s: embedding %d of %d photos (%d cached)", embedder.key, len(todo), len(files),
                 len(files) - len(todo))
        workers = workers or max(1, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), unit="photo", desc=f"embed {backbones.SHORT[embedder.name]}",
                   disable=not progress)
        with ThreadPoolExecutor(workers) as pool:
            chunks = [todo[k:k + batch] for k in range(0, len(todo), batch)]
            pending = [pool.map(lambda i: _decode(files[i], embedder.size), c) for c in chunks[:2]]
            for n, chunk in enumerate(chunks):
                decoded = list(pending.pop(0))
                if n + 2 < len(chunks):   # two chunks decode ahead while this one runs through the network
                    pending.append(pool.map(lambda i: _decode(files[i], embedder.size), chunks[n + 2]))
                for i, arr in zip(chunk, embed_decoded(decoded, embedder, folder, data)):
                    out[i] = arr
                bar.update(len(chunk))
        bar.close()
        os.sync()   # the renamed files reach the disk together: one sync, not one fsync per photo
    if not files:
        return np.zeros((0, len(VIEWS), 0), np.float32)
    return np.stack(out)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit length along the last axis, as keras.layers.UnitNormalization does inside the model."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
