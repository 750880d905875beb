"""Evaluate a checkpoint or pretrained weights: ``python eval.py ckpt_path=run/checkpoints/last.ckpt data.root=...``."""

import hydra
from omegaconf import DictConfig

from vit_ft.tasks.cli import run_cli
from vit_ft.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
