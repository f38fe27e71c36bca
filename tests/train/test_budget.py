"""The nightly job's training budget in minutes (pipeline.py --train-minutes -> cnn.py --minutes): epochs are
planned from the speed a finished run measured, never from a guess."""
from types import SimpleNamespace

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
    cfg = SimpleNamespace(places="p.xlsx", data="data", models="models", verbose=False, train_minutes=25.0,
                          arch=None, epochs=None, engine=None, api_url=None, source=None, per_place=None,
                          per_query=None, no_background=False, contact=None, size=None, resize_mode=None)
    argv = steps.commands(cfg)["train"]
    assert argv[argv.index("--train-minutes") + 1] == "25.0"  # cnn.py takes --train-minutes as --minutes
