"""convnets.accel.inference: BatchNorm folding keeps the outputs, the fast path keeps the model usable."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convnets.accel.inference import count_batchnorm, fold_batchnorm, predict_batch, prepare_for_inference
from convnets.models.registry import create_model


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold cannot go unnoticed
    (fresh BN layers are almost the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


# (name, kwargs, input size): the families whose BN sits in ConvBNAct Sequentials, attribute pairs
# (ResNet conv1/bn1), BasicConv2d (GoogLeNet) and MBConv with squeeze-excitation.
ZOO = [
    ("mobilenet_v2", {"width_mult": 0.35}, 64),
    ("resnet18", {}, 64),
    ("efficientnet_b0", {}, 64),
    ("googlenet", {"aux_logits": False}, 64),
    ("cifar_resnet", {}, 32),
]


@pytest.mark.parametrize("name,kwargs,size", ZOO, ids=[z[0] for z in ZOO])
def test_folded_model_matches_plain_model(name, kwargs, size):
    try:
        model = _randomize_bn(create_model(name, num_classes=10, **kwargs))
    except TypeError:  # a family without that keyword
        model = _randomize_bn(create_model(name, num_classes=10))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    before = count_batchnorm(model)
    fast = prepare_for_inference(model, channels_last=True, jit=False)
    assert count_batchnorm(fast) < before
    assert type(fast) is type(model)  # the ConvNet interface survives
    got = predict_batch(fast, x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    features = fast.forward_features(x)
    assert features.ndim == 4


def test_every_conv_bn_pair_folds_in_resnet_and_mobilenet():
    for model in (
        create_model("resnet18", num_classes=5),
        create_model("mobilenet_v2", num_classes=5, width_mult=0.35),
    ):
        model.eval()
        n = count_batchnorm(model)
        assert fold_batchnorm(model) == n
        assert count_batchnorm(model) == 0


def test_torchvision_model_and_jit_path():
    model = _randomize_bn(torchvision.models.resnet18(num_classes=7))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    scripted = prepare_for_inference(model, example_input=x[:1])  # default: TorchScript, NCHW
    assert isinstance(scripted, torch.jit.ScriptModule)
    torch.testing.assert_close(predict_batch(scripted, x), expected, atol=1e-4, rtol=1e-4)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so only Sequential pairs fold."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.block(x)
        if x.sum() > 0:  # not traceable
            x = x * 2
        return self.bn(self.conv(x) + 1)  # bn does not read the conv's raw output: must not fold


def test_untraceable_model_folds_only_sequential_pairs():
    model = _randomize_bn(_Untraceable())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert fold_batchnorm(model) == 1
    assert isinstance(model.block[1], nn.Identity) and isinstance(model.bn, nn.BatchNorm2d)
    torch.testing.assert_close(predict_batch(model, x), expected, atol=1e-5, rtol=1e-5)


def test_fx_path_skips_conv_whose_output_is_reused():
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    model = _randomize_bn(Reuse())
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    assert fold_batchnorm(model) == 0
    torch.testing.assert_close(model(x), expected)


def test_refuses_train_mode_and_bad_input():
    model = create_model("lenet5", num_classes=10)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        predict_batch(prepare_for_inference(model, jit=False), torch.randn(1, 32, 32))


def test_predict_batch_chunks_and_no_grad():
    model = prepare_for_inference(_randomize_bn(create_model("resnet18", num_classes=4)), jit=False)
    x = torch.randn(5, 3, 32, 32)
    whole = predict_batch(model, x)
    chunked = predict_batch(model, x, batch_size=2)
    torch.testing.assert_close(chunked, whole)
    assert not whole.requires_grad and whole.shape == (5, 4)


def test_untraceable_model_falls_back_to_eager_unless_jit_is_forced():
    model = _randomize_bn(_Untraceable())
    with pytest.warns(UserWarning, match="TorchScript"):
        fast = prepare_for_inference(model, example_input=torch.randn(1, 3, 8, 8), jit=None)
    assert isinstance(fast, _Untraceable) and fast._convnets_channels_last
    with pytest.raises(Exception):  # noqa: B017 - whatever TorchScript raises, jit=True must not hide it
        prepare_for_inference(_Untraceable(), example_input=torch.randn(1, 3, 8, 8), jit=True)


class _StatefulForward(nn.Module):
    """Python-side state the tracer silently bakes in as a constant: the trace disagrees with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * self.calls


def test_a_trace_that_disagrees_with_the_model_falls_back_to_eager():
    with pytest.warns(UserWarning, match="TorchScript"):
        fast = prepare_for_inference(_StatefulForward(), example_input=torch.randn(1, 3, 8, 8), fold_bn=False)
    assert isinstance(fast, _StatefulForward)


# --- inference_module: the backend predict/evaluate run on ----------------------------------------


def _small_resnet() -> nn.Module:
    return _randomize_bn(create_model("resnet18", num_classes=4))


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "eager"])
def test_every_backend_matches_the_eager_model_and_leaves_it_untouched(backend):
    pytest.importorskip("onnxruntime")
    from convnets.accel.inference import backend_of, inference_module

    model = _small_resnet()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    runner = inference_module(model, example_input=x[:1], backend=backend)
    assert backend_of(runner) == backend
    torch.testing.assert_close(predict_batch(runner, x), expected, atol=1e-4, rtol=1e-4)
    assert count_batchnorm(model) == 20  # folding happened on a copy, not on the caller's model


def test_auto_prefers_onnxruntime_and_falls_back_to_torchscript(monkeypatch):
    import importlib.util
    import sys

    from convnets.accel.inference import backend_of, inference_module

    model, x = _small_resnet(), torch.randn(1, 3, 32, 32)
    if importlib.util.find_spec("onnxruntime") is not None:
        assert backend_of(inference_module(model, x, backend="auto")) == "onnxruntime"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises
    assert backend_of(inference_module(model, x, backend="auto")) == "torchscript"
    with pytest.raises(ImportError, match=r"convnets\[export\]"):
        inference_module(model, x, backend="onnxruntime")


def test_a_session_that_disagrees_with_the_model_is_refused(monkeypatch):
    pytest.importorskip("onnxruntime")
    from convnets.accel.inference import OnnxRuntimeModule, backend_of, inference_module

    model, x = _small_resnet(), torch.randn(1, 3, 32, 32)
    monkeypatch.setattr(OnnxRuntimeModule, "__init__", _init_with_atol(OnnxRuntimeModule.__init__, -1.0))
    with pytest.raises(RuntimeError, match="differs from the model"):
        inference_module(model, x, backend="onnxruntime")
    with pytest.warns(UserWarning, match="using TorchScript"):
        assert backend_of(inference_module(model, x, backend="auto")) == "torchscript"


def _init_with_atol(init, atol):
    def patched(self, model, **kwargs):
        init(self, model, **{**kwargs, "atol": atol})

    return patched


def test_onnxruntime_module_takes_any_batch_and_a_new_image_size():
    pytest.importorskip("onnxruntime")
    from convnets.accel.inference import OnnxRuntimeModule

    model = _small_resnet()
    runner = OnnxRuntimeModule(model)
    for shape in [(1, 3, 32, 32), (5, 3, 32, 32), (2, 3, 48, 40)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(predict_batch(runner, x), model(x), atol=1e-4, rtol=1e-4)
    assert len(runner._sessions) == 2  # one export per (C, H, W)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        runner(torch.randn(3, 32, 32))


def test_cli_backend_choices_are_the_librarys():
    from convnets.accel.inference import BACKENDS
    from convnets.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "run", "img.png", "--backend", "eager"])
    assert args.backend == "eager"
    from convnets.base.choices import BACKEND_CHOICES, TORCH_PATH_CHOICES

    def choices(command: str) -> tuple[str, ...]:
        sub = parser._subparsers._group_actions[0].choices[command]
        return tuple(next(a for a in sub._actions if a.dest == "backend").choices)

    assert choices("evaluate") == TORCH_PATH_CHOICES == BACKENDS
    # predict also runs the exported model on OpenVINO / int8 (convnets.deploy.engines)
    assert choices("predict") == BACKEND_CHOICES and set(BACKENDS) <= set(BACKEND_CHOICES)
    with pytest.raises(ValueError, match="unknown inference backend"):
        from convnets.accel.inference import inference_module

        inference_module(_small_resnet(), backend="tensorrt")
