"""--arch mobilenet_v2 and its ImageNet weights loader (locator/train/weights.py), without PyTorch and without a
download: the tests write small files in PyTorch's legacy format themselves (random weights), read them back, copy
them into Keras' MobileNetV2, and check that a bad weights file is one clear error."""
import pickle
import struct
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

from locator.core.errors import UserError
from locator.core.metrics import confusion
from locator.train import weights


def write_torch_legacy(path, state: dict) -> None:
    """What torch.save(state_dict) wrote before torch 1.6 (_use_new_zipfile_serialization=False)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    FloatStorage.__name__ = "FloatStorage"
    torch.FloatStorage = FloatStorage

    def _rebuild_tensor_v2(*a):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    storages = OrderedDict()

    class Tensor:
        def __init__(self, key, a):
            self.key, self.a = key, a

        def __reduce__(self):
            return _rebuild_tensor_v2, (("storage", self.key), 0, self.a.shape,
                                        tuple(s // self.a.itemsize for s in self.a.strides), False, OrderedDict())

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage":
                return ("storage", FloatStorage, obj[1], "cpu", storages[obj[1]].size, None)
            return None

    tensors = OrderedDict()
    for i, (k, v) in enumerate(state.items()):
        a = np.ascontiguousarray(v, np.float32)
        storages[str(i)] = a.ravel()
        tensors[k] = Tensor(str(i), a)
    saved = {m: sys.modules.get(m) for m in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        with open(path, "wb") as f:
            for obj in (weights.MAGIC, 1001, {"little_endian": True}):
                pickle.dump(obj, f, protocol=2)
            Writer(f, protocol=2).dump(tensors)
            pickle.dump(list(storages), f, protocol=2)
            for a in storages.values():
                f.write(struct.pack("<q", a.size))
                f.write(a.tobytes())
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod


def torchvision_state(backbone, seed=0) -> OrderedDict:
    """A state dict in torchvision's MobileNetV2 names and layouts, holding random numbers of the right shapes."""
    import keras

    rng = np.random.default_rng(seed)
    out, conv_i, bn_i = OrderedDict(), 0, 0
    for layer in backbone.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            h, w, cin, cout = layer.kernel.shape
            shape = (cin, 1, h, w) if isinstance(layer, keras.layers.DepthwiseConv2D) else (cout, cin, h, w)
            out[f"features.{conv_i}.conv.weight"] = rng.normal(0, 0.1, shape)
            conv_i += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            for k, v in (("weight", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.1, c)),
                         ("running_mean", rng.normal(0, 0.1, c)), ("running_var", rng.uniform(0.5, 1.5, c))):
                out[f"features.{bn_i}.bn.{k}"] = v
            bn_i += 1
    out["classifier.1.weight"] = rng.normal(0, 0.1, (1000, 1280))
    out["classifier.1.bias"] = np.zeros(1000)
    return out


@pytest.fixture(scope="module")
def backbone():
    import keras

    return keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))


def test_a_legacy_file_reads_back_with_shapes_values_and_strides(tmp_path):
    state = OrderedDict(a=np.arange(24, dtype=np.float32).reshape(2, 3, 4), b=np.float32([[1, 2], [3, 4]]).T)
    write_torch_legacy(tmp_path / "w.pth", state)
    back = weights.read_torch_legacy(tmp_path / "w.pth")
    assert list(back) == ["a", "b"]
    for k in state:
        assert back[k].shape == state[k].shape and np.array_equal(back[k], state[k])


def test_weights_land_in_the_right_keras_layers(tmp_path, backbone):
    import keras

    state = torchvision_state(backbone)
    write_torch_legacy(tmp_path / "mnv2.pth", state)
    fresh = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    n = weights.copy_into_mobilenet_v2(fresh, weights.read_torch_legacy(tmp_path / "mnv2.pth"))
    assert n == 104  # 52 convolutions (plain and depthwise) and 52 batch norms
    first = fresh.get_layer("Conv1").kernel.numpy()
    assert np.allclose(first, state["features.0.conv.weight"].transpose(2, 3, 1, 0))
    dw = fresh.get_layer("expanded_conv_depthwise").kernel.numpy()
    assert np.allclose(dw, state["features.1.conv.weight"].transpose(2, 3, 0, 1))
    bn = fresh.get_layer("Conv_1_bn")
    assert np.allclose(bn.moving_variance.numpy(), state["features.51.bn.running_var"]) and bn.epsilon == 1e-5


@pytest.mark.parametrize("content, words", [
    (b"", "not a readable PyTorch weights file"),
    (b"\x89PNG\r\n\x1a\n" + b"0" * 64, "not a readable PyTorch weights file"),
    (pickle.dumps(12345), "not a readable PyTorch weights file"),
])
def test_a_bad_weights_file_is_one_clear_error(tmp_path, content, words):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(UserError, match=words):
        weights.read_torch_legacy(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not found"):
        weights.read_torch_legacy(tmp_path / "missing.pth")


def test_a_pickle_that_names_other_code_is_refused(tmp_path):
    """The Unpickler resolves only a state dict's names: a file that would run code on load is an error."""
    with open(tmp_path / "evil.pth", "wb") as f:
        for obj in (weights.MAGIC, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(UserError, match="unexpected os.system"):
        weights.read_torch_legacy(tmp_path / "evil.pth")


def test_weights_of_another_network_are_refused(tmp_path, backbone):
    import keras

    state = torchvision_state(backbone)
    state["features.0.conv.weight"] = np.zeros((16, 3, 3, 3))  # a narrower first conv: not width 1.0
    write_torch_legacy(tmp_path / "other.pth", state)
    fresh = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    with pytest.raises(UserError, match="not a torchvision MobileNetV2"):
        weights.copy_into_mobilenet_v2(fresh, weights.read_torch_legacy(tmp_path / "other.pth"))


# ---------------------------------------------------------------- cnn.py --arch mobilenet_v2, end to end

def _tiny_dataset(root):
    from genphotos import add, encode, photo, write_table

    from locator.data import dataset, preprocess

    table = write_table(root / "places.xlsx", 2)
    data = root / "data"
    for place in range(2):
        for seed in range(24):
            img = np.asarray(photo(100 * place + seed, 48, 40), np.float32) * (np.array([1, .3, .3]) if place
                                                                               else np.array([.3, .3, 1]))
            from PIL import Image
            add(data, f"{place:02x}", encode(Image.fromarray(img.clip(0, 255).astype(np.uint8))))
    preprocess.run(data, table, preprocess.Options(size=32, workers=1, progress=False))
    dataset.build(data, table, progress=False)
    return data


def test_cnn_trains_mobilenet_v2_from_a_weights_file_and_the_run_reloads_alike(tmp_path, backbone):
    import json
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    data = _tiny_dataset(tmp_path)
    write_torch_legacy(tmp_path / "mnv2.pth", torchvision_state(backbone))
    models = tmp_path / "models"
    r = subprocess.run([sys.executable, str(repo / "cnn.py"), "--data", str(data), "--models", str(models),
                        "--arch", "mobilenet_v2", "--weights", str(tmp_path / "mnv2.pth"), "--upsample", "32",
                        "--cut", "block_2_add", "--epochs", "1", "--batch", "16", "--no-progress", "--no-promote"],
                       cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (run,) = list((models / "runs").iterdir())
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["arch"] == "mobilenet_v2" and meta["precision"] == "float32"  # its default on any CPU
    assert meta["training"]["cut"] == "block_2_add" and meta["training"]["weights"].endswith("mnv2.pth")
    check = ("import sys, json, numpy as np; from locator.runs import runs; net, meta = runs.load(sys.argv[1]); "
             "x = np.load(sys.argv[2]); print(json.dumps(net.predict(x, verbose=0).tolist()))")
    x_path = data / "dataset" / "x_test.npy"
    a = json.loads(subprocess.run([sys.executable, "-c", check, str(run), str(x_path)], cwd=repo,
                                  capture_output=True, text=True, timeout=300, check=True).stdout)
    b = json.loads(subprocess.run([sys.executable, "-c", check, str(run), str(x_path)], cwd=repo,
                                  capture_output=True, text=True, timeout=300, check=True).stdout)
    assert np.asarray(a).shape == (len(np.load(x_path)), 2)
    assert np.allclose(a, b, atol=1e-6)  # the saved run answers the same in any process
    metrics = json.loads((run / "metrics.json").read_text())  # the training process's own test predictions
    y = np.load(data / "dataset" / "y_test.npy")
    assert confusion(y, np.asarray(a).argmax(1), 2).tolist() == metrics["confusion"]["matrix"]


def test_cnn_with_a_bad_weights_file_is_one_line_and_exit_2(tmp_path):
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "bad.pth").write_bytes(b"not weights at all")
    r = subprocess.run([sys.executable, str(repo / "cnn.py"), "--data", str(tmp_path), "--models",
                        str(tmp_path / "m"), "--arch", "mobilenet_v2", "--weights", str(tmp_path / "bad.pth")],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.pth" in lines[0] and "not a readable PyTorch weights file" in lines[0], r.stderr
    assert not (tmp_path / "m").exists()  # no run folder for a run that never started


def test_the_layer_names_cnn_py_checks_a_cut_against_are_keras_mobilenet_v2s():
    import keras

    from locator.train.weights import mobilenet_v2_layers

    full = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    assert mobilenet_v2_layers() == [layer.name for layer in full.layers[1:]]
