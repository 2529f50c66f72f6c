# ruff: noqa: E501 - long Markdown prose lines in the generated report
"""Keras 3 / TensorFlow peer for the frozen-base transfer comparison.

The way the Keras transfer-learning guide does it: ``keras.applications.MobileNetV2(include_top=False)``,
``base.trainable = False``, a new pooling -> dropout -> Dense head, ``compile`` + ``fit``. Every epoch
runs the images through the frozen base again (Keras has no feature cache), which is what convnets'
cached-feature head phase avoids. Runs in its own process (bench/common.py); one repetition = one
epoch of ``fit`` after a first, warm-up epoch (graph tracing).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

N_IMAGES, SIZE, EPOCHS, NUM_CLASSES, BATCH = 1000, 160, 10, 2, 32


class KerasTransferPeer:
    def __init__(self, spec: dict) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras

        n, s = spec.get("images", N_IMAGES), spec.get("size", SIZE)
        rng = np.random.default_rng(0)
        self.x = rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32)
        self.y = rng.integers(0, NUM_CLASSES, (n,))
        base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(s, s, 3))
        base.trainable = False
        inputs = keras.Input((s, s, 3))
        x = base(inputs, training=False)  # BN in inference mode, as the guide says
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(NUM_CLASSES)(x)
        self.model = keras.Model(inputs, outputs)
        self.model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.meta = {"keras": keras.__version__, "images": n, "size": s}

    def _epoch(self) -> float:
        t0 = time.perf_counter()
        self.model.fit(self.x, self.y, batch_size=BATCH, epochs=1, verbose=0)
        return time.perf_counter() - t0

    def warmup(self) -> None:
        self.meta["first_epoch_s"] = self._epoch()

    def rep(self) -> dict:
        return {"seconds": self._epoch(), "items": len(self.x)}


def make_peer(spec: dict) -> KerasTransferPeer:
    return KerasTransferPeer(spec)


def run_transfer(quick: bool = False, reps: int = 5, log=print) -> dict:
    """Seconds for a 10-epoch frozen-base head phase the Keras way = first epoch + 9 x median epoch."""
    from common import compare, has_module

    if not (has_module("keras") and has_module("tensorflow")):
        return {
            "markdown": "Keras peer skipped: keras/tensorflow not installed (pip install 'convnets[bench]')."
        }
    spec = {"images": 64 if quick else N_IMAGES, "size": 96 if quick else SIZE}
    log(f"  keras frozen-base head phase: {spec['images']} images @{spec['size']}")
    result = compare({"keras": ("keras_peer", spec, None)}, reps, log=log)["keras"]
    if not result.ok:
        return {
            "markdown": f"Keras peer failed: {(result.error or '').strip()[-300:]}",
            "keras": result.to_dict(),
        }
    epoch = result.per_item_ms()  # ms per image; an epoch's seconds = that x images / 1000
    epoch_s = list(result.seconds)
    first = result.meta.get("first_epoch_s", 0.0)
    med = statistics.median(epoch_s)
    total = first + (EPOCHS - 1) * med
    md = (
        f"Keras 3 / TF, `MobileNetV2(include_top=False, weights=None)`, `base.trainable = False`, new "
        f"GAP -> Dropout -> Dense head, `fit` on {spec['images']} images at {spec['size']}x{spec['size']}, "
        f"batch {BATCH}: one epoch {min(epoch_s):.1f}-{max(epoch_s):.1f}s (median {med:.2f}s of {len(epoch_s)}), "
        f"first epoch (graph tracing) {first:.1f}s, so **{EPOCHS} epochs = {total:.1f}s** "
        f"(first + {EPOCHS - 1} x median). {epoch.median:.2f} ms/image through the frozen base."
    )
    return {
        "markdown": md,
        "ten_epoch_s": total,
        "epoch_s": epoch_s,
        "first_epoch_s": first,
        "keras": result.to_dict(),
    }
