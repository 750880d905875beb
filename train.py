"""Fine-tune a ViT: ``python train.py data=imagefolder data.root=/path/to/images``.

Returns ``optimized_metric`` (best ``val/acc1`` by default) so Hydra sweepers can optimise it.
"""

import hydra
from omegaconf import DictConfig

from vit_ft.tasks.cli import run_cli
from vit_ft.tasks.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg)


if __name__ == "__main__":
    main()
