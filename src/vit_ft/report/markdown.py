"""The text of ``report.md``: what ran, the final and best metrics, the pictures, the worst classes and the
top confusions, and what is missing (for an interrupted run, or one whose files are not all there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit_ft.report.analysis import Analysis, Mistake
from vit_ft.report.files import METRICS_JSON, RunFiles, number

WORST_ROWS = 15
PAIR_ROWS = 15
NO_IMAGES_LISTED = 50


def cell(v: Any) -> str:
    """A table cell: ``|`` escaped, one line, numbers to 4 significant digits, None as empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return " ".join(str(v).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out + [""]


def link(target: str) -> str:
    """A link target that survives spaces and parentheses."""
    return f"<{target}>" if any(c in target for c in " ()<>") else target


def pct(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:.1f}%"


def get(d: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def short_target(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if target else ""


def joined(*parts: tuple[str, Any]) -> str:
    """``name value`` pairs whose value is set, comma-separated."""
    return ", ".join(f"{k} {v}" if k else str(v) for k, v in parts if v not in (None, "", [], {}))


def strategy_name(strategy: Any) -> Any:
    """``trainer.strategy``: a name, or a ``_target_`` config (trainer=fsdp) shown by its function's name."""
    if isinstance(strategy, dict):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1] or None
    return strategy


def what_ran(run: RunFiles, analysis: Analysis | None) -> list[list[str]]:
    cfg, m = run.config or {}, run.metrics or {}
    model, data, opt, sch, tr = (
        cfg.get(k) or {} for k in ("model", "data", "optimizer", "scheduler", "trainer")
    )
    names = run.class_names or (cfg.get("class_names") or [])
    rows: list[list[str]] = []
    if cfg.get("task_name"):
        rows.append(["task", str(cfg["task_name"])])
    weights = model.get("weights") or m.get("weights")
    ckpt = cfg.get("ckpt_path") or m.get("ckpt_path")
    rows.append(
        [
            "model",
            joined(
                ("", model.get("backbone")),
                ("weights", weights or ("random init" if model else None)),
                ("img_size", model.get("img_size") or get(cfg, "resolved_preprocessing.img_size")),
                ("", "frozen backbone" if model.get("freeze_backbone") else None),
                ("label smoothing", model.get("label_smoothing") or None),
            ),
        ]
    )
    if ckpt:
        rows.append(["checkpoint", f"`{ckpt}`"])
    rows.append(
        [
            "data",
            joined(
                ("", short_target(data.get("_target_"))),
                ("", data.get("root") or data.get("name")),
                ("classes", len(names) or None),
                ("global batch", data.get("batch_size")),
                ("augment", data.get("auto_augment")),
            ),
        ]
    )
    if opt:
        rows.append(
            [
                "recipe",
                joined(
                    ("", opt.get("name")),
                    ("lr", opt.get("lr")),
                    ("momentum", opt.get("momentum")),
                    ("weight decay", opt.get("weight_decay")),
                    ("layer decay", opt.get("layer_decay")),
                    ("schedule", sch.get("decay")),
                    ("warmup steps", sch.get("warmup_steps")),
                    ("gradient clip", tr.get("gradient_clip_val")),
                    (
                        "accumulation",
                        tr.get("accumulate_grad_batches")
                        if tr.get("accumulate_grad_batches", 1) != 1
                        else None,
                    ),
                ),
            ]
        )
    if cfg.get("probe"):
        rows.append(["probe", joined(*((str(k), v) for k, v in (cfg.get("probe") or {}).items()))])
    planned = joined(
        ("max_steps", tr.get("max_steps") if tr.get("max_steps") not in (None, -1) else None),
        ("max_epochs", tr.get("max_epochs") if tr.get("max_epochs") not in (None, -1) else None),
    )
    last = run.history[-1] if run.history else {}
    if "global_step" in m:
        done = joined(("steps", m.get("global_step")), ("epochs", m.get("epoch")))
    elif last.get("step") is not None:
        epoch = "" if last.get("epoch") is None else f" (in epoch {int(last['epoch'])})"
        done = f"{int(last['step'])} steps logged{epoch}"
    else:
        done = ""
    if planned or done:
        rows.append(["run length", joined(("", done), ("planned", planned))])
    if tr:
        rows.append(["precision", str(tr.get("precision"))])
        rows.append(
            [
                "devices",
                joined(
                    ("", tr.get("accelerator")),
                    ("devices", tr.get("devices")),
                    ("nodes", tr.get("num_nodes")),
                    ("strategy", strategy_name(tr.get("strategy"))),
                ),
            ]
        )
    if cfg.get("seed") is not None:
        rows.append(["seed", str(cfg["seed"])])
    if analysis is not None:
        rows.append(
            ["evaluated", f"{analysis.split}: {analysis.images} images, {len(analysis.classes)} classes"]
        )
    return [r for r in rows if r[1]]


def status(run: RunFiles) -> str:
    m = run.metrics
    if METRICS_JSON in run.problems:
        return f"unknown: `{METRICS_JSON}` cannot be read ({run.problems[METRICS_JSON]})"
    if m is None:
        return "no `metrics.json`: the run is still going, or was stopped before it ended"
    if "status" in m:
        return str(m["status"])
    return "completed" if "metrics" in m else "unknown"


def metrics_section(run: RunFiles, analysis: Analysis | None) -> list[str]:
    m = run.metrics or {}
    out = ["## Metrics", ""]
    if "optimized_metric" in m:
        out.append(f"- `{m['optimized_metric']}` (the run's result): {cell(number(m.get('value')))}")
    best = m.get("best") or {}
    if best.get("metric"):
        out.append(
            f"- best `{best['metric']}`: {cell(number(best.get('score')))} (`{best.get('checkpoint')}`)"
        )
    if analysis is not None:
        out.append(
            f"- {analysis.split}: top-1 {pct(analysis.acc1)}, mean per-class top-1 {pct(analysis.acc1_macro)}"
            + ("" if analysis.ece is None else f", ECE {analysis.ece:.4f}")
            + f" (from {analysis.source})"
        )
    out.append("")
    sections = [
        ("final", m.get("final")),
        ("test", m.get("test")),
        (str(m.get("split") or "eval"), m.get("metrics")),
    ]
    values = {name: d for name, d in sections if isinstance(d, dict) and d}
    if values:
        keys = sorted({k for d in values.values() for k in d})
        out += table(["metric", *values], [[k, *(number(d.get(k)) for d in values.values())] for k in keys])
    elif run.history:
        last: dict[str, Any] = {}
        for row in run.history:
            last.update({k: v for k, v in row.items() if v is not None})
        keys = sorted(k for k in last if k not in ("step", "epoch"))
        out.append(f"Last logged values (`history.csv`, step {cell(last.get('step'))}):")
        out.append("")
        out += table(["metric", "last"], [[k, last[k]] for k in keys])
    else:
        out += ["No metrics yet.", ""]
    return out


EXTRA_METRICS = ("acc1", "acc5", "real_acc1", "acc1_macro", "loss", "ece")


def extra_eval_section(run: RunFiles) -> list[str]:
    """``## More evaluation sets``: one row of metrics per set of ``data.extra_eval`` (``metrics.json``'s
    ``extra_eval``), then per set its predictions file and its worst classes."""
    sets = (run.metrics or {}).get("extra_eval")
    if not isinstance(sets, dict) or not sets:
        return []
    out = ["## More evaluation sets", ""]
    rows = []
    for name, s in sets.items():
        m = (s or {}).get("metrics") or {}
        rows.append([name, (s or {}).get("images"), *(number(m.get(f"{name}/{k}")) for k in EXTRA_METRICS)])
    out += table(["set", "images", *EXTRA_METRICS], rows)
    for name, s in sets.items():
        s = s or {}
        out += [f"### {name}", ""]
        subset = " (scored over the model's logits of these classes only)" if s.get("class_subset") else ""
        out.append(f"- {s.get('classes')} classes{subset}")
        if s.get("labels_file"):
            out.append(
                f"- `real_acc1`: top-1 against `{s['labels_file']}` ({s.get('real_images')} images listed)"
            )
        pred = s.get("predictions")
        if isinstance(pred, str):
            rel = Path(pred).name if (run.run_dir / Path(pred).name).is_file() else pred
            out.append(f"- predictions: [{Path(pred).name}]({link(rel)})")
        out.append("")
        per_class = ((s.get("analysis") or {}).get("per_class")) or {}
        scored = [(n, c) for n, c in per_class.items() if isinstance(c, dict) and c.get("acc1") is not None]
        scored.sort(key=lambda nc: (nc[1]["acc1"], nc[0]))
        if scored:
            out += table(
                ["class", "images", "top-1", "most often predicted as"],
                [
                    [
                        n,
                        c.get("images"),
                        pct(c["acc1"]),
                        f"{c['top_confusion']} ({c.get('top_confusion_count')})"
                        if c.get("top_confusion")
                        else "",
                    ]
                    for n, c in scored[:WORST_ROWS]
                ],
            )
    return out


def classes_section(analysis: Analysis) -> list[str]:
    out = [f"## Worst classes ({analysis.split})", ""]
    worst = analysis.worst(WORST_ROWS)
    if worst:
        out += table(
            ["class", "images", "top-1", "most often predicted as"],
            [
                [
                    c.name,
                    c.images,
                    pct(c.acc1),
                    f"{c.top_confusion} ({c.top_confusion_count})" if c.top_confusion else "",
                ]
                for c in worst
            ],
        )
    empty = analysis.without_images()
    if empty:
        names = ", ".join(c.name for c in empty[:NO_IMAGES_LISTED])
        more = f" and {len(empty) - NO_IMAGES_LISTED} more" if len(empty) > NO_IMAGES_LISTED else ""
        out += [
            f"No {analysis.split} images (no accuracy, not 0%): {len(empty)} class(es): {names}{more}.",
            "",
        ]
    out += [f"## Top confusions ({analysis.split})", ""]
    sizes = {c.name: c.images for c in analysis.classes}
    if analysis.pairs:
        out += table(
            ["true", "predicted", "images", "share of the true class"],
            [
                [p.true, p.pred, p.count, pct(p.count / sizes[p.true]) if sizes.get(p.true) else ""]
                for p in analysis.pairs[:PAIR_ROWS]
            ],
        )
    else:
        out += ["No confusions.", ""]
    return out


def render(
    run: RunFiles,
    analysis: Analysis | None,
    pictures: list[tuple[str, Path, str | None, str | None]],
    mistakes: list[Mistake],
    mistakes_csv: Path | None,
    extra: list[str] | None = None,
) -> str:
    """``pictures``: (title, path, why it is missing or None, a note that it is out of date or None);
    paths are linked relative to the run folder."""
    d = run.run_dir
    out = [f"# Run report: {d.name}", "", f"- folder: `{d}`", f"- status: {status(run)}"]
    if run.config_file:
        out.append(f"- config: `{run.config_file}`")
    if run.problems:
        out += ["", "**Unreadable files** (left out of this report; fix or remove them, then rebuild):", ""]
        out += [f"- `{name}`: {what}" for name, what in run.problems.items()]
    out += ["", "## What ran", ""]
    out += table(["", ""], what_ran(run, analysis))
    out += metrics_section(run, analysis)
    out += extra_eval_section(run)
    out += ["## Pictures", ""]
    missing = [(t, why) for t, p, why, _ in pictures if why]
    for title, path, why, stale in pictures:
        if not why:
            rel = path.relative_to(d).as_posix()
            out += (
                [f"### {title}", ""]
                + ([f"> {stale}", ""] if stale else [])
                + [f"![{title}]({link(rel)})", ""]
            )
    if mistakes and mistakes_csv is not None:
        unreadable = sum(1 for x in mistakes if x.path is None)
        note = f"; {unreadable} of their images could not be opened (grey tiles)" if unreadable else ""
        out += [
            f"The mistakes above are listed in [{mistakes_csv.name}]({link(mistakes_csv.relative_to(d).as_posix())}){note}.",
            "",
        ]
    if missing:
        out += ["Not drawn:", ""] + [f"- {t}: {why}" for t, why in missing] + [""]
    if extra:  # e.g. the multi-label pages (report/multilabel.py)
        out += extra
    if analysis is not None:
        out += classes_section(analysis)
    elif not extra:
        out += [
            "## Classes",
            "",
            "No per-class results: no `<split>_predictions.csv` and no `analysis` in `metrics.json`.",
            "",
        ]
    out += ["---", "", f"Rebuild: `python -m vit_ft.report {d}`", ""]
    return "\n".join(out)
