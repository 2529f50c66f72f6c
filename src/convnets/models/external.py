"""Any timm or torchvision classifier as a zoo model: ``timm/NAME`` and ``torchvision/NAME``.

The case-study families are written here; everything else (ConvNeXt, RegNet, EfficientNetV2, ResNets
trained with modern recipes...) comes from the libraries that maintain them. :class:`ExternalConvNet`
wraps such a network in the :class:`~convnets.models.base.ConvNet` contract, so freezing, the new
head, cached features, ``--fine-tune-last N``, export and serving work on it unchanged:

- ``body``: the library's network without its classifier. For timm that is the model built with
  ``num_classes=0`` (its own ``forward_features``/``forward_head(pre_logits=True)`` give the feature
  map and the pooled vector). For torchvision the last ``nn.Linear`` is replaced by ``nn.Identity``, so
  ``body(x)`` is exactly the vector that entered it (pooling, norm and any MLP before it included);
  ``forward_features`` returns it as a 1x1 map, because torchvision models have no common split
  between the trunk and the pooling. The last spatial map (what Grad-CAM reads) is the output of
  ``feature_map_module()``: found once by running the network and watching its modules' outputs.
- ``classifier``: an ``nn.Linear`` (``get_classifier``), after ``head_drop``.
- ``stages()``: timm's own parameter groups (``group_matcher``: stem, each stage, the head's norm merged
  into the last stage); for torchvision, the top-level children holding parameters (descending into a
  lone ``features`` container), with the layers between the trunk and the classifier joined to the last.

State-dict keys are ``body.<library key>`` and ``classifier.*``; :meth:`ExternalConvNet.adapt_state_dict`
maps a file in the library's own layout (a timm ``model.safetensors`` from the Hugging Face hub, a
torchvision ``.pth``) onto them, so both load with ``--weights FILE``.

timm is optional (``pip install convnets[timm]``) and imported only when a ``timm/`` name is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import WeightsError
from .base import ConvNet, ModelCfg

PREFIXES = ("timm/", "torchvision/")
BODY, CLASSIFIER = "body.", "classifier."
# torchvision builder options the wrapper sets: one plain logits output (no side classifiers),
# and an explicit init (GoogLeNet warns otherwise).
_NO_LINEAR_HEAD = {"squeezenet1_0", "squeezenet1_1"}  # convolutional classifiers: no Linear to replace
_TV_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False}}


def is_external(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIXES)


def _split(name: str) -> tuple[str, str]:
    library, _, arch = name.partition("/")
    if not arch:
        raise KeyError(f"model {name!r}: give the architecture after the slash, e.g. {library}/resnet50")
    return library, arch


def _timm():
    try:
        import timm  # optional: timm
    except ImportError as e:
        raise ImportError(
            "timm/ models need the timm library: pip install 'convnets[timm]' (or pip install timm)"
        ) from e
    return timm


# --- names and configs ------------------------------------------------------------------------------


def list_external(pattern: str | None = None) -> list[str]:
    """``torchvision/NAME`` for every torchvision classification model, and ``timm/NAME`` for every timm
    architecture when timm is installed; ``pattern`` is a glob on the full name."""

    import torchvision.models  # start-up: torchvision on first use

    names = [
        f"torchvision/{n}"
        for n in torchvision.models.list_models(module=torchvision.models)
        if n not in _NO_LINEAR_HEAD
    ]
    try:
        names += [f"timm/{n}" for n in _timm().list_models()]
    except ImportError:
        pass
    return sorted(n for n in names if pattern is None or fnmatch.fnmatch(n, pattern))


def _torchvision_weights(arch: str):
    """torchvision's default weights entry for ``arch``, or None when it ships none."""
    from torchvision.models import get_model_weights  # start-up: torchvision on first use

    try:
        return get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def external_cfg(name: str) -> ModelCfg:
    """Input size, normalisation and minimum size from the weights' own config (timm's pretrained
    config for the name's tag, torchvision's default weights' transforms and metadata)."""
    library, arch = _split(name)
    if library == "timm":
        timm = _timm()
        if not timm.models.is_model(arch):
            raise KeyError(_unknown(name, "timm", timm.list_models()))
        pc = timm.models.get_pretrained_cfg(arch)
        if pc is None:
            return ModelCfg(extra={"library": "timm"})
        min_size = pc.min_input_size[1] if pc.min_input_size else 32
        if pc.fixed_input_size:
            min_size = pc.input_size[1]
        return ModelCfg(
            input_size=tuple(pc.input_size),
            mean=tuple(pc.mean),
            std=tuple(pc.std),
            min_size=min_size,
            extra={"library": "timm", "hf_hub_id": pc.hf_hub_id, "url": pc.url, "tag": pc.tag},
        )
    import torchvision.models  # start-up: torchvision on first use

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(
            _unknown(name, "torchvision", torchvision.models.list_models(module=torchvision.models))
        )
    entry = _torchvision_weights(arch)
    if entry is None:
        return ModelCfg(extra={"library": "torchvision"})
    pre = entry.transforms()
    size = pre.crop_size[0]
    min_size = entry.meta.get("min_size", (32, 32))[0]
    top1 = entry.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return ModelCfg(
        input_size=(3, size, size),
        mean=tuple(pre.mean),
        std=tuple(pre.std),
        min_size=min_size,
        torchvision=arch,  # weights.fetch_imagenet_weights downloads this entry for --weights imagenet
        imagenet_top1=top1,
        extra={"library": "torchvision"},
    )


def _unknown(name: str, library: str, names: list[str]) -> str:

    close = difflib.get_close_matches(name.partition("/")[2], names, n=3)
    hint = f" Did you mean {', '.join(f'{library}/{c}' for c in close)}?" if close else ""
    return f"unknown model {name!r}: {library} has no such classifier.{hint} See `convnets models --all`."


# --- the adapter ----------------------------------------------------------------------------------


class ExternalConvNet(ConvNet):
    """A timm or torchvision network in the ConvNet contract (see the module docstring)."""

    def __init__(
        self,
        library: str,
        body: nn.Module,
        num_features: int,
        num_classes: int,
        source_classifier: str,
        default_cfg: ModelCfg,
        neck: list[str] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.library = library
        self.body = body
        self.num_features = num_features
        self.head_drop = nn.Identity()
        self.classifier = nn.Linear(num_features, num_classes, bias=bias)  # MaxViT's has no bias
        self.default_cfg = default_cfg
        self._source_classifier = source_classifier  # the classifier's key prefix in the library's layout
        self._neck = neck or []  # torchvision: modules between the trunk and the classifier
        self._feature_map: str | None = None  # torchvision: body's module giving the last spatial map

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "timm":
            return self.body.forward_features(x)
        return self.body(x)[:, :, None, None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.library == "timm":
            x = self.body.forward_head(x, pre_logits=True)
        else:
            x = x.flatten(1)
        return x if pre_logits else self.classifier(self.head_drop(x))

    def feature_map_module(self) -> nn.Module | None:
        if self.library == "timm":
            return None  # timm's forward_features is the last feature map, before its pooling
        if self._feature_map is None:
            self._feature_map = _last_spatial_module(self.body, self.default_cfg.min_size)
        return self.body.get_submodule(self._feature_map)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def reset_classifier(self, num_classes: int, dropout: float = 0.2) -> None:
        self.head_drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(self.num_features, num_classes)

    def stages(self) -> list[nn.Module]:
        return self._timm_stages() if self.library == "timm" else self._torchvision_stages()

    def _timm_stages(self) -> list[nn.Module]:
        from timm.models import group_parameters  # optional: timm

        groups = group_parameters(self.body, self.body.group_matcher(coarse=True))
        params = dict(self.body.named_parameters())
        ordered = [[params[n] for n in names] for _, names in sorted(groups.items())]
        # The groups after the one holding the last feature stage are the head's own layers
        # (ConvNeXt's head norm, a ViT's final norm): they belong to the last stage.
        last_stage = self.body.feature_info[-1]["module"] + "."
        last = max(
            (
                i
                for i, (_, names) in enumerate(sorted(groups.items()))
                if any(n.startswith(last_stage) for n in names)
            ),
            default=len(ordered) - 1,
        )
        ordered = ordered[:last] + [sum(ordered[last:], [])]
        return [nn.ParameterList(g) for g in ordered if g]

    def _torchvision_stages(self) -> list[nn.Module]:
        def with_params(module: nn.Module) -> list[nn.Module]:
            return [m for m in module.children() if _has_params(m)]

        head_top = self._neck[0].split(".")[0] if self._neck else None
        stages = [m for n, m in self.body.named_children() if n != head_top and _has_params(m)]
        # Descend into the biggest container while there are fewer than MIN_STAGES groups (a lone
        # ``features``, a ViT's ``encoder.layers``): its children are the stages.
        while len(stages) < MIN_STAGES:
            big = max(range(len(stages)), key=lambda i: sum(p.numel() for p in stages[i].parameters()))
            inner = with_params(stages[big])
            if len(inner) < 2:
                break
            stages[big : big + 1] = inner
        # A trailing normalisation layer (a ViT's final LayerNorm) and the layers between the trunk and
        # the classifier belong with the last stage.
        while len(stages) > 1 and not with_params(stages[-1]) and _is_norm(stages[-1]):
            stages[-2:] = [nn.ModuleList(stages[-2:])]
        extra = [self.body.get_submodule(n) for n in self._neck]
        extra = [m for m in extra if _has_params(m)]
        if extra and stages:
            stages[-1] = nn.ModuleList([stages[-1], *extra])
        return stages

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # A plain dict has no per-module version metadata, which some torchvision modules need
        # (MNASNet refuses to load without it): use the versions of the modules as built.
        if getattr(state_dict, "_metadata", None) is None:
            metadata = self.state_dict()._metadata  # type: ignore[attr-defined]
            state_dict = OrderedDict(state_dict)
            state_dict._metadata = metadata  # type: ignore[attr-defined]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint in the library's own key layout -> this wrapper's (``body.``, ``classifier.``);
        a checkpoint already in the wrapper's layout (a run folder) is returned as it is."""
        if any(k.startswith(BODY) for k in state):
            return state
        own = set(self.state_dict())
        head = self._source_classifier + "."
        out = {}
        for k, v in state.items():
            key = CLASSIFIER + k[len(head) :] if k.startswith(head) else BODY + k
            # Side classifiers (GoogLeNet/Inception aux heads) are not built: drop their tensors.
            if key in own or key.startswith(CLASSIFIER) or not _is_aux(k):
                out[key] = v
        return out


MIN_STAGES = 4  # fewer top-level groups than this: descend into the biggest one


def _last_spatial_module(body: nn.Module, min_size: int) -> str:
    """The name of ``body``'s module whose output is the last spatial feature map: run one small
    batch and take the last module, in the order they ran, whose output is a 4-D tensor, before the
    last adaptive pooling module (torchvision's global pooling, VGG's 7x7 one; the squeeze-excitation
    blocks' pools run earlier). Networks that pool functionally (DenseNet, ShuffleNet, MNASNet) have
    no such module: the last 4-D output then. A container that ends with that module runs after it,
    with the same output, and is taken."""
    first_conv = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    size = max(min_size, 64)  # big enough for every torchvision stride, small enough to be quick
    w = first_conv.weight
    x = torch.zeros(1, first_conv.in_channels, size, size, device=w.device, dtype=w.dtype)
    ran: list[tuple[str, nn.Module, object]] = []
    handles = [
        m.register_forward_hook(lambda m, i, o, name=name: ran.append((name, m, o)))
        for name, m in body.named_modules()
        if name
    ]
    modes = [(m, m.training) for m in body.modules()]  # e.g. a frozen base's BN kept in eval mode
    try:
        with torch.no_grad():
            body.eval()(x)
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    last_pool = max((i for i, (_, m, _) in enumerate(ran) if isinstance(m, pools)), default=len(ran))
    spatial = [name for name, _, out in ran[:last_pool] if isinstance(out, torch.Tensor) and out.ndim == 4]
    if not spatial:
        raise ValueError(f"{type(body).__name__} has no module with a 4-D (N, C, h, w) output")
    return spatial[-1]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))


def _is_aux(key: str) -> bool:
    return key.startswith(("aux1.", "aux2.", "AuxLogits."))


def create_external(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ExternalConvNet:
    """Build ``timm/NAME`` or ``torchvision/NAME`` with random weights (``--weights`` loads them)."""
    library, arch = _split(name)
    cfg = external_cfg(name)
    if library == "timm":
        body = _timm().create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
        classifier = body.pretrained_cfg.get("classifier") or "head"
        if isinstance(classifier, (tuple, list)):
            classifier = classifier[0]
        model = ExternalConvNet("timm", body, body.num_features, num_classes, classifier, cfg)
    else:
        model = _torchvision_model(name, arch, num_classes, in_chans, cfg, kwargs)
    model.model_name = name
    return model


def _torchvision_model(name: str, arch: str, num_classes: int, in_chans: int, cfg: ModelCfg, kwargs: dict):
    import torchvision.models  # start-up: torchvision on first use

    body = torchvision.models.get_model(arch, weights=None, **{**_TV_KWARGS.get(arch, {}), **kwargs})
    linears = [(n, m) for n, m in body.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{name}: its classifier is not a Linear layer (a convolution, as in SqueezeNet), so a new "
            "head cannot be put on it; pick another torchvision model or a timm one"
        )
    head_name, head = linears[-1]
    parent_name, _, attr = head_name.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    setattr(parent, attr, nn.Identity())
    # Layers between the trunk and the classifier: the rest of the classifier's top-level container
    # (MobileNetV3's 960->1280 Linear, ConvNeXt's LayerNorm): fine-tuned with the last stage.
    top = head_name.split(".")[0]
    neck = [f"{top}.{n}" for n, _ in body.get_submodule(top).named_children()] if parent_name else []
    if in_chans != 3:
        _replace_first_conv(body, in_chans)
    return ExternalConvNet(
        "torchvision",
        body,
        head.in_features,
        num_classes,
        head_name,
        cfg,
        neck=neck,
        bias=head.bias is not None,
    )


def _replace_first_conv(body: nn.Module, in_chans: int) -> None:
    name, conv = next((n, m) for n, m in body.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups if conv.groups == 1 else in_chans,
        conv.bias is not None,
    )
    parent_name, _, attr = name.rpartition(".")
    setattr(body.get_submodule(parent_name) if parent_name else body, attr, new)


# --- pretrained weights (timm: the Hugging Face hub) -----------------------------------------------


def fetch_timm_weights(name: str, tag: str | None = None) -> tuple[Path, ModelCfg, str]:
    """The local ``model.safetensors`` of timm's pretrained weights for ``name`` (the name's own tag, or
    ``tag``): from the Hugging Face hub cache, else downloaded into it. Offline this fails at once with
    a message naming the file to pass with ``--weights FILE``."""
    _, arch = _split(name)
    if tag and tag.lower() != "imagenet":
        arch = f"{arch.split('.')[0]}.{tag}"
    cfg = external_cfg(f"timm/{arch}")
    hub_id = cfg.extra.get("hf_hub_id")
    if not hub_id:
        url = cfg.extra.get("url") or "its release page"
        raise WeightsError(
            f"timm/{arch} has no Hugging Face hub weights; download them from {url} and pass --weights FILE"
        )
    from huggingface_hub import hf_hub_download  # optional: huggingface_hub

    url = f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
    try:
        path = hf_hub_download(hub_id, "model.safetensors")
    except Exception as e:  # noqa: BLE001 - offline, no such file, hub errors: all mean "no file here"
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise WeightsError(
            f"could not get timm/{arch}'s weights from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e}). Without network, fetch {url} on another "
            f"machine and pass it with --weights FILE (or place the hub cache in {cache})"
        ) from e
    return Path(path), cfg, f"timm/{arch} ({hub_id})"
