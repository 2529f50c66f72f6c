"""Grad-CAM cost: Captum's LayerGradCam (what `convnets explain` uses) against a hand-written
Grad-CAM with two hooks, same model, same batch, interleaved repetitions; and the Grad-CAM pass
against a plain forward pass (what one explanation costs over one prediction).

    .venv/bin/python bench/explain.py [--reps 7] [--models resnet18,mobilenet_v2] [--size 224] [--batch 8]

Prints a Markdown table (medians over the repetitions, ratios of medians).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def hand_grad_cam(model, layer, x, target):
    """Grad-CAM written out: forward hook keeps the activation, gradient of the class score."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        with torch.enable_grad():
            logits = model(x.requires_grad_(True))
            score = logits.gather(1, torch.as_tensor(target).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    cam = (grad.mean((2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True).clamp_min(0)
    return torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _captum_predicted(model, captum, x):
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    return captum.attribute(x.clone().requires_grad_(True), target=target)


def main() -> None:
    from convnets import create_model
    from convnets.trust.explain import grad_cam, target_layer

    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    print(
        "| model | batch | forward ms | hand-written Grad-CAM ms | Captum LayerGradCam ms | "
        "Captum, predicted class ms | convnets grad_cam (predicted class) ms | "
        "Captum predicted / convnets |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = create_model(name, num_classes=10).eval()
        x = torch.rand(args.batch, 3, args.size, args.size)
        target = [0] * args.batch
        layer = target_layer(model)
        from captum.attr import LayerGradCam

        captum = LayerGradCam(model, layer)
        runs = {
            "forward": lambda m=model, x=x: m(x),
            "hand": lambda m=model, lay=layer, x=x, t=target: hand_grad_cam(m, lay, x.clone(), t),
            "captum": lambda c=captum, x=x, t=target: c.attribute(x.clone().requires_grad_(True), target=t),
            # "Explain the prediction" with Captum: a forward to learn the class, then LayerGradCam.
            "captum_pred": lambda m=model, c=captum, x=x: _captum_predicted(m, c, x),
            "convnets": lambda m=model, x=x: grad_cam(m, x),  # one forward, the class from it
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up
            with torch.no_grad() if fn is runs["forward"] else torch.enable_grad():
                fn()
        for _ in range(args.reps):
            for key, fn in runs.items():  # interleaved: the machine's load hits all three alike
                t = time.perf_counter()
                if key == "forward":
                    with torch.no_grad():
                        fn()
                else:
                    fn()
                times[key].append((time.perf_counter() - t) * 1000)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"| {name} | {args.batch} | {med['forward']:.0f} | {med['hand']:.0f} | {med['captum']:.0f} | "
            f"{med['captum_pred']:.0f} | {med['convnets']:.0f} | {med['captum_pred'] / med['convnets']:.2f} |"
        )


if __name__ == "__main__":
    main()
