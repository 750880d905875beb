"""Cached features for linear probes (issue 5): the cache, its keys, gathering what the ranks extracted."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_image_folder, probe_datamodule, tiny_probe_classifier
from vit_ft.data import ImageFolderDataModule
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.preprocessing import Preprocessing
from vit_ft.probe.extract import FeatureExtractor, split_features
from vit_ft.probe.features import clear_memory_cache, records_fingerprint
from vit_ft.probe.settings import LinearProbeSettings

SPLITS = ["train", "val"]


def count_forwards(clf: ViTClassifier) -> list[int]:
    calls = [0]
    clf.model.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_second_run_reuses_the_cache_without_backbone_passes(image_folder, settings):
    clf = tiny_probe_classifier()
    calls = count_forwards(clf)
    first, rep = split_features(clf, probe_datamodule(image_folder), SPLITS, settings)
    assert calls[0] > 0 and {r["source"] for r in rep.values()} == {"extracted"}
    assert len(first["train"]) == 64 and first["train"].features.shape == (64, 192)
    assert torch.equal(first["train"].indices, torch.arange(64))
    calls[0] = 0
    again, rep = split_features(clf, probe_datamodule(image_folder), SPLITS, settings)  # in memory
    assert calls[0] == 0 and {r["source"] for r in rep.values()} == {"memory"}
    clear_memory_cache()  # as a new process would be
    fresh = tiny_probe_classifier()
    calls = count_forwards(fresh)
    disk, rep = split_features(fresh, probe_datamodule(image_folder), SPLITS, settings)
    assert calls[0] == 0 and {r["source"] for r in rep.values()} == {"disk"}
    for s in SPLITS:
        assert torch.equal(disk[s].features, first[s].features)
        assert torch.equal(disk[s].labels, first[s].labels)


def test_weights_preprocessing_or_data_changes_invalidate_the_cache(image_folder, settings, tmp_path):
    clf = tiny_probe_classifier()
    _, base = split_features(clf, probe_datamodule(image_folder), SPLITS, settings)
    keys = {s: r["key"] for s, r in base.items()}

    changed = tiny_probe_classifier()
    with torch.no_grad():
        changed.model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    _, rep = split_features(changed, probe_datamodule(image_folder), SPLITS, settings)
    assert all(r["source"] == "extracted" and r["key"] != keys[s] for s, r in rep.items())

    _, rep = split_features(clf, probe_datamodule(image_folder, interpolation="bilinear"), SPLITS, settings)
    assert all(r["source"] == "extracted" and r["key"] != keys[s] for s, r in rep.items())

    with torch.no_grad():  # the head is not part of the features: same key
        clf.model.head.weight.add_(1.0)
    _, rep = split_features(clf, probe_datamodule(image_folder), SPLITS, settings)
    assert all(r["source"] == "memory" and r["key"] == keys[s] for s, r in rep.items())

    other = make_image_folder(tmp_path / "other", n_train=16, n_val=6)
    (other / "val" / "circle" / "circle_0000.jpg").unlink()
    _, rep = split_features(clf, probe_datamodule(other), SPLITS, settings)
    assert rep["val"]["source"] == "extracted" and rep["val"]["key"] != keys["val"]


def test_corrupt_or_stale_cache_file_is_one_clear_error_or_rebuilt(image_folder, settings):
    clf = tiny_probe_classifier()
    _, rep = split_features(clf, probe_datamodule(image_folder), ["val"], settings)
    path = rep["val"]["path"]
    with open(path, "wb") as f:
        f.write(b"not a cache")
    clear_memory_cache()
    with pytest.raises(ConfigError) as e:
        split_features(clf, probe_datamodule(image_folder), ["val"], settings)
    msg = str(e.value)
    assert "\n" not in msg and "is corrupt" in msg and path in msg and "probe.on_bad_cache=rebuild" in msg

    rebuild = LinearProbeSettings(cache_dir=settings.cache_dir, on_bad_cache="rebuild")
    feats, rep = split_features(clf, probe_datamodule(image_folder), ["val"], rebuild)
    assert rep["val"]["source"] == "extracted" and len(feats["val"]) == 24

    obj = torch.load(path, weights_only=True)  # same key, contents that disagree with the data
    obj["labels"] = (obj["labels"] + 1) % 4
    torch.save(obj, path)
    clear_memory_cache()
    with pytest.raises(ConfigError, match=r"is stale \(its contents do not match the data\)"):
        split_features(clf, probe_datamodule(image_folder), ["val"], settings)


def test_gather_drops_padded_duplicates_and_sorts_by_index():
    ex = FeatureExtractor(tiny_probe_classifier())
    f = torch.arange(10.0)[:, None].repeat(1, 192)
    # What a padding sampler delivers: index 0 twice, out of order.
    ex.parts = {
        0: [(torch.tensor([3, 1, 0]), f[[3, 1, 0]], torch.tensor([1, 0, 0]))],
    }
    ex.parts[0].append((torch.tensor([2, 0]), f[[2, 0]], torch.tensor([1, 0])))
    ex.merge(world=1)
    assert ex.parts == {}
    feats, labels, idx = ex.result[0]
    assert idx.tolist() == [0, 1, 2, 3] and labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(feats[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))


def _configured_first(root, pre: Preprocessing) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), batch_size=8, num_workers=0, persistent_workers=False)
    dm.configure_preprocessing(pre)
    dm.setup()
    return dm


@pytest.mark.parametrize("size", [32, 384])
def test_records_in_the_cache_key_have_the_configured_size_not_the_default(image_folder, size):
    """The tasks set the data up before the model (it needs the classes), so the model's size comes
    after the records exist: they must take it, not keep the default 224, whatever the order."""
    late = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0)
    late.setup()
    late.configure_preprocessing(Preprocessing(size))
    early = _configured_first(image_folder, Preprocessing(size))
    for split in SPLITS:
        assert late.splits[split].draft_size == early.splits[split].draft_size == size
        assert records_fingerprint(late.splits[split]) == records_fingerprint(early.splits[split])


def test_the_cache_key_of_a_32px_model_does_not_depend_on_when_the_data_was_set_up(image_folder, settings):
    clf = tiny_probe_classifier()  # 32 px
    _, after = split_features(clf, probe_datamodule(image_folder), SPLITS, settings)  # setup, then size
    pre = Preprocessing(clf.preprocessing.img_size, interpolation=clf.preprocessing.interpolation)
    calls = count_forwards(clf)
    _, before = split_features(clf, _configured_first(image_folder, pre), SPLITS, settings)
    assert calls[0] == 0 and {s: r["key"] for s, r in before.items()} == {
        s: r["key"] for s, r in after.items()
    }
