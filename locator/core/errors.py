"""The errors every step shares: a user mistake is one line on stderr and exit code 2 (cli.run)."""


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad table, missing folder): one line on stderr, exit 2."""


class Busy(UserError):
    """Another run holds the lock (fsio.exclusive). A UserError for the steps; pipeline.py catches it: a nightly
    run that finds the previous one still going has nothing to do."""
