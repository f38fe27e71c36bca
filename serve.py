"""Serve the newest exported model over HTTP: TensorFlow Serving's REST API, /v1/locate and an upload page.

    python serve.py                         # http://127.0.0.1:8501/ : the upload page
    python serve.py --host 0.0.0.0 --port 8080
    python serve.py --learn                 # keep accepted uploads for re-learning, as predict.py --learn does
    python serve.py --backend http://tfserving:8501   # model calls to TensorFlow Serving (docs/serving.md)
"""
import errno
import logging
from pathlib import Path

from locator.core import config
from locator.core.cli import ArgumentParser, add_models_flag, run, setup_logging
from locator.core.errors import UserError
from locator.runs import runs

log = logging.getLogger("serve")


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=config.SERVE_HOST, help="address to listen on (default %(default)s)")
    ap.add_argument("--port", type=int, default=config.SERVE_PORT, help="port (default %(default)s; 0 = any free one)")
    add_models_flag(ap)
    ap.add_argument("--name", default=config.MODEL_NAME, help="served model: models/serving/<name>/ "
                                                              "(default %(default)s)")
    ap.add_argument("--places", type=Path, default=config.PLACES, help="place table (default %(default)s)")
    ap.add_argument("--data", type=Path, default=config.DATA, help="data root for --learn (default %(default)s)")
    ap.add_argument("--learn", action="store_true", help="keep accepted uploads in data/raw/<index>/ and the "
                                                         "others in data/review/ (off by default)")
    ap.add_argument("--learn-min-confidence", type=float, default=config.LEARN_MIN_CONFIDENCE,
                    help="--learn: confidence from which an accepted upload goes into data/raw/ (the rest: "
                         "data/review/; default %(default)g)")
    ap.add_argument("--learn-quota-mb", type=float, default=config.SERVE_LEARN_QUOTA / 2**20,
                    help="MB of learned photos (data/review/ + uploads in data/raw/) at most; beyond, uploads are "
                         "answered but not kept (default %(default)g; 0: no quota)")
    ap.add_argument("--max-batch", type=int, default=config.SERVE_BATCH_MAX, help="photos per model call at most")
    ap.add_argument("--max-batch-size", type=int, default=config.SERVE_MAX_BATCH_SIZE,
                    help="instances in one :predict request at most (TF Serving's max_batch_size; more: 400; "
                         "default %(default)s)")
    ap.add_argument("--backend", metavar="URL", help="send the model calls to this TensorFlow Serving REST "
                                                     "endpoint (serving the same models/serving/), e.g. "
                                                     "http://127.0.0.1:8501")
    ap.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                    help="a site whose pages may post uploads besides this server's own (e.g. the public "
                         "https://name of a proxy in front); repeatable")
    ap.add_argument("--batch-window", type=float, default=config.SERVE_BATCH_WINDOW * 1000, metavar="MS",
                    help="ms a model call waits for concurrent requests to join it (default %(default)g)")
    ap.add_argument("--no-batching", action="store_true", help="run every request's photos on their own")
    ap.add_argument("--queue", type=int, default=config.SERVE_QUEUE_MAX, help="photos waiting at most; more: 503")
    ap.add_argument("--max-body-mb", type=float, default=config.SERVE_MAX_BODY / 2**20, help="request body cap (413)")
    ap.add_argument("--timeout", type=float, default=config.SERVE_REQUEST_TIMEOUT, help="seconds a request may wait "
                                                                                  "for the model (504)")
    ap.add_argument("--receive-timeout", type=float, default=config.SERVE_RECEIVE_TIMEOUT,
                    help="seconds for a whole request to arrive, head and body (408; default %(default)g)")
    ap.add_argument("--poll", type=float, default=config.RELOAD_POLL, help="seconds between looks for a new "
                                                                           "version (0: no hot reload)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (one line per request)")
    a = ap.parse_args(argv)
    if not 0 <= a.port <= 65535:
        ap.error(f"--port {a.port}: must be 0..65535")
    if a.max_batch < 1 or a.queue < 1 or a.max_body_mb <= 0 or a.timeout <= 0 or a.batch_window < 0 or a.poll < 0 \
            or a.max_batch_size < 1 or a.receive_timeout <= 0 or a.learn_quota_mb < 0:
        ap.error("--max-batch, --max-batch-size, --queue, --max-body-mb, --timeout and --receive-timeout must be "
                 "positive, --batch-window, --poll and --learn-quota-mb not negative")
    if a.backend and not a.backend.startswith(("http://", "https://")):
        ap.error(f"--backend {a.backend}: give the REST endpoint's URL, e.g. http://127.0.0.1:8501")
    for origin in a.allow_origin:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            ap.error(f"--allow-origin {origin}: give scheme://host[:port], e.g. https://landmarks.example")
    return a


def main(argv=None):
    a = parse_args(argv)
    setup_logging(a.verbose)
    runs.env_threads()
    from locator.core import places
    from locator.runs import export, promote
    from locator.serve.modelstore import BatchOptions, ModelStore
    from locator.serve.server import Limits, make_server

    places.load(a.places)  # a broken table is one error line at start; the store reads it with each version
    base = export.model_dir(a.models, a.name)
    backend = None
    if a.backend:
        from locator.serve.backend import Backend, BackendError

        backend = Backend(a.backend, a.name, a.timeout)
        try:
            backend.versions()
        except BackendError as e:
            raise UserError(f"--backend: {e}")
    elif not export.versions(base):
        cur = runs.current(a.models)
        if cur is None:
            raise UserError(f"no exported model in {base}/ and no current model in {a.models}/: train one with "
                            "`python cnn.py` (it exports on promotion)")
        # a run promoted before exports existed: export it now, as its promotion would have
        log.info("%s has no serving export yet; exporting the current run %s", base, cur.name)
        promote.ensure_exported(a.models, cur)
    store = ModelStore(base, a.places, BatchOptions(a.max_batch, a.batch_window / 1000, a.queue, not a.no_batching),
                       poll=a.poll, backend=backend).start()
    limits = Limits(max_body=int(a.max_body_mb * 2**20), request_timeout=a.timeout, max_batch_size=a.max_batch_size,
                    receive_timeout=a.receive_timeout, allowed_origins=tuple(a.allow_origin))
    quota = int(a.learn_quota_mb * 2**20) or None
    try:
        learn = learner(a.data, quota, a.learn_min_confidence) if a.learn else None
        server = make_server(store, a.host, a.port, limits, learn=learn)
    except OSError as e:
        store.stop()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"{a.host}:{a.port} is in use (another serve.py or tensorflow_model_server?); "
                            "choose another --port")
        raise UserError(f"cannot listen on {a.host}:{a.port}: {e.strerror}")
    log.info("serving %s version %d on %s/ (upload page), REST API at %s/v1/models/%s%s%s", a.name, store.version,
             server.url, server.url, a.name, f"; model calls to {a.backend}" if a.backend else "",
             "; learning from uploads" if a.learn else "")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
        store.stop()
    return 0


def learner(data, quota: int | None = config.SERVE_LEARN_QUOTA,
            min_confidence: float = config.LEARN_MIN_CONFIDENCE):
    """predict.py's --learn, for one upload: (photo bytes, place answer, file name) -> what was kept; beyond
    `quota` bytes of learned photos nothing more is kept, and the outcome says so."""
    from locator.predict import learn

    return learn.Learner(data, quota, min_confidence)


if __name__ == "__main__":
    run(main)
