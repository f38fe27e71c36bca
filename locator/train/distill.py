"""Knowledge distillation: the student learns from a teacher run's answers on THE SAME augmented batch.

Augmentation moves out of the student into tf.data (the student is built with augment=0), so each batch is
augmented once and both networks see the same pixels; CutMix then mixes images and labels, and the teacher
answers for the mixed image. The teacher's probabilities ride along with the labels (y = [one-hot | teacher]), so
the standard Keras fit loop, checkpoints and resume work unchanged:

    loss = (1 - alpha) * CE(label, student) + alpha * T^2 * KL(teacher_T || student_T)

with p_T = softmax(log p / T), which equals softmax(logits / T) for a softmax output (Hinton et al. 2015).
Validation batches carry the label twice (no teacher needed to choose the best epoch).
"""
from locator.core.errors import UserError


def teacher_model(path, outputs: int):
    """The teacher's inference model (a run folder or its model.h5); it must answer for the same outputs."""
    from pathlib import Path

    from locator.runs import runs

    p = Path(path)
    run = p.parent if p.suffix == ".h5" else p
    try:
        net, _ = runs.load(run)
    except (OSError, ValueError) as e:
        raise UserError(f"--teacher {path}: cannot load its model ({type(e).__name__})")
    if int(net.output_shape[-1]) != outputs:
        raise UserError(f"--teacher {path}: answers for {net.output_shape[-1]} outputs, the student has {outputs}: "
                        "train the teacher on the same dataset")
    net.trainable = False
    return net


def pipeline(x, y, classes: int, batch: int, seed: int, cutmix: float, teacher, strength: float, mix=None):
    """Training batches (uint8 images, [one-hot | teacher probabilities]), augmented once for both networks;
    `mix(images, labels, share)` is fit's CutMix."""
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

    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, classes))).cache()
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch)
    ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    if cutmix > 0 and mix is not None:
        ds = ds.map(lambda a, b: mix(tf.cast(a, tf.float32), b, cutmix), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda a, b: (tf.cast(a, tf.uint8), b))
    return ds.map(with_teacher).prefetch(tf.data.AUTOTUNE)


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
