"""The networks. Input is raw uint8 pixels (N, H, W, 3): rescaling and training-only augmentation live INSIDE the
model, so predict.py and serve.py feed pixels as they are and can never normalise differently from training."""
import keras
from keras import layers

from locator.core import config

ARCHS = config.ARCHS


def augmentation(strength: float = 1.0) -> keras.Sequential:
    """Random scale/shift/flip/small rotation and brightness/contrast; active only in training (Keras' rule).

    Works on [0, 1] floats. `strength` scales every range; 0 turns augmentation off.
    """
    s = strength
    return keras.Sequential([
        layers.RandomFlip("horizontal"),
        layers.RandomZoom((-0.25 * s, 0.15 * s), fill_mode="reflect"),   # scale: mostly zoom in (crops)
        layers.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="reflect"),
        layers.RandomRotation(0.03 * s, fill_mode="reflect"),            # about +-11 degrees
        layers.RandomBrightness(0.2 * s, value_range=(0.0, 1.0)),
        layers.RandomContrast(0.25 * s, value_range=(0.0, 1.0)),
    ], name="augment")


def _stem(inputs, strength):
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if strength > 0:
        x = augmentation(strength)(x)
    return x


def paper(input_shape, classes: int, augment: float = 0.0) -> keras.Model:
    """The study's network, Keras-classic (the Keras CIFAR-10 example): 6.5 M parameters at 64x64."""
    inputs = keras.Input(input_shape, dtype="uint8", name="pixels")
    x = _stem(inputs, augment)
    for width in (32, 64):
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(width, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="paper")


def _conv_bn_relu(x, width):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def compact(input_shape, classes: int, augment: float = 1.0, widths=(32, 64, 128, 256), dropout: float = 0.3,
            convs_per_block: int = 2, stem: int = 32) -> keras.Model:
    """VGG-style 3x3 conv pairs with batch norm, max-pool per block, global average pooling head.

    `stem`: one conv of that width at full resolution, then a max-pool, before the blocks. The conv pairs then run
    at half resolution: 4x fewer multiply-adds for a small loss of detail, which is what makes 50 epochs fit in
    minutes on two CPU cores (measured: see docs/results.md).
    """
    inputs = keras.Input(input_shape, dtype="uint8", name="pixels")
    x = _stem(inputs, augment)
    if stem:
        x = layers.MaxPooling2D()(_conv_bn_relu(x, stem))
    for i, width in enumerate(widths):
        for _ in range(convs_per_block):
            x = _conv_bn_relu(x, width)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="compact")


def mobilenet_v2(input_shape, classes: int, augment: float = 1.0, weights=None, cut: str = config.MNV2_CUT,
                 size: int = config.MNV2_SIZE, dropout: float = 0.2) -> keras.Model:
    """Keras' MobileNetV2 (ImageNet-pretrained when `weights` names torchvision's file, see weights.py), cut after
    the layer `cut`, on our photos upsampled to `size` inside the model (ImageNet features want objects of a few
    dozen pixels; 64 px leaves the last blocks at 2x2).

    Batch norm momentum 0.9, not Keras' 0.999: with 0.999 the moving statistics stay ImageNet's for the few
    hundred steps we train, and validation lags far behind training (docs/cnn.md).
    """
    from locator.train import weights as imagenet

    inputs = keras.Input(input_shape, dtype="uint8", name="pixels")
    x = _stem(inputs, augment)
    x = layers.Resizing(size, size, interpolation="bilinear", name="upsample")(x)
    x = layers.Normalization(mean=imagenet.IMAGENET_MEAN, variance=[s * s for s in imagenet.IMAGENET_STD],
                             name="imagenet_norm")(x)
    full = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    if weights:
        imagenet.copy_into_mobilenet_v2(full, imagenet.read_torch_legacy(weights), weights)
    body = keras.Model(full.input, full.get_layer(cut).output, name="mobilenet_v2")
    for layer in body.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    x = body(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def build(arch: str, input_shape, classes: int, augment: float | None = None, **kw) -> keras.Model:
    augment = config.augment_for(arch) if augment is None else augment
    if arch == "paper":
        return paper(input_shape, classes, augment=augment)
    if arch == "compact":
        return compact(input_shape, classes, augment=augment, **kw)
    if arch == "mobilenet_v2":
        return mobilenet_v2(input_shape, classes, augment=augment, **kw)
    raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")


def for_inference(model: keras.Model) -> keras.Model:
    """The same network without its augmentation block, sharing its layers (and so its weights).

    This is what is saved as model.h5: augmentation only ever acts in training, and Keras cannot write
    RandomBrightness into an .h5 file. Our networks are plain chains, so re-applying the layers in order rebuilds them.
    """
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="pixels")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name != "augment":
            x = layer(x)
    return keras.Model(inputs, x, name=model.name)
