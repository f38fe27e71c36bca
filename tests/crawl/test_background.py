"""crawl.py's background queries (sheet `background`): crawled after the places with the same engines, checks,
manifest and resume into data/background/<folder>/, against tools/search_server.py on 127.0.0.1 or a local folder."""
import sys
from pathlib import Path

import pytest
from genphotos import encode, photo

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import crawl  # noqa: E402
from locator.core import places  # noqa: E402
from locator.core.cli import run  # noqa: E402
from locator.core.fsio import TMP_PREFIX, read_jsonl  # noqa: E402
from locator.crawl.rawstore import sha256  # noqa: E402
from tools.search_server import SearchServer  # noqa: E402

PLACES = [("00", "Alpha Gate", "alpha gate;Alpha Gate city", 37.5, 127.0, "", ""),
          ("01", "Beta Tower", "beta tower", 37.6, 127.1, "", "")]
BACKGROUND = [("castle;old castle", "landmark"), ("indoor kitchen", "everyday"), ("dog", "everyday")]
FOLDERS = {"alpha_gate": 4, "beta_tower": 4, "castle": 6, "indoor_kitchen": 5, "dog": 2}


def photo_tree(root: Path, folders: dict) -> Path:
    seed = 0
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"{i:03d}.jpg").write_bytes(encode(photo(seed)))
            seed += 1
    return root


def crawl_cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        run(lambda: crawl.main([str(a) for a in args] + ["--no-progress"]))
    return e.value.code


def check_folder(folder: Path) -> list:
    """Files == manifest lines, no duplicate, no temp file, hashes right: the invariants of any RawFolder."""
    records = read_jsonl(folder / "manifest.jsonl")
    assert sorted(r["file"] for r in records) == sorted(p.name for p in folder.iterdir() if p.name[:6].isdigit())
    assert len({r["sha256"] for r in records}) == len(records) == len({r["url"] for r in records})
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    for r in records:
        assert sha256((folder / r["file"]).read_bytes()) == r["sha256"]
    return records


@pytest.fixture
def setup(tmp_path):
    table = tmp_path / "places.xlsx"
    places.write(table, PLACES, (), BACKGROUND)
    return table, photo_tree(tmp_path / "photos", FOLDERS), tmp_path / "data"


@pytest.mark.parametrize("engine", ["commons", "bing"])
def test_background_queries_crawled_with_resume(setup, engine):
    table, photos, data = setup
    with SearchServer(photos) as server:
        url = server.api_url if engine == "commons" else server.bing_url
        args = ("--places", table, "--engine", engine, "--api-url", url, "--out", data / "raw", "--per-place", 3)
        assert crawl_cli(*args, "--per-query", 3) == 0
        got = {b: check_folder(data / "background" / b) for b in ("castle", "indoor_kitchen", "dog")}
        assert {b: len(r) for b, r in got.items()} == {"castle": 3, "indoor_kitchen": 3, "dog": 2}  # dog: only 2
        assert {r["source"] for rs in got.values() for r in rs} == {engine}
        assert all(r["url"].startswith(server.base_url) and r["width"] == 96 for rs in got.values() for r in rs)
        assert len(check_folder(data / "raw" / "00")) == 3 and len(check_folder(data / "raw" / "01")) == 3
        assert not (data / "raw" / "castle").exists()  # background never lands among the places

        # A re-run tops up to the new quota and fetches nothing twice; photos already there keep their names.
        first = {r["file"]: r["sha256"] for r in got["castle"]}
        assert crawl_cli(*args, "--per-query", 5) == 0
        castle = check_folder(data / "background" / "castle")
        assert len(castle) == 5 and {r["file"]: r["sha256"] for r in castle[:3]} == first
        assert len(check_folder(data / "background" / "dog")) == 2  # the source has no more
        assert len(check_folder(data / "raw" / "00")) == 3
        # Full everywhere: nothing to do, exit 0.
        assert crawl_cli(*args, "--per-query", 5) == 0


def test_no_background_skips_them(setup):
    table, photos, data = setup
    with SearchServer(photos) as server:
        assert crawl_cli("--places", table, "--api-url", server.api_url, "--out", data / "raw", "--per-place", 2,
                         "--no-background") == 0
    assert len(check_folder(data / "raw" / "01")) == 2
    assert not (data / "background").exists()


def test_folder_engine_maps_background_by_first_term(setup, tmp_path, caplog):
    """--source holding place folders and background folders (symlinks, as to ../shared): the first term of a
    background query names its folder, like a place's; a query with no folder is a warning, not a failure."""
    table, photos, data = setup
    source = tmp_path / "src"
    source.mkdir()
    for name in ("alpha_gate", "beta_tower", "castle", "indoor_kitchen"):  # no "dog" folder
        (source / name).symlink_to(photos / name, target_is_directory=True)
    args = ("--places", table, "--engine", "folder", "--source", source, "--out", data / "raw", "--per-place", 10)
    assert crawl_cli(*args, "--per-query", 10) == 0
    castle = check_folder(data / "background" / "castle")
    assert len(castle) == 6 and {r["source"] for r in castle} == {"folder"}
    assert {Path(r["url"]).name for r in castle} == {f"{i:03d}.jpg" for i in range(6)}
    assert len(check_folder(data / "background" / "indoor_kitchen")) == 5
    assert not (data / "background" / "dog").exists()
    assert "1 background query found no photo" in caplog.text and "dog" in caplog.text
    assert len(check_folder(data / "raw" / "00")) == 4
    # Resume: a second run imports nothing again.
    caplog.clear()
    assert crawl_cli(*args, "--per-query", 10) == 0
    assert len(check_folder(data / "background" / "castle")) == 6


def test_background_only_left_to_crawl(setup):
    """Places full, background not yet: the crawl still runs (and a place-less table run is no 'nothing to do')."""
    table, photos, data = setup
    with SearchServer(photos) as server:
        base = ("--places", table, "--api-url", server.api_url, "--out", data / "raw", "--per-place", 2)
        assert crawl_cli(*base, "--no-background") == 0
        assert crawl_cli(*base, "--per-query", 1) == 0
    assert [len(check_folder(data / "background" / b)) for b in ("castle", "indoor_kitchen", "dog")] == [1, 1, 1]


def test_bad_per_query_is_one_line(setup, capsys):
    table, photos, data = setup
    assert crawl_cli("--places", table, "--engine", "folder", "--source", photos, "--out", data / "raw",
                     "--per-query", 0) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --per-query must be at least 1")  # + (see crawl.py --help)


def test_pipeline_hands_background_flags_to_crawl():
    import pipeline
    from locator.job import steps

    args, _, _ = pipeline.parse_args(["--per-query", "7", "--no-background"])
    crawl_argv = steps.commands(args)["crawl"]
    assert crawl_argv[crawl_argv.index("--per-query") + 1] == "7" and "--no-background" in crawl_argv
    args, _, _ = pipeline.parse_args([])
    crawl_argv = steps.commands(args)["crawl"]
    assert "--per-query" not in crawl_argv and "--no-background" not in crawl_argv  # crawl.py's defaults apply
