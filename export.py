"""Export weights for transformers and timm: ``python export.py ckpt_path=<run>/checkpoints/last.ckpt out=exported/my-vit``.

Options and formats: :mod:`vit_ft.tasks.export`.
"""

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from vit_ft.tasks.cli import run_cli
from vit_ft.tasks.export import ExportConfig, export

ConfigStore.instance().store(name="export_cli", node=ExportConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="export_cli")
def main(cfg: DictConfig) -> None:
    run_cli(export, cfg)


if __name__ == "__main__":
    main()
