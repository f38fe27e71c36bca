"""A photo's EXIF GPS position (most phone photos have none; when one is there, a user wants it used).

EXIF keeps latitude and longitude as degrees, minutes, seconds (three rationals) plus a reference letter:
N/S for latitude, E/W for longitude; S and W are negative in decimal degrees.
"""
import io
import math
import warnings
from pathlib import Path

from PIL import Image

GPS_IFD = 0x8825
LAT_REF, LAT, LON_REF, LON, STATUS = 1, 2, 3, 4, 9


def dms_to_decimal(dms, ref) -> float:
    """(degrees, minutes, seconds) and "N"/"S"/"E"/"W" -> signed decimal degrees. A bare number counts as
    degrees (some writers store one rational). Raises ValueError for anything else."""
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = str(ref or "").strip("\x00 ").upper()
    if ref not in ("N", "S", "E", "W"):
        raise ValueError(f"GPS reference {ref!r}")
    parts = [float(v) for v in (dms if isinstance(dms, (tuple, list)) else (dms,))]
    if not 1 <= len(parts) <= 3 or any(math.isnan(v) or v < 0 for v in parts):
        raise ValueError(f"GPS value {dms!r}")
    value = sum(v / 60 ** i for i, v in enumerate(parts))
    return -value if ref in ("S", "W") else value


def from_exif(exif) -> tuple | None:
    """(latitude, longitude) from a PIL Exif object, or None when it has no usable position."""
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception:  # a broken GPS IFD is no position, never a reason to drop the photo
        return None
    if not gps or LAT not in gps or LON not in gps:
        return None
    if str(gps.get(STATUS, "A")).strip("\x00 ").upper().startswith("V"):
        return None  # "V": the receiver said the measurement is void
    try:
        lat = dms_to_decimal(gps[LAT], gps.get(LAT_REF))
        lon = dms_to_decimal(gps[LON], gps.get(LON_REF))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None  # (0, 0) is what cameras without a fix write, not a photo taken off West Africa
    return lat, lon


def read_gps(src) -> tuple | None:
    """(latitude, longitude) of a photo (path, bytes or PIL image), or None. Reads only the header."""
    try:
        if isinstance(src, Image.Image):
            return from_exif(src.getexif())
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else Path(src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as img:
                return from_exif(img.getexif())
    except Exception:  # not an image, corrupt EXIF...: the photo's own reason is reported by normalise()
        return None
