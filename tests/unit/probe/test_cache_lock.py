"""Two jobs building the same probe feature cache at once: one extracts and writes it atomically,
the other waits for the lock and reads the file; nothing is corrupt and no temporary is left."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from vit_ft.probe.features import SplitFeatures, cache_lock, cache_path, load_features, save_features


def test_second_builder_waits_then_reuses_the_file(tmp_path):
    cache_dir, key = str(tmp_path / "features"), "k" * 32
    labels = np.arange(50) % 3
    built, loaded, errors = [], [], []

    def job(i: int) -> None:
        try:
            path = cache_path(cache_dir, key)
            with cache_lock(cache_dir, [key]):
                if os.path.exists(path):
                    loaded.append(load_features(path, key, labels))
                    return
                time.sleep(0.3)  # a slow extraction: the other job arrives meanwhile
                feats = SplitFeatures(
                    torch.full((50, 8), float(i)), torch.as_tensor(labels), torch.arange(50), 50
                )
                save_features(path, key, "train", feats, {"job": i})
                built.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(built) == 1 and len(loaded) == 1
    assert torch.equal(loaded[0].features, torch.full((50, 8), float(built[0])))
    assert sorted(os.listdir(cache_dir)) == [f"{key}.lock", f"{key}.pt"]  # no temporary left


def test_split_features_waits_for_the_job_building_the_cache(image_folder, settings, tmp_path):
    import shutil

    from tests.helpers import probe_datamodule, tiny_probe_classifier
    from vit_ft.probe.extract import split_features
    from vit_ft.probe.features import clear_memory_cache
    from vit_ft.probe.settings import LinearProbeSettings

    _, rep = split_features(tiny_probe_classifier(), probe_datamodule(image_folder), ["val"], settings)
    key, built = rep["val"]["key"], rep["val"]["path"]
    clear_memory_cache()
    other = LinearProbeSettings(cache_dir=str(tmp_path / "shared"))
    clf = tiny_probe_classifier()
    calls, result = [0], {}
    clf.model.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with cache_lock(other.cache_dir, [key]):  # another job is building this cache file
        t = threading.Thread(
            target=lambda: result.update(
                rep=split_features(clf, probe_datamodule(image_folder), ["val"], other)[1]
            )
        )
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive() and calls[0] == 0  # waiting, not extracting
        shutil.copy(built, cache_path(other.cache_dir, key))  # what that job writes
    t.join(timeout=60)
    assert result["rep"]["val"]["source"] == "disk" and calls[0] == 0
