"""How a user mistake must end in every script (docs/conventions.md): exit code 2 and one line on stderr,
`error: ...`, naming the cause; never a traceback."""


def exit_2_one_line(code, err: str, *words) -> None:
    """Exit `code` 2 and stderr `err` one line starting `error: ` that holds every one of `words`."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), lines[0]


def one_line_error(r, *words) -> None:
    """exit_2_one_line for a script run as a child process (a subprocess.CompletedProcess with text output)."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    exit_2_one_line(r.returncode, r.stderr, *words)
