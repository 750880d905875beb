"""On-device augmentation: random erasing, then Mixup/CutMix with soft targets (even batches only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vit_ft.models.augment import DeviceAugment, soft_target_loss


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def test_off_by_default_and_the_batch_passes_through():
    aug = DeviceAugment({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": None}, 0.0, 0.1, 4)
    assert aug.mixup is None and aug.erasing is None
    x, y = batch(4)
    out, soft = aug(x, y)
    assert out is x and soft is None


def test_mixup_gives_smoothed_soft_targets_on_even_batches_only():
    torch.manual_seed(0)
    aug = DeviceAugment({"mixup_alpha": 0.8}, 0.0, 0.1, 4)
    x, y = batch(4)
    out, soft = aug(x.clone(), y)
    assert soft.shape == (4, 4) and torch.allclose(soft.sum(1), torch.ones(4))
    assert float(soft.min()) >= 0.1 / 4 - 1e-6 and not torch.equal(out, x)  # smoothing, mixed images
    x3, y3 = batch(3)
    out3, soft3 = aug(x3.clone(), y3)  # timm's Mixup needs pairs: an odd batch keeps hard labels
    assert soft3 is None and torch.equal(out3, x3)


def test_random_erasing_runs_on_the_batch_device():
    torch.manual_seed(0)
    aug = DeviceAugment(None, 1.0, 0.0, 4)
    x, y = batch(2)
    out, soft = aug(x.clone(), y)
    assert soft is None and aug.erasing.device == x.device and not torch.equal(out, x)


def test_soft_target_loss_is_cross_entropy_for_one_hot_targets():
    logits, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0])
    got = soft_target_loss(logits.bfloat16(), F.one_hot(y, 4).float())
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(F.cross_entropy(logits.bfloat16().float(), y)), abs=1e-6)
