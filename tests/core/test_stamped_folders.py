"""Run and log folders are named by the UTC time, like every record's time stamp, so that "newest" never depends
on the machine's time zone or a clock change (daylight saving time)."""
import datetime as dt
import os
import time
from types import SimpleNamespace

import pytest

from locator.core import fsio
from locator.job import job
from locator.runs import runs


@pytest.fixture
def far_from_utc():
    """The process in a zone 7-8 hours behind UTC, put back afterwards."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    assert time.localtime().tm_gmtoff != 0
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def utc_names_around(make) -> tuple:
    """(the folder `make()` made, the UTC names the clock showed just before and just after)."""
    before = dt.datetime.now(dt.timezone.utc)
    folder = make()
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)  # a taken name moves on a second
    return folder, before.strftime("%Y%m%d-%H%M%S"), after.strftime("%Y%m%d-%H%M%S")


def test_a_stamped_folder_is_named_by_the_utc_time(far_from_utc, tmp_path):
    folder, lo, hi = utc_names_around(lambda: fsio.stamped_dir(tmp_path))
    assert folder.is_dir() and not any(folder.iterdir())
    assert lo <= folder.name <= hi


def test_a_taken_name_moves_on_a_second_and_names_keep_time_order(tmp_path):
    names = [fsio.stamped_dir(tmp_path).name for _ in range(3)]
    assert len(set(names)) == 3 and names == sorted(names)


def test_model_runs_are_named_by_the_utc_time(far_from_utc, tmp_path):
    run, lo, hi = utc_names_around(lambda: runs.new_run(tmp_path))
    assert run.parent == runs.runs_dir(tmp_path) and lo <= run.name <= hi


def test_pipeline_log_folders_are_named_by_the_utc_time(far_from_utc, tmp_path):
    def make():
        with job.run_folder(SimpleNamespace(logs=tmp_path)) as folder:
            return folder

    folder, lo, hi = utc_names_around(make)
    assert folder.parent == tmp_path and lo <= folder.name <= hi
