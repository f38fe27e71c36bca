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
- models/current only ever changes through promote.promote (which also makes the serving export), and only to a
  finished, evaluated run; models/history.jsonl records every decision (appended, fsynced) and tells --rollback
  which run was the previous good one;
- a dataset some model was already trained on (same fingerprint) is not trained on again unless --force: not when
  the current model has it, nor when a candidate from it was rejected or rolled back (retraining would undo the
  rollback at the next night).
"""
import contextlib
import json
import logging
import os
import shlex
import time
from pathlib import Path

from locator.core import config, places
from locator.core.errors import Busy, UserError
from locator.core.fsio import atomic_write_json, exclusive, now_iso, stamped_dir
from locator.core.tables import format_table
from locator.crawl.rawstore import RawFolder
from locator.data import dataset
from locator.job import decide, steps
from locator.runs import owner, promote, runs

log = logging.getLogger("pipeline")

REPORT = "report.json"
STEPS = ("crawl", "preprocess", "dataset", "train", "evaluate", "promote")


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
    """logs/<YYYYmmdd-HHMMSS>/ (UTC) with pipeline.log receiving this process's log records while the run lasts."""
    folder = stamped_dir(cfg.logs)
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
        self.cmd = steps.commands(cfg)
        self.report = {"id": folder.name, "status": "running", "step": None, "started": now_iso(),
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
        """Run a step's script; an exit code in `warn` is a warning, any other but 0 a steps.StepFailed."""
        with self.timed(name) as rec:
            rec["log"] = f"{name}.log"
            log.info("%s: %s", name, shlex.join(argv[1:]))
            code = steps.spawn(argv, self.folder / rec["log"], poll)
            rec["exit"] = code
            if code in warn:
                rec["status"] = "warning"
            elif code != 0:
                rec["status"] = "failed"
                why = steps.last_error(self.folder / rec["log"]) or f"exit code {code}"
                raise steps.StepFailed(f"{name} failed (exit {code}): {why} (see {self.folder / rec['log']})")
        return code

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> int:
        cfg, rep = self.cfg, self.report
        prev = interrupted(cfg.logs, self.folder)
        history = promote.adopt(cfg.models, promote.read_history(cfg.models))
        try:
            self.collect()
            fp = self.build()
            cur = runs.current(cfg.models)
            cur_meta = promote.metadata_or_empty(cur)
            if cur:
                rep["current"] = {"run": cur.name, "dataset_fingerprint": cur_meta.get("dataset_fingerprint"),
                                  "trained_metrics": {k: cur_meta.get("metrics", {}).get(k) for k in decide.METRICS}}
            why = self.nothing_new(fp, cur, cur_meta, history)
            if why and not cfg.force:
                return self.finish("skipped", why)
            if why:
                log.info("--force: training anyway (%s)", why)
            cand = self.train(fp, prev)
            verdict = self.evaluate(cand, cur, cur_meta)
            why = verdict.reason
            entry = {"run": cand.name, "previous": cur.name if cur else None, "dataset_fingerprint": fp,
                     "candidate": decide.headline(verdict.new), "current": decide.headline(verdict.old), "reason": why,
                     "report": str(self.folder / REPORT)}
            if verdict.promote:
                with self.timed("promote") as rec:
                    version = promote.promote(cfg.models, cand)
                    rec["serving_version"] = str(version) if version else None
                    promote.record(cfg.models, {"action": "promoted", **entry,
                                                "serving_version": rec["serving_version"]})
                return self.finish("promoted", why)
            promote.record(cfg.models, {"action": "rejected", **entry})
            return self.finish("rejected", why)
        except (steps.StepFailed, UserError) as e:
            rep.update(status="failed", error=str(e), finished=now_iso())
            self.save()
            log.error("run failed: %s; models/current is unchanged", e)
            self.bar.close()
            self.print_summary()
            return 1
        except BaseException as e:  # a bug or Ctrl-C: say so in the report, keep the traceback
            rep.update(status="failed" if isinstance(e, Exception) else "interrupted", error=repr(e),
                       finished=now_iso())
            self.save()
            raise

    def collect(self) -> None:
        """Crawl (top the folders up), counting photos per place before and after from the manifests."""
        raw = config.raw_dir(self.cfg.data)
        before = {p.index: RawFolder(raw / p.index).count() for p in self.table}
        bg_before = self._background_count()
        if self.cfg.no_crawl:
            self.report["steps"]["crawl"] = {"status": "skipped", "reason": "--no-crawl", "seconds": 0.0}
        elif self.step("crawl", self.cmd["crawl"], warn=(1,)) == 1:
            why = steps.crawl_cause(self.folder / "crawl.log")
            if not any(RawFolder(raw / p.index).count() for p in self.table):
                # nothing to go on with: say so here, not as "no processed photos" three steps later
                self.report["steps"]["crawl"]["status"] = "failed"
                raise steps.StepFailed(f"crawl collected nothing ({why}) and {raw} is empty: check the network, "
                                       "or use --engine folder --source DIR")
            # exit 1: the source gave nothing (offline, exhausted); the photos we have are still good to use
            log.warning("crawl collected nothing (%s); going on with the photos already there", why)
        for p in self.table:
            now = RawFolder(raw / p.index).count()
            self.report["photos"][p.index] = {"name": p.name, "raw_before": before[p.index],
                                              "raw_added": now - before[p.index], "raw": now}
        now = self._background_count()
        self.report["background_photos"] = {"raw_before": bg_before, "raw_added": now - bg_before, "raw": now}
        self.save()

    def _background_count(self) -> int:
        """Photos in data/background/ for the table's background sheet (none of our places)."""
        root = config.background_dir(self.cfg.data)
        return sum(RawFolder(root / b.folder).count() for b in self.table.background)

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
        """cnn.py --no-promote; or the interrupted run's training resumed, or its finished candidate taken.

        The run folder is chosen here and handed to cnn.py (--run-name, or --resume RUN), which locks it: the
        candidate is that folder and no other, whatever else appears in models/runs/ meanwhile (a cnn.py started
        by hand)."""
        cfg, rep = self.cfg, self.report
        argv = list(self.cmd["train"])
        rdir = runs.runs_dir(cfg.models)
        same = prev and (prev.get("dataset") or {}).get("fingerprint") == fp \
            and (prev.get("commands") or {}).get("train") == argv
        left = ((prev or {}).get("candidate") or {}).get("run")
        if left:
            owner.drop_if_empty(rdir / left)  # the interrupted run's folder, if its cnn.py never wrote to it
        old = rdir / left if same and left else None
        if old is not None and promote.finished(old):
            log.info("taking run %s, trained by the interrupted run %s on this dataset", old.name, prev["id"])
            rep["candidate"] = {"run": old.name, "from_interrupted_run": prev["id"]}
            rep["steps"]["train"] = {"status": "reused", "seconds": 0.0}
            self.save()
            return old
        if old is not None and (old / "checkpoints").is_dir():
            log.info("resuming run %s, interrupted in run %s", old.name, prev["id"])
            argv += ["--resume", str(old)]
            rep["candidate"] = {"run": old.name, "resumed_from_run": prev["id"]}
            cand = old
        else:  # chosen and journalled before cnn.py starts: the candidate is this folder, and a re-run finds it
            cand = runs.new_run(cfg.models)
            argv += ["--run-name", cand.name]
            rep["candidate"] = {"run": cand.name}
        self.save()
        try:
            self.step("train", argv, poll=lambda: self.tick(f"epoch {steps.epochs_logged(cand)}"))
        finally:
            owner.drop_if_empty(cand)  # cnn.py refused or died before writing anything
        if not promote.finished(cand):
            raise steps.StepFailed(f"train: cnn.py finished but its run {cand} is not finished")
        got = runs.read_metadata(cand).get("dataset_fingerprint")
        if got != fp:
            raise steps.StepFailed(f"train: run {cand.name} was trained on dataset {got}, not on {fp}")
        return cand

    def evaluate(self, cand: Path, cur, cur_meta: dict) -> "decide.Verdict":
        """Both models scored on the current dataset, and the promotion rule's verdict (decide.judge)."""
        rep = self.report
        with self.timed("evaluate") as rec:
            v = decide.judge(cand, cur, cur_meta, config.dataset_dir(self.cfg.data), self.cfg.tolerance,
                             self.cfg.gate_tolerance)
            rep["candidate"] = {**rep.get("candidate", {}), "run": cand.name, "metrics": v.new}
            if cur is not None:
                rep["current"] = {**rep.get("current", {}), "metrics": v.old}
            rec.update(test_photos=v.test_photos, background_photos=v.background_photos)
        return v

    def finish(self, action: str, reason: str) -> int:
        rep = self.report
        rep.update(status="done", step=None, decision={"action": action, "reason": reason}, finished=now_iso())
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
            def fmt(m, k):
                return "-" if not m or m.get(k) is None else f"{m[k]:.4f}"

            rows = [[k, fmt(cur, k), fmt(cand, k)] for k in (*decide.METRICS, decide.GATE)]
            out.append(format_table(["figure", f"current {rep.get('current', {}).get('run', '-')}",
                                     f"candidate {rep['candidate']['run']}"], rows))
        d = rep.get("decision") or {"action": rep["status"], "reason": rep.get("error", "")}
        out.append(f"decision: {d['action']}: {d['reason']}\nreport: {self.folder / REPORT}")
        print("\n\n".join(out))


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
    steps.commands(cfg)  # a malformed --*-args is a UserError before anything starts
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
    """Make the previous good run current again (through promote.promote: a new serving version)."""
    runs.env_threads()
    table = places.load(cfg.places)
    with locked(cfg):
        history = promote.adopt(cfg.models, promote.read_history(cfg.models))
        cur = runs.current(cfg.models)
        target = promote.previous_good(cfg.models, history, cur.name if cur else None)
        if target is None:
            raise UserError(f"--rollback: no earlier good run to go back to in {promote.history_path(cfg.models)}"
                            + (f" (current: {cur.name})" if cur else " (and no current model)"))
        runs.check_classes(runs.read_metadata(target), table)
        with run_folder(cfg) as folder:
            rep = {"id": folder.name, "status": "running", "started": now_iso(), "config": _plain(vars(cfg))}
            atomic_write_json(folder / REPORT, rep)
            version = promote.promote(cfg.models, target)
            reason = f"--rollback from {cur.name if cur else 'none'}"
            promote.record(cfg.models, {
                "action": "rollback", "run": target.name, "previous": cur.name if cur else None,
                "dataset_fingerprint": promote.metadata_or_empty(target).get("dataset_fingerprint"),
                "reason": reason, "serving_version": str(version) if version else None,
                "report": str(folder / REPORT)})
            rep.update(status="done", decision={"action": "rollback", "reason": reason}, current_after=target.name,
                       previous=cur.name if cur else None, serving_version=str(version) if version else None,
                       finished=now_iso())
            atomic_write_json(folder / REPORT, rep)
            log.info("rolled back: %s is current again (was %s)", target.name, cur.name if cur else "none")
            print(f"decision: rollback: {target.name} is current again (was {cur.name if cur else 'none'})"
                  f"\nreport: {folder / REPORT}")
    return 0


