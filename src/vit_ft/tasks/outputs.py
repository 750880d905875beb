"""What a run leaves in its folder and on the terminal: ``config_resolved.yaml`` (also logged to the
loggers), ``metrics.json`` (with its ``analysis`` section), ``<split>_predictions.csv``, the run report
(``report.md`` and ``report/``, its pictures and a table of the most confident mistakes also logged to
wandb), and the closing summary with the wandb run and its sync command."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vit_ft.data.extra_eval import extra_loader, load_extra_sets
from vit_ft.errors import ConfigError
from vit_ft.io import write_json_atomic, write_text_atomic
from vit_ft.models.analysis import analysis_summary, multilabel_summary
from vit_ft.models.multilabel_metrics import multilabel_scores
from vit_ft.models.predictions import (
    MultiLabelPredictions,
    predict_split,
    write_multilabel_csv,
    write_predictions_csv,
)
from vit_ft.models.subset import PreparedSet, evaluate_set, prepare_sets
from vit_ft.report import build_report, mistakes_of, picture_files
from vit_ft.training.preemption import RESUMABLE_EXIT

log = logging.getLogger("vit_ft")


def to_float(v: Any) -> float | None:
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None


def write_resolved_config(
    cfg: DictConfig, output_dir: str, loggers: list, preprocessing: Any, class_names: list[str]
) -> None:
    """The composed config with what was resolved at run time (preprocessing, class names), into
    ``config_resolved.yaml`` and every logger's hyperparameters."""
    os.makedirs(output_dir, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["resolved_preprocessing"] = preprocessing.to_dict()
    resolved["class_names"] = list(class_names)
    for lg in loggers:
        lg.log_hyperparams(resolved)
    write_text_atomic(
        os.path.join(output_dir, "config_resolved.yaml"), OmegaConf.to_yaml(OmegaConf.create(resolved))
    )


def write_metrics(output_dir: str, payload: dict[str, Any]) -> str:
    path = os.path.join(output_dir, "metrics.json")
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(path, payload)
    return path


def predictions_and_analysis(
    trainer: Any, model: Any, datamodule: Any, split: str, output_dir: str
) -> tuple[dict[str, Any] | None, str | None]:
    """One more pass of ``model`` over ``split`` (each rank its share, gathered): rank 0 writes
    ``<split>_predictions.csv`` and returns the ``analysis`` section of ``metrics.json`` and the CSV's path.

    Collective under DDP: every rank calls it; other ranks get ``(None, None)``. A streamed split has
    no record indices: no CSV, and the analysis of the module's last evaluation of that split, if any.
    """
    names = list(datamodule.class_names)
    loader = datamodule.indexed_loader(split)
    if loader is None:
        ea = getattr(model, "eval_analysis", None)
        if not trainer.is_global_zero:
            return None, None
        log.info(
            "predictions: the %s split is streamed (no record indices); no %s_predictions.csv", split, split
        )
        if ea is None or ea["split"] != split:
            return None, None
        return eval_summary(ea, names, split), None
    preds = predict_split(trainer, model, loader)
    if not trainer.is_global_zero:
        return None, None
    records = datamodule.splits[split]

    def file_name(i: int) -> str:
        return records.name(i) if hasattr(records, "name") else f"{split}[{i}]"

    os.makedirs(output_dir, exist_ok=True)
    if isinstance(
        preds, MultiLabelPredictions
    ):  # every label and probability; metrics at the model's thresholds
        thr = model.thresholds
        path = write_multilabel_csv(
            os.path.join(output_dir, f"{split}_predictions.csv"), preds, names, file_name, thr.tolist()
        )
        scores = multilabel_scores(torch.from_numpy(preds.probs), torch.from_numpy(preds.targets), thr)
        return multilabel_summary(scores, names, split), path
    path = write_predictions_csv(
        os.path.join(output_dir, f"{split}_predictions.csv"), preds, names, file_name
    )
    analysis = analysis_summary(preds.confusion(len(names)), names, split=split, ece=preds.ece())
    return analysis, path


def eval_summary(ea: dict[str, Any], names: list[str], split: str) -> dict[str, Any]:
    """The ``analysis`` of ``metrics.json`` from a module's last evaluation (``eval_analysis``)."""
    if "confusion" not in ea:  # a multi-label evaluation
        return multilabel_summary(ea, names, split)
    return analysis_summary(ea["confusion"], names, split=split, ece=ea["ece"])


def prepare_extra_eval(
    cfg: DictConfig, class_names: list[str], multilabel: bool = False
) -> list[PreparedSet]:
    """The sets of ``data.extra_eval``, read and matched to the model's classes (every check before any
    evaluation: an unknown class, a bad labels file stop here with one line)."""
    entries = (cfg.get("data") or {}).get("extra_eval")
    if not entries:
        return []
    if multilabel:
        raise ConfigError(
            f"data.extra_eval ({', '.join(entries)}) scores single-label sets, and this model is multi-label; "
            "evaluate each set with eval.py data=manifest data.val=<its manifest> instead"
        )
    return prepare_sets(load_extra_sets(OmegaConf.to_container(entries, resolve=True)), class_names)


def evaluate_extra_sets(
    trainer: Any, model: Any, datamodule: Any, prepared: list[PreparedSet], output_dir: str, loggers: list
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Each extra set, one pass of ``model`` (every rank its share): its ``<name>/*`` metrics logged to
    ``loggers``, ``<name>_predictions.csv`` written; ``(metrics.json's extra_eval section, the flat
    metrics)`` on rank 0, empty dicts on the others. Collective under DDP: every rank calls it."""
    section: dict[str, Any] = {}
    flat: dict[str, float | None] = {}
    for ps in prepared:
        res = evaluate_set(trainer, model, extra_loader(datamodule, ps.set), ps)
        if not trainer.is_global_zero:
            continue
        metrics = {k: to_float(v) for k, v in res.logged}
        names = list(ps.set.class_names)
        os.makedirs(output_dir, exist_ok=True)
        path = write_predictions_csv(
            os.path.join(output_dir, f"{ps.name}_predictions.csv"),
            res.predictions,
            names,
            ps.set.records.name,
        )
        a = res.analysis
        section[ps.name] = {
            "images": len(res.predictions),
            "skipped_images": len(ps.set) - len(res.predictions),  # unusable, with data.on_bad_image=skip
            "classes": len(names),
            "class_subset": ps.index is not None,
            "labels_file": ps.set.labels_file,
            "real_images": sum(1 for x in ps.accepted if x) if ps.accepted is not None else None,
            "metrics": metrics,
            "predictions": path,
            "analysis": analysis_summary(a["confusion"], names, split=ps.name, ece=a["ece"]) if a else None,
        }
        flat.update(metrics)
    if flat:
        step = int(getattr(trainer, "global_step", 0))
        for lg in loggers:
            lg.log_metrics({k: v for k, v in flat.items() if v is not None}, step=step)
            lg.save()
    return section, flat


def extra_summary_lines(section: dict[str, Any]) -> list[str]:
    """One closing-summary line per extra set: its top-1 (and ReaL top-1), images, predictions CSV."""
    out = []
    for name, s in section.items():
        m = s["metrics"]
        real = m.get(f"{name}/real_acc1")
        acc = m.get(f"{name}/acc1")
        out.append(
            f"{name:<14}: acc1 {'n/a' if acc is None else f'{acc:.4f}'}"
            + ("" if real is None else f", real_acc1 {real:.4f}")
            + f" ({s['images']} images) -> {s['predictions']}"
        )
    return out


def write_report(output_dir: str, loggers: list) -> str | None:
    """Build the run report (after ``metrics.json``) and log it to the wandb loggers; its path, or None
    when it could not be built (a warning: a report never fails a run). Call on rank 0 only."""
    try:
        path = build_report(output_dir)
    except Exception as e:  # noqa: BLE001 - the run's results are written; the report is extra
        log.warning("run report not written: %s: %s", type(e).__name__, e)
        return None
    try:
        log_report_to_wandb(output_dir, loggers)
    except Exception as e:  # noqa: BLE001
        log.warning("run report not logged to wandb: %s: %s", type(e).__name__, e)
    return str(path)


def is_wandb(logger: Any) -> bool:
    """A Lightning WandbLogger (or a subclass: vit-ft's ResumableWandbLogger), without importing wandb."""
    return any(c.__name__ == "WandbLogger" for c in type(logger).__mro__)


def log_report_to_wandb(output_dir: str, loggers: list) -> None:
    """The report's pictures (``report/<name>``) and a ``report/mistakes_table`` (image, true, predicted,
    prob) to each WandbLogger's run."""
    runs = [lg.experiment for lg in loggers if is_wandb(lg)]
    if not runs:
        return
    import wandb

    pictures = {f"report/{p.stem}": wandb.Image(str(p)) for p in picture_files(output_dir)}
    mistakes = mistakes_of(output_dir)
    table = None
    if mistakes:
        rows = [
            [wandb.Image(str(m.path)) if m.path else None, m.true_label, m.pred_label, m.prob]
            for m in mistakes
        ]
        table = wandb.Table(columns=["image", "true", "predicted", "prob"], data=rows)
    for run in runs:
        if pictures:
            run.log(pictures)
        if table is not None:
            run.log({"report/mistakes_table": table})


def wandb_dirs(loggers: list) -> list[str]:
    """The local folders of the wandb runs among ``loggers``."""
    dirs = []
    for lg in loggers:
        if is_wandb(lg):
            run = lg.experiment
            d = getattr(run, "dir", None) or getattr(getattr(run, "settings", None), "files_dir", None)
            if d:
                dirs.append(os.path.dirname(os.path.normpath(d)))
    return dirs


def finish_wandb(preempted: bool = False) -> None:
    """Close a wandb run left open (a failed job must not leave it to the next job of a sweep);
    ``preempted``: mark it so (wandb shows it as preempted until it is resumed)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        if preempted:
            try:
                wandb.run.mark_preempting()
            except Exception:  # noqa: BLE001 - a marker only
                pass
        wandb.finish(exit_code=RESUMABLE_EXIT if preempted else None)


def print_summary(output_dir: str, lines: list[str], loggers: list) -> None:
    """``run directory``, the task's own ``lines``, ``metrics``, then each wandb run (and how to sync it)."""
    out = ["", f"run directory : {output_dir}", *lines]
    out.append(f"metrics       : {os.path.join(output_dir, 'metrics.json')}")
    for d in wandb_dirs(loggers):
        out.append(f"wandb run     : {d}")
        if "offline-run" in os.path.basename(d):
            out.append(f"sync it with  : wandb sync {d}")
    print("\n".join(out), flush=True)


def held_out_split(asked: str | None, splits: Any) -> str:
    """The split a feature evaluation (k-NN, few-shot) scores on: ``asked``, or test if the data has
    one, else val; the train split (the evaluation's own bank) or a missing one is one error line."""
    split = asked if asked is not None else ("test" if "test" in splits else "val")
    if split not in splits or split == "train":
        raise ConfigError(
            f"probe.eval_split={split!r} is not a held-out split of this data (it has {sorted(splits)})"
        )
    return split


def feature_metric(cfg: Any, final: dict[str, float], default: str) -> str:
    """The metric a feature evaluation (k-NN, few-shot) reports and returns: ``optimized_metric`` when it
    is one of ``final``, else ``default``."""
    metric = str(cfg.get("optimized_metric") or "")
    return metric if metric in final else default


def publish_feature_evaluation(
    cfg: Any,
    loggers: list,
    preprocessing: Any,
    datamodule: Any,
    *,
    final: dict[str, float],
    metric: str,
    section: tuple[str, dict[str, Any]],
    features: Any,
    seconds: dict[str, float],
    table: str,
    summary: list[str],
) -> None:
    """What a feature evaluation leaves (rank 0): the resolved config, its metrics in every logger (one
    step), metrics.json with ``section`` (its settings and counts) beside the common keys; then it prints
    its ``table`` and the run's summary (:func:`print_summary` with the task's ``summary`` lines)."""
    output_dir = str(cfg.paths.output_dir)
    write_resolved_config(cfg, output_dir, loggers, preprocessing, list(datamodule.class_names))
    for lg in loggers:
        lg.log_metrics(final, step=0)
        if hasattr(lg, "finalize"):
            lg.finalize("success")
    write_metrics(
        output_dir,
        {
            "optimized_metric": metric,
            "value": final[metric],
            "final": final,
            section[0]: section[1],
            "features": features,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "status": "completed",
            "bad_images": datamodule.bad_image_report(),
            "run_dir": output_dir,
        },
    )
    print(table, flush=True)
    print_summary(output_dir, summary, loggers)
