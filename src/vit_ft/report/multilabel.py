"""The run report's multi-label pages, from ``<split>_predictions.csv`` of a multi-label model (columns
``true_labels``, ``pred_labels``, ``probs``) and ``metrics.json``'s analysis: the per-class AP chart and
table, precision-recall curves of the worst classes, and the most confident false positives and false
negatives as pictures (:func:`vit_ft.report.figures.mistakes`' grid)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vit_ft.report import figures
from vit_ft.report.analysis import Mistake
from vit_ft.report.files import RunFiles, csv_rows, image_path, predictions_files

AP_CHART = "multilabel_ap.png"
PR_CURVES = "multilabel_pr.png"
FALSE_POS = "multilabel_false_positives.png"
FALSE_NEG = "multilabel_false_negatives.png"
N_WORST = 4  # classes whose precision-recall curves are drawn
N_PICTURES = 12


@dataclass
class MultiLabelRows:
    path: Path
    names: list[str]
    files: list[str]
    targets: np.ndarray  # bool [N, K]
    probs: np.ndarray  # float [N, K]
    predicted: np.ndarray  # bool [N, K]: at or over the thresholds the CSV was written with


def read_multilabel(run: RunFiles) -> MultiLabelRows | None:
    """The first multi-label ``<split>_predictions.csv`` of the run (None when there is none)."""
    for path in predictions_files(run.run_dir):
        try:
            rows = csv_rows(path)
        except Exception:  # noqa: BLE001 - an unreadable file is named by read_run already
            continue
        if not rows or "true_labels" not in rows[0]:
            continue
        names = list(json.loads(rows[0]["probs"]))
        col = {n: i for i, n in enumerate(names)}
        k = len(names)
        targets, predicted = np.zeros((len(rows), k), bool), np.zeros((len(rows), k), bool)
        probs = np.zeros((len(rows), k))
        for r, row in enumerate(rows):
            p = json.loads(row["probs"])
            probs[r] = [p[n] for n in names]
            for c in row["true_labels"].split():
                targets[r, col[c]] = True
            for c in row["pred_labels"].split():
                predicted[r, col[c]] = True
        return MultiLabelRows(path, names, [row["file"] for row in rows], targets, probs, predicted)
    return None


def pr_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y[order]
    cut = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[cut]
    return tp / max(1, y.sum()), tp / (cut + 1)


def per_class_rows(run: RunFiles, ml: MultiLabelRows) -> list[dict[str, Any]]:
    """Per class: name, support, AP, F1, threshold: metrics.json's numbers where it has them."""
    saved = (
        ((run.analysis or {}).get("per_class") or {})
        if (run.analysis or {}).get("task") == "multilabel"
        else {}
    )
    out = []
    for c, name in enumerate(ml.names):
        info = saved.get(name) or {}
        y = ml.targets[:, c]
        rec, prec = pr_curve(ml.probs[:, c], y) if y.any() else (np.zeros(0), np.zeros(0))
        ap = float(np.sum(np.diff(np.r_[0.0, rec]) * prec)) if y.any() else None
        out.append(
            {
                "name": name,
                "support": int(y.sum()),
                "ap": info.get("ap", ap),
                "f1": info.get("f1"),
                "threshold": info.get("threshold"),
            }
        )
    return out


def confident_errors(
    ml: MultiLabelRows, run_dir: Path, positives: bool, n: int = N_PICTURES
) -> list[Mistake]:
    """The ``n`` most confident false positives (a label predicted that is not there, highest probability
    first) or false negatives (a true label missed, lowest probability first)."""
    wrong = ml.predicted & ~ml.targets if positives else ~ml.predicted & ml.targets
    rows, cols = np.nonzero(wrong)
    p = ml.probs[rows, cols]
    order = np.argsort(-p if positives else p, kind="mergesort")[:n]
    out = []
    for rank, j in enumerate(order.tolist()):
        r, c = int(rows[j]), int(cols[j])
        true = " ".join(ml.names[i] for i in np.flatnonzero(ml.targets[r])) or "(none)"
        out.append(
            Mistake(
                rank=rank + 1,
                index=r,
                file=ml.files[r],
                true_label=true,
                pred_label=f"{'+' if positives else 'missed '}{ml.names[c]}",
                prob=float(ml.probs[r, c]),
                path=image_path(ml.files[r], run_dir),
            )
        )
    return out


def draw_ap(classes: list[dict[str, Any]], path: Path, n: int = 40) -> bool:
    shown = sorted((c for c in classes if c["ap"] is not None), key=lambda c: c["ap"])[:n]
    if not shown:
        return False
    with figures.drawing():
        fig = figures.new_figure(6, 0.25 * len(shown) + 1.2)
        ax = fig.subplots()
        ax.barh([figures.label(c["name"]) for c in shown], [c["ap"] for c in shown], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_xlabel("average precision")
        ax.set_title(f"per-class AP ({'the ' + str(n) + ' lowest' if len(classes) > n else 'all classes'})")
        figures.save(fig, path)
    return True


def draw_pr(ml: MultiLabelRows, classes: list[dict[str, Any]], path: Path) -> bool:
    worst = sorted((c for c in classes if c["ap"] is not None), key=lambda c: c["ap"])[:N_WORST]
    if not worst:
        return False
    with figures.drawing():
        fig = figures.new_figure(5, 4)
        ax = fig.subplots()
        for c in worst:
            i = ml.names.index(c["name"])
            rec, prec = pr_curve(ml.probs[:, i], ml.targets[:, i])
            ax.step(
                np.r_[0.0, rec],
                np.r_[1.0, prec],
                where="post",
                label=f"{figures.label(c['name'])} (AP {c['ap']:.2f})",
            )
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        ax.set_title(f"precision-recall, the {len(worst)} classes of lowest AP")
        figures.save(fig, path)
    return True


def section(run: RunFiles, out: Path, draw: bool = True) -> list[str]:
    """The report's "Multi-label" section (pictures drawn into ``out``); [] for a single-label run."""
    ml = read_multilabel(run)
    if ml is None:
        return []
    classes = per_class_rows(run, ml)
    pictures = [(AP_CHART, "Per-class average precision"), (PR_CURVES, "Precision-recall of the worst classes"),
                (FALSE_POS, "Most confident false positives"), (FALSE_NEG, "Most confident false negatives")]  # fmt: skip
    if draw:
        out.mkdir(parents=True, exist_ok=True)
        draw_ap(classes, out / AP_CHART)
        draw_pr(ml, classes, out / PR_CURVES)
        for name, positives in ((FALSE_POS, True), (FALSE_NEG, False)):
            errors = confident_errors(ml, run.run_dir, positives)
            if not (errors and figures.mistakes(errors, out / name)):
                (out / name).unlink(missing_ok=True)
    lines = [
        "## Multi-label",
        "",
        f"From `{ml.path.name}` ({len(ml.files)} images, {len(ml.names)} classes).",
        "",
    ]
    for name, title in pictures:
        if (out / name).is_file():
            rel = (out / name).relative_to(run.run_dir).as_posix()
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]

    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines += [
        "### Per class (lowest AP first)",
        "",
        "| class | support | AP | F1 | threshold |",
        "|---|---|---|---|---|",
    ]
    ranked = sorted(classes, key=lambda c: (c["ap"] is None, c["ap"] if c["ap"] is not None else 0.0))
    lines += [
        f"| {c['name']} | {c['support']} | {fmt(c['ap'])} | {fmt(c['f1'])} | {fmt(c['threshold'])} |"
        for c in ranked
    ]
    return lines + [""]
