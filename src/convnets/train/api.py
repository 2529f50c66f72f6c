"""``convnets.train(data, model=..., out=..., **options)`` and ``lr_find(...)``: the Python faces of
``convnets train`` and ``convnets lr-find``.

It checks the options, loads the data (``convnets.data.load_data``), builds the model (fresh or
from ``--weights`` with a new transfer head), plans the phases, writes ``config.json`` and hands
over to :class:`~convnets.train.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..base.errors import output_dir
from ..base.runs import LAST_CHECKPOINT, RUN_FILES, DataSource, RunConfig, RunFolderError
from ..base.runtime import prefers_channels_last
from ..data import load_data
from ..data.augment import batch_ops, parse_ops, sample_ops
from ..data.datasets import Subset
from ..data.decode import SkippedImageWarning
from ..data.duplicates import warn_split_duplicates
from ..data.loaders import ImageLoader, collate, default_num_workers, holds_images_in_memory
from ..models import create_model, get_model_cfg
from ..trust.fit import SplitFeatures, calibrate_run
from . import distributed as ddp
from .checkpoint import load_training_state, seed_everything
from .lr_find import (
    DEFAULT_END_LR,
    DEFAULT_START_LR,
    DEFAULT_STEPS,
    METHODS,
    LRCurve,
    auto_phase_lr,
    phase_range_test,
    save_curve,
)
from .options import (
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    RESUME_OVERRIDABLE,
    TrainConfigError,
    TrainOptions,
    check_options,
    default_image_size,
    resolve_augment,
    resolve_device,
    resolve_precision,
)
from .recipes import apply_recipe, recipe_record
from .trainer import RunResult, Trainer
from .transfer import plan_phases


def train(
    data: str | Path | None,
    model: str | None = None,
    out: str | Path | None = None,
    *,
    log=None,
    **options: Any,
) -> RunResult:
    """Train ``model`` on ``data`` (a folder of class sub-folders or a built-in name such as
    ``"digits"``) and write the run folder ``out``; see :class:`TrainOptions` for ``options``.

    With ``resume=True``, ``data`` and ``model`` may be ``None``: the run in ``out`` is continued
    with its saved options (only epochs, fine_tune_epochs, early_stopping, device, workers, quiet
    and data_root may change).

    Raises ``TrainConfigError`` for bad options/data (before any training), ``NonFiniteLossError``
    if the loss diverges, ``TrainingInterrupted`` after Ctrl-C/SIGTERM (``last.pt`` saved).
    """
    if out is None:
        raise TrainConfigError("--out: a run folder is required")
    run_dir = Path(out)
    if options.get("recipe") is not None and not options.get("resume"):
        # The recipe fills what was not given; a resumed run keeps its saved, already-resolved options.

        try:
            options = apply_recipe(options)
        except ValueError as e:
            raise TrainConfigError(f"--recipe: {e}") from None
    opts = TrainOptions.from_kwargs(**options)
    resume_state = None
    if opts.resume:
        resume_state, opts, data, model = _resume_setup(run_dir, opts, options, data, model)
    else:
        if data is None or model is None:
            raise TrainConfigError("DATA and --model are required (unless --resume)")
        existing = [f for f in RUN_FILES if (run_dir / f).exists()]
        if existing and not opts.overwrite:
            raise TrainConfigError(
                f"--out: {run_dir} already holds a run ({', '.join(existing)}); continue it "
                "with --resume, or pass --overwrite or another --out"
            )
    check_options(opts)
    output_dir(run_dir, "--out")  # a file there, or a read-only folder: refused before any training

    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    dist_info = ddp.init_distributed(device)
    try:
        trainer = _build_trainer(data, model, run_dir, opts, device, dist_info, resume_state, log)
        result = trainer.fit()
        if dist_info.is_main:
            _fit_ood(run_dir, trainer)
        return result
    finally:
        ddp.cleanup_distributed()


def build_trainer(data: str | Path, model: str, out: str | Path, *, log=None, **options: Any) -> Trainer:
    """The :class:`Trainer` ``train`` would run, built (data loaded, model and phases planned) but not
    started: what ``convnets lr-find`` tests on. One process; nothing is trained or saved (only its
    TensorBoard writer, when installed, opens under ``out``)."""
    opts = TrainOptions.from_kwargs(**options)
    check_options(opts)
    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    return _build_trainer(data, model, Path(out), opts, device, ddp.DistInfo(), None, log)


def _fit_ood(run_dir: Path, trainer: Trainer) -> None:
    """Fit the out-of-distribution detector on the finished run (convnets.trust.fit): one forward pass
    over its training and validation images (none after a head-only run: its cached features are
    those), so predict flags inputs unlike them from the start."""

    try:
        # The trainer's model holds the best weights already: no reload from disk (on CPU, where the
        # detector's pass runs).
        model = trainer.model if trainer.device.type == "cpu" else None
        features = _cached_split_features(trainer)
        loaders = _eval_loaders(trainer) if features is None and model is not None else None
        calibrate_run(
            run_dir, temperature=False, features=features, model=model, loaders=loaders, log=trainer.log
        )
    except (ValueError, OSError, RuntimeError) as e:  # a run without usable data still trained fine
        warnings.warn(f"out-of-distribution detector not fitted: {e}", stacklevel=2)


def _eval_loaders(trainer: Trainer):
    """The trainer's own training and validation images without augmentation, as loaders: the
    detector's pass then reads the images the run already holds (memory-cached when they fit) instead
    of scanning and decoding the folder again. None for streams (shards) and runs without validation."""

    train, val = trainer.train_set, trainer.val_set
    if not isinstance(train, Subset) or not isinstance(val, Subset):
        return None
    # The pass's own default, not --workers (chosen for training): it runs on the CPU, where worker
    # processes would contend with the model for the cores.
    batch, workers = 2 * trainer.opts.batch_size, default_num_workers(holds_images_in_memory(train), "cpu")
    return tuple(
        ImageLoader(Subset(s.dataset, s.indices, val.transform), batch_size=batch, num_workers=workers)
        for s in (train, val)
    )


def _cached_split_features(trainer: Trainer):
    """The detector's inputs from a run whose last phase trained the head on cached base features:
    those are the pooled pre-logits vectors of the frozen base, the same as the saved model's. Reusing
    them skips a second decode + forward pass over every image (bench/whole_process.py: ~4 s of a
    ~18 s frozen-base alpaca run on 2 cores). Only for the plain images of the whole split: no
    augmented views, one process (DDP ranks each cache a shard). None otherwise."""

    cache = trainer.features
    if cache is None or trainer.augmenting or trainer.dist.enabled:
        return None
    fx, fy = cache["train"]
    if cache["val"] is None:
        empty = np.zeros((0, 0), np.float32)
        val_f, val_z, val_y = empty, empty, np.zeros(0, np.int64)
    else:
        vx, vy = cache["val"]
        with torch.no_grad():
            classifier = trainer.model.get_classifier()
            val_z = classifier(vx.to(classifier.weight.device)).float().cpu().numpy()
        val_f, val_y = vx.float().numpy(), vy.numpy().astype(np.int64)
    return SplitFeatures(fx.float().numpy(), fy.numpy().astype(np.int64), val_f, val_z, val_y)


def _resume_setup(run_dir: Path, opts: TrainOptions, given: dict, data, model):
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise TrainConfigError(
            f"--resume: no {LAST_CHECKPOINT} in {run_dir} to resume from "
            "(a run writes it after its first epoch)"
        )
    try:
        state = load_training_state(last)
        config = RunConfig.from_dict(state["config"], where=f"{last} (its config)")
    except (ValueError, RunFolderError) as e:
        raise TrainConfigError(f"--resume: {e}") from e
    source = config.data.source if config.data is not None else None
    saved = TrainOptions(**state["options"])
    if model is not None and model != config.model:
        raise TrainConfigError(f"--model: {model!r} differs from the run being resumed ({config.model!r})")
    if data is not None and _source(data) != source:
        raise TrainConfigError(f"DATA: {data!r} differs from the run being resumed ({source!r})")
    for name, value in given.items():
        if value is None or name in RESUME_OVERRIDABLE:
            continue
        if getattr(saved, name) != value:
            raise TrainConfigError(
                f"--{name.replace('_', '-')}: {value!r} differs from the run being resumed "
                f"({getattr(saved, name)!r}); only --epochs, --fine-tune-epochs, "
                "--early-stopping, --device, --workers, --quiet and --data-root may change"
            )
    for name in RESUME_OVERRIDABLE:
        if given.get(name) is not None:
            setattr(saved, name, given[name])
    saved.resume = True
    return state, saved, source, config.model


def _source(data: str | Path) -> str:
    """Folders are recorded as absolute paths (evaluate/report find them from anywhere)."""
    path = Path(data).expanduser()
    return str(path.resolve()) if path.exists() else str(data)


def _versions() -> dict[str, str]:

    try:  # the installed distribution's version: importing torchvision costs ~1 s (torch._dynamo)
        torchvision_version = version("torchvision")
    except PackageNotFoundError:
        torchvision_version = "not installed"

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
        "torchvision": torchvision_version,
        "convnets": __version__,
    }


def _build_trainer(
    data, model_name: str, run_dir: Path, opts: TrainOptions, device, dist_info, resume_state, log
) -> Trainer:
    """Options -> model, data, RunConfig -> Trainer, in that order (each step checks its inputs)."""

    model_cfg, image_size, in_chans = _resolve_input(data, model_name, opts)
    pretrained, normalization = _pretrained_model(model_name, in_chans, opts, model_cfg)
    split = RunConfig.from_dict(resume_state["config"]).split if resume_state is not None else None
    splits = _load_splits(data, image_size, in_chans, opts, normalization, split)
    model, head = _model_with_head(pretrained, model_name, len(splits.class_names), in_chans, opts)
    # The normalisation travels with the weights (model.safetensors metadata), for `weights=FILE` later.
    model.pretrained_cfg = {
        **(getattr(model, "pretrained_cfg", None) or {}),
        "mean": list(splits.mean),
        "std": list(splits.std),
        "input_size": [in_chans, image_size, image_size],
    }
    precision_why = _resolve_defaults(opts, image_size, in_chans, model, device, splits)

    is_main = dist_info.is_main and not opts.quiet
    say = log or print
    train_set = splits.train.dataset
    val_set = splits.val.dataset if splits.val is not None else None
    num_classes = len(splits.class_names)
    streaming = isinstance(train_set, torch.utils.data.IterableDataset)  # shards: no random access
    n_train = train_set.total if streaming else len(train_set)
    n_val = 0 if val_set is None else (val_set.total if streaming else len(val_set))
    quiet_log = say if is_main else (lambda _m: None)
    # --lr auto / --fine-tune-lr-scale auto: placeholders now, each phase's range test sets its rate.
    planning = dataclasses.replace(
        opts,
        lr=DEFAULT_LR[opts.optimizer] if opts.lr == "auto" else opts.lr,
        fine_tune_lr_scale=1.0 if opts.fine_tune_lr_scale == "auto" else opts.fine_tune_lr_scale,
    )
    phases = plan_phases(planning, model, n_train / num_classes, planning.lr, log=quiet_log)
    mixing = bool(batch_ops(opts.augment))
    if streaming or mixing:
        # The feature cache indexes the training set, while a stream is read afresh each epoch; and
        # MixUp/CutMix mix images, which cached pooled features cannot reproduce.
        if mixing and any(p.cached for p in phases):
            quiet_log("mixup/cutmix: the head trains on the frozen base's output of mixed images (no cache)")
        for phase in phases:
            phase.cached = False
    if opts.weights is not None and opts.freeze is None:
        opts.freeze = "none" if phases[0].name == "train" else "base"
    from_checkpoint = normalization[0] is not None
    config = _run_config(data, model_name, opts, splits, head, phases, from_checkpoint)
    if resume_state is not None:  # the learning rates --lr auto found before the interruption
        config.lr_find = RunConfig.from_dict(resume_state["config"]).lr_find
    if is_main:
        say(
            f"{model_name}: {num_classes} classes, {n_train:,} training / "
            f"{n_val:,} validation images at {image_size}x{image_size}, "
            f"device {device}{' x' + str(dist_info.world_size) if dist_info.enabled else ''}, "
            f"{opts.precision} ({precision_why})"
        )
    return Trainer(
        model,
        train_set,
        val_set,
        splits.class_names,
        phases,
        opts,
        run_dir,
        device=device,
        config=config,
        dist=dist_info,
        collate_fn=collate,
        num_workers=opts.workers,
        augmenting=bool(sample_ops(opts.augment)),
        on_skipped=_skip_reporter(splits.train),
        resume_state=resume_state,
        log=log,
        find_lr=auto_phase_lr if opts.lr == "auto" or opts.fine_tune_lr_scale == "auto" else None,
    )


def _resolve_input(data, model_name: str, opts: TrainOptions):
    """The model's published config, and the image size and channels this run trains at."""

    try:
        model_cfg = get_model_cfg(model_name)
    except KeyError as e:
        raise TrainConfigError(f"--model: {e.args[0]}") from None
    image_size = default_image_size(data, model_cfg, opts.image_size)
    in_chans = opts.in_chans or (3 if opts.weights else int(model_cfg.input_size[0]))
    opts.augment = resolve_augment(opts)
    try:
        parse_ops(opts.augment)
    except ValueError as e:
        raise TrainConfigError(f"--augment: {e}") from None
    return model_cfg, image_size, in_chans


def _pretrained_model(model_name: str, in_chans: int, opts: TrainOptions, model_cfg):
    """With ``--weights``: the pretrained model (head replaced later), and the normalisation its
    checkpoint expects unless ``--normalize`` says otherwise, as ``(mean, std, normalize)``.
    From scratch: ``(None, (None, None, --normalize or "dataset"))`` -- the training set's statistics."""

    normalize = opts.normalize or "dataset"
    if opts.weights is None:
        return None, (None, None, normalize)
    try:
        with warnings.catch_warnings():  # the head is replaced below anyway: no need to hear about it
            warnings.filterwarnings("ignore", message="classifier head replaced")
            model = create_model(model_name, in_chans=in_chans, weights=opts.weights, **opts.model_kwargs)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise TrainConfigError(f"--weights: {e}") from None
    if opts.normalize is not None:
        return model, (None, None, normalize)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    # "auto" with mean/std given: use them
    return model, (tuple(cfg.get("mean", model_cfg.mean)), tuple(cfg.get("std", model_cfg.std)), "auto")


def _load_splits(data, image_size: int, in_chans: int, opts: TrainOptions, normalization, split):

    mean, std, normalize = normalization
    try:
        splits = load_data(
            str(data),
            image_size=image_size,
            in_chans=in_chans,
            val_split=opts.val_split,
            seed=opts.seed,
            batch_size=opts.batch_size,
            augment=opts.augment,
            resize=opts.resize,
            normalize=normalize,
            mean=mean,
            std=std,
            num_workers=opts.workers,
            data_root=opts.data_root,
            cache="auto",  # a folder that fits in memory is decoded once, not every epoch
            split=split,
        )
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        raise TrainConfigError(f"DATA {data}: {e}") from None
    warn_split_duplicates(splits.split)
    if len(splits.class_names) < 2:
        raise TrainConfigError(
            f"DATA {data}: found {len(splits.class_names)} class; classification needs at least 2"
        )
    return splits


def _model_with_head(pretrained, model_name: str, num_classes: int, in_chans: int, opts: TrainOptions):
    """A fresh model (head ``"default"``), or the pretrained one with a new head (``"transfer"``)."""

    if pretrained is not None:
        pretrained.reset_classifier(num_classes, dropout=opts.head_dropout)
        return pretrained, "transfer"
    try:
        model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, **opts.model_kwargs)
    except TypeError as e:
        raise TrainConfigError(f"--model-kwargs: {e}") from None
    return model, "default"


def _resolve_defaults(opts: TrainOptions, image_size: int, in_chans: int, model, device, splits) -> str:
    """Fill every ``None`` option now, so config.json records what was actually used; returns why
    the precision is what it is (for the run's log line)."""
    opts.image_size, opts.in_chans = image_size, in_chans
    if opts.lr is None:
        opts.lr = DEFAULT_LR[opts.optimizer]
    if opts.weight_decay is None:
        opts.weight_decay = DEFAULT_WEIGHT_DECAY[opts.optimizer]
    opts.precision, precision_why = resolve_precision(opts.precision, device, model, image_size, in_chans)
    if opts.channels_last is None:
        # CPU: NHWC for depthwise-convolution networks, and for all on AVX-512 CPUs (measured; see
        # prefers_channels_last).
        # CUDA: NHWC pays with AMP (tensor-core convolutions want it).
        opts.channels_last = (device.type == "cpu" and prefers_channels_last(model)) or (
            device.type == "cuda" and opts.precision != "fp32"
        )
    if opts.workers is None:
        opts.workers = default_num_workers(holds_images_in_memory(splits.train.dataset), device.type)
    return precision_why


def _run_config(
    data, model_name: str, opts: TrainOptions, splits, head: str, phases, from_checkpoint: bool
) -> RunConfig:
    """What ``config.json`` records: enough to rebuild, run and describe the model (``best`` later)."""
    return RunConfig(
        model=model_name,
        model_kwargs=dict(opts.model_kwargs),
        num_classes=len(splits.class_names),
        in_chans=opts.in_chans,
        head=head,
        head_dropout=opts.head_dropout if head == "transfer" else None,
        image_size=(opts.image_size, opts.image_size),
        resize=splits.resize,  # how evaluation/prediction must bring images to image_size
        mean=tuple(float(v) for v in splits.mean),
        std=tuple(float(v) for v in splits.std),
        normalize="checkpoint" if from_checkpoint else (opts.normalize or "dataset"),
        class_names=list(splits.class_names),
        data=DataSource(source=_source(data), val_split=opts.val_split, seed=opts.seed),
        split=splits.split,
        weights=opts.weights,
        phases=[
            {"name": p.name, "epochs": p.epochs, "lr": p.lr, "unfreeze": p.unfreeze, "cached": p.cached}
            for p in phases
        ],
        options=opts.to_dict(),
        versions=_versions(),
        best=None,
        recipe=_recipe_record(opts),
        cpu_kernels=opts.cpu_kernels,
    )


def _recipe_record(opts: TrainOptions) -> dict | None:
    if opts.recipe is None:
        return None

    return recipe_record(opts.recipe, opts.to_dict())


def _skip_reporter(loader):
    """Files that fail to decode mid-epoch are replaced by the data layer; report each one once, in
    the loader's public ``skipped`` list and as a warning naming the file."""

    skipped = getattr(loader, "skipped", [])
    known = {name for name, _ in skipped}

    def report(errors) -> None:
        for name, reason in errors:
            if name not in known:
                known.add(name)
                skipped.append((name, reason))
                warnings.warn(f"skipping {name}: {reason}", SkippedImageWarning, stacklevel=2)

    return report


# --- convnets lr-find ------------------------------------------------------------------------------


def lr_find(
    data: str | Path,
    model: str,
    out: str | Path,
    *,
    steps: int = DEFAULT_STEPS,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    method: str = "valley",
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> LRCurve:
    """``convnets lr-find``: the range test on the first phase ``convnets train DATA --model MODEL
    **options`` would run (same data pipeline, model, head, optimizer); writes ``lr_find.png`` and
    ``lr_find.json`` to ``out`` and returns the curve with its suggestion. Nothing else is saved."""
    if method not in METHODS:
        raise TrainConfigError(f"--method: must be one of {', '.join(METHODS)}, got {method!r}")
    if steps < 10:
        raise TrainConfigError(f"--steps: at least 10 steps are needed for a readable curve, got {steps}")
    if not 0 < start_lr < end_lr:
        raise TrainConfigError(f"--start-lr/--end-lr: need 0 < start < end, got {start_lr} and {end_lr}")
    options = {k: v for k, v in options.items() if v is not None}
    options.setdefault("lr", 1e-3)  # unused: the test sets every step's rate
    scratch = Path(tempfile.mkdtemp(prefix="convnets-lr-find-"))  # the trainer's run folder, thrown away
    try:
        trainer = build_trainer(data, model, scratch, log=log, **options)
        if trainer.tb is not None:
            trainer.tb.close()
            trainer.tb = None
        phase = trainer.phases[0]
        trainer.prepare_phase(phase)
        curve = phase_range_test(trainer, phase, steps=steps, start_lr=start_lr, end_lr=end_lr, method=method)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    curve.extra = {"data": str(data), "model": model, "options": {k: v for k, v in options.items()}}
    save_curve(curve, out)
    return curve
