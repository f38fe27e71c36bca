"""Paths and defaults: the one place they live. Every script's flags default to these values."""
from pathlib import Path

# --- paths (relative to the working directory, like the study's scripts) ---
PLACES = Path("places.xlsx")
DATA = Path("data")            # root of every data folder below
MODELS = Path("models")
TEST_IMAGE = Path("test_image")
LOGS = Path("logs")            # pipeline.py: one folder per run (log + report.json), cron.log


def raw_dir(data: Path) -> Path:
    return Path(data) / "raw"


def processed_dir(data: Path) -> Path:
    return Path(data) / "processed"


def dataset_dir(data: Path) -> Path:
    return Path(data) / "dataset"


def processed_manifest(data: Path) -> Path:
    return processed_dir(data) / "manifest.jsonl"


def rejected_dir(data: Path) -> Path:
    return Path(data) / "rejected"


def rejected_csv(data: Path) -> Path:
    return Path(data) / "rejected.csv"


def background_dir(data: Path) -> Path:
    """Crawled photos of none of the places, one folder per background query (sheet `background`)."""
    return Path(data) / "background"


def negatives_dir(data: Path) -> Path:
    """Everyday photos of none of the places (dataset.py --negatives default): the background class."""
    return Path(data) / "negatives"


def review_dir(data: Path) -> Path:
    return Path(data) / "review"


def serving_dir(models: Path) -> Path:
    """models/serving/<model name>/<version>/: SavedModel exports in TensorFlow Serving's layout."""
    return Path(models) / "serving"


# --- place table ---
MIN_PLACES, MAX_PLACES = 2, 256

# --- crawling ---
PER_PLACE = 300
PER_QUERY = 40                       # photos per background query: 50 queries (shipped table) give 2,000 photos
                               # of "none of our places", about half the 3,600 place photos
CRAWL_WORKERS = 16                   # parallel downloads in all
CRAWL_PER_HOST = 8                   # concurrent requests to one host the engine names no limit for (Bing's
                               # results link to many sites; a browser opens 6-8 per host)
COMMONS_MEDIA_PER_HOST = 2           # Wikimedia's robot policy (2025): "a total concurrency of at most 2" on its
                               # media host (upload.wikimedia.org); the engine sets it, --per-host overrides it
API_PER_HOST = 1                     # search/API requests one at a time (MediaWiki API:Etiquette: "in series")
ENGINE = "commons"
CRAWL_CONNECT_TIMEOUT = 5.0          # seconds
CRAWL_READ_TIMEOUT = 20.0
CRAWL_RETRIES = 3
CRAWL_BACKOFF = 0.5                  # seconds, doubled per retry
CRAWL_MAX_RETRY_AFTER = 30.0         # a Retry-After up to this pauses the host that long; a longer one stops
                               # the crawl with a message naming the wait (it is never shortened)
CRAWL_HOST_DOWN_AFTER = 3            # consecutive connection failures (DNS, refused, connect timeout) that mark a
                               # host unreachable for the rest of the run: offline, a crawl fails in seconds
                               # instead of waiting out every request
CRAWL_SLOWDOWN_MAX = 8.0             # seconds: each 429 from a host doubles its gap between requests up to this
CRAWL_SPEEDUP_AFTER = 8              # answers in a row without a 429 that halve a host's gap back (none left below
                               # CRAWL_BACKOFF): a host that throttled for a while gets its speed back
MAXLAG = 5                           # MediaWiki maxlag (seconds of replica lag): the value Wikimedia recommends
CRAWL_MAX_BYTES = 15 * 1024 * 1024   # byte cap per downloaded image
THUMB_WIDTH = 500              # Commons thumbnail width: plenty for 64x64 training, and a standard width
# Since 2025 Wikimedia serves thumbnails only at these widths (mediawiki.org "Common thumbnail sizes"); the API
# rounds other widths up (640 -> 960) and hand-made URLs of other widths are refused.
THUMB_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)
MAX_REDIRECTS = 5              # more hops than this (or a loop) is a failed download, not a hang
DOWNLOAD_DEADLINE = 60.0       # seconds for one whole body: a server dripping bytes cannot stall a worker
COMMONS_API = "https://commons.wikimedia.org/w/api.php"
BING_URL = "https://www.bing.com/images/async"   # the results page Bing's own infinite scroll loads
SEARCH_PAGE = 50               # results asked for per search request (Commons allows up to 50 with imageinfo)
MAX_SEARCH_PAGES = 40          # a source that keeps paging past this is assumed to be looping
# User-Agent: Wikimedia's policy wants `<client>/<version> (<contact>) <library>/<version>`, with a contact the
# operator reads; clients without one get stricter limits (2025). --contact or $LANDMARK_CONTACT set it; this
# project default is warned about once.
USER_AGENT_CLIENT = "LandmarkLocator/0.2"
CONTACT = "https://github.com/landmark-locator/landmark-locator"
CONTACT_ENV = "LANDMARK_CONTACT"

# --- images ---
SIZE = 64
RESIZE_MODE = "squash"         # squash | crop | pad (docs/results.md: the measured choice)
RESIZE_MODES = ("squash", "crop", "pad")
MIN_SIDE = 32                  # shortest side under this: rejected as too small
MAX_PIXELS = 40_000_000        # over this: rejected as a decompression bomb
MAX_DECODE_BYTES = 160_000_000  # decoded bytes of one photo (width x height x bytes a pixel as Pillow holds it: 1 grey,
                               # 2 for 16-bit, 4 for RGB; after the JPEG draft): 40 Mpx RGB, the pixel cap; over it
                               # "too_large". The size on disk tells nothing: a 16-bit PNG of 6000x6600 is 77 KB
                               # on disk and 79 MB decoded
DECODE_BYTES_IN_FLIGHT = 640_000_000  # decodes of a process wait while this many decoded bytes are in use, so a few
                               # huge photos at once cannot exhaust the memory
DECODES_IN_FLIGHT = 0          # decodes at once per process; 0 = 2 per core (more only queue for the CPU)
PAD_COLOUR = (0, 0, 0)
PREPROCESS_WORKERS = 0         # processes decoding photos; 0 = one per core

# --- dataset ---
SPLIT = (0.8, 0.1, 0.1)        # train / val / test by a hash of the near-duplicate group
NEAR_DUP_DISTANCE = 8          # phash bits: on the shared photos, pairs at 8 are re-edits of one shot, at 10 not always
SPLIT_SEED = 0                 # salt of the split hash; changing it reshuffles every split (keep it for stability)

# --- training ---
EPOCHS = 50
EPOCHS_MAX = 400                # cnn.py --minutes never plans more epochs than this
TRAIN_BATCH = 64
TRAIN_SEED = 1337
ARCHS = ("embedding", "compact", "paper", "mobilenet_v2")  # cnn.py --arch (train/model.py and train/frozen.py)
ARCH = "embedding"             # frozen ImageNet backbones + a linear head: the best on validation by a wide margin
                               # and trained in about a minute (docs/results.md); compact: a 64x64 VGG-style net;
                               # paper: the study's 6.5 M-parameter 64x64 net; mobilenet_v2: its early blocks at 96 px
CNN_ARCH = "compact"           # the network fit.train trains when none is named (benches, tests, a distilled student)
MNV2_CUT = "block_13_expand_relu"  # mobilenet_v2 ends here: 6x6x576 features at 96 px, 0.6 M parameters (2.5 MB);
                               # the blocks after it hold 73% of the weights (the full backbone is 9 MB)
MNV2_SIZE = 96                 # mobilenet_v2 upsamples our 64 px photos to this inside the model
PRECISIONS = ("float32", "mixed_bfloat16")  # cnn.py --precision; the default follows the CPU (default_precision)
FLOAT32_ARCHS = ("mobilenet_v2", "embedding")  # float32 even where the CPU computes bf16 natively: depthwise
                               # convolutions have no fast bf16 kernel in oneDNN, and the embedding model trains
                               # no convolution at all (docs/results.md)
LR = 3e-3                      # peak of the one-cycle schedule (AdamW)
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
CUTMIX = 0.5                   # share of training batches mixed by CutMix (0 = off): it curbs overfitting on our
                               # small data; on every batch it hurts (docs/results.md)
AUGMENT = 1.0                  # strength of the in-model augmentation (0 = off)
EMA = 0.0                      # AdamW's moving average of the weights (e.g. 0.99); 0 = off: unmeasured on our data
DISTILL_ALPHA = 0.7            # cnn.py --teacher: weight of the teacher's answers in the loss (Hinton et al.: high)
DISTILL_TEMPERATURE = 4.0      # ... and the temperature that softens both networks' answers
MODEL_NAME = "landmarks"       # the served model's name: /v1/models/landmarks
UNKNOWN_TRUE_ACCEPT = 0.90     # the unknown threshold keeps this share of validation photos (the targets are set
                               # at >= 90% true accept, docs/conventions.md)...
UNKNOWN_MARGIN_Z = 1.28        # ...plus this many standard errors of a share estimated on n validation photos
                               # (sqrt(t(1-t)/n): 2.5 points on 226 photos), so that about 9 times in 10 new
                               # photos are accepted at least the target share, not half the time


def augment_for(arch: str) -> float:
    """The augmentation an architecture trains with unless --augment is given: none for the study's paper net (the
    study trained it so), AUGMENT for the others."""
    return 0.0 if arch == "paper" else AUGMENT


def precision_choice(arch: str, cpu=None) -> tuple:
    """(precision, why) an architecture trains in unless --precision is given: mixed_bfloat16 where the CPU computes
    bf16 natively, float32 where it would only emulate it (several times slower) and for FLOAT32_ARCHS. `cpu`: a
    locator.core.cpu.CPU, default the one this process runs on."""
    from locator.core import cpu as cpus

    c = cpu or cpus.detect()
    if arch == "embedding":
        return "float32", "the embedding model's backbones are frozen: nothing trains on the CPU's bf16 units"
    if arch in FLOAT32_ARCHS:
        return "float32", f"{arch}'s depthwise convolutions are slower in bf16"
    if c.native_bf16:
        return "mixed_bfloat16", f"the CPU ({c.model}) computes bf16 natively ({', '.join(c.bf16_flags)})"
    return "float32", f"the CPU ({c.model}) has no native bf16"


def default_precision(arch: str, cpu=None) -> str:
    return precision_choice(arch, cpu)[0]


# --- serving (serve.py; TensorFlow Serving's REST API) ---
SERVE_HOST = "127.0.0.1"             # loopback unless --host says otherwise: a public server is a deliberate choice
SERVE_PORT = 8501                    # TF Serving's REST port
SERVING_KEEP = 10              # exported versions kept per model (older ones are removed; their runs stay)
SERVE_BATCH_MAX = 32                 # photos per model call at most
SERVE_BATCH_WINDOW = 0.005           # seconds a model call waits for more requests to join it (TF Serving's
                               # batch_timeout_micros), only while more can come (other open connections);
                               # while a call runs, arrivals queue and join the next
SERVE_QUEUE_MAX = 128                # photos waiting for the model; more -> 503 with Retry-After
SERVE_MAX_BATCH_SIZE = 128           # instances in one request at most (TF Serving's max_batch_size); more -> 400
                               # "Task size N is larger than maximum input batch size 128": one huge request
                               # would hold the model from everyone else, while 128 photos take well under a second
SERVE_MAX_CONNECTIONS = 1024         # open connections; more -> 503 at once. asyncio: an idle or slow connection
                               # costs a few kB, not a thread, so a handful of slow sockets cannot take every slot
SERVE_WORKERS = 32                   # threads running requests (decode, then wait for the batcher); more wait
SERVE_MAX_BODY = 16 * 1024 * 1024    # bytes of one request body; more -> 413 (a phone photo is 2-8 MB)
SERVE_MAX_HEADER = 16 * 1024         # bytes of a request line + headers; more -> 431 (browsers send < 2 kB)
SERVE_REQUEST_TIMEOUT = 10.0         # seconds a request may wait for the model -> 504
SERVE_RECEIVE_TIMEOUT = 30.0         # seconds for a whole request, head and body, from its first byte -> 408 and
                               # closed: an 8 MB phone photo at 4 Mbit/s takes 16 s. A deadline for the whole
                               # request, not per read: one byte every few seconds cannot hold a connection forever
SERVE_IDLE_TIMEOUT = 10.0            # seconds a keep-alive connection may stay silent between requests
SERVE_MAX_PARTS = 16                 # parts of a multipart form; more -> 400 (the page sends one)
RELOAD_POLL = 2.0              # seconds between looks for a new exported version
SERVE_RETRY_AFTER = 1                # seconds, the Retry-After of a 503
SERVE_LEARN_QUOTA = 1024 ** 3        # bytes of learned photos (data/review/ + uploads in data/raw/) serve.py --learn
                               # keeps; beyond it photos are answered but not kept, so a flood of uploads cannot
                               # fill the disk
LEARN_MIN_CONFIDENCE = 0.9     # --learn: an accepted photo goes into data/raw/ (training data, labelled by the model
                               # itself) only from this confidence on; below, to data/review/ for a person. The
                               # acceptance threshold is no gate for training data: with the background output
                               # it is 0, and most photos of other landmarks are accepted (docs/results.md); a
                               # wrong label learnt from itself is trained in as truth
NEARBY = 5                     # attractions in a place answer
NEARBY_KM = 30.0               # ...within this radius: with few attractions in the table, the nearest one can
                               # be a thousand km away, no help to a visitor

# --- pipeline.py (the scheduled job) ---
PROMOTE_TOLERANCE = 0.01       # a candidate may trail the current model by this much (accuracy and macro F1, both
                               # on the current test split) and still be promoted: one or two photos of noise
PROMOTE_GATE_TOLERANCE = 0.05  # ... and may accept this much more of the validation background photos (none of our
                               # places) as one of ours: a few of the 100-200 such photos a dataset holds differ
                               # between two good trainings, while a rule that broke moves by tens of points (about
                               # 10-25% with a background output, 65-75% without: docs/results.md)
PROMOTE_FIRST_MIN_SKILL = 0.25  # a first model must close this share of the gap between always naming the commonest
                               # place and a perfect test accuracy: a model that learnt nothing (shuffled labels)
                               # scores about 0 give or take a small test split's noise, working ones 0.8 and more
PROMOTE_FIRST_MAX_FALSE_ACCEPT = 0.5  # ... and, where the dataset has validation background photos, accept at most
                               # this share of them: a rule that lets half of "not one of ours" through decides
                               # nothing (a background output keeps it to about 4-25%, docs/results.md)
CRON_SCHEDULE = "0 3 * * 0"    # the example in docs/operations.md and --help: Sundays at 03:00

# --- predict.py ---
PREDICT_BATCH = 128            # photos per model call (one call's overhead is spread over the batch)
PREDICT_WORKERS = 0            # threads decoding photos while the model predicts; 0 = one per core
RESULTS_SUFFIX = "_results"    # test_image/ -> test_image_results.png (+ _confusion.png) beside the folder
SHEET_THUMB = 96               # contact sheet: thumbnail side in pixels
SHEET_COLUMNS = 8
SHEET_MAX = 480                # photos on a contact sheet; the table, CSV and JSON always list them all
UNKNOWN_FOLDER = "unknown"     # evaluation: photos under test_image/unknown/ are none of our places
DEMO_PER_PLACE = 3             # test_image/ empty (a fresh clone): predict.py shows itself on this many test-split
                               # photos a place, clearly labelled, instead of ending with nothing to look at
DEMO_SUFFIX = "_demo"          # ...and its contact sheet is test_image_demo.png, never taken for real results

# --- the embedding model (cnn.py --arch embedding: frozen ImageNet backbones + a linear head) ---
EMBED_BACKBONES = ("efficientnet_lite0",)  # at 224 px; more are concatenated. Chosen on validation, photos kept
                               # out of training and speed (docs/results.md): as accurate as the larger ones within
                               # 2 validation photos, twice Lite2's embedding speed, fewer kept-out places accepted
EMBED_BATCH = 32               # photos per backbone call while embedding (TF Lite: larger batches gain nothing)
EMBED_RUNNERS = ("local", "ray")  # cnn.py --runner: where the embedding step decodes and embeds the photos
EMBED_RUNNER = "local"         # nothing to install, and one machine embeds the nightly photos of a few dozen places
EMBED_RAY_CPUS = 1             # CPUs a Ray worker reserves, and its TF Lite threads: one worker a core
HEAD_C_GRID = (1.0, 10.0, 100.0, 1000.0)  # the head's inverse regularisation, chosen on validation
HEAD_MAX_ITER = 1000           # L-BFGS iterations at most: it converges in under a hundred on a few thousand photos
HEAD_BLAS_THREADS = 1          # the head's products are small: threads do not pay, and they spin under load
