"""One loader policy: the image loaders, the resumable order's batch count and the probe's loaders over
cached features cut epochs the same way."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers import make_image_folder
from vit_ft.data import ImageFolderDataModule
from vit_ft.data.loader_policy import LoaderPolicy, batches_per_epoch, loader_batch, per_device_batch
from vit_ft.data.resumable import EpochSampler
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing
from vit_ft.probe.features import SplitFeatures
from vit_ft.probe.linear import FeatureDataModule


@pytest.mark.parametrize("size", [1, 7, 15, 16, 17, 40])
@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_resumable_batch_count_is_what_every_rank_loader_yields(size, world, batch):
    ds = TensorDataset(torch.arange(size))
    for rank in range(world):
        sampler = EpochSampler(ds, num_replicas=world, rank=rank, with_seeds=False)
        loader = LoaderPolicy().loader(ds, batch, train=True, sampler=sampler)
        assert len(list(loader)) == batches_per_epoch(size, world, batch)


def test_batch_split_and_evaluation_batch():
    assert per_device_batch(64, 2, 4) == 8
    with pytest.raises(ConfigError) as e:
        per_device_batch(60, 8, 1)
    assert (
        "\n" not in str(e.value) and "data.batch_size=60" in str(e.value) and "multiple of 8" in str(e.value)
    )
    assert loader_batch(8, 32, train=True, asked=100) == 8
    assert (loader_batch(8, 32, train=False), loader_batch(8, None, train=False)) == (32, 8)
    assert loader_batch(8, 32, train=False, asked=100) == 100


def test_training_loader_seeds_from_its_own_generator_not_the_models():
    ds = TensorDataset(torch.arange(10))
    state = torch.get_rng_state()
    list(LoaderPolicy(seed=3).loader(ds, 4, train=True))
    assert torch.equal(torch.get_rng_state(), state)
    list(LoaderPolicy().loader(ds, 4, train=True))  # no seed: torch's default draws from the global one
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("batch", [4, 8, 16, 32])
def test_image_and_cached_feature_loaders_cut_the_same_batches(tmp_path, batch):
    root = make_image_folder(tmp_path / "shapes", n_train=5, n_val=3)  # 20 train, 12 val images
    dm = ImageFolderDataModule(root=str(root), batch_size=batch, num_workers=0, eval_batch_size=5)
    dm.configure_preprocessing(Preprocessing(16))
    dm.setup()
    feats = {
        s: SplitFeatures(torch.zeros(len(r), 3), torch.as_tensor(r.labels), torch.arange(len(r)), len(r))
        for s, r in dm.splits.items()
    }
    fdm = FeatureDataModule(dm, feats)
    for image, cached in (
        (dm.train_dataloader(), fdm.train_dataloader()),
        (dm.val_dataloader(), fdm.val_dataloader()),
        (dm.indexed_loader("val"), fdm.indexed_loader("val")),
    ):
        assert (image.batch_size, image.drop_last, len(image)) == (
            cached.batch_size,
            cached.drop_last,
            len(cached),
        )
    assert dm.train_dataloader().drop_last == (batch <= 10)
    assert [len(b[1]) for b in fdm.train_dataloader()] == [len(b[1]) for b in dm.train_dataloader()]


def test_evaluation_shares_over_ranks_repeat_no_image():
    from vit_ft.data.loader_policy import EvalShareSampler, eval_share_sampler

    shares = [list(EvalShareSampler(range(7), 3, r)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]] and [
        len(EvalShareSampler(range(7), 3, r)) for r in range(3)
    ] == [3, 2, 2]
    assert sorted(sum(shares, [])) == list(range(7))  # each image once (torch's sampler pads to 9)
    assert eval_share_sampler(range(7)) is None  # no process group: the loader reads it all
