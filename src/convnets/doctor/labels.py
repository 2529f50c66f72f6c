"""Likely label errors: out-of-fold predicted probabilities from a quick model, ranked by confident
learning (``cleanlab.filter.find_label_issues``).

Every image gets class probabilities from a model that never saw it (k-fold), so an image whose
folder label disagrees confidently with what the rest of its class looks like stands out. Two quick
models:

* with ``weights`` (a pretrained checkpoint, e.g. ImageNet MobileNetV2): the frozen backbone's pooled
  features (``forward_head(forward_features(x), pre_logits=True)``), then a standardised logistic
  regression, ``sklearn.model_selection.cross_val_predict`` over 5 stratified folds;
* without weights: a tiny CNN (three conv-BN-ReLU-pool stages, 32x32 RGB thumbnails from the decode
  pass, horizontal flips) trained from scratch for a few epochs per fold. It learns colour, layout
  and coarse shape: enough to expose flipped labels in a set where classes differ visibly; for
  photos of similar things, pass ``weights``.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

import numpy as np

from ..data.decode import ImageReadError
from ..data.images import read_images, to_input

N_FOLDS = 5
# When the quick model is this weak, most of its confident disagreements are its own mistakes, not
# label errors: at CIFAR-10 scale the tiny CNN reached 0.60 out-of-fold accuracy and cleanlab flagged
# 25% of the images, the top ones mostly correct (issue 24). Curated sets have a few percent of label
# noise; a check that flags many more than that is measuring its model.
MIN_TRUSTED_ACCURACY = 0.85
MAX_TRUSTED_FLAGGED = 0.10  # share of the images flagged
MAX_SHOWN = 50  # the list a person reviews; the JSON says how many more were flagged
STEPS_PER_FOLD = 150  # tiny-CNN training steps per fold (batch 64), at least 4 epochs...
# ...but never more than this many: at CIFAR-10's 50,000 images 4 epochs per fold took 5 minutes and
# still reached only 0.60; past a few thousand images the check's strength comes from a trained run's
# features (``convnets doctor RUN``), so the tiny CNN keeps to a fixed, small cost there.
MAX_STEPS_PER_FOLD = 600
WIDTHS = (8, 16, 32)  # its three stages' channels


class LabelCheckError(RuntimeError):
    """The label check cannot run (a missing library, too few images per class)."""


@dataclass
class LabelResult:
    """Out-of-fold probabilities and cleanlab's ranked issues (indices into the rows given)."""

    method: str
    class_names: list[str]
    pred_probs: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    ranked: list[int]  # likely label errors, most likely first
    quality: np.ndarray  # (N,) cleanlab's label quality score (low = suspicious)
    folds: int
    oof_accuracy: float
    seconds: float


def assess(oof_accuracy: float, flagged: int, images: int, weights_given: bool) -> tuple[bool, str | None]:
    """Is the check strong enough to act on? ``(trusted, plain-words warning when not)``."""
    share = flagged / max(images, 1)
    if oof_accuracy >= MIN_TRUSTED_ACCURACY and share <= MAX_TRUSTED_FLAGGED:
        return True, None
    why = []
    if oof_accuracy < MIN_TRUSTED_ACCURACY:
        why.append(
            f"its model predicts only {oof_accuracy:.0%} of the images right out of fold "
            f"(trusted from {MIN_TRUSTED_ACCURACY:.0%})"
        )
    if share > MAX_TRUSTED_FLAGGED:
        why.append(
            f"it flags {flagged:,} of {images:,} images ({share:.0%}; real label noise is usually a "
            "few percent)"
        )
    hint = (
        "a stronger --weights/--model (a longer-trained run, or pretrained features)"
        if weights_given
        else "the features of a run trained on this data (`convnets doctor RUN_DIR`, or --weights "
        "RUN_DIR) or pretrained ones (--weights FILE, e.g. an ImageNet MobileNetV2)"
    )
    return False, (
        "too weak to trust: " + " and ".join(why) + ", so most flags are the check's own mistakes, "
        f"not label errors. Review only the top of the list, or rerun with {hint}"
    )


def _folds(labels: np.ndarray) -> int:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise LabelCheckError("a class has a single image: out-of-fold predictions need two per class")
    return min(N_FOLDS, smallest)


def tiny_cnn_probs(
    rgb: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int,
    seed: int = 0,
    epochs: int | None = None,
) -> np.ndarray:
    """Out-of-fold class probabilities of a tiny CNN trained from scratch on (N, 32, 32, 3) uint8
    thumbnails: about ``STEPS_PER_FOLD`` steps of batch 64 per fold (at least 4 epochs, at most
    ``MAX_STEPS_PER_FOLD`` steps), on one
    thread (these layers are too small to gain from more, and a busy machine punishes spinning ones)."""
    import torch  # start-up: torch on first use

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tiny_cnn_probs(rgb, labels, num_classes, folds, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _tiny_cnn_probs(rgb, labels, num_classes, folds, seed, epochs):
    import torch  # start-up: torch on first use
    from sklearn.model_selection import StratifiedKFold  # start-up: sklearn on first use
    from torch import nn  # start-up: torch on first use

    torch.manual_seed(seed)
    x_all = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255)
    x_all = (x_all - x_all.mean(dim=(0, 2, 3), keepdim=True)) / (
        x_all.std(dim=(0, 2, 3), keepdim=True) + 1e-6
    )
    x_all = x_all.contiguous(memory_format=torch.channels_last)  # a third faster for these small convs
    y_all = torch.from_numpy(labels).long()
    batch = 64
    cap = MAX_STEPS_PER_FOLD if epochs is None else None
    if epochs is None:
        steps_per_epoch = max(1, int(np.ceil(len(labels) * (folds - 1) / folds / batch)))
        epochs = int(np.clip(STEPS_PER_FOLD // steps_per_epoch, 4, 20))
    out = np.zeros((len(labels), num_classes), np.float32)

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(labels)), labels):
        model = nn.Sequential(
            block(3, WIDTHS[0]),
            block(WIDTHS[0], WIDTHS[1]),
            block(WIDTHS[1], WIDTHS[2]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(WIDTHS[2], num_classes),
        ).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        tr = torch.from_numpy(train_idx)
        total_steps = epochs * int(np.ceil(len(tr) / batch))
        total_steps = min(total_steps, cap) if cap else total_steps
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total_steps)
        model.train()

        # Shuffled batches epoch after epoch, drawn lazily; islice ends a capped fold mid-epoch.
        batches = (chunk for _ in range(epochs) for chunk in tr[torch.randperm(len(tr))].split(batch))
        for chunk in itertools.islice(batches, total_steps):
            xb, yb = x_all[chunk], y_all[chunk]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            xt = x_all[torch.from_numpy(test_idx)]
            logits = (model(xt) + model(xt.flip(3))) / 2
            out[test_idx] = torch.softmax(logits, dim=1).numpy()
    return out


def backbone_features(
    paths: list[str],
    weights: str,
    model_name: str,
    normalize: str | None = None,
    batch_size: int = 128,
) -> tuple[np.ndarray, str]:
    """Pooled features (N, D) of a frozen backbone (the vector entering its classifier), and what it
    was: a pretrained checkpoint for ``model_name``, or a convnets run folder (its own architecture,
    normalisation, input size and resize mode; ``model_name``/``normalize`` are then ignored)."""
    import torch  # start-up: torch on first use

    from ..models import create_model  # start-up: torch on first use
    from ..weights import load_run  # start-up: torch on first use
    from ..weights.runs import run_dir_of  # start-up: torch on first use

    run_dir = run_dir_of(weights)
    if run_dir is not None:
        model, config = load_run(run_dir)
        resize, described = config.resize, f"run {run_dir} ({config.model})"
    else:
        model = create_model(model_name, weights=weights, **({"normalize": normalize} if normalize else {}))
        resize, described = "center-crop", f"{model_name} ({weights})"
    model = model.eval().to(memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    size = tuple(int(v) for v in cfg["input_size"][1:])
    in_chans = int(cfg["input_size"][0])
    feats = []
    # Decoded a chunk at a time by threads (read_images), so 50,000 files never sit in memory at once;
    # 256 float images at 224 px are 154 MB, the most a chunk holds.
    chunk = 2 * batch_size
    with torch.inference_mode():
        for s in range(0, len(paths), chunk):
            views = read_images(paths[s : s + chunk], size, in_chans, resize)
            for path, view in zip(paths[s : s + chunk], views):
                if isinstance(view, ImageReadError):
                    raise LabelCheckError(f"{path}: {view}")
            x_all = torch.from_numpy(to_input(views, cfg["mean"], cfg["std"]))
            for x in x_all.split(batch_size):
                x = x.contiguous(memory_format=torch.channels_last)
                feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
    return np.concatenate(feats), described


def linear_probs(features: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a standardised logistic regression on fixed features."""
    from sklearn.linear_model import LogisticRegression  # start-up: sklearn on first use
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # start-up: sklearn on first use
    from sklearn.pipeline import make_pipeline  # start-up: sklearn on first use
    from sklearn.preprocessing import StandardScaler  # start-up: sklearn on first use

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, features, labels, cv=cv, method="predict_proba").astype(np.float32)


def find_label_issues(
    labels: list[str],
    rgb: np.ndarray | None = None,
    paths: list[str] | None = None,
    *,
    weights: str | os.PathLike | None = None,
    model_name: str = "mobilenet_v2",
    normalize: str | None = None,
    seed: int = 0,
) -> LabelResult:
    """Rank the rows most likely mislabelled. ``rgb`` (N, 32, 32, 3) thumbnails feed the tiny CNN;
    with ``weights`` the backbone reads ``paths`` at its own input size instead."""

    try:
        from cleanlab.filter import find_label_issues as cl_find  # optional: cleanlab
        from cleanlab.rank import get_label_quality_scores  # optional: cleanlab
    except ImportError as e:
        raise LabelCheckError(
            "the label check needs cleanlab: pip install 'convnets[doctor]' (or pip install cleanlab)"
        ) from e

    start = time.perf_counter()
    class_names = sorted(set(labels))
    if len(class_names) < 2:
        raise LabelCheckError("a label check needs at least two classes")
    index = {name: i for i, name in enumerate(class_names)}
    y = np.array([index[name] for name in labels], dtype=np.int64)
    folds = _folds(y)
    if weights is not None:
        features, described = backbone_features(list(paths or []), str(weights), model_name, normalize)
        method = f"features of {described} + logistic regression, {folds}-fold"
        probs = linear_probs(features, y, folds, seed)
    else:
        method = f"tiny CNN on 32x32 thumbnails, {folds}-fold"
        probs = tiny_cnn_probs(rgb, y, len(class_names), folds, seed)
    probs = np.clip(probs, 1e-6, 1)
    probs /= probs.sum(axis=1, keepdims=True)
    ranked = cl_find(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, probs)
    return LabelResult(
        method,
        class_names,
        probs,
        y,
        [int(i) for i in ranked],
        quality,
        folds,
        float((probs.argmax(1) == y).mean()),
        time.perf_counter() - start,
    )
