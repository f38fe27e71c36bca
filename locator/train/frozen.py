"""The embedding model: frozen ImageNet backbones, each one's pooled features made unit length and concatenated,
and a linear softmax head over our places plus the background output, trained on cached embeddings.

The head is a multinomial logistic regression (scikit-learn's L-BFGS), its regularisation C chosen on the
validation split, with class-balanced weights (our places have 28 to 150 photos each). Each training photo counts
twice: as taken and mirrored (a landmark mirrored is still itself). It trains in seconds on a few thousand photos;
a 512-unit hidden layer did no better than this linear head on validation (docs/results.md).

The model saved (model.h5, the SavedModel export) takes uint8 photos at the backbones' size and does it all
inside: backbones -> unit length -> concatenation -> head, with the same weights as the head trained here.
"""
import logging
import time

import numpy as np

from locator.core import config
from locator.train import backbones
from locator.train.embed import Embedder, embed, l2_normalise

log = logging.getLogger("train")


def features(per_backbone, view=0) -> np.ndarray:
    """(N, sum of D) from [(N, views, D)] per backbone: each backbone's features made unit length, concatenated.
    view: an index (0 as the model sees it, 1 mirrored) or None for every view (rows: view-major)."""
    if view is None:
        return np.concatenate([features(per_backbone, v) for v in range(per_backbone[0].shape[1])])
    return np.concatenate([l2_normalise(e[:, view]) for e in per_backbone], axis=1)


def fit_head(x, y, classes: int, c: float, balanced: bool = True, seed: int = config.TRAIN_SEED):
    """(weights (D, classes), bias (classes,)) of a logistic regression; every class gets a column even if a
    split lacks it."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    lr = LogisticRegression(C=c, max_iter=config.HEAD_MAX_ITER, class_weight="balanced" if balanced else None,
                            random_state=seed)
    # One BLAS thread: each L-BFGS step multiplies a few thousand rows by a (features x classes) matrix, too
    # small for threads to pay, and threaded OpenBLAS beside any other busy process spins: 91 s against 4.7 s for
    # the same fit at load 9 on 2 cores (docs/results.md)
    with threadpool_limits(config.HEAD_BLAS_THREADS):
        lr.fit(x, y)
    w = np.zeros((x.shape[1], classes), np.float32)
    b = np.full(classes, -1e4, np.float32)       # a class absent from training is never predicted
    w[:, lr.classes_] = lr.coef_.T
    b[lr.classes_] = lr.intercept_
    return w, b


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def probabilities(x, head) -> np.ndarray:
    w, b = head
    return softmax(x @ w + b).astype(np.float32)


def choose_c(train, val, classes: int, grid=config.HEAD_C_GRID, balanced: bool = True):
    """The C with the best validation accuracy over all validation rows (places and background), ties to the
    smaller C (more regularised). Returns (c, its head, {c: val accuracy}, seconds of its fit)."""
    (xt, yt), (xv, yv) = train, val
    scores, heads, seconds = {}, {}, {}
    for c in grid:
        started = time.perf_counter()
        heads[c] = fit_head(xt, yt, classes, c, balanced)
        seconds[c] = time.perf_counter() - started
        scores[c] = float((probabilities(xv, heads[c]).argmax(1) == yv).mean())
        log.info("head C=%g: validation accuracy %.4f (%.1f s)", c, scores[c], seconds[c])
    best = max(grid, key=lambda c: (scores[c], -c))
    return best, heads[best], scores, seconds[best]


def assemble(names, head, weights=None, size: int | None = None, name: str = "embedding"):
    """The whole model as one Keras network: uint8 photos (size, size, 3) in, probabilities out."""
    import keras
    from keras import layers

    size = size or backbones.BACKBONES[names[0]].size
    inputs = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0, name="to_float")(inputs)   # a cast the .h5 format can store
    parts = []
    for n in names:
        net = backbones.build(n, (weights or {}).get(n), size)
        parts.append(layers.UnitNormalization(name=f"{backbones.SHORT[n]}_unit")(net(x)))
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name="embedding")(parts)
    dense = layers.Dense(head[0].shape[1], activation="softmax", dtype="float32", name="probs")
    outputs = dense(x)
    dense.set_weights([head[0], head[1]])
    return keras.Model(inputs, outputs, name=name)


def photo_files(data_root, data) -> dict:
    """split -> the photo behind each row, and neg_<split> -> behind each background row."""
    from locator.data import dataset

    out = {s: dataset.photo_paths(data_root, s) for s in data.files}
    out.update({f"neg_{s}": dataset.photo_paths(data_root, s, negatives=True) for s in data.neg})
    return out


def train(data, data_root, s, progress: bool = True):
    """Embed every photo of the dataset (cached), choose C and fit the head, assemble the model. Returns (keras
    model, its answers {val, test, neg_val, neg_test} from the embeddings, seconds, a record for metadata.json)."""
    from locator.train.fit import uses_background

    started = time.perf_counter()
    names, weights = list(s.extra["backbones"]), s.extra.get("weights") or {}
    files = photo_files(data_root, data)
    stats, emb = {}, {}
    for n in names:
        embedder = Embedder(n, weights.get(n), s.extra.get("input_size", [None])[0])
        emb[n], stats[n] = {}, {"cached": 0, "embedded": 0}
        for k, f in files.items():
            st = {}
            emb[n][k] = embed(f, data_root, embedder, batch=config.EMBED_BATCH, progress=progress, stats=st)
            stats[n] = {key: stats[n][key] + st.get(key, 0) for key in stats[n]}
    embedded = time.perf_counter() - started
    bg, n_cls = uses_background(data, s), len(data.classes)

    def rows(split, view):
        x, y = features([emb[m][split] for m in names], view), data.y[split]
        if bg and f"neg_{split}" in files:
            xn = features([emb[m][f"neg_{split}"] for m in names], view)
            x, y = np.concatenate([x, xn]), np.concatenate([y, np.full(len(xn), n_cls)])
        return x, y

    train_rows = [np.concatenate(a) for a in zip(rows("train", 0), rows("train", 1))]   # mirrored: a 2nd photo
    c, head, by_c, head_seconds = choose_c(train_rows, rows("val", 0), n_cls + bg)
    answers = {k: probabilities(features([emb[m][k] for m in names]), head) for k in files if k != "train"
               and not k.startswith("neg_train")}
    log.info("head: C=%g (validation accuracy %s), fitted in %.1f s; embedding took %.0f s (%s)", c,
             {f"{k:g}": round(v, 4) for k, v in by_c.items()}, head_seconds, embedded,
             ", ".join(f"{backbones.SHORT[m]} {v['embedded']} new, {v['cached']} cached" for m, v in stats.items()))
    net = assemble(names, head, weights, s.extra.get("input_size", [None])[0], name=s.name)
    record = {"head_c": c, "val_accuracy_by_c": {f"{k:g}": round(v, 4) for k, v in by_c.items()},
              "head_seconds": round(head_seconds, 2), "search_seconds": round(time.perf_counter() - started -
                                                                               embedded, 1),
              "embed_seconds": round(embedded, 1), "embeddings": stats}
    return net, answers, time.perf_counter() - started, record
