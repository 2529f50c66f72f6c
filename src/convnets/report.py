"""`convnets report RUN_DIR`: one self-contained HTML page about a trained run.

Training curves, confusion matrix, sample predictions (thumbnails with the true class), the worst
mistakes, per-class metrics, the model's cost table and the options used. Every image is embedded
as a base64 ``data:`` URI and the CSS is inline, so the file opens offline, can be mailed, and
nothing it shows can go stale or missing.

The evaluation part runs ``evaluate`` on ``data`` (default: the run's own data source, i.e. its
validation subset). When that data is not available here, the page says so and shows the confusion
matrix the trainer saved instead.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import torch
from PIL import Image

from .base.atomic import atomic_write_text
from .base.plots import plot_confusion_matrix, plot_curves, plot_image_grid
from .base.runs import CONFUSION_FILE, CURVES_FILE, METRICS_FILE
from .cost import format_count, model_cost
from .data.decode import resize_name
from .deploy.evaluate import evaluate
from .deploy.predictor import Classifier
from .trust.calibration import Reliability, plot_reliability
from .trust.explain import overlays

__all__ = ["report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.muted { color: #777; } .bad { color: #b00; } .good { color: #070; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.grid figure { margin: 0; width: 112px; text-align: center; font-size: 0.8em; }
.grid img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
            border: 1px solid #ccc; }
img.plot { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""

# Marks every image with whether it decoded (used by the headless-browser test, harmless otherwise).
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var loaded = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-loaded', loaded ? 'yes' : 'no');
    if (loaded) ok++;
  }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail_png(image: torch.Tensor, size: int = 96) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes, upscaled with nearest neighbour when small (crisp digits)."""
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if max(im.size) < size:
        scale = size // max(im.size)
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _read_history(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
    return rows


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    def cell(tag: str, i: int, v) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{html.escape(alt)}">'


def _thumb_grid(rows: list[dict], kind: str) -> str:
    """Thumbnails with their true and predicted class as an HTML grid (PIL, no matplotlib figure:
    sixteen captioned subplots took seconds to lay out)."""
    figures = []
    for s in rows:
        ok = s["true"] == s["pred"]
        figures.append(
            f"<figure class='{kind}'>"
            + _img(_png_data_uri(_thumbnail_png(s["image"])), f"true {s['true']}", cls="thumb")
            + f"<figcaption>true: {html.escape(s['true'])}<br><span class='{'good' if ok else 'bad'}'>"
            f"pred: {html.escape(s['pred'])} ({s['confidence']:.0%})</span></figcaption></figure>"
        )
    return "<div class='grid'>" + "".join(figures) + "</div>"


def _trust_sections(result, clf: Classifier) -> list[str]:
    """Why the worst mistakes happened (Grad-CAM), error analysis, calibration, unfamiliar inputs."""
    m, parts = result.metrics, []
    if result.mistake_images:
        maps = overlays(
            clf.model,
            torch.stack(result.mistake_images),
            *clf.config.normalization(),
            [pred for _, pred in result.mistake_classes],
        )
        buf = io.BytesIO()
        captions = [f"pred: {w['pred']} ({w['confidence']:.0%})\ntrue: {w['true']}" for w in result.mistakes]
        plot_image_grid(maps, captions, buf, title="where the evidence for the wrong class is (Grad-CAM)")
        parts.append(
            "<h3>Why: the worst mistakes with their heat maps</h3>"
            + _img(_png_data_uri(buf.getvalue()), "Grad-CAM of the mistakes")
        )
    parts.append(
        "<h3>Error analysis</h3>"
        f"<p>balanced accuracy <b>{m['balanced_accuracy']:.4f}</b>, macro-F1 <b>{m['macro_f1']:.4f}</b> "
        f"(accuracy {m['accuracy']:.4f})</p>"
    )
    if m["most_confused"]:
        rows = [[c["true"], c["predicted"], c["count"], f"{c['share']:.1%}"] for c in m["most_confused"]]
        parts.append(_table(["true", "predicted as", "images", "of the class"], rows, left=2))
    losses = [t for t in m["top_losses"] if t["true"] != t["predicted"]]
    if losses:
        rows = [[t["id"], t["true"], t["predicted"], f"{t['prob']:.3f}", f"{t['loss']:.2f}"] for t in losses]
        parts.append(
            "<p>top losses</p>" + _table(["image", "true", "predicted", "probability", "loss"], rows, left=3)
        )
    cal = m["calibration"]
    t = cal["temperature"]
    buf = io.BytesIO()
    plot_reliability(buf, {f"T = {t:.2f}" if t else "model": Reliability(**cal["reliability"])})
    note = (
        f"temperature {t:.3f} (fitted by <code>evaluate --calibrate</code>)"
        if t
        else "no temperature fitted (<code>convnets evaluate RUN_DIR DATA --calibrate</code> fits one)"
    )
    parts.append(
        f"<h3>Calibration</h3><p>expected calibration error <b>{cal['ece']:.4f}</b>; {note}</p>"
        + _img(_png_data_uri(buf.getvalue()), "reliability diagram")
    )
    ood = m.get("ood")
    if ood is not None:
        shown = ", ".join(html.escape(i) for i in ood["flagged_ids"][:10])
        parts.append(
            "<h3>Unlike the training data</h3>"
            f"<p>{ood['flagged']} of {ood['n']} images ({ood['share']:.1%}) flagged by the "
            f"out-of-distribution detector (threshold {ood['threshold']:.2f}; about 5% expected on "
            f"images like the validation split){': ' + shown if shown else ''}</p>"
        )
    return parts


def report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    samples: int = 16,
    batch_size: int = 128,  # fewer, larger batches: per-batch overhead was a tenth of a 5,000-image report
    backend: str = "auto",
) -> Path:
    """Write ``out`` (default ``RUN_DIR/report.html``) and return its path."""
    run_dir = Path(run_dir)
    clf = Classifier.from_run(run_dir, backend=backend)
    config = clf.config
    out = Path(out) if out is not None else run_dir / "report.html"
    if data is None and config.data is not None:
        data = config.data.source
    parts: list[str] = []

    title = f"{config.model} on {data}" if data else config.model
    parts.append(f"<h1>{html.escape(title)}</h1>")
    summary = [
        f"run folder <code>{html.escape(str(run_dir))}</code>",
        f"{len(clf.class_names)} classes",
        f"input {clf.in_chans}x{clf.image_size[0]}x{clf.image_size[1]}",
        f"resize {resize_name(config.resize)}",  # as train --resize names it
    ]
    best = config.best
    if best is not None and best.val_acc is not None:
        summary.append(f"best validation accuracy <b>{best.val_acc:.4f}</b> (epoch {best.epoch})")
    parts.append(f"<p class='muted'>{' &middot; '.join(summary)}</p>")

    # Training curves.
    parts.append("<h2>Training curves</h2>")
    history = _read_history(run_dir)
    if history:
        buf = io.BytesIO()
        plot_curves(history, buf)
        parts.append(_img(_png_data_uri(buf.getvalue()), "training curves"))
    elif (run_dir / CURVES_FILE).is_file():
        parts.append(_img(_png_data_uri((run_dir / CURVES_FILE).read_bytes()), "training curves"))
    else:
        parts.append("<p class='muted'>no metrics.jsonl in the run folder</p>")

    # Evaluation: confusion matrix, samples, mistakes, per-class metrics.
    parts.append("<h2>Evaluation</h2>")
    result = None
    if data is not None:
        try:
            result = evaluate(clf, data, batch_size=batch_size, sample_k=samples)
        except Exception as e:  # noqa: BLE001 - data missing here: the report still shows the rest
            parts.append(
                f"<p class='bad'>could not evaluate on {html.escape(str(data))}: {html.escape(str(e))}</p>"
            )
    if result is not None:
        m = result.metrics
        line = f"{html.escape(result.data)}: n = {m['n']}, accuracy <b>{m['accuracy']:.4f}</b>"
        if "top5" in m:
            line += f", top-5 {m['top5']:.4f}"
        line += f" <span class='muted'>(model run by {html.escape(result.backend)})</span>"
        parts.append(f"<p>{line}</p>")
        buf = io.BytesIO()
        plot_confusion_matrix(m["confusion_matrix"], clf.class_names, buf)
        parts.append("<h3>Confusion matrix</h3>" + _img(_png_data_uri(buf.getvalue()), "confusion matrix"))

        parts.append(
            "<h3>Sample predictions</h3><p class='muted'>drawn across the classes, right and wrong "
            "(seeded)</p>" + _thumb_grid(result.samples, "sample")
        )
        if result.mistakes:
            shown = [{**w, "image": img} for w, img in zip(result.mistakes, result.mistake_images)]
            parts.append("<h3>Most confident mistakes</h3>" + _thumb_grid(shown, "mistake"))

        rows = [
            [name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
            for name, r in m["per_class"].items()
        ]
        parts.append(
            "<h3>Per-class metrics</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows)
        )
        parts += _trust_sections(result, clf)
    elif (run_dir / CONFUSION_FILE).is_file():
        uri = _png_data_uri((run_dir / CONFUSION_FILE).read_bytes())
        parts.append("<p class='muted'>the trainer's confusion matrix:</p>" + _img(uri, "confusion matrix"))

    # Cost.
    parts.append("<h2>Cost</h2>")
    cost = model_cost(clf.model, image_size=clf.image_size, in_chans=clf.in_chans)
    parts.append(
        f"<p>{format_count(cost.params)} parameters, {format_count(cost.macs)} multiply-adds per image "
        f"at {cost.image_size[0]}x{cost.image_size[1]}</p>"
    )
    layer_rows = [
        [
            layer.name,
            layer.type,
            "x".join(map(str, layer.output_shape)),
            f"{layer.params:,}",
            f"{layer.macs:,}",
        ]
        for layer in cost.layers
        if layer.params or layer.macs
    ]
    parts.append(
        "<details><summary>per-layer cost (layers with parameters or multiply-adds)</summary>"
        + _table(["layer", "type", "output", "params", "multiply-adds"], layer_rows, left=2)
        + "</details>"
    )

    # Options.
    parts.append("<h2>Options</h2>")
    parts.append(_table(["option", "value"], [[k, json.dumps(v)] for k, v in config.options.items()]))
    shown = {k: v for k, v in config.to_dict().items() if k not in ("options", "split", "class_names")}
    parts.append("<details><summary>config.json (without the split)</summary><pre>")
    parts.append(html.escape(json.dumps(shown, indent=2)) + "</pre></details>")

    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    return atomic_write_text(out, page)
