"""Sheet `background` of the place table: read as strictly as the places (one-line errors naming the row and the
fix); a table without the sheet has no background queries; the shipped table's sheet is sound."""
from pathlib import Path

import pytest

from locator.core import places
from locator.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PLACES = [("00", "Golden Temple (Harmandir Sahib)", "golden temple;Golden Temple Amritsar", 31.6, 74.9, "", ""),
          ("01", "Mysore Palace", "mysore palace", 12.3, 76.6, "", ""),
          ("02", "Seokchon Lake", "seokchon lake;석촌호수", 37.5, 127.1, "", "")]


def load(tmp_path, background):
    path = tmp_path / "places.xlsx"
    places.write(path, PLACES, (), background)
    return places.load(path)


def error(tmp_path, background) -> str:
    with pytest.raises(UserError) as e:
        load(tmp_path, background)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_background_sheet_reads_back(tmp_path):
    t = load(tmp_path, [("temple;hindu temple", "landmark"), ("Palace", "LANDMARK"), ("Indoor Kitchen", "everyday"),
                        ("lake", "everyday"), ("", ""), ("street;street scene", " everyday ")])
    assert [(b.queries, b.kind, b.folder) for b in t.background] == [
        (("temple", "hindu temple"), "landmark", "temple"), (("Palace",), "landmark", "palace"),
        (("Indoor Kitchen",), "everyday", "indoor_kitchen"), (("lake",), "everyday", "lake"),
        (("street", "street scene"), "everyday", "street")]  # the blank row is skipped
    assert len(t) == 3  # the places are untouched


def test_missing_sheet_means_no_background(tmp_path):
    path = tmp_path / "places.xlsx"
    places.write(path, PLACES)
    assert places.load(path).background == []


@pytest.mark.parametrize("background, expect", [
    ([("castle", "landmark"), ("tower", "monument")], r"background row 3: kind 'monument' is not one of landmark"),
    ([("castle", "")], r"background row 2: kind '' is not one of landmark, everyday; write landmark"),
    ([(" ; ;", "everyday")], r"background row 2: query is empty; write search terms separated by ';'"),
    ([("castle", "landmark"), ("Castle;old castle", "landmark")],
     r"background row 3: the first term 'Castle' names the same folder 'castle' as row 2; make it unique"),
    ([("golden temple", "landmark")], r"background row 2: the term 'golden temple' names place 00 "
                                      r"'Golden Temple \(Harmandir Sahib\)'; background photos must show none"),
    ([("castle;Mysore Palace at night", "landmark")], r"row 2: the term 'Mysore Palace at night' names place 01"),
    ([("harmandir sahib", "landmark")], r"names place 00"),
    ([("석촌호수", "everyday")], r"names place 02"),
    ([("../etc", "everyday")], r"background row 2: the first term '../etc' names the folder '../etc'; start it"),
])
def test_background_sheet_errors(tmp_path, background, expect):
    import re
    assert re.search(expect, error(tmp_path, background))


def test_generic_terms_of_a_place_are_not_its_name(tmp_path):
    """'temple' is a word of 'golden temple' but names no place of ours: allowed (the conflict rule in
    preprocess.py drops a crawled photo of our own temple)."""
    t = load(tmp_path, [("temple", "landmark"), ("palace", "landmark"), ("lake", "everyday")])
    assert len(t.background) == 3


def test_sheet_without_its_columns(tmp_path):
    import openpyxl
    path = tmp_path / "places.xlsx"
    places.write(path, PLACES)
    wb = openpyxl.load_workbook(path)
    ws = wb.create_sheet("background")
    ws.append(["query", "type"])
    ws.append(["castle", "landmark"])
    wb.save(path)
    with pytest.raises(UserError, match=r"sheet 'background' lacks column\(s\) kind; the header row must be: "
                                        r"query, kind"):
        places.load(path)


def test_shipped_table_background():
    """At least 20 queries of each kind, none naming a place (load checks that) or a Seoul landmark."""
    t = places.load(REPO / "places.xlsx")
    kinds = [b.kind for b in t.background]
    assert kinds.count("landmark") >= 20 and kinds.count("everyday") >= 20
    landmarks = [a.name for a in t.attractions] + ["seoul", "namsan", "gyeongbokgung", "lotte", "jamsil", "korea"]
    for b in t.background:
        for term in b.queries:
            for name in landmarks:
                assert places._words(name) and not places._contains(places._words(term), places._words(name)), \
                    (term, name)
