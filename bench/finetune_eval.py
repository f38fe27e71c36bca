"""Does fine-tuning the last blocks of EfficientNet-Lite2 pay, inside --minutes, against the frozen backbone + linear
head that cnn.py --arch embedding trains? On the dataset dataset.py packed:

    python bench/finetune_eval.py --data /work/real/data
    python bench/finetune_eval.py --data /work/real/data --blocks 2 --minutes 6 --json /tmp/finetune.json

1. Lite2 (train/backbones) is cut into a frozen trunk, up to the input of its last K inverted-residual blocks
   (--blocks), and a tail: those K blocks, the head convolution, the pooling, unit length and a Dense softmax over
   the 23 places plus the background output. The trunk runs ONCE per photo (TF Lite, as train/embed runs the whole
   backbone), from images.normalise(photo, 260, "crop") and, for training photos, its mirror image; its outputs
   stay in memory. The same pass gives the pooled features of the frozen network.
2. The Dense starts as the frozen model's head (frozen.fit_head on the unit-length pooled features, each training
   photo taken and mirrored, C chosen on validation by frozen.choose_c), so epoch 0 is the frozen model.
3. The tail trains (Adam: --lr-blocks for the convolutions, --lr-head for the Dense; batch 64; class-balanced
   sample weights; its batch norms frozen, in inference mode) for the epochs that fit --minutes, an epoch being
   every training photo in both views; the epoch kept is the one with the best validation accuracy over all
   validation rows (places and background, as choose_c chooses C), ties to the earlier one. Test is never used to
   choose.
Rows: epoch 0 and the epoch kept. Columns: val and test top-1 over the 23 places (closed set); at the threshold
train/finish.calibrate sets on validation (90% true accept): test true accept, other landmarks and everyday photos
of the test background accepted; seconds of the trunk pass (decode + TF Lite, every photo) and of the training.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from locator.core import config, cpu, images  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.data import dataset  # noqa: E402
from locator.train import backbones, finish, frozen  # noqa: E402
from locator.train.embed import CROP, l2_normalise  # noqa: E402

NAME = "efficientnet_lite2"
SHORT = backbones.SHORT[NAME]
N_BLOCKS = len(backbones.strides(backbones.BACKBONES[NAME]))   # 21: b0..b20


def load(data: Path):
    """split -> (photo paths, labels, kinds of the background rows) with the background rows last, label n."""
    ds = config.dataset_dir(data)
    n = len(json.loads((ds / "classes.json").read_text()))
    out = {}
    for s in dataset.SPLITS:
        places = dataset.photo_paths(data, s)
        neg = dataset.photo_paths(data, s, negatives=True)
        kinds = dataset.load_negative_kinds(ds, s)
        y = np.load(ds / f"y_{s}.npy").astype(int)
        out[s] = {"paths": places + neg, "y": np.concatenate([y, np.full(len(neg), n)]), "places": len(places),
                  "kinds": np.asarray(kinds if kinds is not None else [], str)}
    return out, n


def trunk_runner(net, first: int):
    """A function uint8 photos (N, 260, 260, 3) -> (trunk output (N, h, w, c), pooled features (N, 1280)) through
    TF Lite (Keras if TF Lite is not there), and the trunk output's shape."""
    import keras
    import tensorflow as tf

    cut = net.get_layer(f"{SHORT}_b{first}_expand").input
    trunk = keras.Model(net.input, [cut, net.output])
    shape = tuple(cut.shape[1:])
    interpreter = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if interpreter is None:
        return (lambda x: trunk.predict(x.astype(np.float32), batch_size=len(x), verbose=0)), shape
    it = interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(trunk).convert(),
                     num_threads=os.cpu_count() or 1)
    inp = it.get_input_details()[0]["index"]
    outs = {len(d["shape"]): d["index"] for d in it.get_output_details()}   # rank 4: the trunk's, rank 2: pooled
    size = [0]

    def run(x):
        if size[0] != len(x):
            it.resize_tensor_input(inp, [len(x), *x.shape[1:]])
            it.allocate_tensors()
            size[0] = len(x)
        it.set_tensor(inp, x.astype(np.float32))
        it.invoke()
        return it.get_tensor(outs[4]).copy(), it.get_tensor(outs[2]).copy()
    return run, shape


def trunk_pass(paths, run, shape, views: int, size: int, batch: int = 32):
    """(trunk outputs (views, N, *shape), pooled (views, N, 1280)); view 1 is the mirror image. Photos decode in
    threads, two batches ahead of the network."""
    n = len(paths)
    trunk = np.empty((views, n, *shape), np.float32)
    pooled = np.empty((views, n, 1280), np.float32)
    chunks = [range(k, min(n, k + batch)) for k in range(0, n, batch)]

    def decode(i):
        return images.normalise(paths[i], size=size, mode=CROP)

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        pending = [pool.map(decode, c) for c in chunks[:2]]
        for k, chunk in enumerate(chunks):
            x = np.stack(list(pending.pop(0)))
            if k + 2 < len(chunks):
                pending.append(pool.map(decode, chunks[k + 2]))
            if views == 2:
                x = np.concatenate([x, x[:, :, ::-1]])
            t, p = run(x)
            m = len(chunk)
            for v in range(views):
                trunk[v, chunk.start:chunk.stop] = t[v * m:(v + 1) * m]
                pooled[v, chunk.start:chunk.stop] = p[v * m:(v + 1) * m]
    return trunk, pooled


def tail_model(net, first: int, head):
    """Keras: trunk output -> the last blocks (b{first}..), head conv, pool, unit length, Dense softmax set to
    `head`. The blocks' layers are net's own (their weights), convolutions trainable, batch norms frozen. Returns
    (model, convolution variables, Dense variables)."""
    import keras
    from keras import layers

    names = {layer.name for layer in net.layers}
    get = net.get_layer
    convs = []

    def conv(x, tag, relu):
        c = get(f"{SHORT}_{tag}")
        c.trainable = True
        convs.append(c)
        x = get(f"{SHORT}_{tag}_bn")(c(x))          # net.trainable = False left the batch norms frozen
        return get(f"{SHORT}_{tag}_relu6")(x) if relu else x

    cut = get(f"{SHORT}_b{first}_expand").input
    inputs = keras.Input(tuple(cut.shape[1:]), name="trunk")
    x = inputs
    for i in range(first, N_BLOCKS):
        y = conv(x, f"b{i}_expand", True) if f"{SHORT}_b{i}_expand" in names else x
        y = conv(y, f"b{i}_dw", True)
        y = conv(y, f"b{i}_project", False)
        x = get(f"{SHORT}_b{i}_add")([x, y]) if f"{SHORT}_b{i}_add" in names else y
    x = get(f"{SHORT}_pool")(conv(x, "head", True))
    x = layers.UnitNormalization(name=f"{SHORT}_unit")(x)
    dense = layers.Dense(head[0].shape[1], activation="softmax", dtype="float32", name="probs")
    model = keras.Model(inputs, dense(x), name=f"{SHORT}_tail")
    dense.set_weights([head[0], head[1]])
    return model, [v for c in convs for v in c.trainable_variables], list(dense.trainable_variables)


def predict(model, x, batch: int = 128) -> np.ndarray:
    return np.concatenate([model(x[k:k + batch], training=False).numpy() for k in range(0, len(x), batch)]) \
        if len(x) else np.zeros((0, model.output.shape[-1]), np.float32)


def scores(probs: dict, d, n: int) -> dict:
    """val / test top-1 over the places (closed set), val accuracy over all rows, and the calibrated rule."""
    out = {}
    for s in ("val", "test"):
        k, y = d[s]["places"], d[s]["y"]
        out[s] = float((probs[s][:k, :n].argmax(1) == y[:k]).mean())
        out[f"{s}_all"] = float((probs[s].argmax(1) == y).mean())
    rule = finish.calibrate(probs["val"][:d["val"]["places"]], probs["test"][:d["test"]["places"]],
                            {s: probs[s][d[s]["places"]:] for s in ("val", "test")},
                            {s: d[s]["kinds"] for s in ("val", "test")}, n, True)
    out.update(true_accept=rule["test_true_accept"], landmark=rule.get("test_landmark_false_accept"),
               everyday=rule.get("test_everyday_false_accept"), score=rule["score"], threshold=rule["threshold"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/real/data"))
    ap.add_argument("--blocks", type=int, default=1, help="inverted-residual blocks fine-tuned (K, the last ones)")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time (epochs that fit; the trunk pass aside)")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--lr-blocks", type=float, default=1e-4, help="Adam's rate for the blocks and the head conv")
    ap.add_argument("--lr-head", type=float, default=1e-3, help="Adam's rate for the Dense")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if not 1 <= args.blocks <= N_BLOCKS - 1:
        ap.error(f"--blocks: 1 to {N_BLOCKS - 1}")

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.TRAIN_SEED)
    load_start = os.getloadavg()
    d, n = load(args.data)
    spec = backbones.BACKBONES[NAME]
    first = N_BLOCKS - args.blocks
    net = backbones.build(NAME)

    started = time.perf_counter()
    run, shape = trunk_runner(net, first)
    trunk, pooled = {}, {}
    for s in dataset.SPLITS:
        trunk[s], pooled[s] = trunk_pass(d[s]["paths"], run, shape, 2 if s == "train" else 1, spec.size)
        print(f"trunk pass {s}: {len(d[s]['paths'])} photos, {time.perf_counter() - started:.0f} s", flush=True)
    trunk_seconds = time.perf_counter() - started

    # the frozen model's head, as frozen.train fits it: unit-length pooled features, taken + mirrored, C on val
    yt = d["train"]["y"]
    xt = l2_normalise(pooled["train"].reshape(-1, 1280))
    c, head, by_c, _ = frozen.choose_c((xt, np.concatenate([yt, yt])), (l2_normalise(pooled["val"][0]),
                                                                        d["val"]["y"]), n + 1)
    print(f"head: C={c:g}, validation accuracy by C {by_c}", flush=True)
    del pooled

    model, conv_vars, dense_vars = tail_model(net, first, head)
    rows_x = trunk["train"].reshape(-1, *shape)        # view-major: the photos taken, then mirrored
    rows_y = np.concatenate([yt, yt])
    counts = np.bincount(rows_y, minlength=n + 1)
    weight = (len(rows_y) / ((counts > 0).sum() * np.maximum(counts, 1)))[rows_y].astype(np.float32)  # "balanced"
    opt_convs, opt_dense = keras.optimizers.Adam(args.lr_blocks), keras.optimizers.Adam(args.lr_head)
    opt_convs.build(conv_vars)
    opt_dense.build(dense_vars)

    @tf.function(reduce_retracing=True)
    def step(x, y, w):
        with tf.GradientTape() as tape:
            p = model(x, training=False)                 # inference mode: the batch norms keep their statistics
            loss = tf.reduce_sum(w * keras.losses.sparse_categorical_crossentropy(y, p)) / tf.reduce_sum(w)
        grads = tape.gradient(loss, conv_vars + dense_vars)
        opt_convs.apply_gradients(zip(grads[:len(conv_vars)], conv_vars))
        opt_dense.apply_gradients(zip(grads[len(conv_vars):], dense_vars))
        return loss

    def answers():
        out = {s: predict(model, trunk[s][0]) for s in ("val", "test")}
        return out

    epoch0 = answers()
    check = np.abs(epoch0["val"] - frozen.probabilities(l2_normalise(
        predict(keras.Model(model.input, model.get_layer(f"{SHORT}_unit").input), trunk["val"][0])), head)).max()
    first_scores = scores(epoch0, d, n)
    print(f"epoch 0 (frozen): val {first_scores['val']:.4f} (all rows {first_scores['val_all']:.4f}); tail against "
          f"the head on its own pooled features: max |dp| {check:.1e}", flush=True)
    best = (first_scores["val_all"], 0, [v.numpy() for v in conv_vars + dense_vars])
    rng = np.random.default_rng(config.TRAIN_SEED)
    started, epoch, last = time.perf_counter(), 0, 0.0
    history = []
    while epoch < args.max_epochs and time.perf_counter() - started + last <= args.minutes * 60:
        t0 = time.perf_counter()
        order = rng.permutation(len(rows_y))
        losses = []
        for k in range(0, len(order), args.batch):
            idx = np.sort(order[k:k + args.batch])
            losses.append(float(step(rows_x[idx], rows_y[idx], weight[idx])))
        epoch += 1
        probs = answers()
        val = float((probs["val"][:d["val"]["places"], :n].argmax(1) == d["val"]["y"][:d["val"]["places"]]).mean())
        val_all = float((probs["val"].argmax(1) == d["val"]["y"]).mean())
        last = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": val, "val_all": val_all,
                        "seconds": round(last, 1)})
        print(json.dumps(history[-1]), flush=True)
        if val_all > best[0]:
            best = (val_all, epoch, [v.numpy() for v in conv_vars + dense_vars])
    train_seconds = time.perf_counter() - started
    for v, value in zip(conv_vars + dense_vars, best[2]):
        v.assign(value)
    tuned = scores(answers(), d, n)

    blocks = f"last {args.blocks} block{'s' if args.blocks > 1 else ''}"
    rows = [{"model": f"{SHORT} frozen + head (epoch 0)", "epoch": 0, "C": c, **first_scores,
             "trunk_s": trunk_seconds, "train_s": None},
            {"model": f"{SHORT}, {blocks} fine-tuned (epoch {best[1]} of {epoch})", "epoch": best[1], "C": c,
             **tuned, "trunk_s": trunk_seconds, "train_s": train_seconds}]
    end = os.getloadavg()
    print(f"\nCPU: {cpu.cpu_model()} ({os.cpu_count()} cores); load average {load_start[0]:.2f} at the start, "
          f"{end[0]:.2f} at the end; {len(d['train']['paths'])} training photos (x2 views), "
          f"{len(d['val']['paths'])} val, {len(d['test']['paths'])} test; trunk up to b{first}'s input "
          f"{'x'.join(map(str, shape))}; Adam {args.lr_blocks:g} (convolutions) / {args.lr_head:g} (Dense), "
          f"batch {args.batch}, {epoch} epochs in {args.minutes:g} min")

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def num(v):
        return "-" if v is None else f"{v:.0f}"
    print(format_table(["model", "val", "test", "true accept", "other landmarks", "everyday", "trunk pass s",
                        "training s"],
                       [[r["model"], pct(r["val"]), pct(r["test"]), pct(r["true_accept"]), pct(r["landmark"]),
                         pct(r["everyday"]), num(r["trunk_s"]), num(r["train_s"])] for r in rows]))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "history": history, "load": [load_start, end]}, indent=1))


if __name__ == "__main__":
    main()
