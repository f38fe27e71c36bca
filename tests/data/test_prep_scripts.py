"""preprocess.py and dataset.py as a user runs them: bad input is one line on stderr and exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import one_line_error
from genphotos import fill, write_table

REPO = Path(__file__).resolve().parents[2]


def script(name, *args, cwd):
    return subprocess.run([sys.executable, str(REPO / name), "--no-progress", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def table(tmp_path):
    write_table(tmp_path / "places.xlsx", 2)
    return tmp_path / "places.xlsx"


@pytest.mark.parametrize("name,args,words", [
    ("preprocess.py", [], ["raw", "not found"]),
    ("preprocess.py", ["--size", "3"], ["--size"]),
    ("preprocess.py", ["--resize-mode", "stretch"], ["--resize-mode", "invalid choice"]),
    ("preprocess.py", ["--workers", "x"], ["--workers"]),
    ("preprocess.py", ["--places", "nope.xlsx"], ["nope.xlsx", "not found"]),
    ("dataset.py", [], ["preprocess.py first"]),
    ("dataset.py", ["--split", "80/10"], ["--split"]),
    ("dataset.py", ["--min-per-class", "0"], ["--min-per-class"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, table, name, args, words):
    one_line_error(script(name, "--places", table, "--data", tmp_path / "data", *args, cwd=tmp_path), *words)


def test_both_steps_end_to_end(tmp_path, table):
    data = tmp_path / "data"
    fill(data, "00", range(1, 13), w=64, h=48)
    fill(data, "01", range(20, 22), w=64, h=48)
    r = script("preprocess.py", "--places", table, "--data", data, cwd=tmp_path)
    assert r.returncode == 0 and "total" in r.stdout and "Place 1" in r.stdout, r.stderr
    r = script("preprocess.py", "--places", table, "--data", data, cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stderr
    r = script("dataset.py", "--places", table, "--data", data, cwd=tmp_path)  # place 01: 2 photos, 3 splits
    one_line_error(r, "01 'Place 1'", "--min-per-class")
    r = script("dataset.py", "--places", table, "--data", data, "--min-per-class", "5", cwd=tmp_path)
    assert r.returncode == 0 and "(left out)" in r.stdout and "left out" in r.stderr, r.stderr
    assert (data / "dataset" / "x_train.npy").exists()
