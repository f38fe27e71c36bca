"""predict.py's outputs from a list of inference.Result: the table on stdout, CSV, JSON, TensorFlow Serving's
response shape and the contact sheet PNG. Every file is written atomically."""
import csv
import io
import json

import numpy as np

from locator.core import config
from locator.core.fsio import atomic_path, atomic_write_text
from locator.core.tables import format_table

CSV_COLUMNS = ("file", "status", "index", "name", "confidence", "top1_index", "top1_confidence", "top2_index",
               "top2_confidence", "top3_index", "top3_confidence", "latitude", "longitude", "address", "nearby",
               "gps_latitude", "gps_longitude", "gps_nearest_index", "gps_nearest_name", "gps_nearest_km",
               "label", "reason", "detail")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 2] + ".."


def _gps_text(g) -> str:
    if not g:
        return ""
    n = g["nearest"]
    return f"{g['latitude']:.5f}, {g['longitude']:.5f} -> {n['index']} {_short(n['name'], 24)} {n['km']:.1f} km"


def _nearby_text(answer) -> str:
    return "; ".join(f"{a['name']} ({a['kind']}) {a['km']:.2f} km" if a["kind"] else f"{a['name']} {a['km']:.2f} km"
                     for a in answer.get("nearby", ()))


def counts(results) -> dict:
    c = {"photos": len(results), "place": 0, "unknown": 0, "unreadable": 0}
    for r in results:
        c[r.status] += 1
    return c


def table_text(results) -> str:
    """One row a photo: index, place, confidence, top 3 and the EXIF position when there is one."""
    rows = []
    for r in results:
        name = _short(r.photo.name, 40)
        if not r.ok:
            rows.append([name, "-", f"unreadable: {r.reason}", "", _short(r.detail, 48), ""])
            continue
        a = r.answer
        top3 = ", ".join(f"{t['index']} {t['confidence']:.2f}" for t in a["top3"])
        place = a["name"] if a["known"] else f"unknown (best: {a['top3'][0]['name']})"
        rows.append([name, a["index"] or "?", _short(place, 36), f"{a['confidence']:.3f}", top3, _gps_text(r.gps)])
    headers = ["file", "idx", "place", "conf", "top 3", "EXIF GPS -> nearest place"]
    if not any(r.gps for r in results):  # most photos carry no position: no empty column for them
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    return format_table(headers, rows)


def places_text(results, radius_km: float | None = None) -> str:
    """Each predicted place once: coordinates, address and the nearby attractions (name, kind, km); with
    radius_km, a place without any says so."""
    seen = {}
    for r in results:
        if r.ok and r.answer["known"]:
            seen.setdefault(r.answer["index"], r.answer)
    lines = []
    for index in sorted(seen):
        a = seen[index]
        lines.append(f"{index}  {a['name']}  ({a['latitude']:.5f}, {a['longitude']:.5f})  {a['address']}".rstrip())
        if a.get("nearby"):
            lines.append(f"    nearby: {_nearby_text(a)}")
        elif radius_km is not None:
            lines.append(f"    nearby: no listed attraction within {radius_km:g} km")
    return "\n".join(lines)


def summary_line(results, threshold: float, run) -> str:
    c = counts(results)
    return (f"{c['photos']} photos: {c['place']} placed, {c['unknown']} unknown, {c['unreadable']} unreadable "
            f"(threshold {threshold:.3f}, model {run})")


def photo_record(r) -> dict:
    """One photo in the JSON output: status, Predictor's answer, GPS, evaluation label, or the reason."""
    rec = {"file": r.photo.name, "status": r.status}
    if r.ok:
        rec.update(r.answer)
    else:
        rec.update(reason=r.reason, detail=r.detail)
    rec["gps"] = r.gps
    if r.photo.label is not None:
        rec["label"] = r.photo.label
    return rec


def write_json(path, results, header: dict, evaluation=None) -> None:
    doc = {**header, "counts": counts(results), "photos": [photo_record(r) for r in results],
           "evaluation": evaluation}
    atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def csv_row(r) -> dict:
    row = {"file": r.photo.name, "status": r.status, "label": r.photo.label or "", "reason": r.reason,
           "detail": r.detail}
    if r.ok:
        a = r.answer
        row.update(index=a["index"] or "", name=a["name"], confidence=a["confidence"],
                   latitude=a.get("latitude", ""), longitude=a.get("longitude", ""), address=a.get("address", ""),
                   nearby=_nearby_text(a))
        for i, t in enumerate(a["top3"], 1):
            row[f"top{i}_index"], row[f"top{i}_confidence"] = t["index"], t["confidence"]
    if r.gps:
        n = r.gps["nearest"]
        row.update(gps_latitude=r.gps["latitude"], gps_longitude=r.gps["longitude"], gps_nearest_index=n["index"],
                   gps_nearest_name=n["name"], gps_nearest_km=n["km"])
    return row


def write_csv(path, results) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, restval="")
    w.writeheader()
    w.writerows(csv_row(r) for r in results)
    atomic_write_text(path, buf.getvalue())


def tfserving(results) -> dict:
    """The study's response shape: {"predictions": [[p0, p1, ...], ...]}, the model's outputs in class order
    (plus the background column last when the model has one). Every photo keeps its row, so row i answers input
    i; an unreadable photo's row is TF Serving's error object, {"error": "<file>: <reason>: <detail>"}."""
    return {"predictions": [[float(p) for p in r.probs] if r.ok else
                            {"error": f"{r.photo.name}: {r.reason}" + (f": {r.detail}" if r.detail else "")}
                            for r in results]}


# --- the contact sheet ---

_RED, _GREEN, _GREY = (200, 30, 30), (40, 140, 60), (120, 120, 120)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font when FreeType is there
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-3] + ".." if len(text) > 3 else ""
    return text


def contact_sheet(results, path, title: str = "", thumb: int = config.SHEET_THUMB,
                  columns: int = config.SHEET_COLUMNS, limit: int = config.SHEET_MAX) -> int:
    """Thumbnails (the pixels the model saw) with file, place and confidence; unknowns framed in red and marked,
    unreadable files as a grey box with their reason. Returns how many photos it shows (at most `limit`)."""
    from PIL import Image, ImageDraw

    shown = results[:limit]
    font, bold = _font(11), _font(12)
    pad, line = 6, 14
    cw, ch = thumb + 44, thumb + 2 * pad + 3 * line + 4
    rows = max(1, -(-len(shown) // columns))
    head = 2 * line + pad
    sheet = Image.new("RGB", (columns * cw, head + rows * ch), "white")
    d = ImageDraw.Draw(sheet)
    more = f"  (first {len(shown)} of {len(results)})" if len(results) > len(shown) else ""
    d.text((pad, pad), _fit(d, title + more, bold, columns * cw - 2 * pad), fill="black", font=bold)
    for i, r in enumerate(shown):
        x0, y0 = (i % columns) * cw, head + (i // columns) * ch
        tx, ty = x0 + (cw - thumb) // 2, y0 + pad
        if r.pixels is not None:
            sheet.paste(Image.fromarray(np.asarray(r.pixels, np.uint8)).resize((thumb, thumb), Image.NEAREST),
                        (tx, ty))
        else:
            d.rectangle([tx, ty, tx + thumb - 1, ty + thumb - 1], fill=(225, 225, 225))
        colour = {"place": _GREEN, "unknown": _RED, "unreadable": _GREY}[r.status]
        d.rectangle([tx - 3, ty - 3, tx + thumb + 2, ty + thumb + 2], outline=colour, width=3)
        if r.status == "place":
            lines = [r.answer["name"], f"{r.answer['index']}  {r.answer['confidence']:.1%}"]
        elif r.status == "unknown":
            best = r.answer["top3"][0]
            lines = ["UNKNOWN", f"best {best['index']} {best['confidence']:.1%}"]
        else:
            lines = ["UNREADABLE", r.reason]
        lines.append(r.photo.name)
        for k, text in enumerate(lines):
            d.text((x0 + 3, ty + thumb + 4 + k * line), _fit(d, text, font, cw - 6),
                   fill=colour if k == 0 and r.status != "place" else "black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return len(shown)
