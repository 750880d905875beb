"""A head's class names against the data's: ImageNet names, wnid folders, respelt names, subsets."""

from __future__ import annotations

import pytest

from vit_ft.errors import ConfigError
from vit_ft.labels import check_head_matches_data


def test_imagenet_names_and_wnid_folders():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids, names = list(info.label_names()), list(info.label_descriptions())
    assert check_head_matches_data(names, 1000, names) is None
    # an image folder of the 1000 wnid folders is the standard index (sorted wnids)
    assert "wnid" in check_head_matches_data(names, 1000, sorted(wnids))
    assert "wnid" in check_head_matches_data(None, 1000, sorted(wnids))
    # a model fine-tuned on wnid folders names its classes by wnid: equal names, nothing to translate
    assert check_head_matches_data(wnids, 1000, wnids) is None
    with pytest.raises(ConfigError, match="subset of the head's 1000 classes.*data=imagenet"):
        check_head_matches_data(names, 1000, sorted(wnids[:10]))
    # ImageNet-1k spelt a little differently (e.g. transformers' id2label): matched by index
    respelt = [f"{n} (sp)" if i % 200 == 0 else n for i, n in enumerate(names)]
    assert "995 of 1000" in check_head_matches_data(respelt, 1000, names)
    with pytest.raises(ConfigError, match="data.class_index=ilsvrc"):
        check_head_matches_data(names, 1000, names[:10])
    with pytest.raises(ConfigError, match="head has 1000 classes but the data has 10"):
        check_head_matches_data(None, 1000, names[:10])
