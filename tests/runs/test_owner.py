"""One run, one writer (locator/runs/owner.py): a run folder's lock, a chosen run name, and cnn.py refusing a run
another process is writing."""
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import one_line_error

from locator.core.errors import Busy, UserError
from locator.runs import owner, runs

REPO = Path(__file__).resolve().parents[2]


def test_a_run_has_one_owner_at_a_time(tmp_path):
    run = runs.new_run(tmp_path / "models")
    lock = owner.own(run)
    with pytest.raises(Busy, match="another process is writing run"):
        owner.own(run)
    lock.release()
    owner.own(run).release()


def test_a_chosen_run_name_is_made_or_taken_empty_and_never_a_folder_holding_a_run(tmp_path):
    models = tmp_path / "models"
    run, lock = owner.claim(models, "night-1")
    assert run == runs.runs_dir(models) / "night-1" and run.is_dir()
    with pytest.raises(Busy):
        owner.claim(models, "night-1")
    lock.release()
    (run / "model.h5").write_bytes(b"h5")
    with pytest.raises(UserError, match="already holds a run"):
        owner.claim(models, "night-1")
    (runs.runs_dir(models) / "empty").mkdir()
    owner.claim(models, "empty")[1].release()  # pipeline.py makes the folder, cnn.py takes it
    fresh, lock = owner.claim(models)
    assert fresh.parent == runs.runs_dir(models) and fresh.name not in ("night-1", "empty")
    lock.release()


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "", "x\\y"])
def test_a_run_name_is_one_folder_name(name):
    with pytest.raises(Exception, match="one folder name inside models/runs/"):
        owner.run_name(name)


def test_a_folder_nothing_was_written_to_is_dropped_and_any_other_kept(tmp_path):
    models = tmp_path / "models"
    empty, lock = owner.claim(models, "empty")
    lock.release()
    owner.drop_if_empty(empty)
    assert not empty.exists()
    used, lock = owner.claim(models, "used")
    owner.drop_if_empty(used)  # held by a training: kept, even while still empty
    assert used.is_dir()
    (used / "checkpoints").mkdir()
    lock.release()
    owner.drop_if_empty(used)
    assert used.is_dir()
    owner.drop_if_empty(models / "runs" / "never-made")  # nothing there: nothing to do


def test_cnn_py_refuses_to_resume_a_run_another_process_is_writing(tmp_path):
    models = tmp_path / "models"
    run = runs.new_run(models)
    (run / "checkpoints").mkdir()
    lock = owner.own(run)  # this test stands in for the training that writes the run
    try:
        r = subprocess.run([sys.executable, str(REPO / "cnn.py"), "--models", str(models), "--data",
                            str(tmp_path / "data"), "--arch", "compact", "--resume", str(run), "--no-progress"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    one_line_error(r, "another process is writing run", run.name)


def test_cnn_py_run_name_goes_not_with_resume_nor_outside_models_runs(tmp_path):
    def cnn(*a):
        return subprocess.run([sys.executable, str(REPO / "cnn.py"), "--models", str(tmp_path / "models"),
                               "--arch", "compact", *a],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    one_line_error(cnn("--run-name", "a", "--resume"), "--run-name", "--resume")
    one_line_error(cnn("--run-name", "../elsewhere"), "--run-name", "one folder name")
