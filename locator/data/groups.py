"""Exact and near-duplicate groups of processed photos, and what each photo of a group becomes (preprocess.py).

Groups are the connected components of "same pixels, or phash within NEAR_DUP_DISTANCE bits": a component does not
depend on the order photos arrive in. In a group, one photo is kept (the biggest) and the rest are duplicates;
a group under two places is label noise and is rejected whole (`conflict`). A background photo (data/background/)
in a group with a place photo is label noise too -- a crawl for "temple" can return our own temple -- and only the
background photo is rejected as a `conflict`: the place photo stays.
"""
from collections import defaultdict

import numpy as np

from locator.core import config

CONFLICT = "conflict"

def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    bits = np.unpackbits(x.view(np.uint8).reshape(x.shape + (8,)), axis=-1)
    return bits.sum(axis=-1)


def near_pairs(phashes, distance: int):
    """Index pairs (i < j) whose 64-bit hashes differ in <= distance bits. All pairs, in row blocks of bounded size."""
    h = np.array([int(p, 16) for p in phashes], dtype=np.uint64)
    n = len(h)
    block = max(1, 2_000_000 // max(n, 1))  # ~16 MB of XORs at a time
    for start in range(0, n, block):
        d = _popcount(h[start:start + block, None] ^ h[None, start:])
        for i, j in zip(*np.nonzero(d <= distance)):
            if j > i:  # columns start at `start` too, so j > i means the pair (start+i, start+j) with i < j
                yield start + int(i), start + int(j)


def group_keys(records, distance: int = config.NEAR_DUP_DISTANCE) -> list:
    """Near-duplicate group key of each record: connected components of "same pixels or phash within distance",
    keyed by the smallest raw_sha256 in the component. Independent of the records' order."""
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first = {}
    for i, r in enumerate(records):
        union(i, first.setdefault(r["pixel_hash"], i))
    for i, j in near_pairs([r["phash"] for r in records], distance):
        union(i, j)
    key = {}
    for i, r in enumerate(records):
        root = find(i)
        key[root] = min(key.get(root, r["raw_sha256"]), r["raw_sha256"])
    return [key[find(i)] for i in range(len(records))]


def resolve(records, distance: int = config.NEAR_DUP_DISTANCE) -> None:
    """Set group, status and duplicate fields in place. `records`: every photo with hashes (kept, duplicate, pending
    or rejected as a conflict). A group under two places is label noise: all of it is rejected, and stays so. A
    background photo (`background` set) grouped with a place photo is rejected, and stays so; the place photo
    is resolved as if it were not there."""
    members = defaultdict(list)
    for r, key in zip(records, group_keys(records, distance)):
        r["group"] = key
        members[key].append(r)
    for key, group in members.items():
        ours = [r for r in group if not r.get("background")]
        if ours:
            names = ", ".join(sorted({r["index"] for r in ours}))
            for r in group:
                if r.get("background") and r.get("reason") != CONFLICT:
                    set_status(r, "rejected", reason=CONFLICT, file=None,
                               detail=f"background photo, near-duplicate of a photo of place {names} "
                                      f"({min(x['raw_file'] for x in ours)})")
            group = ours
        else:  # background only: one conflict rejected earlier stays so (its place photo may be gone since)
            group = [r for r in group if r.get("reason") != CONFLICT]
            if not group:
                continue
        places = sorted({r["index"] for r in group if not r.get("background")})
        if len(places) > 1 or any(r.get("reason") == CONFLICT for r in group):
            others = ", ".join(places)
            for r in group:
                if r.get("reason") != CONFLICT:
                    set_status(r, "rejected", reason=CONFLICT, file=None,
                               detail=f"near-duplicate group {key[:12]} spans places {others}")
            continue
        # The biggest photo carries the most detail; the sha256 breaks ties the same way on every run.
        keep = min(group, key=lambda r: (-r["width"] * r["height"], r["raw_sha256"]))
        for r in group:
            if r is keep:
                set_status(r, "kept")
            else:
                set_status(r, "duplicate", duplicate="exact" if r["pixel_hash"] == keep["pixel_hash"] else "near",
                           duplicate_of=keep["raw_file"])


def set_status(r, status, **fields):
    for k in ("reason", "detail", "duplicate", "duplicate_of"):
        r.pop(k, None)
    r["status"] = status
    r.update(fields)
