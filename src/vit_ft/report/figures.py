"""The pictures of a run report, drawn with matplotlib's object API (no pyplot: no global backend or
figure state is touched, so drawing inside a training process or a notebook changes nothing there).

Each function draws one PNG (written atomically) and returns whether it drew it. Class names are shown
as plain text (no mathtext: ``$`` stays a dollar), shortened to a fixed width with ``…``; glyphs the
default font lacks (CJK) come from an installed fallback font when there is one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vit_ft.io import atomic_path
from vit_ft.models.analysis import SparseConfusion
from vit_ft.report.analysis import Analysis, Mistake

CURVES = "curves.png"
CONFUSION = "confusion.png"
PER_CLASS = "per_class.png"
RELIABILITY = "reliability.png"
MISTAKES = "mistakes.png"
MISTAKES_CSV = "mistakes.csv"

MAX_GRID = 30  # classes up to which the confusion matrix is drawn as a full grid
MAX_BARS = 40  # classes up to which the per-class chart shows every class
TOP_N = 20  # confused pairs and worst classes in the many-class views
DPI = 100
LAYOUT = "constrained"  # tidy labels; about a third of the drawing time
FALLBACK_FONTS = ("Noto Sans CJK", "Noto Sans JP", "Noto Sans SC", "WenQuanYi", "Droid Sans Fallback",
                  "Source Han Sans", "Arial Unicode", "Unifont")  # fmt: skip


def label(name: Any, width: int = 28) -> str:
    """``name`` on one line, at most ``width`` characters (``…`` marks a cut)."""
    s = " ".join(str(name).split())
    return s if len(s) <= width else s[: width - 1] + "…"


@lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = sorted({f.name for f in font_manager.fontManager.ttflist})
    extra = [n for n in installed if any(n.startswith(f) for f in FALLBACK_FONTS)]
    return ("DejaVu Sans", *extra)


@contextmanager
def drawing() -> Iterator[None]:
    """Plain-text labels, font fallback, no warnings about missing glyphs."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "font.family": list(font_families())}):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
            yield


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout=LAYOUT)


def save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=DPI)


# -- training curves ----------------------------------------------------------------------------------
def curve_panel(metric: str) -> str | None:
    kind = metric.rsplit("/", 1)[-1]
    if kind == "loss":
        return "loss"
    if kind.startswith("acc"):
        return "accuracy"
    if kind == "lr":
        return "learning rate"
    return None


def smooth(values: np.ndarray, alpha: float = 0.9) -> np.ndarray:
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * acc + (1 - alpha) * v
        out[i] = acc
    return out


def curves(history: list[dict[str, float | None]], path: Path) -> bool:
    """Loss, accuracy and learning rate against the optimizer step, one panel each (those with data)."""
    panels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    metrics = sorted({k for row in history for k in row if k not in ("step", "epoch")})
    for m in metrics:
        pts = [(r["step"], r[m]) for r in history if r.get(m) is not None and r.get("step") is not None]
        panel = curve_panel(m)
        if pts and panel:
            xs, ys = (np.asarray(v, dtype=np.float64) for v in zip(*pts))
            panels.setdefault(panel, []).append((m, xs, ys))
    order = [p for p in ("loss", "accuracy", "learning rate") if p in panels]
    if not order:
        return False
    with drawing():
        fig = new_figure(4.2 * len(order), 3.4)
        axes = fig.subplots(1, len(order), squeeze=False)[0]
        for ax, panel in zip(axes, order):
            for m, xs, ys in panels[panel]:
                if m.startswith("train/") and len(xs) > 1:
                    (line,) = ax.plot(xs, ys, lw=0.8, alpha=0.45 if len(xs) > 50 else 0.9, label=m)
                    if len(xs) > 50:
                        ax.plot(xs, smooth(ys), lw=1.5, color=line.get_color(), label=f"{m} (smoothed)")
                else:
                    ax.plot(xs, ys, marker="o", ms=3.5, lw=1.2, label=m)
            if panel == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            ax.set_title(panel)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, path)
    return True


# -- confusion matrix (or the top confused pairs) -----------------------------------------------------
def confusion(analysis: Analysis, path: Path, max_grid: int = MAX_GRID, n: int = TOP_N) -> bool:
    """A full grid up to ``max_grid`` classes; beyond (or without a matrix): the ``n`` most confused
    pairs beside the ``n`` worst classes."""
    k = len(analysis.classes)
    if k == 0:
        return False
    with drawing():
        if analysis.confusion is not None and k <= max_grid:
            fig = confusion_grid(analysis)
        else:
            fig = confusion_pairs(analysis, n)
        save(fig, path)
    return True


def confusion_grid(analysis: Analysis) -> Any:
    cm = analysis.confusion
    cm = np.asarray(cm.toarray() if isinstance(cm, SparseConfusion) else cm, dtype=np.float64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, cm / rows, np.nan)
    side = max(4.5, 0.34 * k + 2.8)
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["Blues"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0.0, vmax=1.0)
    if k <= 20:
        size = 8 if k <= 10 else 6
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    names = [label(c.name, 24) for c in analysis.classes]
    ylabels = [n if c.images else f"{n} (no images)" for n, c in zip(names, analysis.classes)]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7 if k > 12 else 8)
    ax.set_yticks(range(k), ylabels, fontsize=7 if k > 12 else 8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion, {analysis.split} ({analysis.images} images; colour: share of the true class)",
                 fontsize=9)  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def confusion_pairs(analysis: Analysis, n: int) -> Any:
    pairs = analysis.pairs[:n]
    worst = analysis.worst(n)
    height = max(3.5, 0.26 * max(len(pairs), len(worst), 1) + 1.6)
    fig = new_figure(12.0, height)
    left, right = fig.subplots(1, 2)
    if pairs:
        y = np.arange(len(pairs))
        left.barh(y, [p.count for p in pairs], color="tab:red", alpha=0.8)
        left.set_yticks(y, [f"{label(p.true, 24)} → {label(p.pred, 24)}" for p in pairs], fontsize=7)
        left.invert_yaxis()
        left.set_xlabel("images of the true class predicted as the other")
    else:
        left.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=left.transAxes)
        left.set_axis_off()
    left.set_title(f"the {len(pairs)} most confused pairs (true → predicted)", fontsize=9)
    bars(right, worst)
    right.set_title(f"the {len(worst)} worst of {len(analysis.classes)} classes", fontsize=9)
    fig.suptitle(f"confusions, {analysis.split} ({analysis.images} images)", fontsize=10)
    return fig


# -- per-class accuracy -------------------------------------------------------------------------------
def bars(ax: Any, classes: list, no_images: list | None = None) -> None:
    """Horizontal top-1 accuracy bars (%), first class on top; classes without images hatched, "no images"."""
    rows = [(label(c.name), 100.0 * c.acc1, f"{100.0 * c.acc1:.1f}% of {c.images}") for c in classes]
    rows += [(label(c.name), None, "no images") for c in no_images or []]
    if not rows:
        ax.text(0.5, 0.5, "no classes with images", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    y = np.arange(len(rows))
    vals = [v if v is not None else 0.0 for _, v, _ in rows]
    colours = ["tab:blue" if v is not None else "none" for _, v, _ in rows]
    ax.barh(y, vals, color=colours)
    empty = [i for i, (_, v, _) in enumerate(rows) if v is None]
    if empty:
        ax.barh(empty, [100.0] * len(empty), color="none", edgecolor="0.6", hatch="///", lw=0.5)
    for i, (_, v, text) in enumerate(rows):
        x = 50.0 if v is None else min(v + 1.0, 72.0)
        ax.text(x, i, text, va="center", ha="center" if v is None else "left", fontsize=6.5,
                color="0.35" if v is None else "black")  # fmt: skip
    ax.set_yticks(y, [name for name, _, _ in rows], fontsize=7)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 accuracy (%)")
    ax.grid(axis="x", alpha=0.3)


def per_class(analysis: Analysis, path: Path, max_bars: int = MAX_BARS, n_worst: int = 30) -> bool:
    """Every class, worst first (up to ``max_bars`` classes); else the ``n_worst`` worst beside the
    distribution of all classes' accuracies. A class with no images is a hatched "no images" bar."""
    k = len(analysis.classes)
    if k == 0:
        return False
    worst, empty = analysis.worst(), analysis.without_images()
    with drawing():
        if k <= max_bars:
            fig = new_figure(7.0, max(2.5, 0.24 * k + 1.4))
            ax = fig.subplots()
            bars(ax, worst, empty)
            ax.set_title(f"top-1 accuracy per class, {analysis.split} ({analysis.images} images)", fontsize=9)
        else:
            shown = worst[:n_worst]
            fig = new_figure(12.0, max(3.5, 0.24 * len(shown) + 1.6))
            left, right = fig.subplots(1, 2)
            bars(left, shown)
            left.set_title(f"the {len(shown)} worst of {k} classes, {analysis.split}", fontsize=9)
            accs = [100.0 * c.acc1 for c in worst]
            right.hist(accs, bins=np.linspace(0, 100, 21), color="tab:blue", alpha=0.8)
            median = f"median {np.median(accs):.1f}%" if accs else "no class has images"
            right.set_title(
                f"accuracy of all {len(worst)} classes with images ({median}); {len(empty)} with no images",
                fontsize=9,
            )
            right.set_xlabel("top-1 accuracy (%)")
            right.set_ylabel("classes")
            right.grid(alpha=0.3)
        save(fig, path)
    return True


# -- reliability diagram ------------------------------------------------------------------------------
def reliability(analysis: Analysis, path: Path) -> bool:
    """Accuracy against confidence per bin (the diagonal: perfect calibration) and the images per bin."""
    rel = analysis.reliability
    if not rel or not rel.get("count") or sum(rel["count"]) == 0:
        return False
    edges = np.asarray(rel["bin_edges"], dtype=np.float64)
    acc, conf = np.asarray(rel["accuracy"]), np.asarray(rel["confidence"])
    count = np.asarray(rel["count"], dtype=np.float64)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    used = count > 0
    with drawing():
        fig = new_figure(4.8, 5.4)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.bar(centres[used], acc[used], width=widths[used], color="tab:blue", edgecolor="white",
                label="accuracy")  # fmt: skip
        gap_low, gap = np.minimum(acc, conf)[used], np.abs(conf - acc)[used]
        top.bar(centres[used], gap, bottom=gap_low, width=widths[used], color="none", edgecolor="tab:red",
                hatch="///", lw=0.6, label="gap to confidence")  # fmt: skip
        top.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.legend(fontsize=7, loc="upper left")
        ece = "" if analysis.ece is None else f", ECE {analysis.ece:.3f}"
        top.set_title(f"reliability, {analysis.split} ({int(count.sum())} images{ece})", fontsize=9)
        bottom.bar(centres, count, width=widths, color="0.5", edgecolor="white")
        bottom.set_xlabel("confidence (probability of the predicted class)")
        bottom.set_ylabel("images")
        save(fig, path)
    return True


# -- the most confident mistakes ----------------------------------------------------------------------
def thumbnail(path: Path, size: int = 160) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except Exception:  # noqa: BLE001 - any unreadable file is shown as such, never fails the report
        return None


def mistakes(items: list[Mistake], path: Path, cols: int = 4) -> bool:
    """A grid of the mistakes with their true and predicted labels and the probability. A file that
    cannot be opened is a grey tile saying so, and its ``path`` is set to None."""
    if not items:
        return False
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    with drawing():
        fig = new_figure(2.5 * cols, 2.9 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, m in zip(axes, items):
            pixels = thumbnail(m.path) if m.path is not None else None
            if pixels is None:
                m.path = None
                ax.set_facecolor("0.9")
                ax.text(0.5, 0.5, "image not readable", ha="center", va="center", fontsize=7,
                        color="0.35", transform=ax.transAxes)  # fmt: skip
            else:
                ax.imshow(pixels)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(
                f"true: {label(m.true_label, 24)}\npred: {label(m.pred_label, 24)} ({100 * m.prob:.1f}%)",
                fontsize=7,
            )
        for ax in axes[len(items) :]:
            ax.set_axis_off()
        fig.suptitle(f"the {len(items)} most confident mistakes", fontsize=10)
        save(fig, path)
    return True
