"""The split rule: a near-duplicate group's split is a hash of its key, so it never changes as photos are added.

Each group (preprocess.py's `group`, the smallest raw sha256 in it) sits at a position u = sha256(seed:key) in
[0, 1); u < train share -> train, then val, then test. dataset.py applies it per place (with a rescue for a
split the hash leaves empty) and to background photos (no rescue: they are no class).
"""
import hashlib
from collections import defaultdict

from locator.core import config
from locator.core.errors import UserError

SPLITS = ("train", "val", "test")


def parse_split(text: str) -> tuple:
    """'80/10/10' (or 0.8/0.1/0.1) -> (0.8, 0.1, 0.1). Every split needs a share: every place must be in each."""
    parts = str(text).replace(",", "/").split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v <= 0 for v in values):
        raise UserError(f"--split {text!r}: give three positive shares train/val/test, e.g. 80/10/10")
    total = sum(values)
    if not (abs(total - 100) < 1e-6 or abs(total - 1) < 1e-9):
        raise UserError(f"--split {text!r}: the shares add up to {total:g}; they must add up to 100 (or 1)")
    return tuple(v / total for v in values)


def position(key: str, seed=config.SPLIT_SEED) -> float:
    """Where a group sits in [0, 1): a hash of its key, so the same group always lands in the same split."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0 ** 64


def _bounds(split) -> dict:
    train, val, _ = split
    return {"train": (0.0, train), "val": (train, train + val), "test": (train + val, 1.0)}


def split_of(key: str, split=config.SPLIT, seed=config.SPLIT_SEED) -> str:
    u = position(key, seed)
    for name, (lo, hi) in _bounds(split).items():
        if lo <= u < hi:
            return name
    return "test"  # u within a rounding error of 1.0


def assign(keys, split=config.SPLIT, seed=config.SPLIT_SEED):
    """Split of each group key of ONE place, after the rescue. Returns ({key: split}, [(key, from, to)]).

    A split the hash leaves empty takes the group nearest to it from a split that keeps one; test first."""
    where = {k: split_of(k, split, seed) for k in keys}
    bounds, rescued = _bounds(split), []
    for name in ("test", "val", "train"):
        if name in where.values():
            continue
        lo, hi = bounds[name]
        sizes = defaultdict(int)
        for s in where.values():
            sizes[s] += 1
        donors = [k for k in sorted(keys) if sizes[where[k]] > 1]
        if not donors:
            continue
        u = {k: position(k, seed) for k in donors}
        best = min(donors, key=lambda k: (lo - u[k] if u[k] < lo else u[k] - hi, k))
        rescued.append((best, where[best], name))
        where[best] = name
    return where, rescued
