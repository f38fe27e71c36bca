"""Training: the dataset checks, the tf.data input pipeline, the learning-rate schedule and the fit loop.

cnn.py is the thin script on top; tests and pipeline.py call `train()` directly.
"""
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from locator.core import config
from locator.core.errors import UserError
from locator.core.fsio import atomic_write_json
from locator.data import dataset
from locator.train import evaluate

log = logging.getLogger("train")


@dataclass
class Data:
    x: dict                      # split -> uint8 (N, H, W, 3)
    y: dict                      # split -> int (N,)
    files: dict                  # split -> [raw file]
    classes: list                # [{class, index, name}]
    fingerprint: str
    resize_mode: str
    neg: dict = field(default_factory=dict)  # split -> everyday photos (background class), when packed
    neg_kind: dict = field(default_factory=dict)  # split -> kind of each neg row: landmark | everyday | negatives

    @property
    def input_size(self):
        return list(self.x["train"].shape[1:3])


def load_data(folder) -> Data:
    """Read data/dataset/ and check that it is consistent; any problem is one clear UserError."""
    folder = Path(folder)
    classes = dataset.load_classes(folder)
    if not isinstance(classes, list) or [c.get("class") if isinstance(c, dict) else None for c in classes] \
            != list(range(len(classes))) or not classes:
        raise UserError(f"{folder}/{dataset.CLASSES}: expected a list of {{class, index, name}} with class numbers "
                        "0, 1, 2, ...; rebuild it with python dataset.py")
    x, y, files = {}, {}, {}
    for s in dataset.SPLITS:
        x[s], y[s], files[s] = dataset.load_split(folder, s, mmap=False)
        if x[s].dtype != np.uint8 or x[s].ndim != 4 or x[s].shape[-1] != 3:
            raise UserError(f"{folder}/x_{s}.npy: expected uint8 N x H x W x 3, found {x[s].dtype} {x[s].shape}")
        if y[s].ndim != 1 or not np.issubdtype(y[s].dtype, np.integer):
            raise UserError(f"{folder}/y_{s}.npy: expected integer class numbers (N,), found {y[s].dtype} "
                            f"{y[s].shape}; rebuild it with python dataset.py")
        if not (len(x[s]) == len(y[s]) == len(files[s])):
            raise UserError(f"{folder}: split {s} has {len(x[s])} images, {len(y[s])} labels and {len(files[s])} "
                            "file names; rebuild it with python dataset.py")
        if len(y[s]) and (y[s].min() < 0 or y[s].max() >= len(classes)):
            raise UserError(f"{folder}/y_{s}.npy: labels outside 0..{len(classes) - 1} (classes.json)")
        if x[s].shape[1:] != x["train"].shape[1:]:
            raise UserError(f"{folder}: x_{s} images are {x[s].shape[1:3]}, x_train's are {x['train'].shape[1:3]}")
        y[s] = y[s].astype(np.int32)
    empty = [s for s in dataset.SPLITS if not len(x[s])]
    if empty:
        raise UserError(f"{folder}: the {' and '.join(empty)} split(s) are empty; training needs photos in train, "
                        "val (best epoch, unknown threshold) and test (metrics)")
    try:
        summary = dataset.read_summary(folder)
    except UserError:
        summary = {}
    neg = {s: n for s in dataset.SPLITS if (n := dataset.load_negatives(folder, s)) is not None}
    neg_kind = {s: dataset.load_negative_kinds(folder, s) for s in neg}
    for s in neg:
        if neg[s].shape[1:] != x["train"].shape[1:] or len(neg_kind[s]) != len(neg[s]):
            raise UserError(f"{folder}: xneg_{s}.npy {neg[s].shape} does not match x_train's images or its "
                            f"{len(neg_kind[s])} kinds; rebuild it with python dataset.py")
    return Data(x, y, files, classes, summary.get("fingerprint", ""),
                summary.get("resize_mode", config.RESIZE_MODE), neg, neg_kind)


def pipeline(x, y, classes: int, batch: int, training: bool, seed: int, cutmix: float = 0.0):
    """tf.data: arrays -> (uint8 images, one-hot labels), cached, shuffled per epoch (training), prefetched.

    `cutmix`: the share of training batches in which each photo gets a random box pasted from another photo of
    the batch, its label mixed by the box's area (CutMix, Yun et al. 2019): on small data it stops the net from
    memorising whole photos.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, classes))).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch)
    if training and cutmix > 0:
        ds = ds.map(lambda a, b: _cutmix(a, b, cutmix), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _cutmix(images, labels, prob: float):
    import tensorflow as tf

    n, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    lam = tf.random.uniform([], 0.0, 1.0)                  # share of the photo that stays
    cut = tf.sqrt(1.0 - lam)
    ch, cw = tf.cast(cut * tf.cast(h, tf.float32), tf.int32), tf.cast(cut * tf.cast(w, tf.float32), tf.int32)
    cy, cx = tf.random.uniform([], 0, h, tf.int32), tf.random.uniform([], 0, w, tf.int32)
    y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + ch // 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + cw // 2, 0, w)
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    box = tf.cast((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1), images.dtype)[None, :, :, None]
    other = tf.random.shuffle(tf.range(n))
    mixed = images * (1 - box) + tf.gather(images, other) * box
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
    mixed_labels = labels * (1 - area) + tf.gather(labels, other) * area
    use = tf.random.uniform([]) < prob
    return tf.cond(use, lambda: (mixed, mixed_labels), lambda: (images, labels))


def schedule(peak: float, steps: int, warmup: float = 0.1):
    """One cycle: linear warm-up to `peak` over the first `warmup` of the steps, then cosine decay to ~0."""
    import keras

    w = max(1, int(steps * warmup))
    return keras.optimizers.schedules.CosineDecay(peak / 10, max(1, steps - w), alpha=0.01, warmup_target=peak,
                                                  warmup_steps=w)


@dataclass
class Settings:
    arch: str = config.CNN_ARCH
    epochs: int = config.EPOCHS
    batch: int = config.TRAIN_BATCH
    precision: str = ""          # float32 | mixed_bfloat16; empty: config.default_precision (arch and CPU)
    lr: float = config.LR
    weight_decay: float = config.WEIGHT_DECAY
    label_smoothing: float = config.LABEL_SMOOTHING
    augment: float = config.AUGMENT
    cutmix: float = config.CUTMIX
    seed: int = config.TRAIN_SEED
    name: str = config.MODEL_NAME
    background: bool = True      # learn a "none of our places" output from the dataset's negatives, if packed
    jit: bool = False            # XLA: its CPU convolutions do not use oneDNN's, so it trains slower (docs/results.md),
                                 # and Keras refuses it for the compact net anyway (random augmentation cannot compile)
    ema: float = config.EMA      # > 0: the weights kept are an exponential moving average with this momentum
    teacher: str = ""            # a run folder: distil from its answers on the same augmented batches (distill.py)
    distill_alpha: float = config.DISTILL_ALPHA
    distill_temperature: float = config.DISTILL_TEMPERATURE
    extra: dict = field(default_factory=dict)  # architecture options (widths, ...)

    def __post_init__(self):
        self.precision = self.precision or config.default_precision(self.arch)


class _Progress:
    """One tqdm bar over epochs with the latest validation accuracy (Keras' own bar is per step and noisy)."""

    def __new__(cls, total, initial, enabled):
        import keras
        from tqdm import tqdm

        class Bar(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = tqdm(total=total, initial=initial, unit="epoch", desc="training", disable=not enabled)

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                self.bar.update(1)
                self.bar.set_postfix(acc=f"{logs.get('accuracy', 0):.3f}", val=f"{logs.get('val_accuracy', 0):.3f}")

            def on_train_end(self, logs=None):
                self.bar.close()

        return Bar()


def train(data: Data, run: Path, s: Settings, progress: bool = True, callbacks=(), data_root=None):
    """Fit on train, keep the best epoch by validation accuracy, return (inference model, seconds, epochs run).

    `callbacks`: more Keras callbacks (bench/train_bench.py times the epochs with one). `data_root`: where the
    photos are, for a teacher that reads them at its own size (distill.photo_answers).

    Checkpoints go to run/checkpoints/ every epoch: calling train() again on the same run resumes there. `seconds`
    is the run's training time in all its processes (checkpoints/timing.json carries it across a resume), so the
    speed a finished run records, which cnn.py --minutes plans by, is that of all its epochs; `epochs run` counts
    this call's epochs only.
    """
    ck = run / "checkpoints"
    _pin(ck, data, s)  # before TensorFlow loads: a mismatched resume fails at once

    import keras

    from locator.train import distill
    from locator.train import model as models

    keras.mixed_precision.set_global_policy(s.precision)
    keras.utils.set_random_seed(s.seed)
    n = len(data.classes) + uses_background(data, s)
    teacher, teacher_meta = distill.load_teacher(s.teacher, n) if s.teacher else (None, {})
    # with a teacher, augmentation runs in tf.data, once for both networks (distill.py)
    net = models.build(s.arch, tuple(data.x["train"].shape[1:]), n, augment=0.0 if teacher else s.augment,
                       **s.extra)
    train_xy = with_background(data, "train", s)
    steps = int(np.ceil(len(train_xy[0]) / s.batch)) * s.epochs  # the negatives are steps too
    optimizer = keras.optimizers.AdamW(schedule(s.lr, steps), weight_decay=s.weight_decay, use_ema=s.ema > 0,
                                       ema_momentum=s.ema or 0.99)
    if teacher is None:
        net.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=s.label_smoothing),
                    metrics=["accuracy"], jit_compile=s.jit)
    else:
        net.compile(optimizer=optimizer, loss=distill.loss(n, s.distill_alpha, s.distill_temperature,
                                                           s.label_smoothing),
                    metrics=[distill.accuracy(n)], jit_compile=s.jit)
    (run / "logs").mkdir(exist_ok=True)
    done = _epochs_done(ck)
    if not done:
        write_graph(net, run / "logs" / "train")
    best = ck / "best.weights.h5"
    # Order matters under kill -9: an epoch's best weights and its history row are written before the backup
    # that marks it done, so a resumed run redoes an epoch whose row exists (read_history keeps the last row of
    # an epoch) rather than skip one whose row is missing. double_checkpoint: a backup torn by the kill falls
    # back to the one before.
    # with EMA, validation and the best-epoch checkpoint see the averaged weights (SwapEMAWeights before them)
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if s.ema > 0 else []
    callbacks = [
        *ema,
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_accuracy", mode="max", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=_best_so_far(run)),
        keras.callbacks.CSVLogger(str(run / "logs" / "history.csv"), append=True),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: _write_seconds(ck, before + time.time() - t0)),
        keras.callbacks.BackupAndRestore(str(ck / "backup"), double_checkpoint=True),  # weights, optimizer, epoch
        keras.callbacks.TensorBoard(str(run / "logs"), write_graph=True, histogram_freq=0),
        _Progress(s.epochs, done, progress),
        *callbacks,  # last: an epoch timer's epoch then includes the checkpoint writes above
    ]
    if teacher is None:
        train_ds = pipeline(*train_xy, n, s.batch, True, s.seed, s.cutmix)
        val_ds = pipeline(*with_background(data, "val", s), n, s.batch * 4, False, s.seed)
    else:
        if distill.reads_photos(teacher, data.input_size):  # its answers, once per photo, ride with the labels
            teacher = distill.photo_answers(teacher, teacher_meta, s.teacher, data_root, uses_background(data, s),
                                            len(train_xy[0]), ck)
        train_ds = distill.pipeline(*train_xy, n, s.batch, s.seed, s.cutmix, teacher, s.augment, _cutmix)
        val_ds = distill.validation(*with_background(data, "val", s), n, s.batch * 4)
    before = _seconds_before(ck)
    t0 = time.time()
    net.fit(train_ds, validation_data=val_ds, epochs=s.epochs, callbacks=callbacks, verbose=0)
    seconds = before + time.time() - t0
    if best.exists():
        try:
            net.load_weights(str(best))
        except (OSError, ValueError) as e:  # torn by a kill -9 while it was being written
            log.warning("%s unreadable (%s): keeping the last epoch's weights", best, e)
    return models.for_inference(net), seconds, s.epochs - done


def write_graph(net, logdir: Path) -> None:
    """The op graph of the forward pass, one name scope a layer, for TensorBoard's Graphs tab.

    Keras 3's TensorBoard callback writes only the "conceptual" graph (the model config, tag `keras`); its
    op-graph writer expects model.train_function to be a tf.function, which in Keras 3 is a plain Python wrapper
    around one, so it silently writes nothing. Tracing the model once here (a fraction of a second) gives the
    graph the study showed."""
    import tensorflow as tf

    forward = tf.function(lambda x: net(x, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec((None, *net.input_shape[1:]), net.inputs[0].dtype)).graph
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        tf.summary.graph(graph)
    writer.close()


STARTED = "started.json"
TIMING = "timing.json"           # training seconds of the run's finished epochs, every process together


def _seconds_before(ck: Path) -> float:
    """Seconds an interrupted run trained before this process (0 for a fresh run)."""
    try:
        return float(json.loads((ck / TIMING).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _write_seconds(ck: Path, seconds: float) -> None:
    # at each epoch's end, before the backup that marks the epoch done: an epoch a kill makes the resumed run redo
    # is counted twice, as the time it really cost, never left out
    atomic_write_json(ck / TIMING, {"seconds": round(seconds, 3)})


def _pin(ck: Path, data: Data, s: Settings) -> None:
    """Record what a run trains (settings, dataset) when it starts; a resumed run must train the same net on the
    same data, or the restored weights would not fit the net (or silently continue on other photos)."""
    want = json.loads(json.dumps({"settings": asdict(s), "dataset_fingerprint": data.fingerprint,
                                  "input_size": data.input_size, "classes": len(data.classes)}))
    path = ck / STARTED
    if not path.exists():
        atomic_write_json(path, want)
        return
    have = _read_started(path)
    diff = sorted(k for k in set(want["settings"]) | set(have.get("settings", {}))
                  if want["settings"].get(k) != have.get("settings", {}).get(k))
    diff += [k for k in ("dataset_fingerprint", "input_size", "classes") if want[k] != have.get(k)]
    if diff:
        raise UserError(f"{ck.parent} was started with other {', '.join(diff)} ({path}); resume it with its own "
                        "settings and dataset, or start a new run")


def _read_started(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); start a new run")


def started_settings(run: Path):
    """The Settings an interrupted run started with (None for a run from before they were recorded)."""
    path = Path(run) / "checkpoints" / STARTED
    if not path.exists():
        return None
    s = dict(_read_started(path).get("settings", {}))
    s["extra"] = {k: tuple(v) if isinstance(v, list) else v for k, v in s.get("extra", {}).items()}
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in s.items() if k in known})


def uses_background(data: Data, s: Settings) -> bool:
    return bool(s.background and len(data.neg.get("train", ())))


def with_background(data: Data, split: str, s: Settings):
    """(x, y) of a split, plus its everyday photos labelled with the extra last class when the model has one."""
    x, y = data.x[split], data.y[split]
    neg = data.neg.get(split)
    if not uses_background(data, s) or neg is None or not len(neg):
        return x, y
    return np.concatenate([x, neg]), np.concatenate([y, np.full(len(neg), len(data.classes), np.int32)])


def _epochs_done(ck: Path) -> int:
    """Epochs an interrupted run completed (BackupAndRestore's record), 0 for a fresh run."""
    meta = ck / "backup" / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])  # Keras records the next epoch: epochs done
    except (OSError, ValueError, KeyError):
        return 0


def _best_so_far(run: Path):
    """Best val accuracy logged before an interruption, so a resumed run does not overwrite a better epoch."""
    try:
        h = evaluate.read_history(run / "logs" / "history.csv")
        return max(h.get("val_accuracy", [])) if h.get("val_accuracy") else None
    except (OSError, ValueError):
        return None


def epochs_within(minutes: float, photos: int, reference: dict, most: int = config.EPOCHS_MAX):
    """Epochs of `photos` a run can train in `minutes`, at the speed a finished run of the same architecture
    measured (its metadata.json: train_seconds over epochs x photos per epoch); None when it measured none.
    cnn.py --minutes (pipeline.py --train-minutes: the nightly job may spend more than the interactive default)."""
    m, t = reference.get("metrics", {}), reference.get("training", {})
    done = (reference.get("epochs") or 0) * (t.get("photos_per_epoch") or 0)
    if not done or not m.get("train_seconds"):
        return None
    per_photo = m["train_seconds"] / done
    return int(max(1, min(most, minutes * 60 / (per_photo * max(photos, 1)))))
