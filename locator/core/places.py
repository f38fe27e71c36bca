"""The place table (places.xlsx): read and validated here and nowhere else.

Sheet `places`: index, name, query, latitude, longitude, address, description; `index` is two lower-case hex
digits, contiguous from "00" in row order, and `int(index, 16)` is the model's class number.
Sheet `attractions`: name, latitude, longitude, kind, description. "Nearby" = great-circle distance.
Sheet `background` (optional): query, kind (landmark | everyday): searches for photos of none of our places,
crawled into data/background/<folder>/ (folder: the first term, as for places).
"""
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from locator.core import config
from locator.core.errors import UserError

PLACE_COLUMNS = ("index", "name", "query", "latitude", "longitude", "address", "description")
ATTRACTION_COLUMNS = ("name", "latitude", "longitude", "kind", "description")
BACKGROUND_COLUMNS = ("query", "kind")
BACKGROUND_KINDS = ("landmark", "everyday")  # other landmarks and buildings | no landmark at all
_FOLDER = re.compile(r"^[\w][\w.\-]*$")  # a folder name that stays one path component
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Place:
    index: str            # "0a"
    name: str
    queries: tuple        # search terms, in order
    latitude: float
    longitude: float
    address: str = ""
    description: str = ""

    @property
    def cls(self) -> int:
        """The model's output column for this place."""
        return int(self.index, 16)

    @property
    def folder(self) -> str:
        """Folder name of this place in a local photo collection: first query term, lower case, '_' for ' '."""
        return folder_name(self.queries[0])


@dataclass(frozen=True)
class Attraction:
    name: str
    latitude: float
    longitude: float
    kind: str = ""
    description: str = ""


@dataclass(frozen=True)
class Background:
    """A search for photos of none of our places (sheet `background`)."""
    queries: tuple        # search terms, in order
    kind: str             # landmark | everyday

    @property
    def folder(self) -> str:
        """data/background/<folder>/, and its folder in a local photo collection (same rule as Place.folder)."""
        return folder_name(self.queries[0])

    # What the crawl's reports and progress bars show in their index and place columns.
    @property
    def index(self) -> str:
        return self.kind

    @property
    def name(self) -> str:
        return self.queries[0]


@dataclass
class PlaceTable:
    path: Path
    places: list
    attractions: list = field(default_factory=list)
    background: list = field(default_factory=list)  # [Background]; empty without the sheet

    def __len__(self):
        return len(self.places)

    def __iter__(self):
        return iter(self.places)

    def by_class(self, cls: int) -> Place:
        return self.places[cls]

    def select(self, only: str | None) -> list:
        """Places named by a comma list of indexes ("00,0a"); all when only is empty. Unknown index: UserError."""
        if not only:
            return list(self.places)
        wanted = [s.strip().lower() for s in only.split(",") if s.strip()]
        known = {p.index for p in self.places}
        bad = [w for w in wanted if w not in known]
        if bad:
            raise UserError(f"--only: no place with index {', '.join(bad)} in {self.path} "
                            f"(indexes run 00..{self.places[-1].index})")
        return [p for p in self.places if p.index in wanted]

    def nearby(self, place: Place, k: int = 5, radius_km: float = config.NEARBY_KM) -> list:
        """The k attractions nearest to `place` within radius_km: [(Attraction, km)] by great-circle distance.
        The radius keeps a table with few attractions from offering ones in another region as "nearby"."""
        ranked = sorted(((a, haversine_km(place.latitude, place.longitude, a.latitude, a.longitude))
                         for a in self.attractions), key=lambda t: t[1])
        return [(a, km) for a, km in ranked[:k] if km <= radius_km]

    def nearest_place(self, lat: float, lon: float):
        """(Place, km) nearest to a coordinate, e.g. a photo's EXIF GPS position."""
        return min(((p, haversine_km(lat, lon, p.latitude, p.longitude)) for p in self.places),
                   key=lambda t: t[1])

    def classes(self) -> list:
        """[{class, index, name}] as stored in classes.json and metadata.json."""
        return [{"class": p.cls, "index": p.index, "name": p.name} for p in self.places]


def folder_name(term: str) -> str:
    return "_".join(term.strip().lower().split())


def _words(text: str) -> tuple:
    """Lower-case words of a name or term, punctuation dropped: "Golden Temple (Harmandir Sahib)" -> 4 words."""
    return tuple(re.findall(r"\w+", text.lower()))


def _contains(words: tuple, part: tuple) -> bool:
    return bool(part) and any(words[i:i + len(part)] == part for i in range(len(words) - len(part) + 1))


def haversine_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def _text(v) -> str:
    return "" if v is None else str(v).strip()


def _number(v, what: str, row: int, lo: float, hi: float, sheet: str) -> float:
    if isinstance(v, bool) or v is None or _text(v) == "":
        raise UserError(f"{sheet} row {row}: {what} is empty; write a number between {lo:g} and {hi:g}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{sheet} row {row}: {what} {v!r} is not a number; write decimal degrees, e.g. 37.5512")
    if not lo <= x <= hi:  # NaN fails it too
        raise UserError(f"{sheet} row {row}: {what} {x:g} is out of range; it must be between {lo:g} and {hi:g}")
    return x


def _header(ws, wanted, sheet: str, path) -> dict:
    rows = ws.iter_rows(min_row=1, max_row=1, values_only=True)
    header = [(_text(h).lower()) for h in next(rows, ())]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{path}: sheet '{sheet}' lacks column(s) {', '.join(missing)}; "
                        f"the header row must be: {', '.join(wanted)}")
    return {c: header.index(c) for c in wanted}


def _index(v, row: int, expected: int) -> str:
    if expected >= config.MAX_PLACES:  # checked first: "write it like '100'" would be no help
        raise UserError(f"places row {row}: more than {config.MAX_PLACES} places; two hex digits name at most "
                        f"{config.MAX_PLACES} (00..ff)")
    want = f"{expected:02x}"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise UserError(f"places row {row}: index is the number {v!r}, not text; format the index column as "
                        f"text and write two hex digits ('{want}')")
    s = _text(v).lower()
    if not s:
        raise UserError(f"places row {row}: index is empty; write two hex digits ('{want}')")
    if not _HEX2.match(s):
        raise UserError(f"places row {row}: index {_text(v)!r} is not two hex digits; write it like '{want}' "
                        "(no 0x prefix, no spaces)")
    if s != want:
        n = int(s, 16)
        what = "duplicates an earlier index" if n < expected else "leaves a gap"
        raise UserError(f"places row {row}: index '{s}' {what}; indexes run 00, 01, ... in row order, "
                        f"this row must be '{want}'")
    return s


def load(path=config.PLACES) -> PlaceTable:
    """Read and validate the table. Any problem is a one-line UserError naming the row and the fix."""
    import openpyxl  # imported here: scripts that never read the table start faster
    from openpyxl.utils.exceptions import InvalidFileException  # e.g. a .csv given as the table

    path = Path(path)
    if not path.is_file():
        raise UserError(f"place table {path} not found (give it with --places)")
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, InvalidFileException) as e:
        raise UserError(f"{path}: not a readable .xlsx workbook ({type(e).__name__})")
    if "places" not in wb.sheetnames:
        raise UserError(f"{path}: no sheet named 'places' (sheets: {', '.join(wb.sheetnames)})")
    ws = wb["places"]
    col = _header(ws, PLACE_COLUMNS, "places", path)
    places, folders = [], {}
    for row, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
        if all(_text(v) == "" for v in values):
            continue  # blank rows (often left at the end by Excel) are not places
        get = lambda c: values[col[c]] if col[c] < len(values) else None  # noqa: E731
        index = _index(get("index"), row, len(places))
        name = _text(get("name"))
        if not name:
            raise UserError(f"places row {row}: name is empty")
        queries = tuple(t.strip() for t in _text(get("query")).split(";") if t.strip())
        if not queries:
            raise UserError(f"places row {row}: query is empty; write search terms separated by ';'")
        p = Place(index, name, queries,
                  _number(get("latitude"), "latitude", row, -90, 90, "places"),
                  _number(get("longitude"), "longitude", row, -180, 180, "places"),
                  _text(get("address")), _text(get("description")))
        _check_folder("places", row, p)
        if p.folder in folders:
            raise UserError(f"places row {row}: '{p.index}' and '{folders[p.folder]}' share the first query term "
                            f"'{p.queries[0]}'; make it unique (it names the place's photo folder)")
        folders[p.folder] = p.index
        places.append(p)
    if len(places) < config.MIN_PLACES:
        raise UserError(f"{path}: {len(places)} place(s); a classifier needs at least {config.MIN_PLACES}")

    attractions = []
    if "attractions" in wb.sheetnames:
        ws = wb["attractions"]
        col = _header(ws, ATTRACTION_COLUMNS, "attractions", path)
        for row, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
            if all(_text(v) == "" for v in values):
                continue
            get = lambda c: values[col[c]] if col[c] < len(values) else None  # noqa: E731
            name = _text(get("name"))
            if not name:
                raise UserError(f"attractions row {row}: name is empty")
            attractions.append(Attraction(name,
                                          _number(get("latitude"), "latitude", row, -90, 90, "attractions"),
                                          _number(get("longitude"), "longitude", row, -180, 180, "attractions"),
                                          _text(get("kind")), _text(get("description"))))
    background = _background(wb, path, places) if "background" in wb.sheetnames else []
    wb.close()
    return PlaceTable(path, places, attractions, background)


def _check_folder(sheet: str, row: int, entry) -> None:
    """The first search term names a folder (data/raw/<index>/ of a local collection, data/background/<folder>/):
    it must stay one path component, so "a/b" or "../x" can never reach outside the folder meant for it."""
    if not _FOLDER.match(entry.folder):
        raise UserError(f"{sheet} row {row}: the first term {entry.queries[0]!r} names the folder "
                        f"'{entry.folder}'; start it with a letter or digit and use no '/'")


def _background(wb, path, places) -> list:
    """Sheet `background`, validated: a known kind, search terms, unique folders, and no term naming a place."""
    ws = wb["background"]
    col = _header(ws, BACKGROUND_COLUMNS, "background", path)
    # A place is named by its name, the name without or only its bracketed part ("Golden Temple (Harmandir
    # Sahib)"), or any of its search terms.
    names = [(p, w) for p in places
             for t in (p.name, re.sub(r"\(.*?\)", " ", p.name), *re.findall(r"\((.*?)\)", p.name), *p.queries)
             if (w := _words(t))]
    out, folders = [], {}
    for row, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
        if all(_text(v) == "" for v in values):
            continue
        get = lambda c: values[col[c]] if col[c] < len(values) else None  # noqa: E731
        queries = tuple(t.strip() for t in _text(get("query")).split(";") if t.strip())
        if not queries:
            raise UserError(f"background row {row}: query is empty; write search terms separated by ';'")
        kind = _text(get("kind")).lower()
        if kind not in BACKGROUND_KINDS:
            raise UserError(f"background row {row}: kind {_text(get('kind'))!r} is not one of "
                            f"{', '.join(BACKGROUND_KINDS)}; write landmark (other landmarks and buildings) or "
                            "everyday (no landmark at all)")
        b = Background(queries, kind)
        _check_folder("background", row, b)
        if b.folder in folders:
            raise UserError(f"background row {row}: the first term {queries[0]!r} names the same folder "
                            f"'{b.folder}' as row {folders[b.folder]}; make it unique or join the two rows")
        for term in queries:
            hit = next((p for p, w in names if _contains(_words(term), w)), None)
            if hit is not None:
                raise UserError(f"background row {row}: the term {term!r} names place {hit.index} "
                                f"'{hit.name}'; background photos must show none of our places: use a "
                                "generic term (e.g. 'temple', not a temple of ours)")
        folders[b.folder] = row
        out.append(b)
    return out


def write(path, places, attractions=(), background=None) -> None:
    """Write a table in the contract's layout (index cells as text). Used by tests and tools."""
    import openpyxl

    from locator.core.fsio import atomic_path

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "places"
    ws.append(list(PLACE_COLUMNS))
    for p in places:
        if isinstance(p, Place):
            p = [p.index, p.name, ";".join(p.queries), p.latitude, p.longitude, p.address, p.description]
        ws.append(list(p))
    for cell in ws["A"]:
        cell.number_format = "@"  # text, so Excel never turns "10" into 10
    wa = wb.create_sheet("attractions")
    wa.append(list(ATTRACTION_COLUMNS))
    for a in attractions:
        if isinstance(a, Attraction):
            a = [a.name, a.latitude, a.longitude, a.kind, a.description]
        wa.append(list(a))
    if background is not None:  # [(query, kind)] or [Background]; None: no sheet
        wb_ = wb.create_sheet("background")
        wb_.append(list(BACKGROUND_COLUMNS))
        for b in background:
            wb_.append([";".join(b.queries), b.kind] if isinstance(b, Background) else list(b))
    with atomic_path(path) as tmp:
        wb.save(tmp)
