"""``convnets experiment {depth,gradients,identity}``: the ResNet case study, run on your machine."""

from __future__ import annotations

import argparse

from ..train.recipes import RECIPES
from . import CLIError, error_text, positive_int

EXAMPLES = """examples:
  convnets experiment depth digits --out exp/depth                 # plain vs residual, depths 8,20,32,56
  convnets experiment depth cifar10/train --recipe he2015 --epochs 30 --out exp/fig6   # 20 and 56
  convnets experiment depth cifar10/train --recipe he2015 --epochs 30 --out exp/fig6 --resume
  convnets experiment depth cifar10 --depths 20,56 --epochs 30 --device cuda --out exp/depth-cifar
  convnets experiment gradients digits --models plain56,resnet56 --steps 50 --out exp/gradients
  convnets experiment identity --data digits --out exp/identity
"""

IMAGE_SIZE_HELP = "input side (default: the data's native size, 8 for digits, else 32)"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated model names")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "experiment",
        help="the ResNet case study: plain vs residual depth, vanishing gradients, identity learning",
        description="Run the experiments behind the ResNet case study and write figures, JSON and a "
        "Markdown table into --out.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    d = sub.add_parser(
        "depth",
        help="plain vs residual networks of the same depths, trained side by side (He et al. Fig. 6)",
        description="Train plainD and resnetD (CIFAR ResNets, depth D = 6n+2) under one budget; write "
        "depth.png (error curves, one panel per family), depth.md and depth.json (final training and "
        "validation error by depth, and whether the degradation result reproduced), and each run folder "
        "under OUT/runs/.",
    )
    d.add_argument("data", metavar="DATA", help="folder with one sub-folder per class, or a built-in name")
    d.add_argument(
        "--depths", type=_int_list, help="comma-separated 6n+2 depths (default 20,56; 8,20,32,56 for digits)"
    )
    d.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="train every network with a named recipe (he2015: the paper's CIFAR-10 recipe, "
        "milestones scaled to --epochs); options given explicitly win",
    )
    d.add_argument(
        "--epochs", type=int, help="epochs per network, the budget (default: the recipe's, else 10)"
    )
    d.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    d.add_argument("--in-chans", type=int, choices=(1, 3), help="default 1 for greyscale built-ins, else 3")
    d.add_argument("--batch-size", type=positive_int, help="(default: the recipe's, else 64)")
    d.add_argument("--lr", type=float, help="SGD learning rate (default: the recipe's, else 0.1, cosine)")
    d.add_argument("--weight-decay", type=float, help="(default: the recipe's, else 1e-4 as in the paper)")
    d.add_argument("--val-split", type=float, help="fraction held out for validation (default 0.2)")
    d.add_argument("--augment", help="training augmentation preset/ops (default none)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", help="auto|cpu|cuda|mps (default auto)")
    d.add_argument("--data-root", help="where built-in datasets are stored/downloaded")
    d.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    d.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment in --out: finished models are kept, an interrupted one "
        "continues from its last.pt",
    )
    d.add_argument("--overwrite", action="store_true", help="start again over an experiment in --out")
    d.add_argument("--out", "-o", required=True, metavar="DIR")
    d.set_defaults(func=_run_depth)

    g = sub.add_parser(
        "gradients",
        help="per-layer gradient norms over the first steps, plain vs residual",
        description="Record ||dL/dW|| of every conv/linear weight for each of the first --steps SGD steps; "
        "write gradients.png (layer index vs gradient norm, log scale, one panel per model), gradients.json "
        "(one value per layer per step) and gradients.md.",
    )
    g.add_argument("data", metavar="DATA", help="folder with one sub-folder per class, or a built-in name")
    g.add_argument(
        "--models",
        type=_name_list,
        default=["plain56", "resnet56"],
        help="comma-separated names: registered, or plainN/resnetN with N = 6n+2 (default plain56,resnet56)",
    )
    g.add_argument("--steps", type=int, default=50, help="training steps to record (default 50)")
    g.add_argument("--batch-size", type=positive_int, default=128, help="(default 128)")
    g.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, momentum 0.9 (default 0.1)")
    g.add_argument("--plot-steps", type=_int_list, help="steps drawn in the figure (default 1,10,STEPS)")
    g.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    g.add_argument("--in-chans", type=int, choices=(1, 3), help="default 1 for greyscale built-ins, else 3")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="cpu|cuda|mps (default cpu)")
    g.add_argument("--data-root", help="where built-in datasets are stored/downloaded")
    g.add_argument("--out", "-o", required=True, metavar="DIR")
    g.set_defaults(func=_run_gradients)

    i = sub.add_parser(
        "identity",
        help="insert a residual block into a trained net: it learns the identity under L2",
        description="Train a shallow network briefly, insert a residual block (and, for contrast, a plain "
        "one) before its head, train on with strong weight decay on the block; report how close the block "
        "is to the identity and the training accuracy before and after (identity.md / identity.json).",
    )
    i.add_argument("--data", default="digits", help="folder or built-in name (default digits)")
    i.add_argument("--base", default="plain8", help="network to insert into (default plain8)")
    i.add_argument("--epochs", type=int, default=4, help="epochs training the base (default 4)")
    i.add_argument("--extra-epochs", type=int, default=4, help="epochs after insertion (default 4)")
    i.add_argument(
        "--block-weight-decay", type=float, default=1.0, help="L2 on the inserted block (default 1.0)"
    )
    i.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    i.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    i.add_argument("--in-chans", type=int, choices=(1, 3), help="default 1 for greyscale built-ins, else 3")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--data-root", help="where built-in datasets are stored/downloaded")
    i.add_argument("--out", "-o", required=True, metavar="DIR")
    i.set_defaults(func=_run_identity)
    return p


def _positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")


def _run_depth(args) -> int:
    import shlex
    import sys

    from ..studies.experiments import depth_experiment
    from ..train import TrainConfigError, TrainingInterrupted

    _positive(args, "epochs", "batch_size", "image_size")
    extra = {
        k: getattr(args, k)
        for k in ("val_split", "augment", "device", "data_root")
        if getattr(args, k) is not None
    }
    try:
        result = depth_experiment(
            args.data,
            out=args.out,
            depths=args.depths,
            epochs=args.epochs,
            image_size=args.image_size,
            in_chans=args.in_chans,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            recipe=args.recipe,
            seed=args.seed,
            quiet=args.quiet,
            resume=args.resume,
            overwrite=args.overwrite,
            **extra,
        )
    except (TrainConfigError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    except TrainingInterrupted as e:
        again = shlex.join(["convnets", "experiment", "depth", str(args.data), "--out", str(args.out)])
        print(
            f"\n{e}\nresume the whole experiment (its settings are saved in --out) with:\n  {again} --resume",
            file=sys.stderr,
        )
        return e.exit_code
    for line in result.verdict["sentences"]:
        print(line)
    print(f"wrote {args.out}/depth.png, depth.md, depth.json and runs/")
    return 0


def _run_gradients(args) -> int:
    from ..studies.experiments import gradient_experiment

    _positive(args, "steps", "batch_size", "image_size")
    try:
        gradient_experiment(
            args.data,
            out=args.out,
            models=args.models,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            plot_steps=args.plot_steps,
            image_size=args.image_size,
            in_chans=args.in_chans,
            seed=args.seed,
            device=args.device,
            data_root=args.data_root,
        )
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(error_text(e)) from None
    print(f"wrote {args.out}/gradients.png, gradients.json, gradients.md")
    return 0


def _run_identity(args) -> int:
    from ..studies.experiments import identity_experiment

    _positive(args, "epochs", "extra_epochs", "image_size")
    try:
        identity_experiment(
            args.data,
            out=args.out,
            base=args.base,
            epochs=args.epochs,
            extra_epochs=args.extra_epochs,
            block_weight_decay=args.block_weight_decay,
            lr=args.lr,
            image_size=args.image_size,
            in_chans=args.in_chans,
            seed=args.seed,
            data_root=args.data_root,
        )
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(error_text(e)) from None
    print(f"wrote {args.out}/identity.md, identity.json")
    return 0
