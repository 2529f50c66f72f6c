"""Checkpoint loading: torchvision files, safetensors, run folders, ``"imagenet"`` and timm tags.

Loading never executes code (``files``), a checkpoint is matched to a model by key and shape, with a
new head or other input channels adapted on purpose and reported (``matching``), and every loaded
model carries ``model.pretrained_cfg`` (``mean``, ``std``, ``input_size``, ``source``): the
normalisation the weights expect, which the data and training layers read (``normalization``).

One module per job:

* ``files`` -- read a checkpoint file safely, write one atomically (``load_weights_file``,
  ``save_state_dict``);
* ``matching`` -- fit a state dict to a model (``load_state_dict_into``, ``adapt_input_conv``) and
  find the builder options whose layout fits it;
* ``imagenet`` -- torchvision's ImageNet weights, from the hub cache or downloaded;
* ``normalization`` -- the mean/std a loaded model is fed;
* ``runs`` -- rebuild a trained model from its run folder, or start a new one from it;
* ``pretrained`` -- build a model around any of these checkpoints (``create_model(weights=...)``);
* ``api`` -- the entry points that take a model name: ``create_pretrained``, ``load_run``,
  ``imagenet_weights_url``.

Why no import loop: building a model around a checkpoint needs the model registry (to build the
architecture, several times on the meta device to find the layout that fits), and the registry's
``create_model(name, weights=...)`` needs the loading. So every module but ``api`` is registry-free:
``models.registry`` hands its own ``create_model`` (without weights) and ``get_model_cfg`` to
:func:`pretrained.build_pretrained`, and only ``api`` imports ``convnets.models``. The errors
(``WeightsError``, ``CheckpointMismatchError``) live in ``base.errors`` so ``models.external`` raises
them too. The exports below are lazy so that importing one registry-free module (as
``models.registry`` does) does not run ``api``.
"""

from __future__ import annotations

from ..base.lazy import lazy_exports

_EXPORTS = {
    "CheckpointMismatchError": "matching",  # defined in base.errors
    "NORMALIZATIONS": "normalization",
    "RunLoadError": "runs",
    "WeightsError": "files",  # defined in base.errors
    "adapt_input_conv": "matching",
    "create_pretrained": "api",
    "fetch_imagenet_weights": "imagenet",
    "imagenet_weights_url": "api",
    "load_run": "api",
    "load_state_dict_into": "matching",
    "load_weights_file": "files",
    "save_state_dict": "files",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
