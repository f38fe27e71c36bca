"""serve.py under load: single-photo requests from 1 and 8 concurrent clients, batched against unbatched serving
and against a naive server that loads the model for every request. One run, one table.

    .venv/bin/python bench/serve_bench.py                      # a quick model trained here on the shared photos
    .venv/bin/python bench/serve_bench.py --model current      # models/current (or --model RUN)

Every server runs in its own process on 127.0.0.1, as in use: serve.py (batched: the defaults; unbatched:
--no-batching, each request's photo goes through the model on its own, in its own thread) on a SavedModel
exported from the run into a temporary folder (the repo's models/ is not touched), and the naive server (a
single-threaded http.server that loads model.h5 with Keras, decodes the photo fully and calls model.predict for
each request). Clients are threads in this process, each with a keep-alive session, sending real JPEGs from
../shared/datasets (read from there, never copied into the repo) to POST /v1/locate and timing each answer.
"photos/call" is the mean X-Batch-Size the answers carried; "server CPU ms/req" the server process's CPU time
per answer (from /proc), which other jobs on the machine do not inflate the way they inflate wall-clock times.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.predict_bench import SHARED, pick, quick_model  # noqa: E402  (the same quick model and photo pick)
from locator.core import config, places  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.runs import runs

BATCHED, UNBATCHED = "serve.py, batched", "serve.py, unbatched (--no-batching)"
NAIVE = "naive: model loaded per request"
BASELINE = "baseline serve.py (--baseline), batched"


# --- the naive server (run in its own process with --naive-server) ---
def naive_server(run: Path, table_path: Path, port: int) -> None:
    """What a first server would do: one request at a time, the model loaded from disk for each."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import keras
    from PIL import Image

    from locator.predict.predictor import Predictor

    table, meta = places.load(table_path), runs.read_metadata(run)
    size = meta["input_size"][0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            import io

            body = self.rfile.read(int(self.headers["Content-Length"]))
            model = keras.models.load_model(run / "model.h5", compile=False)
            x = np.asarray(Image.open(io.BytesIO(body)).convert("RGB").resize((size, size)), np.uint8)
            probs = model.predict(x[None], verbose=0)[0]
            answer = Predictor(model, meta, table, run, 0.0).answer(probs)  # the same place answer
            out = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    print(f"naive server on http://127.0.0.1:{port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


# --- servers as processes ---
class ServerProcess:
    """A server in its own process; `url` once it listens; its log lines kept (read by a thread, so a full pipe
    never blocks it)."""

    def __init__(self, argv: list, cwd: Path):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stderr=subprocess.PIPE, text=True, env=env)
        self.lines, self.url = [], None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r" on (http://127\.0\.0\.1:\d+)/", line)
                if m and not self.url:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(300)
        if not self.url:
            self.stop()
            raise SystemExit("server did not start:\n" + "".join(self.lines[-20:]))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0.1)
        return "".join(self.lines)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: the work per request, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- load ---
def load(url: str, photos: list, clients: int, requests_total: int) -> dict:
    """`clients` threads in closed loop (send, wait for the answer, send the next) until requests_total answers;
    latency of each request, the wall time of all."""
    import requests

    lat, batch, errors, lock = [], [], [], threading.Lock()
    counter = iter(range(requests_total))
    start = threading.Barrier(clients + 1)

    def client(k: int):
        with requests.Session() as s:
            start.wait()
            for i in counter:
                photo = photos[(i * 7 + k) % len(photos)]
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=120)
                    ok = r.status_code == 200 and "top3" in r.json()
                except Exception as e:  # noqa: BLE001 - counted, shown in the table
                    ok = False
                    r = e
                with lock:
                    (lat if ok else errors).append(time.perf_counter() - t0 if ok else r)
                    if ok:
                        batch.append(int(r.headers.get("X-Batch-Size", 1)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"requests": len(lat), "errors": len(errors), "rps": len(lat) / wall,
            "batch": float(np.mean(batch)) if batch else float("nan"),
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def warm(url: str, photos: list, n: int = 10) -> None:
    load(url, photos, 1, n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    ap.add_argument("--places", type=Path, default=SHARED / "places.xlsx")
    ap.add_argument("--model", help="a model run, or 'current' (default: train a quick one here)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the quick model")
    ap.add_argument("--count", type=int, default=200, help="distinct photos the clients send")
    ap.add_argument("--requests", type=int, default=300, help="requests per round of a serve.py setting at 8 "
                                                              "clients (half at 1 client)")
    ap.add_argument("--naive-requests", type=int, default=16, help="requests to the naive server at 8 clients "
                                                                   "(half at 1 client)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting; the best counts")
    ap.add_argument("--batch-window", type=float, help="ms, passed to the batched serve.py (default: its own)")
    ap.add_argument("--baseline", type=Path, help="another checkout's serve.py (e.g. the code before a change), run "
                                                  "batched in the same alternating rounds: same load for both")
    ap.add_argument("--naive-server", nargs=3, metavar=("RUN", "PLACES", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    runs.env_threads()
    if args.naive_server:
        return naive_server(Path(args.naive_server[0]), Path(args.naive_server[1]), int(args.naive_server[2]))
    import logging

    logging.basicConfig(level=logging.WARNING)
    from locator.runs import export

    table = places.load(args.places)
    work = Path(tempfile.mkdtemp(prefix="serve_bench-"))
    if args.model:
        run = runs.resolve(config.MODELS, None if args.model == "current" else args.model)
        origin = f"model {run} (given)"
    else:
        t0 = time.perf_counter()
        run = quick_model(args.photos, table, work, per_place=10, epochs=args.epochs)
        origin = (f"model trained here: compact, {args.epochs} epochs on 10 other photos a place, "
                  f"{time.perf_counter() - t0:.0f} s; speed only, not accuracy")
    meta = runs.read_metadata(run)
    export.write_version(work / "models", run)  # into the temporary folder: the repo's models/ is left alone
    photos = [p.read_bytes() for p, _ in pick(args.photos, table, args.count, skip=10)]
    print(f"{len(photos)} photos ({np.mean([len(p) for p in photos]) / 1e3:.0f} kB on average), "
          f"{meta['input_size'][0]}x{meta['input_size'][1]}; {origin}; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    window = config.SERVE_BATCH_WINDOW * 1000 if args.batch_window is None else args.batch_window
    common = ["--port", "0", "--models", str(work / "models"), "--name", meta["name"], "--places",
              str(args.places.resolve()), "--poll", "0"]
    contestants = [
        (BATCHED, [str(REPO / "serve.py"), *common, "--batch-window", str(window)], args.requests),
        (UNBATCHED, [str(REPO / "serve.py"), *common, "--no-batching"], args.requests),
        (NAIVE, [str(Path(__file__).resolve()), "--naive-server", str(run.resolve()),
                                             str(args.places.resolve()), str(free_port())], args.naive_requests),
    ][:3 if args.naive_requests else 2]
    if args.baseline:
        contestants.insert(1, (BASELINE, [str(args.baseline.resolve()), *common, "--batch-window", str(window)],
                               args.requests))
    # both serve.py servers up at once, the rounds alternating between them, so that the other jobs on this
    # machine slow both alike; each one's best round counts. The naive server gets one round of its own.
    servers = {label: ServerProcess(argv, work) for label, argv, _ in contestants}
    results = {}
    try:
        for label, _, _ in contestants:
            warm(servers[label].url, photos, 2 if label == NAIVE else 20)
        for clients in (1, 8):
            for rnd in range(args.rounds):
                for label, _, n in contestants:
                    if label == NAIVE and rnd:
                        continue
                    pid = servers[label].proc.pid
                    c0 = cpu_seconds(pid)
                    r = load(servers[label].url, photos, clients, n if clients == 8 else max(1, n // 2))
                    r["cpu"] = (cpu_seconds(pid) - c0) * 1000 / max(1, r["requests"])
                    if (label, clients) not in results or r["rps"] > results[label, clients]["rps"]:
                        results[label, clients] = r
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)  # the quick model and its export: nothing to keep

    rows = []
    for clients in (1, 8):
        base = results[UNBATCHED, clients]["rps"]
        for label, _, _ in contestants:
            r = results[label, clients]
            rows.append([label, clients, r["requests"], f"{r['rps']:.1f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{r['rps'] / base:.2f}", f"{r['batch']:.1f}" if label != NAIVE else "1.0",
                         f"{r['cpu']:.1f}", r["errors"]])
    print(format_table(["server", "clients", "requests", "req/s", "p50 ms", "p99 ms", "x unbatched",
                        "photos/call", "server CPU ms/req", "errors"], rows))
    print(f"batched: window {window:g} ms, at most {config.SERVE_BATCH_MAX} photos a call; best of {args.rounds} "
          "alternating rounds (the naive server: one round)")
    b8 = results[BATCHED, 8]["rps"] / results[UNBATCHED, 8]["rps"]
    p99 = results[BATCHED, 1]["p99"]
    print(f"targets: batched >= 2x unbatched at 8 clients: {b8:.2f}x ({'met' if b8 >= 2 else 'NOT met'}); "
          f"p99 < 100 ms at 1 client: {p99:.1f} ms ({'met' if p99 < 100 else 'NOT met'})")
    if args.baseline:
        r8, p1 = (results[BATCHED, 8]["rps"] / results[BASELINE, 8]["rps"],
                  results[BATCHED, 1]["p99"] / results[BASELINE, 1]["p99"])
        print(f"against the baseline: {r8:.2f}x its req/s at 8 clients, {p1:.2f}x its p99 at 1 client")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs slow both alike)")


if __name__ == "__main__":
    main()
