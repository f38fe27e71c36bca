"""Which model recognises our places best? Frozen ImageNet backbones with a linear head, side by side, on the
dataset dataset.py packed (the shared photos), each choice made on validation and the test split read for the rows.

    python bench/embedding_eval.py --data /work/real/data --cnn-run models/runs/20261205-101010
    python bench/embedding_eval.py --data /work/real/data --rows lite0,lite0+mnv2 --landmarks ../shared/datasets

Every row trains its head as cnn.py --arch embedding does (train/frozen: the mirrored view as a second training
photo, C chosen on validation) from the embedding cache (train/embed: a photo is embedded once per backbone), and
calibrates "not one of our places" as cnn.py does (train/finish.calibrate, 90% true accept on validation). Columns:
- val, test: top-1 over our places (closed set);
- true accept (test), other landmarks and everyday photos accepted (the test split's background of each kind);
- novel landmarks accepted: the head trained again without every photo of a fifth of the landmark background's
  source landmarks (--landmarks: the shared MANIFEST.tsv names each photo's landmark), scored on all their photos;
- kept-out places accepted: the head trained again without five of our places (bench/unknown_eval.py's), scored on
  all their photos: Indian monuments like ours, the hardest case;
- head s: the final fit of the head (the C search fits it once per C on top); embed photos/s: decode + every view
  through every backbone of the row, into an empty cache; MB: model.h5 of the whole model.
`+knn` rows fuse the head's score with a nearest-neighbour margin (cosine similarity of the nearest training photo of
the predicted place minus that of the nearest background photo); `--cnn-run` adds a trained 64x64 run's row from
its metadata.json (its "head s" is its training time). A CPU without AVX-512 can be stood in for by
OPENBLAS_CORETYPE=Haswell (the head's BLAS) and ONEDNN_MAX_CPU_ISA=AVX2 (Keras); TF Lite's XNNPACK picks its own.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from locator.core import config, cpu  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.data.dataset import SPLITS  # noqa: E402
from locator.predict.predictor import acceptance, accepted  # noqa: E402
from locator.train import backbones, embed, finish, frozen  # noqa: E402

NAMES = {v: k for k, v in backbones.SHORT.items()}
HOLDOUT = ("04", "09", "0c", "11", "16")      # bench/unknown_eval.py's kept-out places, chosen before any result


def lines(path: Path):
    return [s for s in path.read_text().split("\n") if s.strip()] if path.exists() else []


def load(data: Path):
    ds = data / "dataset"
    classes = json.loads((ds / "classes.json").read_text())
    d = {"classes": classes, "y": {}, "files": {}, "kind": {}}
    for s in SPLITS:
        d["y"][s] = np.load(ds / f"y_{s}.npy").astype(int)
        d["files"][s] = lines(ds / f"files_{s}.txt")
        d["files"]["neg_" + s] = lines(ds / f"files_neg_{s}.txt")
        d["kind"][s] = np.array(lines(ds / f"kind_neg_{s}.txt"))
    return d


def source_landmarks(data: Path, d, shared: Path | None):
    """split -> the source landmark of each background photo (None for everyday ones or without --landmarks)."""
    found = {}
    if shared and (shared / "landmark_background" / "MANIFEST.tsv").exists():
        rows = [r.split("\t") for r in lines(shared / "landmark_background" / "MANIFEST.tsv")[1:]]
        by_file = {r[5].split("/", 1)[1]: r[6] for r in rows if len(r) > 6}
        for manifest in (data / "background").glob("*/manifest.jsonl"):
            for rec in map(json.loads, lines(manifest)):
                name = rec.get("url", "").split("/photos/", 1)[-1]
                found[f"background/{manifest.parent.name}/{rec['file']}"] = by_file.get(name)
    return {s: np.array([found.get(f) for f in d["files"]["neg_" + s]], object) for s in SPLITS}


def embeddings(data: Path, d, names):
    out = {}
    for n in names:
        e = embed.Embedder(n)
        out[n] = {k: embed.embed([data / f for f in files], data, e, progress=False) for k, files in d["files"].items()}
    return out


def fa(probs, n, bg, score, threshold):
    return float(accepted(acceptance(probs, n, bg, score)[1], threshold).mean()) if len(probs) else float("nan")


def head_run(E, d, names, bg, keep_cls=None, keep_neg=None, c=None):
    """Train (C on validation unless given) and calibrate one head; keep_cls / keep_neg: masks of the place classes
    and of the background rows (per split) that exist for this head."""
    n_all = len(d["classes"])
    keep_cls = np.ones(n_all, bool) if keep_cls is None else keep_cls
    remap = np.full(n_all, -1)
    remap[keep_cls] = np.arange(keep_cls.sum())
    n = int(keep_cls.sum())

    def part(split, view):
        known = keep_cls[d["y"][split]]
        x = frozen.features([E[m][split] for m in names], view)[known]
        y = remap[d["y"][split][known]]
        if bg:
            mask = keep_neg[split] if keep_neg is not None else np.ones(len(d["kind"][split]), bool)
            xn = frozen.features([E[m]["neg_" + split] for m in names], view)[mask]
            x, y = np.concatenate([x, xn]), np.concatenate([y, np.full(len(xn), n)])
        return x, y

    xt, yt = (np.concatenate(a) for a in zip(part("train", 0), part("train", 1)))
    xv, yv = part("val", 0)
    if c is None:
        c, head, scores, seconds = frozen.choose_c((xt, yt), (xv, yv), n + bg)
    else:
        started = time.perf_counter()
        head = frozen.fit_head(xt, yt, n + bg, c)
        seconds = time.perf_counter() - started

    def probs(split):
        known = keep_cls[d["y"][split]]
        return frozen.probabilities(frozen.features([E[m][split] for m in names])[known], head), \
            remap[d["y"][split][known]]

    def neg_probs(split):
        return frozen.probabilities(frozen.features([E[m]["neg_" + split] for m in names]), head)

    (pv, yv_), (pt, yt_) = probs("val"), probs("test")
    neg = {s: neg_probs(s) for s in ("val", "test")} if bg else {}
    kinds = {s: d["kind"][s] for s in neg}
    if bg and keep_neg is not None:   # calibrate on the background the head knows of
        rule = finish.calibrate(pv, pt, {s: neg[s][keep_neg[s]] for s in neg}, {s: kinds[s][keep_neg[s]] for s in neg},
                                n, bg)
    else:
        rule = finish.calibrate(pv, pt, neg, kinds, n, bg)
    return {"c": c, "head": head, "n": n, "seconds": seconds, "rule": rule, "pv": pv, "pt": pt, "yv": yv_, "yt": yt_,
            "neg": {s: neg_probs(s) for s in SPLITS}}


def knn_fused(E, d, names, r):
    """Nearest-neighbour margin fused with the head's score: (true accept on test, {kind: FA on test})."""
    n = r["n"]
    train = frozen.features([E[m]["train"] for m in names]) / np.sqrt(len(names))
    bgtr = frozen.features([E[m]["neg_train"] for m in names]) / np.sqrt(len(names))

    def score(x, probs):
        x = x / np.sqrt(len(names))
        best, head_score = acceptance(probs, n, True, r["rule"]["score"])
        sim_place = np.full(len(x), -1.0)
        for c in np.unique(best):
            rows = best == c
            members = train[d["y"]["train"] == c]
            if len(members):
                sim_place[rows] = (x[rows] @ members.T).max(1)
        margin = sim_place - (x @ bgtr.T).max(1)
        return np.where(head_score > 0, head_score + margin + 1.0, 0.0)   # +1: a margin of -1 stays above 0

    sv = score(frozen.features([E[m]["val"] for m in names]), r["pv"])
    threshold = float(np.quantile(sv, 1 - config.UNKNOWN_TRUE_ACCEPT, method="lower"))
    st = score(frozen.features([E[m]["test"] for m in names]), r["pt"])
    sn = score(frozen.features([E[m]["neg_test"] for m in names]), r["neg"]["test"])
    kind = d["kind"]["test"]
    return float(accepted(st, threshold).mean()), {k: float(accepted(sn[kind == k], threshold).mean())
                                                   for k in ("landmark", "everyday")}


def embed_rate(data: Path, d, names, count: int = 96):
    """photos/s of decode + every view through every backbone of a row, into an empty cache."""
    files = [data / f for f in (d["files"]["train"] + d["files"]["neg_train"])[::7][:count]]
    with tempfile.TemporaryDirectory() as tmp:
        for m in names:   # the TF Lite file is made once per backbone, as a nightly run finds it: not timed
            embedder = embed.Embedder(m)
            embed.embed(files[:1], tmp, embedder, progress=False)
        started = time.perf_counter()
        for m in names:
            embed.embed(files[1:], tmp, embed.Embedder(m), progress=False)
        return (len(files) - 1) / (time.perf_counter() - started)


def model_mb(names, head) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        net = frozen.assemble(names, head)
        net.save(str(Path(tmp) / "model.h5"), include_optimizer=False)
        return (Path(tmp) / "model.h5").stat().st_size / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=config.DATA)
    ap.add_argument("--rows", default="lite2,lite0,mnv2,lite0+mnv2",
                    help="backbone sets, comma-separated; + joins backbones (short names: lite0, lite2, mnv2)")
    ap.add_argument("--landmarks", type=Path, help="the shared datasets folder (its landmark_background/MANIFEST.tsv)")
    ap.add_argument("--cnn-run", type=Path, action="append", default=[],
                    help="a trained 64x64 run to add as a row (its metadata.json); may be repeated")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    d = load(args.data)
    sets = [[NAMES[s] for s in row.split("+")] for row in args.rows.split(",")]
    E = embeddings(args.data, d, sorted({m for s in sets for m in s}))
    land = source_landmarks(args.data, d, args.landmarks)
    every = sorted({x for s in SPLITS for x in land[s] if x})
    novel = {x for x in every if int(hashlib.sha256(x.encode()).hexdigest(), 16) % 5 == 0}
    cls_known = np.array([c["index"] not in HOLDOUT for c in d["classes"]])
    load_avg = os.getloadavg()
    rows = []
    for names in sets:
        label = "+".join(backbones.SHORT[m] for m in names)
        rate = embed_rate(args.data, d, names)
        for bg in (False, True):
            r = head_run(E, d, names, bg)
            rule = r["rule"]
            row = {"model": f"{label}, frozen + head" + (", background output" if bg else ", no background"),
                   "C": r["c"], "val": float((r["pv"][:, :r["n"]].argmax(1) == r["yv"]).mean()),
                   "test": float((r["pt"][:, :r["n"]].argmax(1) == r["yt"]).mean()),
                   "true_accept": rule["test_true_accept"], "seconds": r["seconds"], "photos_s": rate}
            for k in ("landmark", "everyday"):
                row[k] = fa(r["neg"]["test"][d["kind"]["test"] == k], r["n"], bg, rule["score"], rule["threshold"])
            kept = head_run(E, d, names, bg, keep_cls=cls_known, c=r["c"])
            kept_probs = np.concatenate([frozen.probabilities(frozen.features(
                [E[m][s] for m in names])[~cls_known[d["y"][s]]], kept["head"]) for s in SPLITS])
            row["kept_out"] = fa(kept_probs, kept["n"], bg, kept["rule"]["score"], kept["rule"]["threshold"])
            if novel and bg:
                keep_neg = {s: np.array([x not in novel for x in land[s]]) for s in SPLITS}
                nov = head_run(E, d, names, bg, keep_neg=keep_neg, c=r["c"])
                probs = np.concatenate([nov["neg"][s][~keep_neg[s]] for s in SPLITS])
                row["novel"] = fa(probs, nov["n"], bg, nov["rule"]["score"], nov["rule"]["threshold"])
            if bg:
                row["mb"] = model_mb(names, r["head"])
            rows.append(row)
            if bg:
                ta, fas = knn_fused(E, d, names, r)
                rows.append({"model": f"{label} + kNN margin fused", "C": r["c"], "val": row["val"],
                             "test": row["test"], "true_accept": ta, "landmark": fas["landmark"],
                             "everyday": fas["everyday"], "photos_s": rate})
            print(json.dumps(rows[-1]), flush=True)
    for run in reversed(args.cnn_run):
        meta = json.loads((run / "metadata.json").read_text())
        u, m = meta.get("unknown") or {}, meta.get("metrics", {})
        size = "x".join(map(str, meta["input_size"]))
        teacher = " distilled" if (meta.get("training") or {}).get("teacher") else ""
        rows.insert(0, {"model": f"{meta['arch']}{teacher} {size} CNN ({run.name})", "test": m.get("test_accuracy"),
                        "true_accept": u.get("test_true_accept"), "landmark": u.get("test_landmark_false_accept"),
                        "everyday": u.get("test_everyday_false_accept"), "seconds": m.get("train_seconds"),
                        "mb": m.get("model_mb")})
    forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    if forced:
        print(f"instruction sets limited by the environment: {forced}")
    print(f"CPU: {cpu.cpu_model()} ({os.cpu_count()} cores), native bf16: {cpu.cpu_has_native_bf16()}; load average "
          f"{load_avg[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {len(novel)} of {len(every)} "
          f"source landmarks kept out for 'novel'; kept-out places {','.join(HOLDOUT)}")

    def pct(v):
        return "-" if v is None or v != v else f"{v:.1%}"

    def num(v, f):
        return "-" if v is None else format(v, f)
    print(format_table(["model", "C", "val", "test", "true accept", "other landmarks", "everyday", "novel landmarks",
                        "kept-out places", "head s", "embed photos/s", "MB"],
                       [[r["model"], num(r.get("C"), "g"), pct(r.get("val")), pct(r.get("test")),
                         pct(r.get("true_accept")), pct(r.get("landmark")), pct(r.get("everyday")), pct(r.get("novel")),
                         pct(r.get("kept_out")),
                         num(r.get("seconds"), ".1f"), num(r.get("photos_s"), ".1f"), num(r.get("mb"), ".1f")]
                        for r in rows]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
