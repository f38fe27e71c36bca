"""pipeline.py end to end, as cron runs it: a real subprocess crawling generated photos from tools/search_server.py
on 127.0.0.1, training a tiny net, promoting (or not) through promote.promote; plus kill -9, a concurrent run, rollback,
and --install-cron --apply against a stand-in `crontab` on PATH. Nothing is mocked; nothing reads ../shared."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clikit import one_line_error
from genphotos import encode, photo
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pipeline as script  # noqa: E402  (pipeline.py, the thin script)
from locator.core import places
from locator.core.errors import UserError  # noqa: E402
from locator.core.fsio import read_jsonl  # noqa: E402
from locator.data import dataset
from locator.job import cron, decide, job, settings, steps
from locator.runs import promote, runs
from tools.search_server import SearchServer  # noqa: E402

COLOURS = [(230, 40, 40), (40, 210, 60), (50, 70, 235)]  # one tint a place: a 16x16 net learns it in 3 epochs
PER_FOLDER = 48
FIRST = 40  # photos a place in the first run: enough validation photos (~4 a place) for cnn.py to pick a good epoch
# the study's small net on 16x16 photos, named through pipeline.py's --arch (not cnn.py's default, the embedding
# model: these tests are about the job's mechanics) (no batch norm: its moving averages need more steps than these
# few; float32 and no XLA: compiling costs more than the steps it would speed up)
ARCH = "paper"
TINY = "--batch 8 --precision float32 --no-jit"


def tinted(place: int, k: int) -> Image.Image:
    """A photo of place `place`: a smooth random field (distinct perceptual hash per k) tinted by the place."""
    img = np.asarray(photo(1000 * place + k), np.float32) * 0.5 + np.array(COLOURS[place], np.float32) * 0.5
    return Image.fromarray(img.astype(np.uint8))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A photo tree (one folder per place, named by its first query term) served on 127.0.0.1, its place table,
    and a finished first pipeline run (crawl FIRST a place, train, promote) to copy into each test."""
    root = tmp_path_factory.mktemp("world")
    rows = []
    for i in range(len(COLOURS)):
        query = f"spot {i}; landmark {i}"
        rows.append([f"{i:02x}", f"Spot {i}", query, 10.0 + i, 20.0, "", ""])
        folder = root / "photos" / places.folder_name(query.split(";")[0])
        folder.mkdir(parents=True)
        for k in range(PER_FOLDER):
            (folder / f"{k:03d}.jpg").write_bytes(encode(tinted(i, k)))
    places.write(root / "places.xlsx", rows)
    with SearchServer(root / "photos") as server:
        first = root / "first"
        first.mkdir()
        r = run_pipeline(first, server, root / "places.xlsx", "--per-place", FIRST)
        assert r.returncode == 0, r.stderr
        yield {"root": root, "server": server, "places": root / "places.xlsx", "first": first,
               "first_stdout": r.stdout}


def args(where: Path, server, table: Path, *more):
    return ["--places", table, "--data", where / "data", "--models", where / "models", "--logs", where / "logs",
            "--api-url", server.api_url, "--size", 16, "--arch", ARCH, "--epochs", 3,
            f"--cnn-args={TINY}", "--no-progress", *more]


def command(where, server, table, *more):
    return [sys.executable, str(REPO / "pipeline.py"), *map(str, args(where, server, table, *more))]


def run_pipeline(where, server, table, *more, timeout=240):
    return subprocess.run(command(where, server, table, *more), cwd=where, capture_output=True, text=True,
                          timeout=timeout)


def copy_of_first(world, tmp_path) -> Path:
    for name in ("data", "models", "logs"):
        shutil.copytree(world["first"] / name, tmp_path / name, symlinks=True)
    return tmp_path


def reports(where: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted((where / "logs").glob("*/report.json"))]


def current(where: Path) -> str:
    return (where / "models" / "current").read_text().strip()


def versions(where: Path) -> list:
    return sorted(int(p.name) for p in (where / "models" / "serving" / "landmarks").iterdir() if p.name.isdigit())


def history(where: Path) -> list:
    return read_jsonl(where / "models" / "history.jsonl")


def splits(where: Path) -> dict:
    """raw file -> split, leaving out photos the dataset moved to fill an empty split (the contract's exception)."""
    d = where / "data" / "dataset"
    moved = {r["raw_file"] for r in dataset.read_summary(d).get("rescued", [])}
    return {f: s for s in dataset.SPLITS for f in (d / f"files_{s}.txt").read_text().splitlines() if f not in moved}


# ------------------------------------------------------------------------------------------------ end to end

def test_first_run_trains_and_promotes(world):
    first = world["first"]
    (rep,) = reports(first)
    assert rep["status"] == "done" and rep["decision"]["action"] == "promoted", rep
    assert [n for n, s in rep["steps"].items() if s["status"] == "ok"] == list(job.STEPS)
    assert all(s["seconds"] >= 0 for s in rep["steps"].values())
    assert {i: r["raw_added"] for i, r in rep["photos"].items()} == {"00": FIRST, "01": FIRST, "02": FIRST}
    assert all(r["train"] and r["val"] and r["test"] for r in rep["photos"].values())
    run = rep["candidate"]["run"]
    assert current(first) == run == rep["current_after"]
    assert rep["candidate"]["metrics"]["test_accuracy"] >= 0.75, rep["candidate"]  # the tiny net learns the tints
    meta = runs.read_metadata(first / "models" / "runs" / run)
    assert meta["dataset_fingerprint"] == rep["dataset"]["fingerprint"]
    assert meta["arch"] == ARCH  # pipeline.py's --arch reached cnn.py
    assert versions(first) == [1]  # promotion made the serving export
    (h,) = history(first)
    assert h["action"] == "promoted" and h["run"] == run and h["previous"] is None
    for log in ("pipeline.log", "crawl.log", "preprocess.log", "dataset.log", "train.log"):
        assert (first / "logs" / rep["id"] / log).stat().st_size > 0, log
    # no model to compare with: held to the first model's minimums instead, and the words say so
    assert "decision: promoted: no current model yet; the candidate clears the first model's minimums" \
        in world["first_stdout"]
    assert rep["candidate"]["metrics"][decide.GATE] is None  # the world has no background photos


def test_a_run_without_new_photos_does_not_train(world, tmp_path):
    where = copy_of_first(world, tmp_path)
    before = sorted(p.name for p in (where / "models" / "runs").iterdir())
    r = run_pipeline(where, world["server"], world["places"], "--per-place", FIRST)
    assert r.returncode == 0, r.stderr
    rep = reports(where)[-1]
    assert rep["decision"]["action"] == "skipped" and "no new photos" in rep["decision"]["reason"]
    assert "train" not in rep["steps"] and all(p["raw_added"] == 0 for p in rep["photos"].values())
    assert sorted(p.name for p in (where / "models" / "runs").iterdir()) == before
    assert versions(where) == [1] and len(history(where)) == 1


def test_a_worse_candidate_is_rejected_and_test_photos_keep_their_split(world, tmp_path):
    where = copy_of_first(world, tmp_path)
    served, old_splits = current(where), splits(where)
    r = run_pipeline(where, world["server"], world["places"], "--per-place", PER_FOLDER,
                     f"--cnn-args={TINY} --shuffle-labels")
    assert r.returncode == 0, r.stderr
    rep = reports(where)[-1]
    assert rep["decision"]["action"] == "rejected", rep["decision"]
    assert "worse than the current model" in rep["decision"]["reason"]
    assert {i: p["raw_added"] for i, p in rep["photos"].items()} == {i: PER_FOLDER - FIRST for i in ("00", "01", "02")}
    new, old = rep["candidate"]["metrics"], rep["current"]["metrics"]
    assert new["test_photos"] == old["test_photos"] == sum(p["test"] for p in rep["photos"].values())
    assert new["test_accuracy"] < old["test_accuracy"]
    assert current(where) == served and versions(where) == [1]  # the served model did not change
    assert (where / "models" / "runs" / rep["candidate"]["run"] / "model.h5").exists()  # kept, as a rejected run
    assert history(where)[-1]["action"] == "rejected" and history(where)[-1]["run"] == rep["candidate"]["run"]
    assert "decision: rejected" in r.stdout
    new_splits = splits(where)
    assert {f: new_splits.get(f) for f in old_splits} == old_splits  # every old photo kept its split
    assert len(new_splits) > len(old_splits)

    # the next night: nothing new, and this dataset already gave a rejected model -> no training again
    r = run_pipeline(where, world["server"], world["places"], "--per-place", PER_FOLDER)
    assert r.returncode == 0, r.stderr
    rep = reports(where)[-1]
    assert rep["decision"]["action"] == "skipped" and "rejected" in rep["decision"]["reason"], rep["decision"]


def _alive_children(models: Path) -> list:
    """Processes whose command line names this test's models folder (cnn.py children)."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(models).encode() in cmd and any(c.endswith(b"cnn.py") for c in cmd):
            out.append(int(p.name))
    return out


def _wait_for(what, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def test_kill_9_mid_training_then_concurrent_rerun_and_rollback(world, tmp_path):
    where = copy_of_first(world, tmp_path)
    first_run = current(where)
    srv, table = world["server"], world["places"]
    more = ("--per-place", PER_FOLDER, "--epochs", 6)
    a = subprocess.Popen(command(where, srv, table, *more), cwd=where, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        def report_of_a():
            """the run's report (it holds the lock by then)"""
            return next((r for r in reports(where) if r["pid"] == a.pid), None)

        _wait_for(report_of_a)
        # a second run while the first holds the lock: says so, exits 0, leaves no trace
        logs_before = sorted((where / "logs").iterdir())
        b = run_pipeline(where, srv, table, *more, timeout=60)
        assert b.returncode == 0 and "another pipeline.py run" in b.stderr, b.stderr
        assert sorted((where / "logs").iterdir()) == logs_before

        def training():
            """the first run's training to have logged 2 of its 6 epochs"""
            run = (report_of_a() or {}).get("candidate", {}).get("run")
            return run if run and steps.epochs_logged(where / "models" / "runs" / run) >= 2 else None

        cand = _wait_for(training)
        assert _alive_children(where / "models")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        assert not (where / "models" / "runs" / cand / "model.h5").exists(), "killed too late: more epochs"
    finally:
        if a.poll() is None:
            a.kill()
    # its cnn.py dies with it (PR_SET_PDEATHSIG): no training goes on unlocked
    _wait_for(lambda: not _alive_children(where / "models"), timeout=15)
    assert current(where) == first_run and versions(where) == [1]
    killed = reports(where)[-1]
    assert killed["status"] == "running" and killed["step"] == "train"

    # the same settings: the interrupted training is resumed (a wide tolerance: this test is about resuming, and
    # two good tiny models may differ by a test photo)
    r = run_pipeline(where, srv, table, *more, "--tolerance", 0.5)
    assert r.returncode == 0, r.stderr
    reps = reports(where)
    assert reps[-2]["id"] == killed["id"] and reps[-2]["status"] == "interrupted"
    rep = reps[-1]
    assert rep["candidate"]["run"] == cand and rep["candidate"]["resumed_from_run"] == killed["id"]
    assert rep["decision"]["action"] == "promoted", rep["decision"]
    assert current(where) == cand and versions(where) == [1, 2]

    # --rollback: the previous good run is current again, as a new serving version
    r = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *map(str, args(where, srv, table, "--rollback"))],
                       cwd=where, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert current(where) == first_run and versions(where) == [1, 2, 3]
    assert json.loads((where / "models/serving/landmarks/3/assets.extra/export.json").read_text())["run"] == first_run
    h = history(where)[-1]
    assert (h["action"], h["run"], h["previous"]) == ("rollback", first_run, cand)
    # nothing earlier to go back to now: the run rolled back from does not count as good
    r = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *map(str, args(where, srv, table, "--rollback"))],
                       cwd=where, capture_output=True, text=True, timeout=60)
    one_line_error(r, "--rollback", "no earlier good run")
    # and the next night does not undo the rollback by training on the same photos again
    r = run_pipeline(where, srv, table, *more)
    assert r.returncode == 0 and reports(where)[-1]["decision"]["action"] == "skipped", r.stderr
    assert current(where) == first_run


def test_a_run_started_by_hand_during_training_is_not_taken_for_the_candidate(world, tmp_path):
    """pipeline.py hands its run folder to cnn.py (--run-name): a complete run appearing in models/runs/ while it
    trains (a cnn.py started by hand, here a copy of the current run under a name that sorts first, trained on
    this very dataset) is neither evaluated nor promoted."""
    where = copy_of_first(world, tmp_path)
    first_run, rdir = current(where), where / "models" / "runs"
    hand = rdir / "00000000-000000"
    a = subprocess.Popen(command(where, world["server"], world["places"], "--no-crawl", "--force", "--tolerance",
                                 0.5), cwd=where, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        def training():
            """the run's train step to begin"""
            return next((r for r in reports(where) if r["pid"] == a.pid and r["step"] == "train"), None)

        _wait_for(training)
        shutil.copytree(rdir / first_run, hand)
        out, _ = a.communicate(timeout=240)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0
    rep = reports(where)[-1]
    cand = rep["candidate"]["run"]
    assert cand != hand.name and cand != first_run
    assert rep["decision"]["action"] == "promoted", rep["decision"]
    assert current(where) == cand == history(where)[-1]["run"]
    assert f"--run-name {cand}" in (where / "logs" / rep["id"] / "train.log").read_text()
    assert (hand / "model.h5").exists()  # the hand-started run is left alone
    assert "not compared: no background photos in the validation split" in rep["decision"]["reason"]
    assert f"decision: promoted: {rep['decision']['reason']}" in out


# ------------------------------------------------------------------------------------------------ cron

STAND_IN = """#!/bin/sh
# stand-in for crontab(1): -l prints the stored table, - stores stdin; every call is recorded
here="$(dirname "$0")"
echo "$*" >> "$here/calls"
case "$1" in
  -l) if [ -f "$here/table" ]; then cat "$here/table"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > "$here/table" ;;
  *) exit 1 ;;
esac
"""


def test_install_cron_prints_the_line_and_apply_merges_it_once(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "crontab").write_text(STAND_IN)
    (bindir / "crontab").chmod(0o755)
    (bindir / "table").write_text("MAILTO=me@example.org\n15 * * * * /usr/bin/other-job\n")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    work.mkdir()

    def install(schedule, *more):
        return subprocess.run([sys.executable, str(REPO / "pipeline.py"), "--install-cron", schedule, "--apply",
                               "--places", "missing.xlsx", "--per-place", "80", *more], cwd=work, env=env,
                              capture_output=True, text=True, timeout=60)

    r = install("0 3 * * 0")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(f"0 3 * * 0 cd {work} && mkdir -p {work / 'logs'} && {settings.venv_python()} "
                           f"{REPO / 'pipeline.py'} --places {work / 'missing.xlsx'} --data {work / 'data'} "
                           f"--models {work / 'models'} --logs {work / 'logs'} --per-place=80 --no-progress")
    assert line.endswith(f">> {work / 'logs' / 'cron.log'} 2>&1 {cron.MARKER} {work / 'models'}")
    table = (bindir / "table").read_text()
    assert table == f"MAILTO=me@example.org\n15 * * * * /usr/bin/other-job\n{line}\n"

    r = install("0 3 * * 0")  # again: nothing changes, crontab is not even rewritten
    assert r.returncode == 0 and "already installed" in r.stderr
    assert (bindir / "table").read_text() == table
    assert (bindir / "calls").read_text().split("\n").count("-") == 1

    r = install("30 2 * * *")  # a new schedule replaces our line, and only ours
    assert r.returncode == 0
    lines = (bindir / "table").read_text().splitlines()
    assert lines[:2] == ["MAILTO=me@example.org", "15 * * * * /usr/bin/other-job"] and len(lines) == 3
    assert lines[2].startswith("30 2 * * * cd ")

    # the command runs as cron would run it (empty environment, from /): the venv's python by absolute path,
    # pipeline.py's messages appended to logs/cron.log (here: the missing place table, exit 2)
    cmd = lines[2].split(None, 5)[5]
    r = subprocess.run(["/bin/sh", "-c", cmd], env={}, cwd="/", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == r.stderr == ""
    assert "missing.xlsx" in (work / "logs" / "cron.log").read_text()


def test_apply_without_crontab_and_bad_schedules_are_one_line_errors(tmp_path):
    def go(*a, path=os.environ["PATH"]):
        return subprocess.run([sys.executable, str(REPO / "pipeline.py"), *a], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PATH": path})

    empty = tmp_path / "nobin"
    empty.mkdir()
    one_line_error(go("--install-cron", "@daily", "--apply", path=str(empty)), "no `crontab`")
    one_line_error(go("--install-cron", "0 3 * *"), "five cron fields")
    one_line_error(go("--apply"), "--install-cron")
    one_line_error(go("--tolerance", "1.5"), "--tolerance")
    one_line_error(go("--cnn-args", "--batch 'unclosed"), "--cnn-args")
    one_line_error(go("--places", "missing.xlsx"), "missing.xlsx")


def test_cron_merge_keeps_other_lines_and_escapes_percent(tmp_path):
    models = tmp_path / "models"
    line = cron.line("@daily", tmp_path / "50%", ["/py", "pipeline.py"], tmp_path / "logs", models)
    assert r"50\%" in line and "50%'" not in line  # cron reads a bare % as a newline
    other = cron.line("@daily", tmp_path, ["/py", "pipeline.py"], tmp_path / "logs", tmp_path / "other-models")
    text = cron.merge("# mine\n0 1 * * * job\n" + other + "\n\n", line, models)
    assert text == "# mine\n0 1 * * * job\n" + other + "\n" + line + "\n"
    assert cron.merge(text, line, models) == text
    with pytest.raises(UserError):
        cron.check_schedule("61 3 * * * extra")


# ------------------------------------------------------------------------------------------------ the rules

def test_previous_good_walks_back_past_rolled_back_runs(tmp_path):
    models = tmp_path / "models"
    for name in "ABCD":
        (runs.runs_dir(models) / name).mkdir(parents=True)
        (runs.runs_dir(models) / name / "model.h5").write_bytes(b"h5")
        (runs.runs_dir(models) / name / "metadata.json").write_text("{}")
    h = [{"action": "promoted", "run": "A"}, {"action": "rejected", "run": "D"}, {"action": "promoted", "run": "B"},
         {"action": "promoted", "run": "C"}]
    assert promote.previous_good(models, h, "C").name == "B"  # never the rejected D
    h.append({"action": "rollback", "run": "B", "previous": "C"})
    assert promote.previous_good(models, h, "B").name == "A"  # not C: it was rolled back from
    h.append({"action": "rollback", "run": "A", "previous": "B"})
    assert promote.previous_good(models, h, "A") is None
    (runs.runs_dir(models) / "A" / "model.h5").unlink()
    assert promote.previous_good(models, h[:4], "C").name == "B"
    assert promote.previous_good(models, h[:3], "B") is None  # A lost its model: nothing to go back to


def test_config_file_settings_relative_paths_and_command_line_on_top(tmp_path):
    (tmp_path / "conf").mkdir()
    conf = tmp_path / "conf" / "pipeline.toml"
    conf.write_text('places = "../places.xlsx"\nper-place = 60\nforce = true\n'
                    'cnn_args = ["--batch", "32"]\ntolerance = 0.02\n')
    a, base, ap = script.parse_args(["--config", str(conf), "--per-place", "80"])
    assert a.places == tmp_path / "conf" / ".." / "places.xlsx" and a.force and a.tolerance == 0.02
    assert a.per_place == 80 and base.per_place == 60 and a.cnn_args == "--batch 32"
    flags = settings.cron_argv(ap, a, base)
    assert flags[:2] == ["--config", str(conf)] and "--per-place=80" in flags and "--force" not in flags
    conf.write_text("per_plaice = 60\n")
    with pytest.raises(UserError, match="unknown setting 'per_plaice'"):
        script.parse_args(["--config", str(conf)])
    conf.write_text("per-place = 'many'\n")
    with pytest.raises(UserError, match="--config .*--per-place"):
        script.parse_args(["--config", str(conf)])


@pytest.mark.parametrize("down", ["refused", "unresolvable"])
def test_an_offline_first_run_fails_at_the_crawl_naming_the_cause(tmp_path, down):
    """A fresh data folder and no network: the run ends within seconds on the crawl's real cause, not three steps
    later on "no processed photos"."""
    if down == "refused":
        with socket.socket() as s:  # a port nobody listens on once this socket is closed
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url, cause = f"http://127.0.0.1:{port}/w/api.php", f"cannot reach 127.0.0.1:{port}: connection refused"
    else:
        url, cause = "http://landmark-locator.invalid/w/api.php", \
            "cannot reach landmark-locator.invalid: name resolution failed"
    rows = [[f"{i:02x}", f"Spot {i}", f"spot {i}; landmark {i}; old spot {i}", 10.0 + i, 20.0, "", ""]
            for i in range(12)]
    places.write(tmp_path / "places.xlsx", rows)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "--places", str(tmp_path / "places.xlsx"),
                        "--data", str(tmp_path / "data"), "--models", str(tmp_path / "models"),
                        "--logs", str(tmp_path / "logs"), "--api-url", url, "--no-progress"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    decision = [ln for ln in r.stdout.splitlines() if ln.startswith("decision: ")]
    assert decision and decision[-1].startswith(f"decision: failed: crawl collected nothing ({cause}") \
        and decision[-1].endswith("is empty: check the network, or use --engine folder --source DIR"), r.stdout
    (rep,) = reports(tmp_path)
    assert rep["steps"]["crawl"]["status"] == "failed" and "preprocess" not in rep["steps"]
    assert took < 60, took  # one unreachable host ends the crawl: no timeout waited out per place and query
    print(f"offline pipeline run ({down}): {took:.1f} s")
