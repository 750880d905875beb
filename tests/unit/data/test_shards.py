"""WebDataset shards, in process: the writer (index, no re-encoding, resumable, bad images), the reader
(equal ranks and honest lengths over uneven shards, position -> sample independent of workers and of
where an epoch starts, header-only skipping), http / pipe: sources, bad images inside a tar."""

from __future__ import annotations

import functools
import http.server
import json
import os
import tarfile
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import make_image_folder
from vit_ft.data import WebDatasetDataModule, tar_stream
from vit_ft.data import wds as wds_mod
from vit_ft.data.bad_images import UnusableImageError
from vit_ft.data.shards import write_shards
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("sh") / "shapes", n_train=15, n_val=4)  # 60 + 16


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sh") / "out"
    return out, write_shards(str(folder), str(out), shard_size="19k", workers=2)


def _train_pattern(out: Path, index: dict) -> str:
    return str(out / index["splits"]["train"]["pattern"])


def _dm(train, *, rank=0, world=1, workers=0, crc=True, **kw) -> WebDatasetDataModule:
    dm = WebDatasetDataModule(train=train, batch_size=4, num_workers=workers, persistent_workers=False, **kw)
    dm.configure_preprocessing(Preprocessing(32))
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    if crc:  # each sample becomes the CRC of its stored bytes: which sample it is, exactly
        dm.transform = lambda train: lambda data: torch.tensor(zlib.crc32(data), dtype=torch.int64)
    return dm


def _epoch(dm, epoch: int = 0) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [b[0] for b in loader]


def test_writer_stores_the_bytes_with_an_index_and_skips_finished_shards(folder, shards, tmp_path):
    out, index = shards
    train = index["splits"]["train"]
    counts = [s["count"] for s in train["shards"]]
    assert train["total"] == 60 and index["splits"]["val"]["total"] == 16 and len(counts) > 3
    assert len(set(counts)) > 1  # uneven shards
    assert index["classes"] == ["circle", "cross", "square", "triangle"] and index["source"]["fingerprint"]
    with tarfile.open(out / train["shards"][0]["name"]) as tf:
        names = tf.getnames()
        first = tf.extractfile(names[0]).read()
    assert names[:2] == ["000000000.cls", "000000000.jpg"] or names[:2] == ["000000000.cls", "000000000.png"]
    src = sorted((folder / "train" / "circle").iterdir())[0]
    assert first == str(train["shards"][0]["labels"][0]).encode()
    with tarfile.open(out / train["shards"][0]["name"]) as tf:
        assert tf.extractfile(names[1]).read() == src.read_bytes()  # as stored: no re-encoding
    # interrupted: one shard gone, a half-written .tmp left; the same command writes only that one
    gone = out / train["shards"][2]["name"]
    gone.unlink()
    (out / (gone.name + ".tmp")).write_bytes(b"partial")
    again = write_shards(str(folder), str(out), shard_size="19k", workers=1)
    assert (again["_written"], again["_skipped"]) == (
        1,
        len(counts) + len(index["splits"]["val"]["shards"]) - 1,
    )
    assert gone.exists() and not (out / (gone.name + ".tmp")).exists()
    assert again["splits"] == index["splits"]


def test_writer_bad_images_error_or_skip_named_in_the_report(tmp_path):
    src = make_image_folder(tmp_path / "bad", n_train=3, n_val=2)
    (src / "train" / "cross" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ConfigError, match=r"broken\.jpg.*--on-bad-image skip"):
        write_shards(str(src), str(tmp_path / "o1"), shard_size="1MB")
    assert not list((tmp_path / "o1").glob("*.tar.tmp"))
    index = write_shards(str(src), str(tmp_path / "o2"), shard_size="1MB", on_bad_image="skip")
    assert index["splits"]["train"]["total"] == 12
    assert [Path(b["path"]).name for b in index["bad_images"]] == ["broken.jpg"]
    assert "broken.jpg" in (tmp_path / "o2" / "bad_images.csv").read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_yields_the_same_number_of_batches_its_length_says(shards, workers):
    out, index = shards
    names = [s["name"] for s in index["splits"]["train"]["shards"]][1:]  # drop one: 5x uneven, odd total
    urls = [str(out / n) for n in names]
    total = sum(s["count"] for s in index["splits"]["train"]["shards"][1:])
    per_rank = []
    for rank in (0, 1):
        dm = _dm(urls, rank=rank, world=2, workers=workers)
        batches = _epoch(dm, 1)
        assert len(batches) == len(dm.train_dataloader()) == total // 2 // 4  # honest, drop_last
        per_rank.append(torch.cat(batches).tolist())
    assert len(per_rank[0]) == len(per_rank[1])
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shares
    assert len(dm.val_dataloader()) == -(-16 // 4)


def test_epoch_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch(shards):
    out, index = shards
    train = _train_pattern(out, index)
    plain = _epoch(_dm(train, workers=0), 1)
    assert len(torch.cat(plain).unique()) == 60 - 60 % 4  # every sample once (but the dropped partial batch)
    two = _epoch(_dm(train, workers=2), 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, two))  # independent of the worker count
    other = _epoch(_dm(train, workers=0), 2)
    assert not all(torch.equal(a, b) for a, b in zip(plain, other))  # reshuffled each epoch
    # a resumed epoch: the checkpoint says 5 batches of epoch 1 were trained on
    dm = _dm(train, workers=2)
    dm.load_state_dict(
        {"train_order": {"epoch": 1, "batches": 5, "seed": 0, "size": 60, "num_replicas": 1, "batch_size": 4}}
    )
    rest = [b[0] for b in dm.train_dataloader()]
    assert len(rest) == len(plain) - 5 and all(torch.equal(a, b) for a, b in zip(plain[5:], rest))


def test_augmentation_draws_from_the_sample_position(shards):
    out, index = shards
    train = _train_pattern(out, index)
    full = _epoch(_dm(train, crc=False), 0)
    dm = _dm(train, crc=False, workers=2)
    dm.load_state_dict(
        {"train_order": {"epoch": 0, "batches": 7, "seed": 0, "size": 60, "num_replicas": 1, "batch_size": 4}}
    )
    rest = [b[0] for b in dm.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(full[7:], rest)) and len(rest) == len(full) - 7


def test_skipping_reads_tar_headers_not_image_bytes(shards, monkeypatch):
    out, index = shards
    entry = index["splits"]["train"]["shards"][0]
    path = out / entry["name"]
    read = [0]

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(tar_stream, "open_url", lambda url, cache_dir=None: (Counting(open(url, "rb")), True))
    split = wds_mod.ShardSplit([str(path)], [entry["count"]], np.array(entry["labels"]), "train")
    data, _ = wds_mod.ShardReader(split).get(0, entry["count"] - 1)
    with tarfile.open(path) as tf:
        skipped = sum(m.size for m in tf.getmembers()[:-2] if not m.name.endswith(".cls"))
    assert skipped > 3000 and read[0] <= os.path.getsize(path) - skipped  # no byte of the others' images


def test_evaluation_and_indexed_passes_see_each_sample_once_in_order(shards):
    out, index = shards
    dm = _dm(_train_pattern(out, index))
    loader = dm.indexed_loader("val")
    ids = torch.cat([b[0] for b in loader]).tolist()
    assert ids == list(range(16))
    labels = torch.cat([b[2] for b in loader]).numpy()
    assert np.array_equal(labels, dm.splits["val"].labels)


@pytest.fixture
def http_root(shards):
    out, _ = shards
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_and_pipe_sources_read_the_same_samples(shards, http_root):
    out, index = shards
    local = _dm(_train_pattern(out, index))
    ref = [b[0] for b in local.val_dataloader()]
    pattern = index["splits"]["train"]["pattern"]
    val_pattern = index["splits"]["val"]["pattern"]
    over_http = _dm(f"{http_root}/{pattern}", val=f"{http_root}/{val_pattern}")
    assert over_http.class_names == local.class_names  # the index, fetched over http
    got = [b[0] for b in over_http.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(ref, got)) and len(got) == len(ref)
    piped = _dm(
        f"pipe:cat {out}/{pattern}", val=f"pipe:cat {out}/{val_pattern}", index=str(out / "index.json")
    )
    assert all(torch.equal(a, b) for a, b in zip(ref, [b[0] for b in piped.val_dataloader()]))


def test_bad_image_inside_a_tar_and_a_shard_without_index(tmp_path, shards):
    import webdataset as wds

    out, index = shards
    good = (out / index["splits"]["train"]["shards"][0]["name"]).read_bytes()
    with tarfile.open(fileobj=__import__("io").BytesIO(good)) as tf:
        jpg = next(tf.extractfile(m).read() for m in tf if not m.name.endswith(".cls"))
    path = tmp_path / "mixed-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for k, (img, c) in enumerate([(jpg, 0), (b"not an image at all", 1), (jpg, 1)]):
            sink.write({"__key__": f"s{k}", "jpg": img, "cls": str(c).encode()})
    # no index beside it: counts and labels from a header scan; class names given
    dm = _dm(str(path), val=str(path), classes=["a", "b"], crc=False, on_bad_image="skip")
    ds = dm.dataset("val", dm.transform(False), False)
    assert ds[0] is not None and ds[1] is None and ds[2][1] == 1
    assert dm.bad_image_report()["files"] == [f"{path} (sample 1)"]
    strict = _dm(str(path), val=str(path), classes=["a", "b"], crc=False)
    with pytest.raises(UnusableImageError, match=r"mixed-000000\.tar \(sample 1\).*on_bad_image=skip"):
        strict.dataset("val", strict.transform(False), False)[1]


def test_index_mismatch_and_missing_val_are_one_line_errors(shards, tmp_path):
    out, index = shards
    other = tmp_path / "train-000000.tar"
    other.write_bytes((out / index["splits"]["train"]["shards"][0]["name"]).read_bytes())
    (tmp_path / "index.json").write_text(json.dumps({**index, "splits": {"train": {"shards": []}}}))
    with pytest.raises(ConfigError, match="is not in the index"):
        _dm(str(other))


def test_bench_shards_prints_folder_and_shards_side_by_side(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_shards.py"
    spec = importlib.util.spec_from_file_location("bench_shards", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        ["--images", "48", "--rounds", "1", "--latency", "0.001", "--shard-size", "40k", "--workers", "2"]
    )
    out = capsys.readouterr().out
    assert "folder" in out and "shards" in out and "per 10,000 samples" in out
    assert len([ln for ln in out.splitlines() if ln.startswith("images/s") and ln.endswith("x")]) == 2
    fetched = next(ln for ln in out.splitlines() if ln.startswith("data set sizes fetched")).split()
    assert float(fetched[-3][:-1]) >= 2 and fetched[-2] == "1.0x"  # every epoch streamed; once cached


def test_writer_reads_a_hugging_face_data_set_as_stored(tmp_path):
    import datasets

    from tests.helpers import HF_NAMES, hf_dataset

    saved = str(tmp_path / "saved")
    datasets.DatasetDict(train=hf_dataset(8), validation=hf_dataset(4, seed=50)).save_to_disk(saved)
    index = write_shards(saved, str(tmp_path / "out"), kind="hf", shard_size="1MB")
    assert index["classes"] == list(HF_NAMES) and index["splits"]["train"]["total"] == 8
    assert index["splits"]["val"]["total"] == 4
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tf:
        names = tf.getnames()
        first = tf.extractfile("000000000.png").read()
    assert "000000001.jpg" in names  # the format of the stored bytes (PNG, JPEG alternate)
    assert first == hf_dataset(8)[0]["image"].tobytes() or first[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_shard_cache_fetches_each_remote_shard_once_for_every_worker_and_epoch(shards, tmp_path):
    """pipe:/http shards are streams: without data.shard_cache each loader worker reads every shard whole
    (skipping the others' samples) every epoch; with it, each shard is fetched once into the folder and
    read from there with seeks, the same samples in the same order."""
    out, index = shards
    log = tmp_path / "fetches.log"
    pattern = index["splits"]["train"]["pattern"]
    n_shards = len(index["splits"]["train"]["shards"])
    fetch = tmp_path / "fetch.sh"  # a pipe: command that counts its runs
    fetch.write_text(f'echo "$1" >> {log}\ncat "$1"\n')
    counted = f"pipe:sh {fetch} {out}/{pattern}"
    val = str(out / index["splits"]["val"]["pattern"])
    ref = _dm(_train_pattern(out, index), val=val)
    want = [_epoch(ref, e) for e in (0, 1)]

    streamed = _dm(counted, val=val, index=str(out / "index.json"), workers=2)
    got = [_epoch(streamed, e) for e in (0, 1)]
    assert all(torch.equal(a, b) for ep_a, ep_b in zip(got, want) for a, b in zip(ep_a, ep_b))
    assert len(log.read_text().splitlines()) >= 2 * n_shards  # every shard read again in every epoch
    log.unlink()

    cache = tmp_path / "cache"
    cached = _dm(counted, val=val, index=str(out / "index.json"), workers=2, shard_cache=str(cache))
    got = [_epoch(cached, e) for e in (0, 1)]
    assert all(torch.equal(a, b) for ep_a, ep_b in zip(got, want) for a, b in zip(ep_a, ep_b))
    assert len(log.read_text().splitlines()) == n_shards  # once each, for 2 workers x 2 epochs
    assert len(list(cache.glob("*.tar"))) == n_shards and not list(cache.glob("*.part*"))


def test_a_remote_shard_that_fails_mid_copy_leaves_nothing_in_the_cache(tmp_path):
    from vit_ft.data.tar_stream import cached_copy

    broken = tmp_path / "broken.sh"  # half a shard, then the command fails (a dropped connection)
    broken.write_text("head -c 1000 /dev/zero\nexit 3\n")
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match=r"could not copy it into data.shard_cache"):
        cached_copy(f"pipe:sh {broken} train-000000.tar", str(cache))
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no part, no shard


def test_a_shard_cache_that_cannot_be_written_is_one_line(shards, tmp_path):
    out, index = shards
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^data.shard_cache=.*a_file/cache.* cannot hold the shards") as e:
        _dm(_train_pattern(out, index), shard_cache=str(blocker / "cache"))
    assert "\n" not in str(e.value)
