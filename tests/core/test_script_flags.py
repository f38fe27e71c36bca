"""The scripts share their flag names (README): --places, --data and --models mean the same thing everywhere."""
import importlib
from pathlib import Path

import pytest

from locator.core import config
from locator.core.errors import UserError


@pytest.mark.parametrize("script", ["crawl", "preprocess", "dataset", "cnn", "predict"])
def test_every_step_takes_data_as_the_data_root(script, tmp_path):
    a = importlib.import_module(script).parse_args(["--data", str(tmp_path / "d")])
    assert a.data == tmp_path / "d"


def test_crawl_fills_the_raw_folder_of_the_data_root():
    import crawl

    assert crawl.parse_args(["--data", "/srv/d"]).out == config.raw_dir(Path("/srv/d"))
    assert crawl.parse_args([]).out == config.raw_dir(config.DATA)
    a = crawl.parse_args(["--out", "/srv/d/raw"])  # the raw folder itself, as older command lines give it
    assert a.out == Path("/srv/d/raw") and a.data == Path("/srv/d")


def test_crawl_with_both_data_and_out_is_a_mistake():
    import crawl

    with pytest.raises(UserError, match="--data and --out"):
        crawl.parse_args(["--data", "/srv/d", "--out", "/srv/e/raw"])
