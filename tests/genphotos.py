"""Generated test photos and data folders (tests never read ../shared): structured images a perceptual hash
tells apart -- smooth random colour fields, a different field per seed -- and helpers to file them."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from locator.core import places
from locator.crawl.rawstore import RawFolder


def photo(seed: int, w: int = 96, h: int = 72) -> Image.Image:
    """A smooth random colour field (an 8x8 grid blown up bicubically) plus a diagonal ramp: photo-like for phash."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    img = np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * 40 // (w + h))[..., None]
    return Image.fromarray(np.clip(img + ramp - 20, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and "quality" not in kw:
        kw["quality"] = 92
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_table(path: Path, n: int) -> places.PlaceTable:
    rows = [[f"{i:02x}", f"Place {i}", f"place {i}; landmark {i}", 10.0 + i, 20.0 + i, "", ""] for i in range(n)]
    places.write(path, rows)
    return places.load(path)


def add(data: Path, index: str, blob: bytes, ext: str = "jpg") -> str:
    """File a photo as crawl.py would; returns its raw_file (relative to the data root)."""
    rec = RawFolder(Path(data) / "raw" / index).add(blob, ext, 0, 0, source="folder")
    return f"raw/{index}/{rec['file']}"


def fill(data: Path, index: str, seeds, **kw) -> list:
    return [add(data, index, encode(photo(s, **kw))) for s in seeds]


@pytest.fixture
def data(tmp_path):
    """An empty data root (test modules import this fixture)."""
    return tmp_path / "data"


@pytest.fixture
def table(tmp_path):
    """A valid place table of three places, 00..02."""
    return write_table(tmp_path / "places.xlsx", 3)
