"""The training loop: one class, one obvious path through it.

``Trainer.fit()`` walks the run's phases (``train``, or ``head`` then ``finetune``); each epoch is
"shuffle -> forward -> loss -> backward -> step" over the training set, then one pass over the
validation set, then the epoch's bookkeeping (metrics line, best weights, ``last.pt``). Everything
that can stop a run early - Ctrl-C/SIGTERM, a non-finite loss, early stopping - is handled right in
the loop, with no callback objects.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler
from tqdm.auto import tqdm

from ..accel.bf16_backward import FastBf16ConvBackward
from ..accel.fused_bn_act import fuse_batchnorm_act, kernel_error
from ..base.atomic import atomic_write_text
from ..base.runs import (
    CONFUSION_FILE,
    CURVES_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    WEIGHTS_FILE,
    BestEpoch,
    RunConfig,
)
from ..models.base import AuxOutputs
from . import distributed as ddp
from .balance import balanced_accuracy, dataset_labels, resolve_balance
from .checkpoint import atomic_torch_save, rng_state, set_rng_state
from .features import FeatureExtractor, extract_features
from .mixing import batch_mixer, mixed_targets
from .options import TrainOptions
from .transfer import Phase, apply_phase, describe_phase, set_bn_modes


@dataclass
class RunResult:
    """What ``convnets.train`` returns."""

    run_dir: Path
    best_val_acc: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int | None = None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: the current step finished and ``last.pt`` was saved."""

    def __init__(self, signum: int, run_dir: Path, epoch: int, step: int) -> None:
        self.signum = signum
        self.run_dir = Path(run_dir)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: stopped after step {step} of epoch {epoch}; training state "
            f"saved to {self.run_dir / LAST_CHECKPOINT}"
        )


# --- learning-rate schedules ------------------------------------------------------------------


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` of ``total``.

    ``warmup`` steps ramp linearly up to the peak first. cosine: half a cosine down to 0; step: x0.1
    at 50% and 75% of training (the CIFAR ResNet recipe); onecycle: up from peak/25 over the warm-up
    (30% of the steps when none is given) then cosine down to peak/25e4 (Smith's 1cycle, without
    momentum cycling); constant: the peak throughout.
    """
    total = max(total, 1)
    if schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total))
        start, end = 1 / 25, 1 / 25e4
        if step < warmup:
            return start + (1 - start) * step / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def build_optimizer(
    params: list[nn.Parameter], opts: TrainOptions, lr: float, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """No weight decay on biases and BatchNorm/LayerNorm scales (1-d tensors), as in timm and the
    ResNet/EfficientNet recipes: decaying them only fights the normalisation.

    On CPU and CUDA the fused implementations run the whole update in one pass over each tensor
    instead of torch's default of a dozen element-wise passes: measured on this CPU, AdamW's step for
    VGG-16's 138M parameters went from 0.52 s to 0.08 s (bench/RESULTS.md, "Training defaults").
    """
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    device = device if device is not None else (params[0].device if params else torch.device("cpu"))
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if opts.optimizer == "sgd":
        nesterov = opts.nesterov and opts.momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=opts.momentum, nesterov=nesterov, **fused)
    if opts.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, **fused)
    return torch.optim.AdamW(groups, lr=lr, **fused)


# --- data order ------------------------------------------------------------------------------

_VIEW_EPOCH = 1_000_000  # augmentation-seed "epochs" of the cached feature views (no real epoch gets there)


def clamps_out_of_place(model: nn.Module) -> int:
    """Make ReLU6/Hardtanh layers out-of-place for training; returns how many changed.

    In-place clamps were the slower kernel here (Intel Xeon with AMX, 2 threads, bench/RESULTS.md
    "Training precision"): the mobilenet_v2@160 training step ran 1.07x faster in fp32 and 1.12x in
    bf16 with ReLU6 out of place; resnet50's in-place ReLU measured the same either way, so it stays.
    Only memory-saving flags change: outputs are identical.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Hardtanh) and module.inplace:
            module.inplace = False
            changed += 1
    return changed


def _takes_seeded_keys(dataset: Dataset) -> bool:
    try:
        from ..data.datasets import BaseDataset
        from ..data.datasets import Subset as DataSubset
    except ImportError:
        return False
    return isinstance(dataset, (BaseDataset, DataSubset))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; give numpy and random matching seeds.
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _BatchList(Sampler):
    """A batch sampler the trainer refills every epoch (from batch ``start`` on, when resuming
    mid-epoch), so one DataLoader with persistent workers serves the whole run."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.start = 0

    def set(self, batches: list[list], start: int = 0) -> None:
        self.batches, self.start = batches, start

    def __iter__(self):
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start


def progress_bars_wanted(stream=None) -> bool:
    """Redrawn progress bars only on a terminal (or in a notebook); in CI, under ``nohup`` or into a
    log file every redraw would be a carriage-return frame, so the run prints one line per epoch."""
    stream = stream if stream is not None else sys.stdout
    if "ipykernel" in sys.modules:  # tqdm.auto draws a widget there
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# --- the trainer ----------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` through ``phases`` and keeps the run folder up to date.

        ``train_set``/``val_set`` are datasets yielding ``(image_tensor, label)``; the trainer builds its
        own loaders so that shuffling is a pure function of (seed, epoch) - which makes ``--resume``
        exact and DDP sharding uniform. ``config`` is the run's ``RunConfig``, written
    to ``config.json`` (``best`` is filled in here).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        class_names: list[str],
        phases: list[Phase],
        opts: TrainOptions,
        run_dir: str | Path,
        *,
        device: torch.device,
        config: RunConfig,
        dist: ddp.DistInfo | None = None,
        collate_fn: Callable | None = None,
        num_workers: int = 0,
        augmenting: bool = False,
        on_skipped: Callable[[list], None] | None = None,
        resume_state: dict | None = None,
        log: Callable[[str], None] | None = None,
        find_lr: Callable[[Trainer, Phase], None] | None = None,  # lr_find.auto_phase_lr, set by api.py
    ) -> None:
        self.find_lr = find_lr
        self.model = model
        self.train_set, self.val_set = train_set, val_set
        self.class_names = list(class_names)
        self.phases = phases
        self.opts = opts
        self.run_dir = Path(run_dir)
        self.device = device
        self.config = config
        self.dist = dist or ddp.DistInfo()
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.augmenting = augmenting
        self.on_skipped = on_skipped
        # The data layer's datasets take (index, sample_seed) keys: augmentation then depends only on
        # (seed, epoch, sample), whatever the number of worker processes - so a resume is exact.
        # Without augmentation the transform is deterministic and plain indices skip the seeding.
        self.seeded = augmenting and _takes_seeded_keys(train_set)
        self.streaming = isinstance(train_set, IterableDataset)  # WebDataset shards (data/shards.py)
        self._train_batches = _BatchList()
        self._train_loader: DataLoader | None = None
        self._val_loader: DataLoader | None = None
        self.main = self.dist.is_main
        self.bars = self.main and not opts.quiet and progress_bars_wanted()
        self._log = log or (lambda msg: tqdm.write(msg, file=sys.stdout))

        self.channels_last = bool(opts.channels_last)
        clamps_out_of_place(model)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=opts.precision == "fp16")
        # bf16 on CPU: the fastest way to each convolution gradient (bf16_backward.py).
        cpu_bf16 = opts.precision == "bf16" and device.type == "cpu"
        self._backward_mode = FastBf16ConvBackward.for_this_machine() if cpu_bf16 else None
        # ... and BatchNorm with its activation in fused kernels (fused_bn_act.py); not under
        # torch.compile, which fuses the graph its own way.
        self._fuse_bn = cpu_bf16 and not opts.compile
        self._fuse_bn_logged = False
        # --balance (balance.py): class weights in the loss, or class-balanced epochs.
        self._labels = dataset_labels(train_set)
        self.balance = resolve_balance(opts.balance, self._labels, len(self.class_names))
        weight = self.balance.class_weights().to(device) if self.balance.mode == "loss" else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=opts.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        # --augment mixup/cutmix (mixing.py): mixed batches, soft targets (the criterion takes them).
        self.mixer = batch_mixer(opts.augment, len(self.class_names), opts.seed, self.dist.rank)

        # Progress through the run (all saved in last.pt).
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"epoch": None, "val_acc": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_done = 0  # over all phases: the next epoch is number epochs_done + 1
        self.phase_index = 0
        self.epoch_in_phase = 0  # completed epochs of the current phase
        self.early = {"best": -1.0, "bad_epochs": 0}
        self.partial: dict | None = None  # an epoch interrupted mid-way (batches done, running sums)
        self.features: dict | None = None  # cached base features while the head phase runs
        self._epoch_predictions: tuple[list[int], list[int]] | None = None  # last validation pass
        self._best_predictions: tuple[list[int], list[int]] | None = None  # the best epoch's (not in last.pt)
        self.step = 0  # optimizer steps in the current phase
        self._resume = resume_state
        self._stop_signal: int | None = None

        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if resume_state is not None:
            self._load_progress(resume_state)
        self.tb = self._tensorboard()

    # --- public -----------------------------------------------------------------------------

    def fit(self) -> RunResult:
        start = time.perf_counter()
        previous_handlers = self._install_signal_handlers()
        try:
            if self.main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._write_config()
            balance_note = self.balance.message(self.class_names)
            if balance_note:
                self.log(balance_note)
            while self.phase_index < len(self.phases):
                phase = self.phases[self.phase_index]
                if self.epoch_in_phase < phase.epochs:
                    self._run_phase(phase)
                self.phase_index += 1
                self.epoch_in_phase = 0
                self.early = {"best": -1.0, "bad_epochs": 0}  # early stopping counts per phase
            self._finish()
        finally:
            self._restore_signal_handlers(previous_handlers)
            if self.tb is not None:
                self.tb.close()
        return RunResult(
            self.run_dir,
            self.best["val_acc"],
            list(self.history),
            time.perf_counter() - start,
            self.best["epoch"],
        )

    # --- one phase ----------------------------------------------------------------------------

    def prepare_phase(self, phase: Phase) -> None:
        """Trainable layers, cached features (frozen-base head) and the module each step runs."""
        apply_phase(self.model, phase)
        if phase.cached:
            self._cache_features(phase)
            head = nn.Sequential(nn.Dropout(self.opts.head_dropout), self.model.get_classifier())
            self.forward_model = self._wrap(head)
        else:
            self.features = None
            net = self._wrap(self.model)
            self.forward_model = torch.compile(net) if self.opts.compile else net

    def _run_phase(self, phase: Phase) -> None:
        self.prepare_phase(phase)
        if self.find_lr is not None:  # --lr auto: a range test sets phase.lr
            self.find_lr(self, phase)
        self.log(describe_phase(self.model, phase))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, self.opts, phase.lr)
        steps_per_epoch = math.ceil(self._batches_per_epoch(phase) / self.opts.grad_accum)
        total = steps_per_epoch * phase.epochs
        warmup = int(round(self.opts.warmup_epochs * steps_per_epoch))
        schedule = self.opts.schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(schedule, s, total, warmup)
        )

        resumed = self._resume is not None
        if resumed:  # continue this phase exactly where the saved run stopped
            state, self._resume = self._resume, None
            if self.epoch_in_phase > 0 or self.partial is not None:
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.scaler.load_state_dict(state["scaler"])
                self.step = int(state["step"])
            set_rng_state(state["rng"])
        else:
            self.step = 0

        while self.epoch_in_phase < phase.epochs:
            train_stats = self._train_epoch(phase)
            val_stats = self._evaluate(phase)
            if self._end_epoch(phase, train_stats, val_stats):
                break

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _cache_features(self, phase: Phase) -> None:
        """Pooled base features of the training set (``feature_views`` augmented views when
        augmenting) and of the validation set, computed once for the whole head phase."""
        views = self.opts.feature_views if self.augmenting else 1
        # View v uses its own augmentation seeds (an "epoch" number no training epoch reaches).
        train_keys = [self._epoch_keys(_VIEW_EPOCH + v, shuffle=False) for v in range(views)]
        # On CPU the frozen base runs folded and TorchScript-frozen in fp32 even when training is bf16:
        # on the AMX CPU that path extracted mobilenet_v2@160 features 1.6x faster than the eager model
        # under bf16 autocast (bench/RESULTS.md, "Training precision").
        autocast_dtype = self.autocast_dtype if self.device.type != "cpu" else None
        extractor = FeatureExtractor(
            self.model, self.device, channels_last=self.channels_last, autocast_dtype=autocast_dtype
        )
        common = dict(
            batch_size=self.opts.batch_size * 2,  # no gradients kept: larger batches are cheaper per image
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            on_skipped=self.on_skipped,
            progress=self.bars,
        )
        t0 = time.perf_counter()
        fx, fy = extract_features(
            extractor, self.train_set, train_keys, seed=self.opts.seed, desc="train features", **common
        )
        val = None
        if self.val_set is not None:
            val_keys = ddp.shard(list(range(len(self.val_set))), self.dist)
            val = extract_features(
                extractor, self.val_set, [val_keys], seed=self.opts.seed, desc="val features", **common
            )
        self.features = {"train": (fx, fy), "val": val}
        self.log(
            f"cached base features: {len(fx):,} training vectors ({views} view(s) per image) of size "
            f"{fx.shape[1]} in {time.perf_counter() - t0:.1f}s"
        )

    def _batches_per_epoch(self, phase: Phase) -> int:
        if phase.cached:
            n = len(self._epoch_keys(0)) * (self.opts.feature_views if self.augmenting else 1)
            return math.ceil(n / self.opts.batch_size)
        if self.streaming:  # shards: the stream knows this rank's share (equal on every rank)
            return math.ceil(len(self.train_set) / self.opts.batch_size)
        return len(self._epoch_batches(0))

    def _epoch_keys(self, epoch: int, shuffle: bool = True) -> list:
        """This rank's dataset keys for ``epoch``: DistributedSampler's shuffle of (seed, epoch) - padded
        so every rank gets as many - each paired with a per-sample augmentation seed when the
        dataset takes one."""
        n = len(self.train_set)
        sampler = DistributedSampler(
            range(n), self.dist.world_size, self.dist.rank, shuffle=shuffle, seed=self.opts.seed
        )
        sampler.set_epoch(epoch)
        positions = list(sampler)
        if shuffle and self.balance.mode == "sampler":
            world = self.dist.world_size
            drawn = self.balance.draw(self._labels, self.opts.seed, epoch)
            drawn += drawn[: (-len(drawn)) % world]  # every rank gets as many, like DistributedSampler
            positions = drawn[self.dist.rank :: world]
        if not self.seeded:
            return positions
        g = torch.Generator().manual_seed(self.opts.seed * 1_000_003 + epoch)
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
        return [(p, seeds[p]) for p in positions]

    def _epoch_batches(self, epoch: int) -> list[list]:
        keys = self._epoch_keys(epoch)
        bs = self.opts.batch_size
        batches = [keys[i : i + bs] for i in range(0, len(keys), bs)]
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot normalise a batch of one
            batches.pop()
        return batches

    # --- one epoch ----------------------------------------------------------------------------

    def _batch_iterator(self, phase: Phase, epoch: int, start: int) -> tuple[Iterator, int]:
        if phase.cached:
            fx, fy = self.features["train"]
            g = torch.Generator().manual_seed(self.opts.seed * 100_003 + epoch)
            order = torch.randperm(len(fx), generator=g)
            if self.balance.mode == "sampler":
                order = torch.tensor(self.balance.draw(fy, self.opts.seed, epoch))
            bs = self.opts.batch_size
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
            return ((fx[b], fy[b]) for b in batches[start:]), len(batches)
        if self.streaming:
            return self._stream_batches(epoch, start)
        batches = self._epoch_batches(epoch)
        self._train_batches.set(batches, start)
        if self._train_loader is None:  # one loader for the run: its worker processes persist
            self._train_loader = DataLoader(
                self.train_set,
                batch_sampler=self._train_batches,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                worker_init_fn=_seed_worker if self.num_workers else None,
            )
        return iter(self._train_loader), len(batches)

    def _stream_batches(self, epoch: int, start: int) -> tuple[Iterator, int]:
        """Shards (an IterableDataset): the stream splits the epoch across ranks and workers itself;
        a resume mid-epoch reads past the batches already done."""
        import itertools

        self.train_set.set_epoch(epoch)
        if self._train_loader is None:
            self._train_loader = DataLoader(
                self.train_set,
                batch_size=self.opts.batch_size,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                worker_init_fn=_seed_worker if self.num_workers else None,
            )
        n = math.ceil(len(self.train_set) / self.opts.batch_size)
        return itertools.islice(iter(self._train_loader), start, None), n

    def _train_epoch(self, phase: Phase) -> dict[str, float]:
        with fuse_batchnorm_act(self.model, enabled=self._fuse_bn and not phase.cached) as fused:
            if self._fuse_bn and not phase.cached and not self._fuse_bn_logged:
                self._fuse_bn_logged = True
                why = kernel_error()
                self.log(
                    f"bf16 on CPU: fused BatchNorm+activation kernels for {fused} BatchNorm layers"
                    if fused or why is None
                    else f"bf16 on CPU: BatchNorm runs in ATen's kernels (fused kernels unavailable: {why})"
                )
            return self._train_epoch_batches(phase)

    def _train_epoch_batches(self, phase: Phase) -> dict[str, float]:
        epoch = self.epochs_done  # 0-based; shown as epoch + 1
        partial = self.partial or {"batch": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        self.partial = None
        batch_index = int(partial["batch"])
        loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
        batches, n_batches = self._batch_iterator(phase, epoch, batch_index)
        accum = self.opts.grad_accum

        self.forward_model.train()
        set_bn_modes(self.model, phase, self.opts.bn_train)
        bar = tqdm(
            total=n_batches,
            initial=batch_index,
            desc=f"epoch {epoch + 1}/{self._total_epochs()} [{phase.name}]",
            leave=False,
            unit="batch",
            disable=not self.bars,
            dynamic_ncols=True,
            file=sys.stdout,
        )
        t0 = time.perf_counter() - partial["seconds"]
        lr = self._lr()  # the epoch's learning rate as logged: the one its first step used
        self.optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            x, y = self._unpack(batch)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            # MixUp/CutMix: soft targets for the loss, each image's dominant label for the accuracy.
            x, target, y = mixed_targets(self.mixer, x, y, epoch, batch_index)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            update = (batch_index + 1) % accum == 0 or batch_index + 1 == n_batches
            # DDP: only all-reduce gradients on the micro-batch that ends an accumulation group.
            sync = nullcontext() if update or not self.dist.enabled else self.forward_model.no_sync()
            with sync:
                with self._autocast():
                    loss, logits = self._loss(self.forward_model(x), target)
                finite = bool(torch.isfinite(loss.detach()).item())
                if ddp.any_rank(not finite, self.dist, self.device):  # before backward: no rank hangs
                    bar.close()
                    raise self._non_finite(loss, phase, epoch, batch_index, n_batches)
                with self._backward_mode or nullcontext():
                    self.scaler.scale(loss / accum).backward()
            n = y.shape[0]
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            batch_index += 1
            bar.update()
            if update:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.4f}",
                    acc=f"{correct / seen:.3f}",
                    img_s=f"{seen * self.dist.world_size / max(elapsed, 1e-9):.0f}",
                    refresh=False,
                )
                if ddp.any_rank(self._stop_signal is not None, self.dist, self.device):
                    bar.close()
                    self._interrupt(epoch, batch_index, n_batches, loss_sum, correct, seen, elapsed)
        bar.close()
        loss_sum, correct, seen = ddp.all_reduce_sum([loss_sum, correct, seen], self.dist, self.device)
        return {
            "loss": loss_sum / max(seen, 1),
            "acc": correct / max(seen, 1),
            "images": seen,
            "seconds": time.perf_counter() - t0,
            "lr": lr,
        }

    def _non_finite(self, loss, phase: Phase, epoch: int, batch_index: int, n_batches: int):
        kept = (
            f"the last good checkpoint ({LAST_CHECKPOINT}, epoch {self.epochs_done}) is kept in "
            f"{self.run_dir}"
            if self.epochs_done
            else "no epoch had completed, so nothing was saved"
        )
        return NonFiniteLossError(
            f"the loss became non-finite ({loss.item()}) at epoch {epoch + 1}, step {batch_index + 1} of "
            f"{n_batches} (phase {phase.name}, lr {self._lr():.3g}); {kept}. Try a smaller --lr, "
            "--warmup-epochs, or --precision fp32."
        )

    def _unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)``, or the data layer's ``(images, labels, skipped_files)``."""
        if len(batch) > 2 and batch[2] and self.on_skipped is not None:
            self.on_skipped(batch[2])
        return batch[0], batch[1]

    def _loss(self, out, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy; GoogLeNet-style side classifiers add ``aux_weight * CE(aux_i)``."""
        if isinstance(out, AuxOutputs):
            loss = self.criterion(out.logits, y)
            for aux in out.aux:
                loss = loss + out.aux_weight * self.criterion(aux, y)
            return loss, out.logits
        return self.criterion(out, y), out

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def _evaluate(self, phase: Phase) -> dict[str, float] | None:
        """Validation loss and accuracy (summed over all ranks' shards)."""
        if self.val_set is None:
            return None
        k = len(self.class_names)
        loss_sum = 0.0
        per_class = torch.zeros(2, k, dtype=torch.float64)  # right, seen per true class
        if phase.cached:
            head = self.model.get_classifier()
            vx, vy = self.features["val"]
            batches = (
                (head(vx[i : i + 1024].to(self.device)), vy[i : i + 1024].to(self.device))
                for i in range(0, len(vx), 1024)
            )
        else:
            batches = self._predict_batches(ddp.shard(list(range(len(self.val_set))), self.dist))
        predictions: tuple[list[int], list[int]] = ([], [])  # (true, predicted), for the confusion matrix
        for logits, y in batches:
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            predicted = logits.argmax(1)
            predictions[0].extend(y.tolist())
            predictions[1].extend(predicted.tolist())
            right = predicted == y
            per_class[0] += torch.bincount(y[right].cpu(), minlength=k).double()
            per_class[1] += torch.bincount(y.cpu(), minlength=k).double()
        totals = ddp.all_reduce_sum([loss_sum, *per_class.flatten().tolist()], self.dist, self.device)
        loss_sum, right, seen = totals[0], totals[1 : 1 + k], totals[1 + k :]
        n = max(sum(seen), 1)
        # One process saw the whole split: the best epoch's predictions make the final confusion matrix.
        self._epoch_predictions = None if self.dist.enabled else predictions
        return {"loss": loss_sum / n, "acc": sum(right) / n, "bal_acc": balanced_accuracy(right, seen)}

    def _predict_batches(
        self, indices: list[int], whole: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.model.eval()
        if isinstance(self.val_set, IterableDataset):  # shards: the stream splits itself across ranks
            dataset = self.val_set.whole() if whole else self.val_set
            loader = DataLoader(
                dataset,
                batch_size=self.opts.batch_size * 2,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
            )
        elif self._val_loader is None or self._val_loader.sampler != indices:
            # Kept for the run (persistent workers): a validation pass per epoch would otherwise
            # start its worker processes again every time.
            self._val_loader = DataLoader(
                self.val_set,
                sampler=indices,
                batch_size=self.opts.batch_size * 2,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
            )
        if not isinstance(self.val_set, IterableDataset):
            loader = self._val_loader
        for batch in loader:
            x, y = self._unpack(batch)
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x)
            yield logits, y.to(self.device)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _end_epoch(self, phase: Phase, train: dict, val: dict | None) -> bool:
        """Record the epoch, keep the best weights, save last.pt; True when early stopping fires."""
        self.epochs_done += 1
        self.epoch_in_phase += 1
        record = {
            "epoch": self.epochs_done,
            "phase": phase.name,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"] if val else None,
            "val_acc": val["acc"] if val else None,
            "val_bal_acc": val["bal_acc"] if val else None,
            "lr": train["lr"],
            "seconds": round(train["seconds"], 3),
        }
        self.history.append(record)
        # Without a validation split, the last epoch wins; with imbalanced classes the balanced accuracy
        # decides (plain accuracy would reward ignoring the small classes).
        key = "val_bal_acc" if self.balance.imbalanced else "val_acc"
        score = record[key] if val else train["acc"]
        improved = self.best.get(key) is None or score > self.best[key] or val is None
        if improved:
            self.best = {"epoch": self.epochs_done, "val_acc": record["val_acc"]}
            if self.balance.imbalanced:
                self.best["val_bal_acc"] = record["val_bal_acc"]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self._best_predictions = self._epoch_predictions if val else None
        stop = False
        if self.opts.early_stopping and val is not None:
            if score > self.early["best"]:
                self.early = {"best": score, "bad_epochs": 0}
            else:
                self.early["bad_epochs"] += 1
                stop = self.early["bad_epochs"] >= self.opts.early_stopping
        if stop:  # the phase ends here; a resume starts the next phase
            self.log(f"early stopping: no validation improvement for {self.opts.early_stopping} epoch(s)")
            self.epoch_in_phase = phase.epochs

        if self.main:
            atomic_write_text(
                self.run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in self.history)
            )
            if improved:
                from ..weights import save_state_dict

                save_state_dict(self.model, self.run_dir / WEIGHTS_FILE)
                self._write_config()
            self._save_last()
            self._epoch_summary(record, train, improved and val is not None)
            if self.tb is not None:
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                    if record[key] is not None:
                        self.tb.add_scalar(key.replace("_", "/", 1), record[key], self.epochs_done)
        ddp.barrier(self.dist)
        return stop

    def _epoch_summary(self, record: dict, train: dict, best: bool) -> None:
        ips = train["images"] / max(train["seconds"], 1e-9)
        val = (
            f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
            if record["val_acc"] is not None
            else ""
        )
        if record["val_acc"] is not None and self.balance.imbalanced:
            val += f" bal acc {record['val_bal_acc']:.4f}"
        self.log(
            f"epoch {record['epoch']:>3}/{self._total_epochs()} [{record['phase']}] train loss "
            f"{record['train_loss']:.4f} acc {record['train_acc']:.4f}{val} | lr {record['lr']:.2e} | "
            f"{record['seconds']:.1f}s {ips:,.0f} img/s{'  *best' if best else ''}"
        )

    def _total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def _state(self) -> dict[str, Any]:
        """Everything --resume needs, as plain containers and tensors (torch.load(weights_only=True))."""
        return {
            "format": "convnets-train-state/1",
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "phase_index": self.phase_index,
            "phase": self.phases[self.phase_index].name,
            "epoch_in_phase": self.epoch_in_phase,
            "epoch": self.epochs_done,
            "partial": self.partial,
            "rng": rng_state(),
            "early_stopping": dict(self.early),
            "best": dict(self.best),
            "history": list(self.history),
            # JSON round trip: only plain types, which torch.load(weights_only=True) accepts.
            "options": json.loads(json.dumps(self.config.options)),
            "config": json.loads(json.dumps(self.config.to_dict())),
            # bf16 on CPU: the backward ways picked by timing, so a resumed run takes the same ones.
            "bf16_backward": self._backward_mode.state() if self._backward_mode is not None else None,
        }

    def _save_last(self) -> None:
        atomic_torch_save(self._state(), self.run_dir / LAST_CHECKPOINT)
        if self._backward_mode is not None and self.dist.is_main:
            self._backward_mode.save_for_this_machine()

    def _load_progress(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.epochs_done = int(state["epoch"])
        self.phase_index = int(state["phase_index"])
        self.epoch_in_phase = int(state["epoch_in_phase"])
        self.early = dict(state["early_stopping"])
        self.partial = state["partial"]
        if self._backward_mode is not None and state.get("bf16_backward"):
            self._backward_mode.load_state(state["bf16_backward"])
        best_file = self.run_dir / WEIGHTS_FILE
        if best_file.is_file():
            from safetensors.torch import load_file

            self.best_state = load_file(best_file)

    def _interrupt(self, epoch: int, batch: int, n_batches: int, loss_sum, correct, seen, elapsed) -> None:
        signum = self._stop_signal or signal.SIGINT
        self.partial = {
            "batch": batch,
            "loss_sum": loss_sum,
            "correct": correct,
            "seen": seen,
            "seconds": elapsed,
        }
        if self.main:
            self._save_last()
        ddp.barrier(self.dist)
        raise TrainingInterrupted(signum, self.run_dir, epoch + 1, batch)

    def _finish(self) -> None:
        """Best weights back in the model; curves, confusion matrix and final config on disk."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if not self.main:
            ddp.barrier(self.dist)
            return
        from ..base.plots import confusion_counts, plot_confusion_matrix, plot_curves

        name = self.config.model
        if self.history:
            plot_curves(self.history, self.run_dir / CURVES_FILE, title=f"{name} - {self.run_dir.name}")
        if self.val_set is not None and len(self.val_set):
            y_true, y_pred = [], []
            if self._best_predictions is not None:
                # The best epoch's validation pass ran the weights now restored, in eval mode, on the
                # same images: its predictions are the confusion matrix (no pass over the split again).
                y_true, y_pred = self._best_predictions
            elif self.features is not None and self.features["val"] is not None and not self.dist.enabled:
                # A head-only run: the frozen base never changed, so the cached validation features
                # give the best model's predictions without another pass through the network.
                vx, vy = self.features["val"]
                with torch.no_grad():
                    y_pred = self.model.get_classifier()(vx.to(self.device)).argmax(1).tolist()
                y_true = vy.tolist()
            else:
                for logits, y in self._predict_batches(list(range(len(self.val_set))), whole=True):
                    y_pred += logits.argmax(1).tolist()
                    y_true += y.tolist()
            plot_confusion_matrix(
                confusion_counts(y_true, y_pred, len(self.class_names)),
                self.class_names,
                self.run_dir / CONFUSION_FILE,
                title=f"{name} validation (best epoch {self.best['epoch']})",
            )
        self._write_config()
        ddp.barrier(self.dist)

    def _write_config(self) -> None:
        self.config.best = BestEpoch(**self.best) if self.best["epoch"] is not None else None
        self.config.write(self.run_dir)

    # --- signals, logging, tensorboard ------------------------------------------------------------

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame):
            if self._stop_signal is not None:  # a second Ctrl-C: the user really wants out now
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.main:
                print(
                    f"\n{signal.Signals(signum).name}: finishing the current step, then saving last.pt "
                    "(press Ctrl-C again to abort without saving)",
                    file=sys.stderr,
                    flush=True,
                )

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def log(self, message: str) -> None:
        if self.main and not self.opts.quiet:
            self._log(message)

    def _tensorboard(self):
        if not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the metrics.jsonl and curves.png still exist
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
