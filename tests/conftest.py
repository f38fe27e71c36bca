"""Shared by every test folder (one folder per step of locator/): the repository and this folder on sys.path, so
tests import the package, the scripts and the helpers (genphotos: small generated photos and place tables;
servekit: a tiny model trained once per session; clikit: how a user mistake must end), and the fixtures
every step uses."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE.parent, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from genphotos import data, table  # noqa: E402, F401  (fixtures: an empty data root, a generated place table)
