"""The bad-image ledger: one report over the map-style flags, the streamed counts and the device."""

from __future__ import annotations

import logging

import pytest
import torch

from vit_ft.data.bad_images import BadImageLedger, UnusableImageError, check_on_bad_image, skip_or_raise
from vit_ft.errors import ConfigError


class _Records:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"/data/img{i}.jpg"


def test_one_report_over_workers_streams_and_the_device(caplog):
    ledger = BadImageLedger("skip")
    splits = {"train": _Records(5), "val": object()}
    ledger.record_flags("train", 5)[3] = 1  # a worker flagged a record
    ledger.stream_slots("val")[2] += 2  # a streamed split's worker counted two
    data = torch.tensor([1, 2, 3], dtype=torch.uint8)
    with caplog.at_level(logging.WARNING):
        ledger.found_on_device("train", splits["train"], 1, "img1.jpg", "truncated", data)
        ledger.found_on_device("train", splits["train"], 1, "img1.jpg", "truncated", data)  # again: once
        for _ in range(2):  # a streamed file without a name: counted once, by its bytes
            ledger.found_on_device("val", splits["val"], -1, "<bytes>", "truncated", data)
    report = ledger.report(splits)
    assert report == {
        "count": 5,
        "by_split": {"train": 2, "val": 3},
        "files": ["/data/img1.jpg", "/data/img3.jpg"],
    }
    assert sum("skipping unusable image" in r.getMessage() for r in caplog.records) == 2


def test_error_mode_names_the_file_and_the_way_out():
    ledger = BadImageLedger()
    with pytest.raises(UnusableImageError) as e:
        ledger.found_on_device("train", _Records(2), 1, "img1.jpg", "truncated", torch.zeros(1))
    assert (
        str(e.value)
        == "unusable image /data/img1.jpg: truncated; fix or remove it, or set data.on_bad_image=skip"
    )
    with pytest.raises(ConfigError, match="data.on_bad_image='drop' must be 'error' or 'skip'"):
        BadImageLedger("drop")


def test_one_policy_for_every_place_a_bad_image_is_met(caplog):
    with caplog.at_level(logging.WARNING):
        skip_or_raise("skip", "a.jpg", "truncated")
        skip_or_raise("skip", "a.jpg", "truncated", first=False)  # met again: not logged again
    assert [r.getMessage() for r in caplog.records] == ["skipping unusable image a.jpg (truncated)"]
    with pytest.raises(UnusableImageError, match=r"^unusable image a.jpg: truncated; .*on_bad_image=skip$"):
        skip_or_raise("error", "a.jpg", "truncated", first=False)
    check_on_bad_image("skip")
    for key in ("--on-bad-image", "on_bad_image"):  # the shard writer's and predict's own option
        with pytest.raises(ConfigError, match=f"^{key}='drop' must be 'error' or 'skip'$"):
            check_on_bad_image("drop", key)
