"""Decode, validate and normalise photos: the ONE function used to build the training set, to predict and to serve.

`normalise(src)` -> uint8 array (size, size, 3). Training images, predict.py and serve.py all go through it, so a
photo is turned into pixels the same way whichever door it comes in by.
"""
import io
import logging
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from locator.core import config

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated photo is rejected, never half-grey
Image.MAX_IMAGE_PIXELS = None            # we enforce our own cap before decoding (see decode)

log = logging.getLogger("images")

REASONS = ("empty", "not_image", "truncated", "too_small", "too_large", "unreadable")

# Magic bytes of the formats we accept from the web (checked before Pillow sees a byte).
_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


class ImageRejected(Exception):
    """A file that is not a usable photo. `reason` is one of REASONS; `detail` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def sniff(head: bytes):
    """File extension for the image format whose magic bytes start `head`, or None."""
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


def _open(src):
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageRejected("empty", "zero bytes")
        return Image.open(io.BytesIO(data))
    if isinstance(src, (str, Path)):
        if Path(src).stat().st_size == 0:
            raise ImageRejected("empty", "zero bytes")
    return Image.open(src)


# Bytes a pixel as Pillow holds it once decoded (3-band modes are stored 4 bytes a pixel): the decode budget.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decoded_bytes(mode: str, size) -> int:
    """Memory a decoded image of this mode and (width, height) takes: width x height x bytes a pixel."""
    return size[0] * size[1] * _BYTES_PER_PIXEL.get(mode, 4)


class _InFlight:
    """Decodes at once in this process, bounded by count (CPU) and by decoded bytes (memory): a decode waits for
    room rather than failing, so a valid photo is never rejected because others were decoding."""

    def __init__(self, count: int, budget: int):
        self.count, self.budget = count, budget
        self._cv = threading.Condition()
        self._n = self._bytes = 0

    @contextmanager
    def hold(self, need: int):
        need = min(need, self.budget)  # one photo alone always fits (its own cap is MAX_DECODE_BYTES)
        with self._cv:
            self._cv.wait_for(lambda: self._n < self.count and self._bytes + need <= self.budget)
            self._n += 1
            self._bytes += need
        try:
            yield
        finally:
            with self._cv:
                self._n -= 1
                self._bytes -= need
                self._cv.notify_all()


IN_FLIGHT = _InFlight(config.DECODES_IN_FLIGHT or 2 * (os.cpu_count() or 1), config.DECODE_BYTES_IN_FLIGHT)


_SIXTEEN_TO_8 = (np.arange(65536, dtype=np.uint32) * 255 // 65535).astype(np.uint8)  # 64 kB lookup table


def _grey8(img: Image.Image) -> Image.Image:
    """16/32-bit grey to 8-bit without float64 (which cost 8 bytes a pixel three times over: +983 MB for a
    6000x6600 PNG). As before: 16-bit, or 32-bit values beyond 255, are scaled by 255/65535 (a lookup table: one
    uint8 image out, no wider temporaries); other 32-bit values are taken as 0..255; floats in float32."""
    a = np.asarray(img)
    sixteen = img.mode.startswith("I;16") or bool(a.size and a.max() > 255)
    if a.dtype.kind == "f":
        a = np.clip(a.astype(np.float32, copy=False) * np.float32(255.0 / 65535.0 if sixteen else 1.0), 0, 255)
        return Image.fromarray(a.astype(np.uint8), "L")
    if sixteen:
        if a.dtype != np.uint16:
            a = np.clip(a, 0, 65535).astype(np.uint16)
        return Image.fromarray(_SIXTEEN_TO_8[a], "L")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is laid on white (a logo on a transparent page is on white in a browser)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _grey8(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB") if img.mode != "RGB" else img


_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def _upright(img: Image.Image) -> Image.Image:
    """The photo turned as its EXIF orientation says (ImageOps.exif_transpose's turns). Not exif_transpose itself:
    after turning, it rewrites the EXIF, and odd EXIF (a negative SRATIONAL GPS altitude) makes that raise
    struct.error, a 500 in serve.py and a quarantined valid photo in preprocess; the pixels never need the
    rewrite. EXIF that cannot be read at all: the photo as stored, with a note in info["note"]."""
    try:
        method = _ORIENT.get(int(img.getexif().get(0x0112, 1)))
    except Exception as e:  # noqa: BLE001 - any EXIF surprise: the pixels are fine
        img.info["note"] = f"EXIF unreadable ({type(e).__name__}: {str(e)[:80]}); not rotated"
        log.debug("%s", img.info["note"])
        return img
    return img.transpose(method) if method is not None else img


def decode(src, min_side: int = config.MIN_SIDE, max_pixels: int = config.MAX_PIXELS, draft: int | None = None,
           max_bytes: int = config.MAX_DECODE_BYTES):
    """Open and fully decode a photo (path, bytes or file object) into an upright RGB image.

    Returns (image, (width, height)) where (width, height) is the stored size before any draft reduction.
    `draft`: for JPEG, let libjpeg decode at a reduced scale that stays >= draft pixels on each side (much
    faster for large photos that end up as 64x64). `max_bytes`: the decoded size (decoded_bytes, after the
    draft) allowed. Decodes in flight are bounded (IN_FLIGHT). Raises ImageRejected with the reason.
    """
    try:
        img = _open(src)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not_image", "not a recognised image format")
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageRejected("unreadable", str(e)[:200])
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageRejected("too_large", f"{w}x{h} is over the {max_pixels:,} pixel cap")
        if min(w, h) < min_side:
            raise ImageRejected("too_small", f"{w}x{h}; the shortest side must be >= {min_side}")
        img.seek(0)  # animations: the first frame
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        need = decoded_bytes(img.mode, img.size)
        if need > max_bytes:
            raise ImageRejected("too_large", f"{w}x{h} {img.mode} needs {need:,} bytes decoded, over the "
                                             f"{max_bytes:,} bytes budget")
        with IN_FLIGHT.hold(2 * need), warnings.catch_warnings():  # 2x: the decoded image and its RGB copy
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": harmless, the pixels are what matter
            img.load()
            img = _upright(img)
            note = img.info.get("note")
            img = _to_rgb(img)
        if note:
            img.info["note"] = note
        return img, (w, h)
    except ImageRejected:
        raise
    except OSError as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg or "broken data stream" in msg or "premature" in msg.lower() \
            else "unreadable"
        raise ImageRejected(reason, msg[:200])
    except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError, MemoryError) as e:
        raise ImageRejected("unreadable", f"{type(e).__name__}: {str(e)[:200]}")


def draft_for(size: int) -> int:
    """The JPEG draft target for a size x size output: libjpeg decodes at 1/2, 1/4 or 1/8 scale as long as both
    sides stay >= this. Its DCT scaling averages blocks (a clean box filter), so drafting down to the output size
    itself loses nothing a 64x64 image can show, and decodes faster than drafting to twice it (the figure, with
    its CPU: docs/results.md, preprocess).

    Everything that must give normalise()'s pixels (preprocess, predict, serve) asks here, never repeats it.
    """
    return size


def resize(img: Image.Image, size: int = config.SIZE, mode: str = config.RESIZE_MODE) -> Image.Image:
    """Make a size x size image: `squash` (plain resize, the study), `crop` (centre square), `pad` (fit, pad)."""
    if mode == "squash":
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if mode == "crop":  # ImageOps.fit takes no reducing_gap: resize the centre square box directly
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                          reducing_gap=2.0)
    if mode == "pad":
        return ImageOps.pad(img, (size, size), Image.Resampling.BILINEAR, color=config.PAD_COLOUR)
    raise ValueError(f"unknown resize mode {mode!r}; use one of {', '.join(config.RESIZE_MODES)}")


def normalise(src, size: int = config.SIZE, mode: str = config.RESIZE_MODE, min_side: int = config.MIN_SIDE,
              max_pixels: int = config.MAX_PIXELS) -> np.ndarray:
    """Photo (path, bytes, file object or PIL image) -> uint8 array (size, size, 3). Raises ImageRejected."""
    if isinstance(src, Image.Image):
        img = _to_rgb(src)
    else:
        img, _ = decode(src, min_side=min_side, max_pixels=max_pixels, draft=draft_for(size))
    return np.asarray(resize(img, size, mode), dtype=np.uint8)
