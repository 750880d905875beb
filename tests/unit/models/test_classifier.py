"""The LightningModule: normalisation, zero head, frozen backbone, gradient clipping."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers import quiet_trainer, tiny_classifier, uint8_loader
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.load_checkpoint import load_classifier


def fit(model: ViTClassifier, steps: int = 4, callbacks=(), **trainer_kw) -> L.Trainer:
    trainer = quiet_trainer(max_steps=steps, callbacks=list(callbacks), **trainer_kw)
    trainer.fit(model, train_dataloaders=uint8_loader(), val_dataloaders=uint8_loader(seed=1))
    return trainer


def test_head_starts_at_zero_and_uint8_is_normalised_with_mean_std_half():
    m = tiny_classifier()
    assert torch.count_nonzero(m.model.head.weight) == 0 and torch.count_nonzero(m.model.head.bias) == 0
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = m.normalize(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)


def test_top5_only_with_five_or_more_classes():
    assert all(tiny_classifier().evaluators[s].acc5 is not None for s in ("val", "test"))
    assert tiny_classifier(num_classes=3, class_names=list("abc")).evaluators["val"].acc5 is None


class GradNorm(L.Callback):
    """Global gradient norm as the optimizer used it (after clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))


class LoudClassifier(ViTClassifier):
    """Scales the loss so that gradients are far above norm 1."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 1000.0


@pytest.mark.parametrize("clip", [1.0, None])
def test_gradient_clipping_bounds_global_norm(clip):
    torch.manual_seed(0)
    m = LoudClassifier(
        **{k: v for k, v in tiny_classifier().hparams.items() if k not in ("arch", "preprocessing")}
    )
    cb = GradNorm()
    fit(m, steps=3, callbacks=[cb], gradient_clip_val=clip, gradient_clip_algorithm="norm")
    if clip is None:
        assert max(cb.norms) > 10.0  # the test can fail: without clipping the norm is large
    else:
        assert max(cb.norms) <= 1.0 + 1e-4


class ModeSpy(L.Callback):
    def __init__(self) -> None:
        self.backbone_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.backbone_training.append(pl_module.model.blocks.training or pl_module.model.norm.training)


def test_frozen_backbone_is_bit_identical_and_in_eval_mode():
    m = tiny_classifier(
        freeze_backbone=True, timm_kwargs={"depth": 2, "drop_rate": 0.5, "drop_path_rate": 0.5}
    )
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    spy = ModeSpy()
    fit(m, steps=4, callbacks=[spy])
    after = m.model.state_dict()
    for k, v in before.items():
        if k.startswith("head."):
            continue
        assert torch.equal(v, after[k]), f"frozen parameter {k} changed"
    assert not torch.equal(before["head.weight"], after["head.weight"])  # the probe did train
    assert spy.backbone_training and not any(spy.backbone_training)


def test_checkpoint_round_trip_offline(tmp_path):
    m = tiny_classifier()
    trainer = fit(m, steps=2)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    back = load_classifier(str(path))
    assert back.class_names == list("abcde")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    m.eval(), back.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), back(x), atol=1e-6)


def test_bad_checkpoint_paths_give_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_classifier(str(tmp_path / "missing.ckpt"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable vit-ft checkpoint"):
        load_classifier(str(bad))


def test_mixup_trains_with_soft_targets():
    m = tiny_classifier(mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, random_erasing=0.25)
    assert m.augment.mixup is not None and m.augment.erasing is not None and m.mixup_fn is m.augment.mixup
    fit(m, steps=2)


def test_the_optimizer_recipe_comes_from_the_config_only():
    m = tiny_classifier(optimizer=None, scheduler=None)
    assert m.optimizer_cfg == {} and m.scheduler_cfg == {}
    with pytest.raises(ConfigError, match=r"optimizer\.lr=None must be a positive number"):
        fit(m, steps=1)


def test_hyperparameters_are_the_constructor_arguments_a_checkpoint_rebuilds_from():
    m = tiny_classifier()
    assert list(m.hparams) == [
        *("backbone", "weights", "img_size", "freeze_backbone", "reset_head", "label_smoothing"),
        *(
            "class_weights",
            "drop_path_rate",
            "timm_kwargs",
            "preprocessing_override",
            "optimizer",
            "scheduler",
            "mixup",
        ),
        *("random_erasing", "ema", "compile", "compile_mode", "grad_checkpointing", "lora"),
        *("task", "loss", "asl"),
        *("arch", "preprocessing", "class_names", "num_classes"),
    ]
    again = ViTClassifier(**m.hparams)  # load_from_checkpoint's path: arch + preprocessing given
    assert again.hparams == m.hparams and again.class_names == list("abcde")
