"""The place table: every validation rule has a bad workbook and its one-line error; the shipped table is sound."""
import re
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from locator.core import places
from locator.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def row(i, name=None, query=None, lat=37.5, lon=127.0):
    name = name or f"Place {i}"
    return (f"{i:02x}", name, query or name.lower(), lat, lon, "somewhere", "")


def good_rows(n=3):
    return [row(i) for i in range(n)]


def write(tmp_path, rows, attractions=(), name="places.xlsx"):
    path = tmp_path / name
    places.write(path, rows, attractions)
    return path


def raw_workbook(tmp_path, sheets: dict, name="places.xlsx"):
    """A workbook written cell by cell, for layouts places.write would never produce."""
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for r in rows:
            ws.append(list(r))
    path = tmp_path / name
    wb.save(path)
    return path


def error_of(path) -> str:
    with pytest.raises(UserError) as e:
        places.load(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_good_table_reads_back(tmp_path):
    rows = good_rows(3)
    rows[1] = ("01", "Second", "second term;zweiter;두번째", 37.55, 126.98, "addr", "desc")
    t = places.load(write(tmp_path, rows, [("Sight", 37.551, 126.981, "sight", "")]))
    assert [p.index for p in t] == ["00", "01", "02"]
    second = t.select("01")[0]
    assert second.queries == ("second term", "zweiter", "두번째")
    assert second.folder == "second_term" and second.cls == 1
    assert t.attractions[0].name == "Sight"


def test_upper_case_index_is_read_as_lower_case(tmp_path):
    rows = good_rows(11)
    rows[10] = ("0A",) + rows[10][1:]
    assert places.load(write(tmp_path, rows)).places[10].index == "0a"


def test_blank_rows_are_skipped(tmp_path):
    rows = good_rows(2) + [(None,) * 7]
    assert len(places.load(write(tmp_path, rows))) == 2


@pytest.mark.parametrize("case, expect", [
    ("number_index", r"row 3: index is the number 1, not text; format the index column as text"),
    ("hex_prefix", r"row 3: index '0x01' is not two hex digits"),
    ("gap", r"row 3: index '02' leaves a gap; .* must be '01'"),
    ("duplicate", r"row 4: index '01' duplicates an earlier index; .* must be '02'"),
    ("empty_index", r"row 3: index is empty"),
    ("empty_name", r"row 3: name is empty"),
    ("empty_query", r"row 3: query is empty"),
    ("bad_latitude", r"row 3: latitude 95 is out of range"),
    ("text_longitude", r"row 3: longitude 'east' is not a number"),
    ("empty_latitude", r"row 3: latitude is empty"),
    ("same_first_term", r"places row 3: '01' and '00' share the first query term"),
    ("slash_first_term", r"places row 3: the first term 'a/b' names the folder 'a/b'; start it with a letter or "
                         r"digit and use no '/'"),
    ("dotdot_first_term", r"places row 3: the first term '\.\./etc' names the folder '\.\./etc'"),
    ("too_few", r"1 place\(s\); a classifier needs at least 2"),
])
def test_bad_places_rows(tmp_path, case, expect):
    rows = good_rows(3)
    r1 = list(rows[1])
    if case == "number_index":
        r1[0] = 1
    elif case == "hex_prefix":
        r1[0] = "0x01"
    elif case == "gap":
        r1[0] = "02"
    elif case == "duplicate":
        rows[2] = ("01",) + rows[2][1:]
    elif case == "empty_index":
        r1[0] = ""
    elif case == "empty_name":
        r1[1] = ""
    elif case == "empty_query":
        r1[2] = " ; "
    elif case == "bad_latitude":
        r1[3] = 95
    elif case == "text_longitude":
        r1[4] = "east"
    elif case == "empty_latitude":
        r1[3] = None
    elif case == "same_first_term":
        r1[2] = rows[0][2] + ";other"
    elif case == "slash_first_term":
        r1[2] = "a/b;other"
    elif case == "dotdot_first_term":
        r1[2] = "../etc"
    if case != "duplicate":
        rows[1] = tuple(r1)
    if case == "too_few":
        rows = rows[:1]
    assert re.search(expect, error_of(write(tmp_path, rows)))


def test_too_many_places(tmp_path):
    rows = [row(i) for i in range(256)] + [("100", "One too many", "too many", 1, 1, "", "")]
    assert "row 258: more than 256 places; two hex digits name at most 256" in error_of(write(tmp_path, rows))


def test_missing_sheet(tmp_path):
    path = raw_workbook(tmp_path, {"Sheet1": [places.PLACE_COLUMNS, row(0), row(1)]})
    assert "no sheet named 'places' (sheets: Sheet1)" in error_of(path)


def test_missing_column(tmp_path):
    cols = [c for c in places.PLACE_COLUMNS if c != "query"]
    path = raw_workbook(tmp_path, {"places": [cols, ("00", "A", 1, 1, "", ""), ("01", "B", 1, 1, "", "")]})
    assert "sheet 'places' lacks column(s) query" in error_of(path)


def test_missing_attraction_column(tmp_path):
    path = raw_workbook(tmp_path, {"places": [places.PLACE_COLUMNS, row(0), row(1)],
                                   "attractions": [("name", "latitude", "kind")]})
    assert "sheet 'attractions' lacks column(s) longitude, description" in error_of(path)


def test_bad_attraction_coordinate(tmp_path):
    path = write(tmp_path, good_rows(2), [("Far away", 37.5, 200, "sight", "")])
    assert "attractions row 2: longitude 200 is out of range" in error_of(path)


def test_not_an_xlsx(tmp_path):
    path = tmp_path / "places.xlsx"
    path.write_text("index,name\n00,a\n")
    assert "not a readable .xlsx workbook" in error_of(path)


def test_csv_named_csv(tmp_path):
    path = tmp_path / "places.csv"
    path.write_text("index,name\n00,a\n")
    assert "not a readable .xlsx workbook" in error_of(path)


def test_missing_file(tmp_path):
    assert "place table " + str(tmp_path / "nope.xlsx") + " not found" in error_of(tmp_path / "nope.xlsx")


@pytest.mark.parametrize("case", ["number_index", "missing_file", "not_xlsx"])
def test_crawl_script_bad_table_is_one_line_exit_2(tmp_path, case):
    if case == "number_index":
        rows = good_rows(2)
        rows[1] = (1,) + rows[1][1:]
        path = write(tmp_path, rows)
    elif case == "missing_file":
        path = tmp_path / "missing.xlsx"
    else:
        path = tmp_path / "table.xlsx"
        path.write_bytes(b"PK\x03\x04 not really a zip")
    p = subprocess.run([sys.executable, "crawl.py", "--places", str(path), "--out", str(tmp_path / "raw")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_shipped_table_has_the_study_places():
    t = places.load(REPO / "places.xlsx")
    assert len(t) == 12
    names = " ".join(p.name for p in t)
    for must in ("63 Building", "City Hall", "Yi Sun-shin", "Sejong", "Geunjeongjeon", "Olympic Park",
                 "Lotte World Tower", "Myeongdong Cathedral", "N Seoul Tower", "Seokchon Lake", "Seodaemun",
                 "Culture Station Seoul 284"):
        assert must in names
    for p in t:
        assert 37.4 < p.latitude < 37.7 and 126.8 < p.longitude < 127.2, p  # Seoul
        assert p.address and p.description
        assert any(re.search("[\uac00-\ud7a3]", q) for q in p.queries), f"{p.name}: no Korean search term"
        assert re.fullmatch(r"[a-z0-9_\-]+", p.folder), p.folder
        near = t.nearby(p, 3)
        assert len(near) == 3 and all(km < 1.5 for _, km in near), (p.name, near)


def test_shipped_table_index_cells_are_text():
    ws = openpyxl.load_workbook(REPO / "places.xlsx")["places"]
    cells = [c for c in ws["A"][1:] if c.value is not None]
    assert all(c.data_type == "s" and c.number_format == "@" for c in cells)
