"""Plain-text tables for every step's summary (aligned columns, numbers right-aligned)."""


def format_table(headers, rows, footer=None) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned; optional total row."""
    body = [list(map(_cell, r)) for r in rows]
    foot = [list(map(_cell, footer))] if footer else []
    head = [str(h) for h in headers]
    widths = [max(len(r[i]) for r in [head] + body + foot) for i in range(len(head))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(head), rule] + [line(r) for r in body]
    if foot:
        out += [rule, line(foot[0])]
    return "\n".join(out)


def totals(headers, rows) -> list:
    """The footer of a per-place table (columns index, place, then counts): "total", then each column's sum."""
    return ["", "total"] + [sum(r[k] for r in rows) for k in range(2, len(headers))]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    return "" if v is None else str(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
