"""The nightly job's training budget in minutes (pipeline.py --train-minutes -> cnn.py --minutes): epochs are
planned from the speed a finished run measured, never from a guess."""
import time
from types import SimpleNamespace

import pytest

from locator.core import config
from locator.job import steps
from locator.train.fit import epochs_within


def measured(epochs=50, photos=2000, seconds=500.0):
    return {"epochs": epochs, "metrics": {"train_seconds": seconds}, "training": {"photos_per_epoch": photos}}


def test_epochs_follow_the_measured_speed():
    # 50 epochs x 2000 photos in 500 s = 200 photos/s: 20 minutes hold 120 epochs of 2000 photos, 60 of 4000
    assert epochs_within(20, 2000, measured()) == 120
    assert epochs_within(20, 4000, measured()) == 60
    assert epochs_within(0.01, 2000, measured()) == 1                 # at least one epoch
    assert epochs_within(10_000, 2000, measured()) == config.EPOCHS_MAX  # never an endless plan


def test_without_a_measured_run_there_is_no_plan():
    assert epochs_within(20, 2000, {}) is None
    assert epochs_within(20, 2000, {"epochs": 50, "metrics": {"train_seconds": 500}, "training": {}}) is None


def test_the_pipeline_hands_the_budget_to_cnn_py():
    # a budget of epochs: the 64x64 trainer's (the embedding model trains its head in seconds, nothing to plan)
    cfg = SimpleNamespace(places="p.xlsx", data="data", models="models", verbose=False, train_minutes=25.0,
                          arch="compact", epochs=None, engine=None, api_url=None, source=None, per_place=None,
                          per_query=None, no_background=False, contact=None, size=None, resize_mode=None)
    argv = steps.commands(cfg)["train"]
    assert argv[argv.index("--train-minutes") + 1] == "25.0"  # cnn.py takes --train-minutes as --minutes
    assert argv[argv.index("--arch") + 1] == "compact"


def test_a_resumed_run_counts_the_seconds_of_every_process(tmp_path):
    """A run interrupted after its first epoch (which took at least PAUSE seconds), then resumed: the seconds
    fit.train returns, which metadata.json records and --minutes plans by, include the first process's."""
    import keras
    import numpy as np

    from locator.train import fit
    from locator.train.quickrun import data_from_arrays

    PAUSE = 3.0
    rng = np.random.default_rng(0)
    classes = [{"class": i, "index": f"{i:02x}", "name": f"Place {i}"} for i in range(2)]
    data = data_from_arrays(rng.integers(0, 256, (32, 16, 16, 3)), np.arange(32) % 2, classes)
    s = fit.Settings(arch="compact", epochs=2, batch=16, precision="float32", augment=0.0, cutmix=0.0, jit=False,
                     extra={"widths": (4,), "stem": 0})

    class SlowThenKilled(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(PAUSE / 2)  # two batches an epoch: the first epoch takes at least PAUSE

        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the epoch's checkpoints, as a Ctrl-C between epochs

    class Timed(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.t0

    with pytest.raises(KeyboardInterrupt):
        fit.train(data, tmp_path, s, progress=False, callbacks=[SlowThenKilled()])
    second = Timed()
    _, seconds, epochs_run = fit.train(data, tmp_path, s, progress=False, callbacks=[second])
    assert epochs_run == 1
    assert seconds >= PAUSE + second.seconds
