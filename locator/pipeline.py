"""The scheduled job behind pipeline.py: crawl -> preprocess -> dataset -> train -> evaluate -> promote.

Every data step runs as its own script in a child process (`python crawl.py ...`), its output in the run's log
folder, and the pipeline reads what it did from the files it writes (manifests, summary.json, metadata.json):
- a step behaves exactly as when a person runs it: same flags, locks, exit codes and kill -9 recovery;
- TensorFlow's memory and threads go away with cnn.py's process, and preprocess.py's worker pool never forks a
  process holding TensorFlow;
- a child is killed with the pipeline (PR_SET_PDEATHSIG), so a kill -9 of the pipeline never leaves a training
  running, unlocked, beside the next run.
Only the evaluation (both models on the current test split) and the promotion run in this process.

Safe to leave running for months:
- one run at a time: a lock on the models folder and one on the data root; a second run says so and exits 0;
- logs/<run>/report.json is a journal, rewritten atomically after every step. A run killed at any step leaves it
  with status "running"; the next run marks it "interrupted", resumes its training (cnn.py --resume) or takes its
  finished candidate, when the dataset and the training command are the same;
- models/current only ever changes through runs.promote (which also makes the serving export), and only to a
  finished, evaluated run; models/history.jsonl records every decision (appended, fsynced) and tells --rollback
  which run was the previous good one;
- a dataset some model was already trained on (same fingerprint) is not trained on again unless --force: not when
  the current model has it, nor when a candidate from it was rejected or rolled back (retraining would undo the
  rollback at the next night).
"""
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from . import config, dataset, places, runs
from .cli import Busy, UserError
from .fsio import append_jsonl, atomic_write_json, exclusive, read_jsonl
from .rawstore import RawFolder
from .report import format_table

log = logging.getLogger("pipeline")

REPO = Path(__file__).resolve().parent.parent
HISTORY = "history.jsonl"
REPORT = "report.json"
STEPS = ("crawl", "preprocess", "dataset", "train", "evaluate", "promote")
SCRIPTS = {"crawl": "crawl.py", "preprocess": "preprocess.py", "dataset": "dataset.py", "train": "cnn.py"}
EXTRA = {"crawl": "crawl_args", "preprocess": "preprocess_args", "dataset": "dataset_args", "train": "cnn_args"}
# pipeline flags handed on to a step when given (else the step's own default, from config.py, applies)
PASSED = {"crawl": ("engine", "api_url", "source", "per_place"), "preprocess": ("size", "resize_mode"),
          "dataset": (), "train": ("arch", "epochs")}
METRICS = ("test_accuracy", "macro_f1")   # what the promotion rule compares
CURRENT_CHANGES = ("promoted", "rollback", "adopted")  # history actions after which `run` is current


class StepFailed(Exception):
    """A step exited with an error: the run stops, models/current stays as it was."""


# ------------------------------------------------------------------------------------------------ commands

def split_args(text, flag: str) -> list:
    try:
        return shlex.split(text or "")
    except ValueError as e:
        raise UserError(f"{flag} {text!r}: {e}")


def commands(cfg) -> dict:
    """step -> argv of its script, from the pipeline's settings (every step writes its output to a log file)."""
    common = ["--no-progress"] + (["-v"] if cfg.verbose else [])
    where = {"crawl": ["--places", cfg.places, "--out", config.raw_dir(cfg.data)],
             "preprocess": ["--places", cfg.places, "--data", cfg.data],
             "dataset": ["--places", cfg.places, "--data", cfg.data],
             "train": ["--data", cfg.data, "--models", cfg.models, "--no-promote"]}
    out = {}
    for step, script in SCRIPTS.items():
        passed = [a for name in PASSED[step] if getattr(cfg, name, None) is not None
                  for a in ("--" + name.replace("_", "-"), getattr(cfg, name))]
        extra = split_args(getattr(cfg, EXTRA[step], None), "--" + EXTRA[step].replace("_", "-"))
        out[step] = [str(a) for a in (sys.executable, REPO / script, *where[step], *passed, *common, *extra)]
    return out


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> None:
    """In the child, before exec: be killed when the pipeline dies, even by kill -9."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the pipeline died before prctl took effect
        os._exit(1)


def spawn(argv, log_path: Path, poll=None) -> int:
    """Run argv with stdout and stderr appended to log_path; call poll() about once a second while it runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=partial(_die_with, os.getpid()) if _LIBC else None)
        try:
            while True:
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if poll:
                        poll()
        except BaseException:  # Ctrl-C or an error of ours: never leave the step running on its own
            proc.kill()
            proc.wait()
            raise


def last_error(log_path: Path) -> str:
    """The step's own explanation: its last `error: ...` line, else its last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:") or " ERROR " in ln]
    return (errors or lines or [""])[-1]


# ------------------------------------------------------------------------------------------------ history

def history_path(models) -> Path:
    return Path(models) / HISTORY


def read_history(models) -> list:
    return read_jsonl(history_path(models))


def record(models, entry: dict) -> None:
    """Append one decision to models/history.jsonl (one fsynced write under the file's lock)."""
    append_jsonl(history_path(models), [{"time": runs.now_iso(), **entry}])


def finished(run) -> bool:
    return run is not None and (Path(run) / "model.h5").exists() and (Path(run) / "metadata.json").exists()


def previous_good(models, history, current_name):
    """The run --rollback goes back to: the newest run made current before (by promotion, rollback or adoption)
    that is not the current one, was never rolled back from, and still has its model. None if there is none."""
    bad = {e.get("previous") for e in history if e["action"] == "rollback"}
    for e in reversed(history):
        name = e.get("run")
        if e["action"] in CURRENT_CHANGES and name != current_name and name not in bad \
                and finished(runs.runs_dir(models) / name):
            return runs.runs_dir(models) / name
    return None


def adopt(models, history) -> list:
    """Record a current model the history does not know (made current by cnn.py without --no-promote, or by a run
    killed between promoting and writing history), so that history's idea of "current" is models/current's."""
    cur = runs.current(models)
    last = next((e for e in reversed(history) if e["action"] in CURRENT_CHANGES), None)
    if cur is None or (last and last["run"] == cur.name):
        return history
    entry = {"action": "adopted", "run": cur.name, "previous": last["run"] if last else None,
             "dataset_fingerprint": _meta(cur).get("dataset_fingerprint"),
             "reason": "current, but not by pipeline.py's hand (cnn.py without --no-promote, or a run killed "
                       "right after promoting)"}
    record(models, entry)
    log.info("history: %s is current without a record of it; recorded as adopted", cur.name)
    return read_history(models)


def _meta(run) -> dict:
    try:
        return runs.read_metadata(run) if run else {}
    except UserError as e:
        log.warning("%s", e)
        return {}


# ------------------------------------------------------------------------------------------------ scoring

def score(run, x, y, classes) -> dict:
    """A run's test metrics on (x, y), computed here the same way for the candidate and the current model."""
    from . import report, train

    runs.env_threads()
    net, _ = runs.load(run)
    probs = train.predict(net, x)[:, :len(classes)]  # a background output is no answer on a closed test set
    m = report.classification_metrics(y, probs.argmax(1), classes)
    return {k: m[k] for k in ("test_accuracy", "macro_f1", "macro_precision", "macro_recall", "test_photos")} \
        | {"per_place_f1": {p["index"]: p["f1"] for p in m["per_place"] if p["support"]}}


def comparable(meta: dict, classes, input_size) -> str:
    """Why a model cannot be scored on this dataset ("" if it can): other places, or another image size."""
    if [(c["index"], c["name"]) for c in meta["classes"]] != [(c["index"], c["name"]) for c in classes]:
        return "its places differ from the dataset's (the place table changed)"
    if list(meta["input_size"]) != list(input_size):
        return f"it takes {meta['input_size']} images, the dataset has {list(input_size)}"
    return ""


def decide(new: dict, old, tolerance: float):
    """(promote?, reason). The candidate must not be worse than the current model by more than `tolerance` on
    accuracy or macro F1, both measured on the same, current test split."""
    if old is None:
        return True, "no current model to compare with"
    worse = [f"{k} {new[k]:.4f} < {old[k]:.4f} - {tolerance:g}" for k in METRICS
             if new[k] < old[k] - tolerance - 1e-9]
    if worse:
        return False, "candidate worse than the current model on the test split: " + "; ".join(worse)
    return True, ("not worse than the current model on the test split (" +
                  ", ".join(f"{k} {new[k]:.4f} vs {old[k]:.4f}" for k in METRICS) + f"; tolerance {tolerance:g})")


# ------------------------------------------------------------------------------------------------ a run

@contextlib.contextmanager
def locked(cfg):
    """The pipeline's locks (fcntl, via filelock): one on the models folder, one on the data root. Busy if
    another pipeline.py holds either."""
    with contextlib.ExitStack() as stack:
        for where in (cfg.models, cfg.data):
            stack.enter_context(exclusive(Path(where) / ".pipeline", f"another pipeline.py run is using {where}"))
        yield


@contextlib.contextmanager
def run_folder(cfg):
    """logs/<YYYYmmdd-HHMMSS>/ with pipeline.log receiving this process's log records while the run lasts."""
    folder = runs.stamped_dir(cfg.logs)
    handler = logging.FileHandler(folder / "pipeline.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield folder
    finally:
        root.removeHandler(handler)
        handler.close()


def interrupted(logs, exclude) -> dict | None:
    """Mark reports of runs that died ("running", yet we hold the lock) as interrupted. Returns the newest earlier
    report if it is one of them: only the run just before this one can be picked up."""
    last = None
    for path in sorted(Path(logs).glob(f"*/{REPORT}")):
        if path.parent == exclude:
            continue
        try:
            rep = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if rep.get("status") == "running":
            rep["status"] = "interrupted"
            atomic_write_json(path, rep)
            log.warning("run %s was interrupted during %s", rep.get("id"), rep.get("step"))
        last = rep
    return last if last and last.get("status") == "interrupted" else None


class Job:
    """One pipeline run under the lock; self.report is logs/<run>/report.json."""

    def __init__(self, cfg, table, folder: Path):
        self.cfg, self.table, self.folder = cfg, table, folder
        self.cmd = commands(cfg)
        self.report = {"id": folder.name, "status": "running", "step": None, "started": runs.now_iso(),
                       "pid": os.getpid(), "config": _plain(vars(cfg)), "commands": self.cmd,
                       "steps": {}, "photos": {}}
        self.save()
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: children are started with a preexec_fn
        self.bar = tqdm(total=len(STEPS), unit="step", desc="pipeline", disable=True if cfg.no_progress else None)

    def tick(self, postfix: str = "") -> None:
        """The step bar: steps done, the current one, and (training) the epoch."""
        steps = self.report["steps"]
        self.bar.n = sum(1 for s in steps.values() if s["status"] != "running")
        self.bar.set_description(self.report["step"] or "pipeline", refresh=False)
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def save(self) -> None:
        atomic_write_json(self.folder / REPORT, self.report)
        if hasattr(self, "bar"):
            self.tick()

    @contextlib.contextmanager
    def timed(self, name: str):
        self.report["step"] = name
        rec = self.report["steps"][name] = {"status": "running"}
        self.save()
        t0 = time.monotonic()
        try:
            yield rec
            if rec["status"] == "running":
                rec["status"] = "ok"
        except BaseException:
            rec["status"] = "failed"
            raise
        finally:
            rec["seconds"] = round(time.monotonic() - t0, 1)
            self.save()
        log.info("%s: %s in %.1f s", name, rec["status"], rec["seconds"])

    def step(self, name: str, argv, warn=(), poll=None) -> int:
        """Run a step's script; an exit code in `warn` is a warning, any other but 0 a StepFailed."""
        with self.timed(name) as rec:
            rec["log"] = f"{name}.log"
            log.info("%s: %s", name, shlex.join(argv[1:]))
            code = spawn(argv, self.folder / rec["log"], poll)
            rec["exit"] = code
            if code in warn:
                rec["status"] = "warning"
            elif code != 0:
                rec["status"] = "failed"
                why = last_error(self.folder / rec["log"]) or f"exit code {code}"
                raise StepFailed(f"{name} failed (exit {code}): {why} (see {self.folder / rec['log']})")
        return code

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> int:
        cfg, rep = self.cfg, self.report
        prev = interrupted(cfg.logs, self.folder)
        history = adopt(cfg.models, read_history(cfg.models))
        try:
            self.collect()
            fp = self.build()
            cur = runs.current(cfg.models)
            cur_meta = _meta(cur)
            if cur:
                rep["current"] = {"run": cur.name, "dataset_fingerprint": cur_meta.get("dataset_fingerprint"),
                                  "trained_metrics": {k: cur_meta.get("metrics", {}).get(k) for k in METRICS}}
            why = self.nothing_new(fp, cur, cur_meta, history)
            if why and not cfg.force:
                return self.finish("skipped", why)
            if why:
                log.info("--force: training anyway (%s)", why)
            cand = self.train(fp, prev)
            new, old, reason = self.evaluate(cand, cur, cur_meta)
            promote, why = decide(new, old, cfg.tolerance) if not reason else (True, reason)
            entry = {"run": cand.name, "previous": cur.name if cur else None, "dataset_fingerprint": fp,
                     "candidate": _headline(new), "current": _headline(old) if old else None, "reason": why,
                     "report": str(self.folder / REPORT)}
            if promote:
                with self.timed("promote") as rec:
                    version = runs.promote(cfg.models, cand)
                    rec["serving_version"] = str(version) if version else None
                    record(cfg.models, {"action": "promoted", **entry, "serving_version": rec["serving_version"]})
                return self.finish("promoted", why)
            record(cfg.models, {"action": "rejected", **entry})
            return self.finish("rejected", why)
        except (StepFailed, UserError) as e:
            rep.update(status="failed", error=str(e), finished=runs.now_iso())
            self.save()
            log.error("run failed: %s; models/current is unchanged", e)
            self.bar.close()
            self.print_summary()
            return 1
        except BaseException as e:  # a bug or Ctrl-C: say so in the report, keep the traceback
            rep.update(status="failed" if isinstance(e, Exception) else "interrupted", error=repr(e),
                       finished=runs.now_iso())
            self.save()
            raise

    def collect(self) -> None:
        """Crawl (top the folders up), counting photos per place before and after from the manifests."""
        raw = config.raw_dir(self.cfg.data)
        before = {p.index: RawFolder(raw / p.index).count() for p in self.table}
        if self.cfg.no_crawl:
            self.report["steps"]["crawl"] = {"status": "skipped", "reason": "--no-crawl", "seconds": 0.0}
        elif self.step("crawl", self.cmd["crawl"], warn=(1,)) == 1:
            # exit 1: the source gave nothing (offline, exhausted); the photos we have are still good to use
            log.warning("crawl collected nothing (%s); going on with the photos already there",
                        last_error(self.folder / "crawl.log"))
        for p in self.table:
            now = RawFolder(raw / p.index).count()
            self.report["photos"][p.index] = {"name": p.name, "raw_before": before[p.index],
                                              "raw_added": now - before[p.index], "raw": now}
        self.save()

    def build(self) -> str:
        """Preprocess (new photos only) and pack the dataset (stable splits); returns its fingerprint."""
        folder = config.dataset_dir(self.cfg.data)
        old = _summary(folder)
        self.step("preprocess", self.cmd["preprocess"])
        self.step("dataset", self.cmd["dataset"])
        new = dataset.read_summary(folder)
        for index, row in self.report["photos"].items():
            counts, was = new.get("counts", {}).get(index, {}), old.get("counts", {}).get(index, {})
            row.update({s: counts.get(s, 0) for s in dataset.SPLITS},
                       dataset_added=sum(counts.values()) - sum(was.values()))
        self.report["dataset"] = {"fingerprint": new["fingerprint"], "previous": old.get("fingerprint"),
                                  "totals": new.get("totals"), "left_out": new.get("left_out", [])}
        self.save()
        return new["fingerprint"]

    def nothing_new(self, fp: str, cur, cur_meta: dict, history: list) -> str:
        """Why there is nothing to train ("" if there is): a model was trained on this very dataset already."""
        if cur and cur_meta.get("dataset_fingerprint") == fp:
            return f"no new photos: the current model {cur.name} was trained on this dataset (fingerprint {fp})"
        tried = [e for e in history if e.get("dataset_fingerprint") == fp and e["action"] in ("promoted", "rejected")]
        if tried:
            e = tried[-1]
            rolled = any(h["action"] == "rollback" and h.get("previous") == e["run"] for h in history)
            return (f"no new photos since run {e['run']} was trained on this dataset and "
                    f"{'rolled back' if rolled else e['action']} ({e['time']}; fingerprint {fp})")
        return ""

    def train(self, fp: str, prev) -> Path:
        """cnn.py --no-promote; or the interrupted run's training resumed, or its finished candidate taken."""
        cfg, rep = self.cfg, self.report
        argv = list(self.cmd["train"])
        rdir = runs.runs_dir(cfg.models)
        same = prev and (prev.get("dataset") or {}).get("fingerprint") == fp \
            and (prev.get("commands") or {}).get("train") == argv
        old = rdir / prev["candidate"]["run"] if same and (prev.get("candidate") or {}).get("run") else None
        if old is not None and finished(old):
            log.info("taking run %s, trained by the interrupted run %s on this dataset", old.name, prev["id"])
            rep["candidate"] = {"run": old.name, "from_interrupted_run": prev["id"]}
            rep["steps"]["train"] = {"status": "reused", "seconds": 0.0}
            self.save()
            return old
        if old is not None and (old / "checkpoints").is_dir():
            log.info("resuming run %s, interrupted in run %s", old.name, prev["id"])
            argv += ["--resume", str(old)]
            rep["candidate"] = {"run": old.name, "resumed_from_run": prev["id"]}
        before = {p.name for p in rdir.iterdir()} if rdir.is_dir() else set()

        def note_new_run():  # journal the run folder as soon as cnn.py makes it: a re-run can then resume it
            if "candidate" not in rep and rdir.is_dir():
                new = sorted({p.name for p in rdir.iterdir()} - before)
                if new:
                    rep["candidate"] = {"run": new[0]}
                    self.save()
            if "candidate" in rep:
                self.tick(f"epoch {_epochs_logged(rdir / rep['candidate']['run'])}")

        self.step("train", argv, poll=note_new_run)
        note_new_run()
        cand = rdir / rep.get("candidate", {}).get("run", "-")
        if not finished(cand):
            raise StepFailed(f"train: cnn.py finished but no new finished run is in {rdir}")
        got = runs.read_metadata(cand).get("dataset_fingerprint")
        if got != fp:
            raise StepFailed(f"train: run {cand.name} was trained on dataset {got}, not on {fp}")
        return cand

    def evaluate(self, cand: Path, cur, cur_meta: dict):
        """(candidate metrics, current metrics or None, reason to promote without comparing or "")."""
        rep = self.report
        with self.timed("evaluate") as rec:
            folder = config.dataset_dir(self.cfg.data)
            classes = dataset.load_classes(folder)
            x, y, _ = dataset.load_split(folder, "test", mmap=False)
            cand_meta = runs.read_metadata(cand)
            old, reason = None, ""
            if cur is None:
                reason = "no current model yet"
                new = {k: cand_meta["metrics"][k] for k in ("test_accuracy", "macro_f1", "test_photos")}
                rec["note"] = "candidate's metrics from cnn.py (same test split); nothing to compare with"
            else:
                new = score(cand, x, y, classes)
                why = comparable(cur_meta, classes, x.shape[1:3]) if cur_meta else "its metadata is unreadable"
                if why:
                    reason = f"the current model {cur.name} cannot be scored on this dataset: {why}"
                else:
                    old = score(cur, x, y, classes)
            rep["candidate"] = {**rep.get("candidate", {}), "run": cand.name, "metrics": new}
            if cur is not None:
                rep["current"] = {**rep.get("current", {}), "metrics": old}
            rec["test_photos"] = int(len(y))
        return new, old, reason

    def finish(self, action: str, reason: str) -> int:
        rep = self.report
        rep.update(status="done", step=None, decision={"action": action, "reason": reason}, finished=runs.now_iso())
        rep["current_after"] = getattr(runs.current(self.cfg.models), "name", None)
        self.save()
        log.info("decision: %s: %s", action, reason)
        self.bar.close()
        self.print_summary()
        return 0

    def print_summary(self) -> None:
        """The result tables (stdout): steps, photos per place, old and new metrics, the decision."""
        rep = self.report
        steps = [[n, s["status"], s.get("seconds", 0.0)] for n, s in rep["steps"].items()]
        out = [format_table(["step", "status", "seconds"], steps)]
        if rep["photos"]:
            rows = [[i, r["name"][:30], r["raw_before"], r["raw_added"], r.get("train", ""), r.get("val", ""),
                     r.get("test", "")] for i, r in rep["photos"].items()]
            out.append(format_table(["idx", "place", "had", "added", "train", "val", "test"], rows))
        cand, cur = rep.get("candidate", {}).get("metrics"), (rep.get("current") or {}).get("metrics")
        if cand:
            rows = [[k, f"{cur[k]:.4f}" if cur else "-", f"{cand[k]:.4f}"] for k in METRICS]
            out.append(format_table(["test split", f"current {rep.get('current', {}).get('run', '-')}",
                                     f"candidate {rep['candidate']['run']}"], rows))
        d = rep.get("decision") or {"action": rep["status"], "reason": rep.get("error", "")}
        out.append(f"decision: {d['action']}: {d['reason']}\nreport: {self.folder / REPORT}")
        print("\n\n".join(out))


def _epochs_logged(run: Path) -> int:
    """Epochs cnn.py has finished in a run (rows of its CSV training log)."""
    try:
        with open(run / "logs" / "history.csv", "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


def _headline(m):
    return {k: m[k] for k in METRICS} if m else None


def _summary(folder) -> dict:
    try:
        return dataset.read_summary(folder)
    except (UserError, ValueError):
        return {}


def _plain(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------ entry points

def run(cfg) -> int:
    """One scheduled run. 0: done (promoted, rejected, nothing new) or another run is going; 1: a step failed."""
    runs.env_threads()  # quiet TensorFlow here (evaluation, promotion) and in the steps
    commands(cfg)  # a malformed --*-args is a UserError before anything starts
    table = places.load(cfg.places)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(locked(cfg))
    except Busy as e:
        log.info("%s; this run has nothing to do", e)
        return 0
    with stack, run_folder(cfg) as folder:
        log.info("run %s: log and report in %s", folder.name, folder)
        return Job(cfg, table, folder).run()


def rollback(cfg) -> int:
    """Make the previous good run current again (through runs.promote: a new serving version)."""
    runs.env_threads()
    table = places.load(cfg.places)
    with locked(cfg):
        history = adopt(cfg.models, read_history(cfg.models))
        cur = runs.current(cfg.models)
        target = previous_good(cfg.models, history, cur.name if cur else None)
        if target is None:
            raise UserError(f"--rollback: no earlier good run to go back to in {history_path(cfg.models)}"
                            + (f" (current: {cur.name})" if cur else " (and no current model)"))
        runs.check_classes(runs.read_metadata(target), table)
        with run_folder(cfg) as folder:
            rep = {"id": folder.name, "status": "running", "started": runs.now_iso(), "config": _plain(vars(cfg))}
            atomic_write_json(folder / REPORT, rep)
            version = runs.promote(cfg.models, target)
            reason = f"--rollback from {cur.name if cur else 'none'}"
            record(cfg.models, {"action": "rollback", "run": target.name, "previous": cur.name if cur else None,
                                "dataset_fingerprint": _meta(target).get("dataset_fingerprint"), "reason": reason,
                                "serving_version": str(version) if version else None,
                                "report": str(folder / REPORT)})
            rep.update(status="done", decision={"action": "rollback", "reason": reason}, current_after=target.name,
                       previous=cur.name if cur else None, serving_version=str(version) if version else None,
                       finished=runs.now_iso())
            atomic_write_json(folder / REPORT, rep)
            log.info("rolled back: %s is current again (was %s)", target.name, cur.name if cur else "none")
            print(f"decision: rollback: {target.name} is current again (was {cur.name if cur else 'none'})"
                  f"\nreport: {folder / REPORT}")
    return 0


# ------------------------------------------------------------------------------------------------ config file, cron

NOT_SETTINGS = ("help", "config", "install_cron", "apply", "rollback")  # flags that are actions, not settings
PATHS = ("places", "data", "models", "logs")


def _settings(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTINGS}


def _flag(action) -> str:
    return max(action.option_strings, key=len)


def config_argv(path, parser) -> list:
    """A TOML config file as pipeline.py flags (so argparse checks its values like the command line's). Keys are
    the long flags without dashes (`per-place = 60` or `per_place = 60`); relative paths are relative to the
    file's folder; a *-args setting may be a string or a list."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config {path}: not found")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"--config {path}: {e}")
    settings, argv = _settings(parser), []
    for key, value in data.items():
        a = settings.get(key.replace("-", "_"))
        if a is None:
            raise UserError(f"--config {path}: unknown setting {key!r}; settings are pipeline.py's long flags "
                            f"without the dashes: {', '.join(sorted(_flag(a)[2:] for a in settings.values()))}")
        if a.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"--config {path}: {key} must be true or false")
            argv += [_flag(a)] if value else []
            continue
        if isinstance(value, list) and a.dest.endswith("_args"):
            value = shlex.join(map(str, value))
        elif a.type is Path:
            value = path.parent / str(value)
        argv += [f"{_flag(a)}={value}"]  # '=': a value starting with '-' (e.g. --cnn-args) stays a value
    return argv


def cron_argv(parser, args, base) -> list:
    """pipeline.py's flags for the crontab line: --config (absolute) if one was used, the four folders as absolute
    paths, and every other setting the command line gave beyond the config file (`base`)."""
    out = ["--config", str(Path(args.config).absolute())] if args.config else []
    for dest, a in _settings(parser).items():
        v, b = getattr(args, dest), getattr(base, dest)
        if dest in PATHS:
            out += [_flag(a), str(Path(v).absolute())]
        elif v != b and v not in (None, False) and dest != "no_progress":
            out += [_flag(a)] if a.nargs == 0 else [f"{_flag(a)}={Path(v).absolute() if isinstance(v, Path) else v}"]
    return out + ["--no-progress"]


def venv_python() -> Path:
    """The python that has the project's packages: the running virtualenv's, else the repo's .venv."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin" / "python"
    local = REPO / ".venv" / "bin" / "python"
    return local if local.exists() else Path(sys.executable)
