"""Top-k class names for images: ``python predict.py weights=<weights> images=<file or folder>``.

Options: :mod:`vit_ft.tasks.predict`.
"""

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from vit_ft.tasks.cli import run_cli
from vit_ft.tasks.predict import PredictConfig, predict

ConfigStore.instance().store(name="predict_cli", node=PredictConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="predict_cli")
def main(cfg: DictConfig) -> None:
    run_cli(predict, cfg)


if __name__ == "__main__":
    main()
