"""What a run leaves in its folder and on the terminal: ``config_resolved.yaml`` (also logged to the
loggers), ``metrics.json``, and the closing summary with the wandb run and its sync command."""

from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_ft.io import write_json_atomic, write_text_atomic


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


def wandb_dirs(loggers: list) -> list[str]:
    """The local folders of the wandb runs among ``loggers``."""
    dirs = []
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run = lg.experiment
            d = getattr(run, "dir", None) or getattr(getattr(run, "settings", None), "files_dir", None)
            if d:
                dirs.append(os.path.dirname(os.path.normpath(d)))
    return dirs


def finish_wandb() -> None:
    """Close a wandb run left open (a failed job must not leave it to the next job of a sweep)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def print_summary(output_dir: str, lines: list[str], loggers: list) -> None:
    """``run directory``, the task's own ``lines``, ``metrics``, then each wandb run (and how to sync it)."""
    out = ["", f"run directory : {output_dir}", *lines]
    out.append(f"metrics       : {os.path.join(output_dir, 'metrics.json')}")
    for d in wandb_dirs(loggers):
        out.append(f"wandb run     : {d}")
        if "offline-run" in os.path.basename(d):
            out.append(f"sync it with  : wandb sync {d}")
    print("\n".join(out), flush=True)
