"""The ResNet case study as experiments you can run: why residual connections matter.

* :func:`depth_experiment` -- He et al. 2016, Fig. 1 / Fig. 6: plain and residual CIFAR networks of
  the same depths, widths and training budget, trained side by side with the project's trainer. The
  claim: the deeper *plain* network ends with the *higher* training error (degradation), while the
  deeper *residual* network does not (in the paper: ends lower).
* :func:`gradient_experiment` -- the norm of each layer's weight gradient, input side to output side,
  over the first training steps of a deep plain network and its residual twin.
* :func:`identity_experiment` -- why adding a residual block cannot hurt much: insert one into a
  trained network, train it with strong L2 on the block, and measure how close the block comes to the
  identity and whether training accuracy suffers (against a plain block inserted the same way).

Each writes its figure(s), a JSON file with every number, and a Markdown table into ``out``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base.atomic import atomic_write_json, atomic_write_text
from ..base.plots import pyplot, save_figure
from ..base.runs import RunConfig
from ..blocks import BasicBlock
from ..cost import model_cost
from ..models import create_model, list_models
from ..models.cifar_resnet import STANDARD_DEPTHS, _num_blocks, cifar_resnet
from ..train.options import (
    BUILTIN_NATIVE_SIZE,
    RESUME_OVERRIDABLE,  # device, workers, data_root may change
)
from ..train.recipes import apply_recipe

__all__ = [
    "DepthResult",
    "build_cifar_model",
    "depth_experiment",
    "gradient_experiment",
    "identity_experiment",
]

# Built-in datasets whose images are greyscale: one input channel is enough.
_GREY_BUILTINS = {"digits", "mnist", "fashion_mnist", "kmnist"}


# --- shared helpers --------------------------------------------------------------------------------


def build_cifar_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """A registered model, or ``plainN`` / ``resnetN`` for any CIFAR depth ``N = 6n + 2``.

    Registered names win, so ``resnet50`` is the ImageNet ResNet-50, ``resnet56`` the CIFAR one.
    """

    if name in list_models():
        return create_model(name, num_classes=num_classes, in_chans=in_chans)
    match = re.fullmatch(r"(plain|resnet)(\d+)", name)
    if match:
        depth, plain = int(match[2]), match[1] == "plain"
        return cifar_resnet(depth, plain=plain, num_classes=num_classes, in_chans=in_chans)
    raise ValueError(f"unknown model {name!r}: give a registered name or plainN/resnetN with N = 6n+2")


def _builtin(source: str | Path) -> str | None:
    from ..data.builtin import builtin_name  # start-up: PIL on first use

    return None if Path(str(source)).expanduser().exists() else builtin_name(str(source))


def _default_in_chans(source: str | Path) -> int:
    return 1 if _builtin(source) in _GREY_BUILTINS else 3


def _default_image_size(source: str | Path) -> int:
    """The data's native size for built-ins (8 for digits, 32 for CIFAR), else the CIFAR nets' 32."""

    return BUILTIN_NATIVE_SIZE.get(_builtin(source) or "", 32)


def _out_and_data(
    out: str | Path,
    data: str,
    image_size: int,
    in_chans: int,
    seed: int,
    batch_size: int,
    val_split: float | None,
    data_root: str | None,
):
    """The output folder (created) and the data of a short experiment."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = _load(
        data,
        image_size=image_size,
        in_chans=in_chans,
        seed=seed,
        batch_size=batch_size,
        val_split=val_split,
        data_root=data_root,
    )
    return out, splits


def _load(source, *, image_size, in_chans, seed, batch_size, val_split, data_root):
    from ..data import load_data  # start-up: PIL on first use

    return load_data(
        str(source),
        image_size=image_size,
        in_chans=in_chans,
        val_split=val_split,
        seed=seed,
        batch_size=batch_size,
        augment="none",
        normalize="dataset",
        data_root=data_root,
        num_workers=0,
    )


def _save_figure(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


# --- 1. plain vs residual depth (He et al. 2016, Fig. 1 and Fig. 6) -----------------------------------

DEPTH_FAMILIES = ("plain", "resnet")


@dataclass
class DepthResult:
    """What :func:`depth_experiment` returns (and writes to ``depth.json``)."""

    rows: list[dict]  # one per (family, depth): final train/val error, params, seconds, run_dir
    curves: dict[str, dict[str, list]]  # "plain20" -> {"epoch", "train_error", "val_error"}
    verdict: dict[str, Any]
    files: list[Path] = field(default_factory=list)


# Without a recipe, the experiment's own defaults (the paper's optimizer at a small budget).
DEPTH_DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 0.1, "weight_decay": 1e-4, "optimizer": "sgd"}
DEPTH_STATE_FILE = "depth_state.json"  # the finished models' rows and curves, for --resume
# Settings a resumed experiment must share with the interrupted one (depths may grow).
_RESUME_KEYS = (
    "data",
    "image_size",
    "in_chans",
    "seed",
    "recipe",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
)


def default_depths(data: str | Path) -> tuple[int, ...]:
    """The paper's Fig. 6 pair (20 and 56); digits keeps its four small depths (8 is enough there)."""
    return (8, 20, 32, 56) if _builtin(data) == "digits" else (20, 56)


def depth_experiment(
    data: str | Path,
    *,
    out: str | Path,
    depths: Sequence[int] | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    recipe: str | None = None,
    seed: int = 0,
    tolerance: float = 0.005,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **train_options: Any,
) -> DepthResult:
    """Train ``plainD`` and ``resnetD`` for each depth ``D`` (6n+2) under one budget and compare.

    Every network gets the same data split and order (``seed``), optimizer, learning-rate schedule and
    number of epochs; the two families of one depth have the same layers and (option A) the same
    parameter count, so the shortcut is the only difference. ``recipe`` (``he2015``: the paper's
    CIFAR-10 recipe) fills every training option not given; without one, :data:`DEPTH_DEFAULTS`.
    Training error is the trainer's running error during each epoch, as in the paper's curves. Extra
    keyword arguments go to :func:`convnets.train` (``device``, ``augment``, ``val_split``, ...).

    Each model's run folder is ``out/runs/NAME``; ``out/depth_state.json`` records every finished model.
    ``resume=True`` continues an interrupted experiment: finished models are not trained again, an
    interrupted one continues from its ``last.pt``. ``tolerance``: error differences at or below it
    (absolute) count as a tie.
    """
    from ..train import train  # start-up: PIL on first use

    out = Path(out)
    if resume:  # what was not given again comes from the interrupted experiment
        saved = _saved_depth_config(out)
        depths = depths or saved.get("depths")
        epochs, batch_size, lr, weight_decay, optimizer, recipe, image_size, in_chans = (
            saved.get(k) if v is None else v
            for k, v in (
                ("epochs", epochs),
                ("batch_size", batch_size),
                ("lr", lr),
                ("weight_decay", weight_decay),
                ("optimizer", optimizer),
                ("recipe", recipe),
                ("image_size", image_size),
                ("in_chans", in_chans),
            )
        )
    depths = sorted({int(d) for d in (depths or default_depths(data))})
    if len(depths) < 2:
        raise ValueError(f"depths: need at least two depths to compare, got {depths}")

    for d in depths:
        _num_blocks(d)  # raises a clear error for a depth that is not 6n+2
    if resume and overwrite:
        raise ValueError("--resume continues the experiment in --out; --overwrite starts it again: not both")
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
    }
    if recipe is None:
        given = {k: DEPTH_DEFAULTS[k] if v is None else v for k, v in given.items()}
    else:
        given = apply_recipe({"recipe": recipe, **given})  # the recipe's values where none was given
        given.pop("recipe")
        given = {k: given[k] for k in DEPTH_DEFAULTS}
    image_size = image_size or _default_image_size(data)
    in_chans = in_chans or _default_in_chans(data)
    config = {
        "data": str(data),
        "depths": depths,
        "image_size": image_size,
        "in_chans": in_chans,
        "seed": seed,
        "tolerance": tolerance,
        "recipe": recipe,
        **given,
        **_jsonable(train_options),
    }
    finished = _depth_state(out, config, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / DEPTH_STATE_FILE, {"config": config, "finished": finished})

    options = {k: v for k, v in given.items() if v is not None}
    names = [f"{family}{depth}" for family in DEPTH_FAMILIES for depth in depths]
    rows: list[dict] = []
    curves: dict[str, dict[str, list]] = {}
    for k, name in enumerate(names, 1):
        family, depth = re.fullmatch(r"(plain|resnet)(\d+)", name).groups()
        depth = int(depth)
        run_dir = out / "runs" / name
        if name in finished:
            log(f"[{k}/{len(names)}] {name}: finished earlier, not trained again ({run_dir})")
            rows.append(finished[name]["row"])
            curves[name] = finished[name]["curve"]
            continue
        # Registered names where the paper lists the depth; the any-depth builder otherwise.
        model, kwargs = (name, {}) if depth in STANDARD_DEPTHS else (f"cifar_{family}", {"depth": depth})

        def prefix(message: str, _n: str = name, _k: int = k) -> None:  # the trainer's lines, tagged
            log(f"[{_k}/{len(names)} {_n}] {message}")

        if resume and (run_dir / "last.pt").is_file():
            log(f"[{k}/{len(names)}] {name}: resuming from {run_dir / 'last.pt'}")

            again = {k: v for k, v in train_options.items() if k in RESUME_OVERRIDABLE}
            result = train(None, out=run_dir, resume=True, quiet=quiet, log=prefix, **again)
        else:
            log(
                f"[{k}/{len(names)}] {name}: training ({', '.join(f'{a} {b}' for a, b in options.items())}"
                f"{', recipe ' + recipe if recipe else ''}, {image_size}x{image_size})"
            )
            result = train(
                data,
                model=model,
                out=run_dir,
                model_kwargs=kwargs,
                image_size=image_size,
                in_chans=in_chans,
                seed=seed,
                recipe=recipe,
                overwrite=True,
                quiet=quiet,
                log=prefix,
                **options,
                **train_options,
            )
        row, curve = _depth_row(
            result, family, depth, name, model, kwargs, image_size, in_chans, create_model
        )
        rows.append(row)
        curves[name] = curve
        finished[name] = {"row": row, "curve": curve}
        atomic_write_json(out / DEPTH_STATE_FILE, {"config": config, "finished": finished})
        log(
            f"[{k}/{len(names)}] {name}: done, training error {_pct(row['final_train_error'])}, validation "
            f"error {_pct(row['final_val_error'])}, {row['seconds']:.0f}s"
        )

    verdict = _depth_verdict(rows, tolerance)
    subtitle = f"{data}, {given['epochs']} epochs{', recipe ' + recipe if recipe else ''}"
    files = [
        atomic_write_json(
            out / "depth.json", {"config": config, "rows": rows, "curves": curves, "verdict": verdict}
        ),
        atomic_write_text(out / "depth.md", _depth_markdown(rows, verdict, config)),
        _plot_depth(curves, depths, out / "depth.png", subtitle),
    ]
    if not quiet:
        log(_depth_markdown(rows, verdict, config))
    return DepthResult(rows, curves, verdict, files)


def _saved_depth_config(out: Path) -> dict[str, Any]:
    path = out / DEPTH_STATE_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("config", {}))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(
            f"{path}: not a readable experiment state ({e}); remove it or pass --overwrite"
        ) from None


def _depth_state(out: Path, config: dict, resume: bool, overwrite: bool) -> dict[str, dict]:
    """The finished models of the experiment in ``out`` (``resume``), after checking it is the same
    experiment; an empty dict for a fresh start, which refuses to replace finished work silently."""
    path = out / DEPTH_STATE_FILE
    state = None
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}); remove it or pass --overwrite") from None
    if not resume:
        if state and state.get("finished") and not overwrite:
            raise ValueError(
                f"--out: {out} holds an experiment with {len(state['finished'])} finished model(s); "
                "continue it with --resume, or pass --overwrite or another --out"
            )
        return {}
    if state is None:
        return {}  # interrupted before any model finished: the runs' last.pt files still count
    saved = state.get("config", {})
    differ = [k for k in _RESUME_KEYS if k in saved and saved[k] != config.get(k)]
    if differ:
        raise ValueError(
            "--resume: "
            + ", ".join(
                f"{k} {config.get(k)!r} differs from the experiment in {out} ({saved[k]!r})" for k in differ
            )
        )
    return dict(state.get("finished", {}))


def _depth_row(
    result,
    family: str,
    depth: int,
    name: str,
    model: str,
    kwargs: dict,
    image_size: int,
    in_chans: int,
    create_model,
) -> tuple[dict, dict]:

    history = [h for h in result.history if h.get("train_acc") is not None]
    train_err = [1.0 - h["train_acc"] for h in history]
    val_err = [None if h.get("val_acc") is None else 1.0 - h["val_acc"] for h in history]
    curve = {
        "epoch": [h["epoch"] for h in history],
        "train_error": train_err,
        "val_error": val_err,
        "seconds": [h.get("seconds") for h in history],
    }
    num_classes = RunConfig.read(result.run_dir).num_classes
    built = create_model(model, num_classes=num_classes, in_chans=in_chans, **kwargs)
    cost = model_cost(built, image_size, in_chans)
    row = {
        "family": family,
        "depth": depth,
        "model": name,
        "params": int(cost.params),
        "macs": int(cost.macs),
        "final_train_error": train_err[-1],
        "final_val_error": val_err[-1],
        "best_val_error": None if result.best_val_acc is None else 1.0 - result.best_val_acc,
        # training time summed over the epochs (across resumes); set-up and validation not included
        "seconds": round(sum(h.get("seconds") or 0.0 for h in history), 3),  # epochs of tiny nets: ms
        "epochs": len(history),
        "run_dir": str(result.run_dir),
    }
    return row, curve


def _jsonable(options: dict) -> dict:
    simple = (int, float, str, bool, type(None))
    return {k: v if isinstance(v, simple) else str(v) for k, v in options.items()}


def _depth_verdict(rows: list[dict], tolerance: float) -> dict[str, Any]:
    """Did the deepest net end with higher (plain) / lower (residual) training error than the shallowest?"""
    by = {(r["family"], r["depth"]): r["final_train_error"] for r in rows}
    depths = sorted({r["depth"] for r in rows})
    shallow, deep = depths[0], depths[-1]
    verdict: dict[str, Any] = {"shallowest": shallow, "deepest": deep}
    for family in DEPTH_FAMILIES:
        diff = by[(family, deep)] - by[(family, shallow)]
        errors = [by[(family, d)] for d in depths]
        verdict[family] = {
            "train_error_deepest_minus_shallowest": diff,
            "monotonic_in_depth": all(b >= a for a, b in zip(errors, errors[1:]))
            if family == "plain"
            else all(b <= a for a, b in zip(errors, errors[1:])),
        }
    plain_diff = verdict["plain"]["train_error_deepest_minus_shallowest"]
    res_diff = verdict["resnet"]["train_error_deepest_minus_shallowest"]
    verdict["plain_degrades"] = plain_diff > tolerance
    verdict["resnet_deeper_lower"] = res_diff < -tolerance
    verdict["resnet_no_degradation"] = res_diff <= tolerance
    verdict["resnet_beats_plain_at_deepest"] = by[("resnet", deep)] < by[("plain", deep)] - tolerance
    judged = "in training error"  # Fig. 6's claim; the validation-error verdict is in "sentences"
    if verdict["plain_degrades"] and verdict["resnet_deeper_lower"]:
        summary = f"reproduced {judged}: deeper plain net trains worse, deeper residual net trains better"
    elif verdict["plain_degrades"] and verdict["resnet_no_degradation"]:
        summary = (
            f"partly reproduced {judged}: deeper plain net trains worse; the deeper residual net does "
            f"not (training errors within {tolerance:.1%}: no degradation, but no gain either)"
        )
    elif verdict["plain_degrades"]:
        summary = (
            f"partly reproduced {judged}: deeper plain net trains worse, but the deeper residual net "
            "also does"
        )
    else:
        summary = f"not reproduced {judged}: the deeper plain net did not end with a higher training error"
    verdict["summary"] = summary
    verdict.update(_verdict_sentences(rows, shallow, deep, tolerance))
    return verdict


def _verdict_sentences(rows: list[dict], shallow: int, deep: int, tolerance: float) -> dict[str, Any]:
    """The paper's two claims, each as a sentence with its numbers: the plain pair by training error
    (Fig. 6 left), the residual pair by validation error (Table 6; training error without a split)."""
    by = {(r["family"], r["depth"]): r for r in rows}
    p_deep, p_shallow = by[("plain", deep)]["final_train_error"], by[("plain", shallow)]["final_train_error"]
    plain_ok = p_deep > p_shallow + tolerance
    plain = (
        f"deeper plain net trains {'worse' if plain_ok else 'no worse here'}: plain-{deep} "
        f"{_pct(p_deep)} vs plain-{shallow} {_pct(p_shallow)} training error"
    )
    kind = "validation"
    r_deep, r_shallow = (by[("resnet", d)].get("final_val_error") for d in (deep, shallow))
    if r_deep is None or r_shallow is None:
        kind = "training"
        r_deep, r_shallow = (by[("resnet", d)]["final_train_error"] for d in (deep, shallow))
    res_ok = r_deep < r_shallow - tolerance
    resnet = (
        f"deeper residual net is {'better' if res_ok else 'not better here'}: resnet-{deep} "
        f"{_pct(r_deep)} vs resnet-{shallow} {_pct(r_shallow)} {kind} error"
    )
    return {
        "plain_trains_worse": plain_ok,
        "resnet_deeper_better": res_ok,
        "resnet_error_kind": kind,
        "sentences": [plain, resnet],
    }


def _depth_markdown(rows: list[dict], verdict: dict, config: dict) -> str:
    order = sorted(rows, key=lambda r: (DEPTH_FAMILIES.index(r["family"]), r["depth"]))
    table = _md_table(
        ["model", "params", "multiply-adds", "train error", "val error", "best val error", "epochs", "time"],
        [
            [
                r["model"],
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.1f} M" if r.get("macs") else "-",
                _pct(r["final_train_error"]),
                _pct(r["final_val_error"]),
                _pct(r.get("best_val_error")),
                r.get("epochs", "-"),
                _duration(r.get("seconds")),
            ]
            for r in order
        ],
    )
    s, dd = verdict["shallowest"], verdict["deepest"]
    how = (f"recipe `{config['recipe']}`, " if config.get("recipe") else "") + (
        f"{config['optimizer']} lr {config['lr']}, weight decay {config['weight_decay']}, batch "
        f"{config['batch_size']}"
    )
    sentences = "".join(f"- **{line}**\n" for line in verdict.get("sentences", []))
    return (
        f"# Plain vs residual networks by depth\n\n"
        f"Data `{config['data']}`, {config['epochs']} epochs, {config['image_size']}x{config['image_size']}, "
        f"{how}, seed {config['seed']}. Errors are the final epoch's (training: running error during the "
        f"epoch, with augmentation). Plain and residual nets of one depth have the same parameters. Time: "
        f"training, summed over the epochs.\n\n{table}\n{sentences}"
        f"- plain: training error at depth {dd} minus depth {s}: "
        f"{100 * verdict['plain']['train_error_deepest_minus_shallowest']:+.2f} points\n"
        f"- resnet: training error at depth {dd} minus depth {s}: "
        f"{100 * verdict['resnet']['train_error_deepest_minus_shallowest']:+.2f} points\n"
        f"- **{verdict['summary']}**\n"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{sec:02d}s" if minutes else f"{sec}s")


def _plot_depth(curves: dict, depths: Sequence[int], path: Path, subtitle: str) -> Path:
    """He et al. Fig. 6: plain left, residual right; training error solid, validation error dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.get_cmap("viridis")(torch.linspace(0, 0.9, len(depths)).tolist())
    for ax, family in zip(axes, DEPTH_FAMILIES):
        for color, depth in zip(colors, depths):
            c = curves[f"{family}{depth}"]
            ax.plot(
                c["epoch"],
                [100 * e for e in c["train_error"]],
                "-",
                color=color,
                lw=1.8,
                label=f"{family}-{depth}",
            )
            if any(v is not None for v in c["val_error"]):
                ax.plot(
                    c["epoch"],
                    [None if v is None else 100 * v for v in c["val_error"]],
                    "--",
                    color=color,
                    lw=1.2,
                )
        ax.set_title("plain networks" if family == "plain" else "residual networks (ResNet)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(title="solid: train, dashed: val", fontsize=8, title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"Training (solid) and validation (dashed) error by depth -- {subtitle}", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


# --- 2. gradient norms layer by layer ---------------------------------------------------------------


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every conv / linear weight, in registration order (input side first for these networks)."""
    return [
        (f"{name}.weight", m.weight)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def _tensors(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole (un-augmented) split as two tensors: one pass through the data layer, then every
    epoch of these short experiments is plain tensor indexing."""
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of mini-batches in an order fixed by (seed, epoch), the same for every network."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [(x[i], y[i]) for i in order.split(batch_size)]


def _first_steps(x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int):
    """The first ``steps`` training batches (over as many epochs as it takes)."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(batches) < steps:
        batches += _shuffled_batches(x, y, batch_size, seed, epoch)
        epoch += 1
    return batches[:steps]


def gradient_experiment(
    data: str | Path,
    *,
    out: str | Path,
    models: Sequence[str] = ("plain56", "resnet56"),
    steps: int = 50,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    image_size: int | None = None,
    in_chans: int | None = None,
    plot_steps: Sequence[int] | None = None,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Record ``||dL/dW||`` of every conv/linear weight at each of the first ``steps`` SGD steps.

    Every model starts from the same seed and sees the same batches. Writes ``gradients.json`` (for
    each model: layer names, and per step the loss and one gradient norm per layer) and
    ``gradients.png`` (layer index vs gradient norm, log scale, one curve per step in ``plot_steps``,
    default 1, 10 and ``steps``; one panel per model). Returns the JSON content.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not models:
        raise ValueError("models: give at least one model")
    image_size = image_size or _default_image_size(data)
    in_chans = in_chans or _default_in_chans(data)
    out, splits = _out_and_data(out, data, image_size, in_chans, seed, batch_size, None, data_root)
    num_classes = len(splits.class_names)
    batches = _first_steps(*_tensors(splits.train), batch_size, steps, seed)
    dev = torch.device(device)
    plot_steps = sorted({s for s in (plot_steps or (1, 10, steps)) if 1 <= s <= steps})

    results: dict[str, Any] = {}
    for name in models:
        torch.manual_seed(seed)
        model = build_cifar_model(name, num_classes, in_chans).to(dev).train()
        layers = _weight_layers(model)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        norms, losses = [], []
        start = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # The gradient of the loss alone (before weight decay is added in opt.step()).
            norms.append([w.grad.norm().item() for _, w in layers])
            losses.append(loss.item())
            opt.step()
        results[name] = {
            "layers": [n for n, _ in layers],
            "shapes": [list(w.shape) for _, w in layers],
            "steps": list(range(1, steps + 1)),
            "loss": losses,
            "grad_norm": norms,  # grad_norm[step - 1][layer]
            "summary": {str(s): _gradient_summary(norms[s - 1]) for s in plot_steps},
            "seconds": round(time.perf_counter() - start, 2),
        }
        first = results[name]["summary"][str(plot_steps[0])]
        log(
            f"{name}: {len(layers)} weight layers, loss {losses[0]:.3f} -> {losses[-1]:.3f}; step "
            f"{plot_steps[0]}: first/last layer gradient ratio {first['first_over_last']:.3g}, spread "
            f"{first['spread_orders_of_magnitude']:.2f} orders of magnitude"
        )

    report = {
        "config": {
            "data": str(data),
            "models": list(models),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "image_size": image_size,
            "in_chans": in_chans,
            "seed": seed,
            "plot_steps": plot_steps,
        },
        "models": results,
    }
    atomic_write_json(out / "gradients.json", report)
    _plot_gradients(results, plot_steps, out / "gradients.png", str(data))
    atomic_write_text(out / "gradients.md", _gradients_markdown(results, plot_steps))
    return report


def _gradient_summary(norms: Sequence[float]) -> dict[str, float]:
    positive = [v for v in norms if v > 0]
    return {
        "first_layer": norms[0],
        "last_layer": norms[-1],
        "first_over_last": norms[0] / norms[-1] if norms[-1] > 0 else math.inf,
        # How many orders of magnitude separate the largest from the smallest layer gradient.
        "spread_orders_of_magnitude": math.log10(max(positive) / min(positive)) if positive else 0.0,
    }


def _gradients_markdown(results: dict, plot_steps: Sequence[int]) -> str:
    rows = []
    for name, r in results.items():
        for s in plot_steps:
            g = r["summary"][str(s)]
            rows.append(
                [
                    name,
                    s,
                    f"{r['loss'][s - 1]:.3f}",
                    f"{g['first_layer']:.3g}",
                    f"{g['last_layer']:.3g}",
                    f"{g['first_over_last']:.3g}",
                    f"{g['spread_orders_of_magnitude']:.2f}",
                ]
            )
    header = ["model", "step", "loss", "first-layer grad", "last-layer grad", "first/last", "spread (orders)"]
    return "# Gradient norm by layer\n\n" + _md_table(header, rows)


def _plot_gradients(results: dict, plot_steps: Sequence[int], path: Path, subtitle: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), sharey=True, squeeze=False)
    colors = plt.get_cmap("plasma")(torch.linspace(0, 0.85, len(plot_steps)).tolist())
    for ax, (name, r) in zip(axes[0], results.items()):
        index = range(1, len(r["layers"]) + 1)
        for color, s in zip(colors, plot_steps):
            values = [max(v, 1e-12) for v in r["grad_norm"][s - 1]]  # log axis: keep exact zeros visible
            ax.plot(index, values, "o-", ms=2.5, lw=1.2, color=color, label=f"step {s}")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("weight layer (1 = input side)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gradient norm ||dL/dW||")
    fig.suptitle(f"Per-layer gradient norms during the first steps -- {subtitle}", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


# --- 3. identity learning: an inserted residual block can fall back to the identity --------------------


class InsertedBlock(nn.Module):
    """``base`` with ``block`` inserted between its last feature map and its head."""

    def __init__(self, base: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_head(self.block(self.base.forward_features(x)))


Split = tuple[torch.Tensor, torch.Tensor]


def _chunks(data: Split, size: int = 512):
    x, y = data
    return zip(x.split(size), y.split(size))


@torch.no_grad()
def _accuracy(model: nn.Module, data: Split | None) -> float | None:
    if data is None:
        return None
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in _chunks(data))
    return correct / max(len(data[1]), 1)


@torch.no_grad()
def _identity_distance(base: nn.Module, block: nn.Module, data: Split) -> float:
    """``||block(a) - a|| / ||a||`` over the data, with ``a`` the base's last feature map."""
    base.eval()
    block.eval()
    diff = norm = 0.0
    for x, _ in _chunks(data):
        a = base.forward_features(x)
        diff += (block(a) - a).pow(2).sum().item()
        norm += a.pow(2).sum().item()
    return math.sqrt(diff / max(norm, 1e-12))


def _fit(
    model: nn.Module,
    data: Split,
    epochs: int,
    groups: list[dict],
    lr: float,
    batch_size: int,
    seed: int,
    first_epoch: int = 0,
) -> None:
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    for epoch in range(first_epoch, first_epoch + epochs):
        model.train()
        for x, y in _shuffled_batches(*data, batch_size, seed, epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def identity_experiment(
    data: str | Path = "digits",
    *,
    out: str | Path,
    base: str = "plain8",
    epochs: int = 4,
    extra_epochs: int = 4,
    block_weight_decay: float = 1.0,
    weight_decay: float = 1e-4,
    lr: float = 0.05,
    batch_size: int = 64,
    image_size: int | None = None,
    in_chans: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Insert a block before the head of a briefly trained ``base`` network and train on.

    Two copies of the trained base get a freshly initialised 3x3 basic block on their last feature map:
    a residual one (``relu(a + branch(a))``) and a plain one (``relu(branch(a))``). Both are trained
    ``extra_epochs`` more, with weight decay ``block_weight_decay`` on the block's parameters (BN
    scale/shift included: with BN, shrinking the conv weights alone changes nothing) and the usual
    ``weight_decay`` elsewhere. Strong L2 pushes the branch towards zero; for the residual block that
    leaves ``relu(a) = a`` (``a`` is non-negative after the base's last ReLU), the identity, so the
    deeper network computes what the shallow one did. Reports ``||block(a) - a|| / ||a||`` and
    training/validation accuracy before insertion, right after, and after training, in
    ``identity.json`` / ``identity.md``. Returns the JSON content.
    """
    image_size = image_size or _default_image_size(data)
    in_chans = in_chans or _default_in_chans(data)
    out, splits = _out_and_data(out, data, image_size, in_chans, seed, batch_size, 0.2, data_root)
    train_set = _tensors(splits.train)
    val_set = _tensors(splits.val) if splits.val is not None else None
    num_classes = len(splits.class_names)
    start = time.perf_counter()

    torch.manual_seed(seed)
    model = build_cifar_model(base, num_classes, in_chans)
    _fit(
        model,
        train_set,
        epochs,
        [{"params": model.parameters(), "weight_decay": weight_decay}],
        lr,
        batch_size,
        seed,
    )
    rows = [
        {
            "network": f"{base} (before insertion)",
            "block": None,
            "stage": "before",
            "train_acc": _accuracy(model, train_set),
            "val_acc": _accuracy(model, val_set),
            "identity_distance": None,
        }
    ]
    log(f"{base} after {epochs} epochs: train acc {rows[0]['train_acc']:.4f}")

    channels = model.num_features
    for kind in ("residual", "plain"):
        torch.manual_seed(seed + 1)
        block = BasicBlock(channels, channels, residual=kind == "residual")
        nn.init.kaiming_normal_(block.conv1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(block.conv2.weight, nonlinearity="relu")
        net = InsertedBlock(copy.deepcopy(model), block)
        label = f"{base} + {kind} block"
        for stage in ("inserted", "trained"):
            if stage == "trained":
                groups = [
                    {"params": net.base.parameters(), "weight_decay": weight_decay},
                    {"params": net.block.parameters(), "weight_decay": block_weight_decay},
                ]
                _fit(net, train_set, extra_epochs, groups, lr, batch_size, seed, first_epoch=epochs)
            when = "at insertion" if stage == "inserted" else f"after {extra_epochs} epochs"
            row = {
                "network": f"{label}, {when}",
                "block": kind,
                "stage": stage,
                "train_acc": _accuracy(net, train_set),
                "val_acc": _accuracy(net, val_set),
                "identity_distance": _identity_distance(net.base, net.block, train_set),
                "block_weight_norm": math.sqrt(sum(p.pow(2).sum().item() for p in net.block.parameters())),
            }
            rows.append(row)
            log(
                f"{row['network']}: train acc {row['train_acc']:.4f}, ||out-in||/||in|| "
                f"{row['identity_distance']:.4f}"
            )

    before = rows[0]["train_acc"]
    residual_after = next(r for r in rows if r["block"] == "residual" and r["stage"] == "trained")
    plain_after = next(r for r in rows if r["block"] == "plain" and r["stage"] == "trained")
    summary = {
        "train_acc_before": before,
        "train_acc_after_residual": residual_after["train_acc"],
        "train_acc_after_plain": plain_after["train_acc"],
        "residual_identity_distance": residual_after["identity_distance"],
        "plain_identity_distance": plain_after["identity_distance"],
        # "Not harmed": within one training image's worth of accuracy, or better.
        "residual_not_harmed": residual_after["train_acc"] >= before - 1.0 / len(train_set[1]),
    }
    report = {
        "config": {
            "data": str(data),
            "base": base,
            "epochs": epochs,
            "extra_epochs": extra_epochs,
            "block_weight_decay": block_weight_decay,
            "weight_decay": weight_decay,
            "lr": lr,
            "batch_size": batch_size,
            "image_size": image_size,
            "in_chans": in_chans,
            "seed": seed,
            "block": f"BasicBlock({channels}, {channels}) before the head",
        },
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "identity.json", report)
    markdown = _identity_markdown(report)
    atomic_write_text(out / "identity.md", markdown)
    log(markdown)
    return report


def _identity_markdown(report: dict) -> str:
    c, s = report["config"], report["summary"]
    table = _md_table(
        ["network", "train acc", "val acc", "‖out−in‖/‖in‖ of the block"],
        [
            [
                r["network"],
                _pct(r["train_acc"]),
                _pct(r["val_acc"]),
                "-" if r["identity_distance"] is None else f"{r['identity_distance']:.4f}",
            ]
            for r in report["rows"]
        ],
    )
    harmed = "not harmed" if s["residual_not_harmed"] else "HARMED"
    return (
        f"# Identity learning: inserting a block into a trained network\n\n"
        f"Data `{c['data']}` at {c['image_size']}x{c['image_size']}; base `{c['base']}` trained "
        f"{c['epochs']} epochs; then {c['block']} trained {c['extra_epochs']} more epochs with weight decay "
        f"{c['block_weight_decay']} on the block ({c['weight_decay']} elsewhere), SGD lr {c['lr']}.\n\n"
        f"{table}\n"
        f"- residual block: ‖out−in‖/‖in‖ = {s['residual_identity_distance']:.4f}; training accuracy "
        f"{_pct(s['train_acc_before'])} -> {_pct(s['train_acc_after_residual'])} ({harmed})\n"
        f"- plain block: ‖out−in‖/‖in‖ = {s['plain_identity_distance']:.4f}; training accuracy "
        f"{_pct(s['train_acc_before'])} -> {_pct(s['train_acc_after_plain'])}\n"
    )
