"""data.sampler=balanced|sqrt: classes drawn equally often (or as sqrt(count)), the same number of
batches on every rank, an order that is a function of (seed, epoch, position) only (so a resumed epoch
goes on exactly), data.samples_per_epoch, the refusals, and the imbalance line of a run and the scan."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vit_ft.data.datamodule import ImageDataModule, check_sampler
from vit_ft.data.loader_policy import LoaderPolicy, batches_per_epoch
from vit_ft.data.resumable import EpochSampler, ResumableOrder, WeightedEpochSampler, class_sampling_weights
from vit_ft.data.scan import imbalance_summary
from vit_ft.data.scan import main as scan_main
from vit_ft.errors import ConfigError

LABELS = np.repeat(np.arange(3), [600, 60, 30])  # 20:2:1


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        i, seed = item
        return torch.tensor([i, seed % 1000])


def _order(world: int = 1, rank: int = 0, epoch: int = 0, start: int = 0, mode="balanced", spe=None):
    ds = Indices(len(LABELS))
    s = WeightedEpochSampler(
        ds,
        class_sampling_weights(LABELS, mode),
        samples_per_epoch=spe,
        num_replicas=world,
        rank=rank,
        seed=7,
        epoch=epoch,
        start=start,
    )
    return s, list(s)


@pytest.mark.parametrize(("mode", "share"), [("balanced", [1, 1, 1]), ("sqrt", np.sqrt([600, 60, 30]))])
def test_classes_are_drawn_as_the_sampler_says(mode, share):
    drawn = np.concatenate([[i for i, _ in _order(epoch=e, mode=mode)[1]] for e in range(6)])
    freq = np.bincount(LABELS[drawn], minlength=3) / len(drawn)
    want = np.asarray(share, dtype=float) / np.sum(share)
    assert np.abs(freq - want).max() < 0.03, (freq, want)
    plain = np.bincount(LABELS, minlength=3) / len(LABELS)
    assert freq[2] > 2 * plain[2]  # the rarest class is drawn far more often than it occurs


def test_the_order_is_a_function_of_seed_epoch_and_position_and_resumes_exactly():
    one = [i for i, _ in _order()[1]]
    assert one == [i for i, _ in _order()[1]]  # the same draws again
    assert one != [i for i, _ in _order(epoch=1)[1]]  # another epoch, other draws
    for rank in (0, 1):
        s, full = _order(world=2, rank=rank)
        assert len(full) == len(s) == -(-len(LABELS) // 2)  # every rank as many samples
        for k in (0, 5, 344):
            assert _order(world=2, rank=rank, start=k)[1] == full[k:]
    # the ranks' shares are one draw of the epoch, dealt out in turn
    r0, r1 = _order(world=2, rank=0)[1], _order(world=2, rank=1)[1]
    assert [p[0] for p in r0] == one[0::2] and [p[0] for p in r1] == one[1::2]
    assert {p[1] for p in r0}.isdisjoint({p[1] for p in r1})  # one sample seed per position


def test_a_resumed_loader_with_workers_gives_the_tail_of_the_epoch_on_both_ranks():
    """ResumableOrder restored mid-epoch: the loader (2 workers) yields the uninterrupted batches after it."""

    class Module(ResumableOrder):
        sampler = "balanced"

        def __init__(self, world, rank):
            self.seed, self.trainer = 3, types.SimpleNamespace(world_size=world, global_rank=rank)

        def loader(self):
            ds = Indices(len(LABELS))
            sampler = self.epoch_sampler(ds, 8, labels=LABELS)
            policy = LoaderPolicy(num_workers=2, seed=3)
            return policy.loader(ds, 8, train=True, sampler=sampler, epoch_size=self.epoch_size(ds))

    for rank in (0, 1):
        full = [b for b in Module(2, rank).loader()]
        assert len(full) == batches_per_epoch(len(LABELS), 2, 8)
        resumed = Module(2, rank)
        resumed.load_state_dict(
            {
                "train_order": {
                    "epoch": 0,
                    "batches": 11,
                    "seed": 3,
                    "size": len(LABELS),
                    "num_replicas": 2,
                    "batch_size": 8,
                    "sampler": "balanced",
                }
            }
        )
        tail = list(resumed.loader())
        assert len(tail) == len(full) - 11
        assert all(torch.equal(a, b) for a, b in zip(tail, full[11:], strict=True))


def test_samples_per_epoch_sets_the_epoch_length():
    s, order = _order(world=2, spe=101)
    assert len(order) == len(s) == 51
    assert batches_per_epoch(101, 2, 8) == 51 // 8


def test_none_is_today_s_order_and_the_settings_are_checked():
    assert check_sampler("none", None) == ("none", None)
    dm = ImageDataModule(batch_size=4, num_workers=0)
    dm.trainer = None
    s = dm.epoch_sampler(Indices(10), 4)
    assert type(s) is EpochSampler and list(s) == list(EpochSampler(Indices(10), seed=0))
    for args, needle in [
        (("uniform", None), "data.sampler='uniform' is not one of none, balanced, sqrt"),
        (("none", 100), "data.samples_per_epoch=100 needs a drawn order"),
        (("balanced", 0), "data.samples_per_epoch=0 must be a positive integer"),
    ]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            check_sampler(*args)


def test_the_imbalance_line_and_its_hint(tmp_path, capsys):
    line = imbalance_summary([60, 6, 5], ["a", "b", "c"])
    assert line.startswith("class counts (train): 5 (c) to 60 (a) images per class over 3 classes")
    assert "imbalance ratio 12.0" in line and "data.sampler=balanced" in line
    assert "model.class_weights=balanced" in line
    assert "data.sampler" not in imbalance_summary([10, 1], ["a", "b"])  # 10: no hint
    for c, n in (("a", 12), ("b", 1)):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(n):
            from PIL import Image

            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    assert scan_main([str(tmp_path), "--report", str(tmp_path / "r.csv"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 (b) to 12 (a) images per class over 2 classes; imbalance ratio 12.0; imbalanced" in out


def test_a_loader_over_a_drawn_order_drops_the_last_partial_batch_of_the_drawn_epoch():
    ds = Indices(10)
    s = WeightedEpochSampler(ds, torch.ones(10, dtype=torch.float64), samples_per_epoch=20, seed=0)
    loader: DataLoader = LoaderPolicy().loader(ds, 8, train=True, sampler=s, epoch_size=20)
    assert len(loader) == batches_per_epoch(20, 1, 8) == 2


def test_the_linear_probe_on_cached_features_draws_with_the_data_s_sampler():
    from vit_ft.probe.features import SplitFeatures
    from vit_ft.probe.linear import FeatureDataModule

    base = ImageDataModule(batch_size=10, num_workers=0, sampler="balanced", samples_per_epoch=300)
    base.class_names, base.splits = ["a", "b", "c"], {"train": None}
    y = torch.as_tensor(LABELS)
    feats = SplitFeatures(torch.zeros(len(y), 2), y, torch.arange(len(y)), len(y))
    dm = FeatureDataModule(base, {"train": feats})
    dm.trainer = None
    loader = dm.train_dataloader()
    assert len(loader) == 30  # data.samples_per_epoch=300, batch 10
    drawn = torch.cat([b[1] for b in loader])
    assert np.bincount(drawn.numpy(), minlength=3).min() > 70  # about 100 per class, not 261:26:13
