"""The training loop: one class, one obvious path through it.

``Trainer.fit()`` walks the run's phases (``train``, or ``head`` then ``finetune``); each epoch is
"forward -> loss -> backward -> step" over the training set, then one pass over the validation set,
then the epoch's bookkeeping (metrics line, best weights, ``last.pt``). Everything that can stop a run
early - Ctrl-C/SIGTERM, a non-finite loss, early stopping - is handled right in the loop, with no
callback objects.

Its rooms: the batches and their order (``data_order.py``), the optimizer and schedule (``optim.py``),
the record of epochs and the plots (``history.py``); how a step runs on this hardware - autocast, loss
scaling, the bf16 CPU kernels and the module rewrites they make - is the precision plan's
(``accel/plan.py``).
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
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..accel.plan import PrecisionPlan
from ..base.runs import LAST_CHECKPOINT, WEIGHTS_FILE, BestEpoch, RunConfig
from ..models.base import AuxOutputs
from ..weights import save_state_dict
from . import distributed as ddp
from . import history as hist
from .balance import balanced_accuracy, dataset_labels, resolve_balance
from .checkpoint import atomic_torch_save, rng_state, set_rng_state
from .data_order import DataOrder
from .features import FeatureExtractor, extract_features
from .history import progress_bars_wanted
from .mixing import batch_mixer, mixed_targets
from .optim import build_optimizer, build_schedule
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


# --- the trainer ----------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` through ``phases`` and keeps the run folder up to date.

    ``train_set``/``val_set`` are datasets yielding ``(image_tensor, label)``; the trainer reads them in
    the order :class:`~convnets.train.data_order.DataOrder` gives (a pure function of seed and epoch,
    which makes ``--resume`` exact and DDP sharding uniform). ``config`` is the run's ``RunConfig``,
    written to ``config.json`` (``best`` is filled in here).
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
        self.main = self.dist.is_main
        self.bars = self.main and not opts.quiet and progress_bars_wanted()
        self._log = log or (lambda msg: tqdm.write(msg, file=sys.stdout))

        # How each step runs on this hardware (autocast, loss scaling, the bf16 CPU kernels): one door.
        self.plan = PrecisionPlan(
            opts.precision,
            device,
            cpu_kernels=opts.cpu_kernels != "off",
            channels_last=bool(opts.channels_last),
            compiled=opts.compile,
            log=self.log,
        )
        # --balance (balance.py): class weights in the loss, or class-balanced epochs.
        labels = dataset_labels(train_set)
        self.balance = resolve_balance(opts.balance, labels, len(self.class_names))
        self.data = DataOrder(
            train_set,
            val_set,
            opts,
            balance=self.balance,
            labels=labels,
            dist=self.dist,
            device=device,
            augmenting=augmenting,
            num_workers=num_workers,
            collate_fn=collate_fn,
        )
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

        self.plan.prepare(self.model)
        # --ema: a moving average of the weights (BatchNorm statistics included, timm's ModelEmaV2 way)
        # is what validation sees and what the run keeps; torch's AveragedModel does the averaging.
        self.ema = None
        if opts.ema is not None:
            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(opts.ema), use_buffers=True
            )
            self.ema.module.eval()
        if resume_state is not None:
            self._load_progress(resume_state)
        self.tb = hist.open_tensorboard(self.run_dir) if self.main else None

    # --- public -----------------------------------------------------------------------------

    def fit(self) -> RunResult:
        start = time.perf_counter()
        previous_handlers = self._install_signal_handlers()
        try:
            if self.main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._write_config()
            for note in (self.balance.message(self.class_names), self.plan.describe()):
                if note:
                    self.log(note)
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
        steps_per_epoch = math.ceil(self.data.batches_per_epoch(phase) / self.opts.grad_accum)
        self.scheduler = build_schedule(self.optimizer, self.opts, steps_per_epoch, phase.epochs)

        resumed = self._resume is not None
        if resumed:  # continue this phase exactly where the saved run stopped
            state, self._resume = self._resume, None
            if self.epoch_in_phase > 0 or self.partial is not None:
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.plan.scaler.load_state_dict(state["scaler"])
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

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _cache_features(self, phase: Phase) -> None:
        """Pooled base features of the training set (``feature_views`` augmented views when
        augmenting) and of the validation set, computed once for the whole head phase."""
        train_keys = self.data.view_keys()
        # On CPU the frozen base runs folded and TorchScript-frozen in fp32 even when training is bf16:
        # on the AMX CPU that path extracted mobilenet_v2@160 features 1.6x faster than the eager model
        # under bf16 autocast (bench/RESULTS.md, "Training precision").
        autocast_dtype = self.plan.autocast_dtype if self.device.type != "cpu" else None
        extractor = FeatureExtractor(
            self.model, self.device, channels_last=self.plan.channels_last, autocast_dtype=autocast_dtype
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
            f"cached base features: {len(fx):,} training vectors ({self.data.views} view(s) per image) "
            f"of size {fx.shape[1]} in {time.perf_counter() - t0:.1f}s"
        )

    # --- one epoch ----------------------------------------------------------------------------

    def _train_epoch(self, phase: Phase) -> dict[str, float]:
        # The plan's module rewrites (bf16 CPU kernels) last exactly this epoch; a head on cached
        # features has no BatchNorm to rewrite.
        with self.plan.training_epoch(self.model, rewrite=not phase.cached):
            return self._train_epoch_batches(phase)

    def _train_epoch_batches(self, phase: Phase) -> dict[str, float]:
        epoch = self.epochs_done  # 0-based; shown as epoch + 1
        partial = self.partial or {"batch": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        self.partial = None
        batch_index = int(partial["batch"])
        loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
        batches, n_batches = self.data.train_batches(phase, epoch, batch_index, self.features)
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
            x = self.plan.inputs(x)
            update = (batch_index + 1) % accum == 0 or batch_index + 1 == n_batches
            # DDP: only all-reduce gradients on the micro-batch that ends an accumulation group.
            sync = nullcontext() if update or not self.dist.enabled else self.forward_model.no_sync()
            with sync:
                with self.plan.autocast():
                    loss, logits = self._loss(self.forward_model(x), target)
                finite = bool(torch.isfinite(loss.detach()).item())
                if ddp.any_rank(not finite, self.dist, self.device):  # before backward: no rank hangs
                    bar.close()
                    raise self._non_finite(loss, phase, epoch, batch_index, n_batches)
                self.plan.backward(loss / accum)
            n = y.shape[0]
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            batch_index += 1
            bar.update()
            if update:
                self.plan.step(self.optimizer)
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
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
            head = self._validated_model().get_classifier()
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

    def _validated_model(self) -> nn.Module:
        """The weights validation measures and the run keeps: their moving average under --ema."""
        return self.ema.module if self.ema is not None else self.model

    def _predict_batches(
        self, indices: list[int], whole: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        model = self._validated_model()
        model.eval()
        for batch in self.data.val_batches(indices, whole):
            x, y = self._unpack(batch)
            x = self.plan.inputs(x.to(self.device, non_blocking=True))
            with self.plan.autocast():
                logits = model(x)
                if self.opts.val_tta == "flip":
                    # mean of the two views' probabilities, as deploy/predictor's flip TTA; its log is
                    # a valid logit vector for the loss and the argmax
                    mirrored = model(x.flip(-1))
                    probs = (F.softmax(logits.float(), 1) + F.softmax(mirrored.float(), 1)) / 2
                    logits = probs.clamp_min(1e-12).log()
            yield logits, y.to(self.device)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _end_epoch(self, phase: Phase, train: dict, val: dict | None) -> bool:
        """Record the epoch, keep the best weights, save last.pt; True when early stopping fires."""
        self.epochs_done += 1
        self.epoch_in_phase += 1
        record = hist.epoch_record(self.epochs_done, phase.name, train, val)
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
            kept = self._validated_model().state_dict()
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in kept.items()}
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
            hist.write_metrics(self.run_dir, self.history)
            if improved:
                save_state_dict(self._validated_model(), self.run_dir / WEIGHTS_FILE)
                self._write_config()
            self._save_last()
            best = improved and val is not None
            self.log(
                hist.epoch_line(
                    record, train["images"], self._total_epochs(), balanced=self.balance.imbalanced, best=best
                )
            )
            if self.tb is not None:
                hist.add_scalars(self.tb, record)
        ddp.barrier(self.dist)
        return stop

    def _total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def _state(self) -> dict[str, Any]:
        """Everything --resume needs, as plain containers and tensors (torch.load(weights_only=True))."""
        return {
            "format": "convnets-train-state/1",
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.plan.scaler.state_dict(),
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
            "precision_plan": self.plan.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def _save_last(self) -> None:
        atomic_torch_save(self._state(), self.run_dir / LAST_CHECKPOINT)
        if self.dist.is_main:
            self.plan.save_for_this_machine()

    def _load_progress(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.epochs_done = int(state["epoch"])
        self.phase_index = int(state["phase_index"])
        self.epoch_in_phase = int(state["epoch_in_phase"])
        self.early = dict(state["early_stopping"])
        self.partial = state["partial"]
        self.plan.load_from_checkpoint(state)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        best_file = self.run_dir / WEIGHTS_FILE
        if best_file.is_file():
            from safetensors.torch import load_file  # start-up: safetensors on first use

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
        predictions = None
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
            predictions = (y_true, y_pred)
        hist.write_plots(
            self.run_dir, self.history, self.config.model, predictions, self.class_names, self.best["epoch"]
        )
        self._write_config()
        ddp.barrier(self.dist)

    def _write_config(self) -> None:
        self.config.best = BestEpoch(**self.best) if self.best["epoch"] is not None else None
        self.config.write(self.run_dir)

    # --- signals, logging ------------------------------------------------------------

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
