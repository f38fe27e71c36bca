"""The ImageNet backbones converted from the pinned packages' torch files: agreement with an independent numpy
forward pass of the same state dict, and clear errors for a bad or foreign weights file.

These tests use the real weights: the packages are requirements (requirements.txt), as the model needs them."""
import numpy as np
import pytest

from locator.core.errors import UserError
from locator.train import backbones
from locator.train.weights import read_torch_legacy

SIZE = 64   # the networks are fully convolutional: a small input checks every layer at a fraction of the cost


def _pad(x, k, stride, tf_same):
    """Zero padding as the checkpoint was trained with: TensorFlow SAME, or torch's symmetric k // 2."""
    h, w = x.shape[:2]
    if not tf_same:
        p = k // 2
        return np.pad(x, ((p, p), (p, p), (0, 0)))
    out_h, out_w = -(-h // stride), -(-w // stride)
    ph, pw = max((out_h - 1) * stride + k - h, 0), max((out_w - 1) * stride + k - w, 0)
    return np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def _conv(x, w, stride, tf_same):
    """torch layout w (out, in/groups, k, k) on x (H, W, C); depthwise when in/groups == 1 and out == C."""
    k = w.shape[-1]
    x = _pad(x, k, stride, tf_same)
    h = (x.shape[0] - k) // stride + 1
    wd = (x.shape[1] - k) // stride + 1
    depthwise = w.shape[1] == 1 and w.shape[0] == x.shape[2] and w.shape[0] > 1
    out = np.zeros((h, wd, w.shape[0]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[i:i + stride * h:stride, j:j + stride * wd:stride, :]
            out += patch * w[:, 0, i, j] if depthwise else patch @ w[:, :, i, j].T
    return out


def _bn(x, state, prefix, eps):
    g, b, m, v = (state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + eps) * g + b


def _relu6(x):
    return np.clip(x, 0, 6)


def numpy_forward(name, state, pixels):
    """The pooled features of one photo, straight from the torch key names (no code shared with backbones.py)."""
    spec = backbones.BACKBONES[name]
    strides = [s if i == 0 else 1 for reps, s in spec.stages for i in range(reps)]
    x = pixels.astype(np.float64)
    if spec.family == "lite":
        eps = 1e-3
        x = (x - 127.0) / 128.0
        x = _relu6(_bn(_conv(x, state["_conv_stem.weight"], 2, True), state, "_bn0", eps))
        for i, s in enumerate(strides):
            p = f"_blocks.{i}."
            y = x
            if p + "_expand_conv.weight" in state:
                y = _relu6(_bn(_conv(y, state[p + "_expand_conv.weight"], 1, True), state, p + "_bn0", eps))
            y = _relu6(_bn(_conv(y, state[p + "_depthwise_conv.weight"], s, True), state, p + "_bn1", eps))
            y = _bn(_conv(y, state[p + "_project_conv.weight"], 1, True), state, p + "_bn2", eps)
            x = x + y if s == 1 and x.shape == y.shape else y
        x = _relu6(_bn(_conv(x, state["_conv_head.weight"], 1, True), state, "_bn1", eps))
        return x.mean((0, 1))
    eps = 1e-5
    x = (x / 255.0 - np.array(backbones.IMAGENET_MEAN)) / np.array(backbones.IMAGENET_STD)
    x = _relu6(_bn(_conv(x, state["features.0.0.weight"], 2, False), state, "features.0.1", eps))
    for i, s in enumerate(strides, start=1):
        p = f"features.{i}.conv."
        y = x
        if state[p + "0.0.weight"].shape[1] == 1:
            y = _relu6(_bn(_conv(y, state[p + "0.0.weight"], s, False), state, p + "0.1", eps))
            y = _bn(_conv(y, state[p + "1.weight"], 1, False), state, p + "2", eps)
        else:
            y = _relu6(_bn(_conv(y, state[p + "0.0.weight"], 1, False), state, p + "0.1", eps))
            y = _relu6(_bn(_conv(y, state[p + "1.0.weight"], s, False), state, p + "1.1", eps))
            y = _bn(_conv(y, state[p + "2.weight"], 1, False), state, p + "3", eps)
        x = x + y if s == 1 and x.shape == y.shape else y
    last = len(strides) + 1
    x = _relu6(_bn(_conv(x, state[f"features.{last}.0.weight"], 1, False), state, f"features.{last}.1", eps))
    return x.mean((0, 1))


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_the_keras_backbone_agrees_with_a_numpy_forward_pass_of_the_same_weights(name):
    path = backbones.default_file(name)
    if path is None:   # the README's test command installs every one (MobileNetV2's without its stale pins)
        pytest.fail(f"{name}: its weights package {backbones.BACKBONES[name].package} is not installed")
    state = read_torch_legacy(path)
    net = backbones.build(name, size=SIZE)
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    photos[1] = np.linspace(0, 255, SIZE)[None, :, None].astype(np.uint8)   # smooth: padding shows at the edges
    got = net.predict(photos.astype(np.float32), verbose=0)
    for photo, row in zip(photos, got):
        want = numpy_forward(name, state, photo)
        assert np.abs(row - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), name
        assert np.abs(want).max() > 0.1   # features, not an all-zero output that agrees trivially


def test_a_weights_file_of_another_backbone_is_one_clear_error():
    lite = backbones.default_file("efficientnet_lite0")
    with pytest.raises(UserError, match="not a mobilenet_v2 state dict"):
        backbones.build("mobilenet_v2", lite, size=SIZE)


def test_a_file_that_is_no_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        backbones.build("efficientnet_lite0", bad, size=SIZE)
