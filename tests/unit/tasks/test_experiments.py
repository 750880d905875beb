"""The paper's recipes compose into valid configs (Hydra compose API; nothing is trained or downloaded)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from tests.helpers import ROOT
from vit_ft.tasks.plan import check_config

# name: (data target, steps, warmup, expected accuracy in the header comment, HF hub id or None)
RECIPES = {
    "vit_b32_imagenet_384": ("ImageNetDataModule", 20000, 500, "81.28", None),
    "vit_b32_cifar10": ("HFDataModule", 10000, 500, "98.79", "uoft-cs/cifar10"),
    "vit_b32_cifar100": ("HFDataModule", 10000, 500, "91.97", "uoft-cs/cifar100"),
    "vit_b32_pets": ("HFDataModule", 500, 100, "93.02", "timm/oxford-iiit-pet"),
    "vit_b32_flowers102": ("HFDataModule", 500, 100, "99.11", "nelorth/oxford-flowers"),
}


def _compose(overrides: list[str], hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} (paths.output_dir) resolves as in a run
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_experiment_composes_to_the_papers_recipe(name):
    target, steps, warmup, acc, hub = RECIPES[name]
    header = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()[:12]
    assert any("python train.py" in ln and f"experiment={name}" in ln for ln in header)
    assert any(acc in ln for ln in header), f"{name}: expected accuracy {acc} not in its header"
    cfg = _compose(
        [f"experiment={name}", "data.root=/data/imagenet"] if hub is None else [f"experiment={name}"]
    )
    assert cfg.data._target_.endswith(target)
    if hub:
        assert cfg.data.name == hub and cfg.data.val_split is None and 0 < cfg.data.val_fraction <= 0.1
    assert cfg.data.batch_size == 512
    o, s, t, m = cfg.optimizer, cfg.scheduler, cfg.trainer, cfg.model
    assert (o.name, o.momentum, o.weight_decay) == ("sgd", 0.9, 0.0)
    assert (s.warmup_steps, s.decay) == (warmup, "cosine")
    assert (t.max_steps, t.max_epochs, t.gradient_clip_val) == (steps, -1, 1.0)
    assert 512 % t.accumulate_grad_batches == 0
    assert (m.img_size, m.reset_head) == (384, True) and "in21k" in m.weights
    assert cfg.task_name == name
    check_config(cfg)
    # every data key is an argument of the data module (hf.yaml/imagenet.yaml belong to another module)
    data = OmegaConf.to_container(cfg.data, resolve=False)
    data.pop("extra_eval")  # the tasks' (data/extra_eval.py), taken out before the DataModule is built
    cls = get_class(data.pop("_target_"))
    import inspect

    params = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params |= set(inspect.signature(klass.__init__).parameters)
    assert set(data) <= params, set(data) - params


def test_lr_grids_are_ready_multiruns():
    cfg = _compose(
        ["experiment=vit_b32_imagenet_384", "hparams_search=vit_b32_lr_grid", "data.root=/x"], hydra=True
    )
    assert cfg.hydra.sweeper.params["optimizer.lr"] == "0.003,0.01,0.03,0.06"
    assert (
        "nonfinite_loss" not in cfg.callbacks and cfg.trainer.on_nonfinite == "stop"
    )  # the guard's one home
    cfg = _compose(["experiment=vit_b32_cifar10", "hparams_search=vit_b32_transfer_lr_grid"], hydra=True)
    assert cfg.hydra.sweeper.params["optimizer.lr"] == "0.001,0.003,0.01,0.03"


def test_optuna_and_slurm_configs_compose():
    cfg = _compose(["hparams_search=optuna", "data.root=/x"], hydra=True)
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("VitFtOptunaSweeper") and sw.direction is None  # from optimized_metric
    assert sw.sampler._target_.endswith("TPESampler") and sw.sampler.seed == cfg.seed
    assert set(sw.params) >= {
        "optimizer.lr",
        "optimizer.weight_decay",
        "scheduler.warmup_steps",
        "data.batch_size",
    }
    assert sw.max_failure_rate == 1.0
    cfg = _compose(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "data.root=/x"],
        hydra=True,
    )
    la = cfg.hydra.launcher
    assert la._target_.endswith("SlurmLauncher")
    assert (la.tasks_per_node, la.gpus_per_node, la.nodes) == (4, 4, 2)


def test_big_vit_presets_compose():
    header = (ROOT / "conf" / "experiment" / "vit_l16_lora.yaml").read_text().splitlines()[:10]
    assert any("python train.py experiment=vit_l16_lora" in ln for ln in header)
    assert any(ln.startswith("# Expect") for ln in header)
    cfg = _compose(["experiment=vit_l16_lora"])
    m = cfg.model
    assert (m.backbone, m.weights, m.img_size) == (
        "vit_large_patch16_224",
        "vit_large_patch16_224.augreg_in21k",
        224,
    )
    assert (m.lora.rank, m.lora.alpha, list(m.lora.targets), m.grad_checkpointing) == (8, 16, ["qkv"], True)
    assert m.freeze_backbone is False and cfg.optimizer.name == "adamw"
    check_config(cfg)

    header = (ROOT / "conf" / "experiment" / "deit_style_finetune.yaml").read_text().splitlines()[:10]
    assert any("python train.py experiment=deit_style_finetune" in ln for ln in header)
    assert any(ln.startswith("# Expect") for ln in header)
    cfg = _compose(["experiment=deit_style_finetune", "data.root=/x"])
    m, o = cfg.model, cfg.optimizer
    assert (o.name, o.layer_decay, o.weight_decay) == ("adamw", 0.65, 0.05)
    assert (m.mixup.mixup_alpha, m.mixup.cutmix_alpha, m.label_smoothing) == (0.8, 1.0, 0.1)
    assert (m.drop_path_rate, m.random_erasing, m.lora.rank) == (0.1, 0.25, None)
    assert m.ema.decay == 0.9999 and m.ema.use_for == "eval"
    check_config(cfg)


@pytest.mark.parametrize("name", ["vit_l16_lora", "deit_style_finetune"])
def test_big_vit_presets_build_their_model(name):
    """Every switch a preset sets reaches the LightningModule (on a tiny random network: no download)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    tiny = ["model.backbone=vit_tiny_patch16_224", "model.weights=null", "model.img_size=32"]
    cfg = _compose([f"experiment={name}", *tiny, "+model.timm_kwargs.depth=2"])
    model = instantiate(
        OmegaConf.to_container(cfg.model, resolve=True),
        num_classes=3,
        class_names=["a", "b", "c"],
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        _convert_="all",
    )
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    if name == "vit_l16_lora":
        assert model.lora_spec is not None and model.ema is None
        assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
        assert model.model.grad_checkpointing
    else:
        assert model.ema is not None and model.ema.decay == 0.9999 and model.lora_spec is None
        assert model.mixup_fn is not None and len(trainable) == len(list(model.model.parameters()))


@pytest.mark.parametrize(
    ("overrides", "direction"),
    [
        ((), "maximize"),  # val/acc1
        (("monitor=val/loss",), "minimize"),  # optimized_metric follows monitor
        (("optimized_metric=val/ece",), "minimize"),
        (("monitor=val/loss", "hydra.sweeper.direction=maximize"), "maximize"),  # given: kept
    ],
)
def test_the_optuna_direction_follows_the_optimized_metric(overrides, direction):
    from types import SimpleNamespace

    from vit_ft.sweeps.optuna import settle_direction

    cfg = _compose(["hparams_search=optuna", "data.root=/x", *overrides], hydra=True)
    impl = SimpleNamespace(direction=cfg.hydra.sweeper.direction, config=cfg)
    settle_direction(impl)
    assert impl.direction == direction
