"""Knowledge distillation: the student learns from a teacher run's answers on THE SAME augmented batch.

Augmentation moves out of the student into tf.data (the student is built with augment=0), so each batch is
augmented once and both networks see the same pixels; CutMix then mixes images and labels, and the teacher
answers for the mixed image. The teacher's probabilities ride along with the labels (y = [one-hot | teacher]), so
the standard Keras fit loop, checkpoints and resume work unchanged:

    loss = (1 - alpha) * CE(label, student) + alpha * T^2 * KL(teacher_T || student_T)

with p_T = softmax(log p / T), which equals softmax(logits / T) for a softmax output (Hinton et al. 2015).
Validation batches carry the label twice (no teacher needed to choose the best epoch).

A teacher that reads photos at another size (the embedding model: 260 px, centre crop) cannot answer for the
student's 64x64 batch. Its answers are then computed ONCE per training photo, from the photo itself at the
teacher's own input size (`photo_answers`, kept in the run's checkpoints for a resume), and ride with the labels
through augmentation and CutMix, which mixes them as it mixes the labels.
"""
import logging
import time
from pathlib import Path

import numpy as np

from locator.core import config
from locator.core.errors import UserError

log = logging.getLogger("train")
ANSWERS = "teacher_answers.npy"   # in the run's checkpoints: a per-photo teacher's answers, one row a training row


def teacher_model(path, outputs: int):
    """The teacher's inference model (a run folder or its model.h5); it must answer for the same outputs."""
    return load_teacher(path, outputs)[0]


def load_teacher(path, outputs: int):
    """(model, metadata) of a teacher run, checked to answer for `outputs` outputs."""
    from locator.runs import runs

    p = Path(path)
    run = p.parent if p.suffix == ".h5" else p
    try:
        net, meta = runs.load(run)
    except (OSError, ValueError) as e:
        raise UserError(f"--teacher {path}: cannot load its model ({type(e).__name__})")
    if int(net.output_shape[-1]) != outputs:
        raise UserError(f"--teacher {path}: answers for {net.output_shape[-1]} outputs, the student has {outputs}: "
                        "train the teacher on the same dataset")
    net.trainable = False
    return net, meta


def reads_photos(net, input_size) -> bool:
    """Whether a teacher takes other pixels than the student's packed arrays (then it answers once per photo)."""
    return list(net.input_shape[1:3]) != list(input_size)


def photo_answers(net, meta: dict, path, data_root, background: bool, rows: int, ck: Path, batch: int = 32):
    """float32 (rows, outputs): the teacher's answers for each training row (the split's photos, then its
    background photos, fit.with_background's order), each photo normalised at the teacher's input size and
    resize mode (images.normalise) and run through its model.h5 once. Kept in `ck`: a resumed run reads them."""
    from concurrent.futures import ThreadPoolExecutor

    from locator.core import images
    from locator.core.fsio import atomic_path
    from locator.data import dataset

    size, mode = int(net.input_shape[1]), meta.get("resize_mode") or "crop"
    if data_root is None:
        raise UserError(f"--teacher {path} reads {size}x{size} photos, not the student's packed arrays: its answers "
                        "come from the photos, so give the data root (cnn.py --data)")
    kept = ck / ANSWERS
    try:
        answers = np.load(kept)
        if answers.shape == (rows, int(net.output_shape[-1])):
            return answers
    except (OSError, ValueError, EOFError):
        pass   # none yet: computed below
    started = time.perf_counter()
    files = dataset.photo_paths(data_root, "train")
    files += dataset.photo_paths(data_root, "train", negatives=True) if background else []
    if len(files) != rows:
        raise UserError(f"{config.dataset_dir(data_root)}: {len(files)} photo files for {rows} training rows; "
                        "rebuild it with python dataset.py")

    def pixels(f):
        try:
            return images.normalise(f, size, mode)
        except (OSError, images.ImageRejected) as e:
            raise UserError(f"{f}: the teacher cannot read it ({e}); run preprocess.py and dataset.py again")

    out, chunks = [], [files[k:k + batch] for k in range(0, len(files), batch)]
    with ThreadPoolExecutor(1) as pool:   # the next chunk decodes while this one runs through the teacher
        ahead = pool.submit(lambda c: np.stack([pixels(f) for f in c]), chunks[0])
        for n in range(len(chunks)):
            x = ahead.result()
            if n + 1 < len(chunks):
                ahead = pool.submit(lambda c: np.stack([pixels(f) for f in c]), chunks[n + 1])
            out.append(np.asarray(net.predict_on_batch(x), np.float32))
    answers = np.concatenate(out)
    with atomic_path(kept) as tmp:
        np.save(tmp, answers)
    log.info("teacher %s: answered for %d photos at %dx%d (%s) in %.0f s", path, rows, size, size, mode,
             time.perf_counter() - started)
    return answers


def pipeline(x, y, classes: int, batch: int, seed: int, cutmix: float, teacher, strength: float, mix=None):
    """Training batches (uint8 images, [one-hot | teacher probabilities]), augmented once for both networks;
    `mix(images, labels, share)` is fit's CutMix. `teacher`: a model answering for each batch, or its answers
    per row (np.ndarray, `photo_answers`), which ride with the labels and are mixed by CutMix like them."""
    import tensorflow as tf

    from locator.train import model as models

    augment = models.augmentation(strength) if strength > 0 else None

    def augmented(images, labels):
        f = tf.cast(images, tf.float32) / 255.0
        if augment is not None:
            f = augment(f, training=True)
        return tf.cast(tf.clip_by_value(tf.round(f * 255.0), 0, 255), tf.uint8), labels

    def with_teacher(images, labels):
        return images, tf.concat([labels, tf.cast(teacher(images, training=False), tf.float32)], -1)

    per_row = isinstance(teacher, np.ndarray)
    labels = tf.one_hot(y, classes)
    if per_row:
        labels = tf.concat([labels, tf.constant(teacher, tf.float32)], -1)
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).cache()
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch)
    ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    if cutmix > 0 and mix is not None:
        ds = ds.map(lambda a, b: mix(tf.cast(a, tf.float32), b, cutmix), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda a, b: (tf.cast(a, tf.uint8), b))
    return (ds if per_row else ds.map(with_teacher)).prefetch(tf.data.AUTOTUNE)


def validation(x, y, classes: int, batch: int):
    import tensorflow as tf

    def twice(images, labels):
        return images, tf.concat([labels, labels], -1)

    return tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, classes))).cache().batch(batch) \
        .map(twice).prefetch(tf.data.AUTOTUNE)


def loss(classes: int, alpha: float, temperature: float, label_smoothing: float):
    import keras
    import tensorflow as tf

    ce = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)

    def distillation(y_true, y_pred):
        label, teacher = y_true[:, :classes], y_true[:, classes:]
        p = tf.cast(y_pred, tf.float32)
        student_t = tf.nn.log_softmax(tf.math.log(p + 1e-7) / temperature)
        teacher_t = tf.nn.softmax(tf.math.log(teacher + 1e-7) / temperature)
        kl = tf.reduce_sum(teacher_t * (tf.math.log(teacher_t + 1e-7) - student_t), -1)
        return (1 - alpha) * ce(label, p) + alpha * temperature ** 2 * kl

    return distillation


def accuracy(classes: int):
    import keras

    def accuracy(y_true, y_pred):  # named so: ModelCheckpoint and the history watch val_accuracy
        return keras.metrics.categorical_accuracy(y_true[:, :classes], y_pred)

    return accuracy
