"""Shared test helpers (fixtures live in conftest.py): a runner for the real CLI, tiny models and
trainers, generated image folders, and image files of every kind the loaders must handle.

Test files import from here (``from tests.helpers import ...``). Nothing here downloads: images are
generated, models are random-init tiny ViTs.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.forkserver import fork_run

ROOT = Path(__file__).resolve().parents[1]

# A ViT of 1-2 blocks at 32 px with batch 8: a CLI run takes seconds on 2 cores.
TINY = [
    "model=vit_tiny",
    "model.img_size=32",
    "+model.timm_kwargs.depth=2",
    "trainer=cpu",
    "trainer.precision=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "data.batch_size=8",
    "data.num_workers=0",
    "optimizer=adamw",
    "optimizer.lr=0.002",
    "scheduler.warmup_steps=3",
]


def tiny_hf_vit(
    id2label: dict[int, str] | None = None, seed: int = 0, scale: float = 0.5, num_labels: int = 4
):
    """A transformers ViTForImageClassification (hidden 32, 1 layer, 32 px, patch 8) with perturbed weights."""
    import torch
    import transformers

    names = {"id2label": id2label, "label2id": {n: i for i, n in id2label.items()}} if id2label else {}
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=num_labels,
        **names,
    )
    model = transformers.ViTForImageClassification(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def quiet_trainer(**kwargs):
    """An in-process CPU Trainer without logger, checkpoints, progress bar, summary or sanity check."""
    import lightning as L

    base = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**base, **kwargs})


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(
        HOME=str(tmp_path / "home"),  # no ~/.netrc: wandb has no credentials and goes offline
        VIT_FT_CACHE=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


_SERVER_HOME: Path | None = None


def server_env() -> dict[str, str]:
    """The fork server's environment: the shape of :func:`clean_env`, under a folder of its own."""
    global _SERVER_HOME
    if _SERVER_HOME is None:
        _SERVER_HOME = Path(tempfile.mkdtemp(prefix="vit-ft-cli-server-"))
        atexit.register(shutil.rmtree, _SERVER_HOME, True)
    return clean_env(_SERVER_HOME)


def run_cli(
    script: str, *overrides: str, tmp_path: Path, check: bool = True, timeout: int = 300, fresh: bool = False
):
    """Run ``python <script> overrides...`` from the repo root, as a user would.

    The command runs in its own process, forked from a server that has torch, Lightning and timm imported
    (tests/forkserver.py); ``fresh=True`` (or ``VIT_FT_TEST_FRESH=1``) starts a new interpreter instead,
    for tests about what happens while importing (warnings printed by an import)."""
    cmd = [sys.executable, str(ROOT / script), *overrides]
    env = clean_env(tmp_path)
    if fresh or os.environ.get("VIT_FT_TEST_FRESH") == "1":
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    else:
        proc = fork_run(cmd, tmp_path, env, server_env(), timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


SHAPE_CLASSES = ["circle", "cross", "square", "triangle"]  # make_image_folder's classes, sorted


def make_image_folder(root: Path, n_train: int = 16, n_val: int = 6, size: int = 40) -> Path:
    """4 learnable classes of real JPEG/PNG files in train/ and val/ class folders."""
    from vit_ft.data.quickstart import make_quickstart_dataset

    return Path(make_quickstart_dataset(str(root), n_train=n_train, n_val=n_val, size=size))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_wandb_records(run_file: Path) -> list:
    """Records of a ``run-*.wandb`` file (LevelDB log framing around protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a wandb run file"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        off = pos % block
        if block - off < 7:
            pos += block - off
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += block - off
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def wandb_history_and_config(run_dir: Path) -> tuple[list[dict], dict]:
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one wandb run in {run_dir}, found {files}"
    history, config = [], {}
    for r in read_wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "config":
            for i in r.config.update:
                config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return history, config


# Image files of every kind the loaders must handle (was tests/data_factory.py).
def photo(w: int = 48, h: int = 36, seed: int = 0) -> Image.Image:
    """A smooth RGB picture with some structure (so JPEG compresses it like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    arr = (base + 80 * np.sin(x[..., None] / (3 + seed % 5) + np.arange(3)) + 40 * (y[..., None] / h)) % 256
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def exif_rotated_jpeg(orientation: int, w: int = 40, h: int = 24) -> bytes:
    img = photo(w, h, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def unusual_images() -> dict[str, bytes]:
    """``{file name: bytes}`` of valid but unusual images (each must load as RGB)."""
    out = {}
    p = photo()
    out["cmyk.jpg"] = jpeg_bytes(p.convert("CMYK"))
    for name, img, fmt in (
        ("gray.png", p.convert("L"), "PNG"),
        ("gray.jpg", p.convert("L"), "JPEG"),
        ("rgba.png", p.convert("RGBA"), "PNG"),
        ("palette.png", p.convert("P"), "PNG"),
        ("photo.webp", p, "WEBP"),
        ("anim.gif", p.convert("P"), "GIF"),
        ("one.png", Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        ("one.jpg", Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"),
        ("photo.bmp", p, "BMP"),
        ("photo.tif", p, "TIFF"),
    ):
        b = io.BytesIO()
        img.save(b, fmt)
        out[name] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray((np.arange(48 * 36, dtype=np.uint16).reshape(36, 48) * 37).astype(np.uint16)).save(
        b, "PNG"
    )
    out["sixteen.png"] = b.getvalue()
    # palette with a transparent index, and RGBA with a fully transparent corner
    pal = p.convert("P")
    b = io.BytesIO()
    pal.save(b, "PNG", transparency=0)
    out["palette_transparent.png"] = b.getvalue()
    out["rotated.jpg"] = exif_rotated_jpeg(6)
    return out


def bad_images() -> dict[str, bytes]:
    """``{file name: bytes}`` of unusable files (each must raise BadImageError / be skipped)."""
    good = jpeg_bytes(photo(64, 48))
    return {
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "notes_renamed.jpg": b"this is not an image, just text with a .jpg name\n" * 4,
        "header_only.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    }


def write(folder: str, files: dict[str, bytes]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def class_folder(
    root: str, classes: dict[str, int], size: tuple[int, int] = (40, 30), ext: str = ".jpg", seed: int = 0
):
    """``root/<class>/<class>_<i><ext>`` with ``classes[c]`` photos each."""
    for k, (c, n) in enumerate(classes.items()):
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            photo(*size, seed=seed + 31 * k + i).save(os.path.join(d, f"{c}_{i}{ext}"))


# Hugging Face data sets (unit/data/test_hf.py, cli/test_data_e2e.py).
HF_NAMES = ["cat", "dog", "owl"]


def hf_rows(n: int, seed: int = 0, bad: int = 0) -> dict:
    images, labels = [], []
    for i in range(n):
        b = io.BytesIO()
        photo(40, 30, seed=seed + i).save(b, "JPEG" if i % 2 else "PNG")
        images.append({"bytes": b.getvalue(), "path": None})
        labels.append(i % len(HF_NAMES))
    for j in range(bad):
        images[j] = {"bytes": bad_images()["truncated.jpg"], "path": f"bad{j}.jpg"}
    return {"image": images, "label": labels}


def hf_dataset(n: int, seed: int = 0, bad: int = 0, label_feature=None):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": label_feature or datasets.ClassLabel(names=HF_NAMES)}
    )
    return datasets.Dataset.from_dict(hf_rows(n, seed, bad), features=features)


# A partial ImageNet (unit/data/test_imagenet.py, cli/test_data_e2e.py): wnid -> standard class index.
IMAGENET_WNIDS = {"n01440764": 0, "n01443537": 1, "n04589890": 904, "n15075141": 999}


def make_imagenet(root: str, per_class: int = 3, flat_val: bool = True) -> str:
    class_folder(os.path.join(root, "train"), {w: per_class for w in IMAGENET_WNIDS}, ext=".JPEG")
    val = os.path.join(root, "val")
    if flat_val:
        os.makedirs(val)
        rows = ["ImageId,PredictionString"]
        for k, w in enumerate(sorted(IMAGENET_WNIDS, reverse=True) * 2):
            image_id = f"ILSVRC2012_val_{k + 1:08d}"
            photo(40, 30, seed=100 + k).save(os.path.join(val, image_id + ".JPEG"))
            rows.append(f"{image_id},{w} 10 20 30 40 {w} 1 2 3 4")
        with open(os.path.join(root, "LOC_val_solution.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    else:
        class_folder(val, {w: 2 for w in IMAGENET_WNIDS}, ext=".JPEG", seed=50)
    return root


# Weights and predictions (unit/weights, unit/models, unit/tasks, cli/).
def assert_close_rel(a, b, rtol: float = 1e-4) -> None:
    """``a`` equals ``b`` up to ``rtol``, relative to the largest value of ``b``."""
    import torch

    assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())), (a - b).abs().max()


def save_hf_dir(model, path: Path) -> Path:
    """``model`` (a tiny_hf_vit) as a transformers directory whose preprocessor is 32 px bilinear,
    mean (0.4, 0.5, 0.6) and std (0.2, 0.3, 0.25)."""
    model.save_pretrained(path)
    prep = {"do_normalize": True, "do_resize": True, "image_mean": [0.4, 0.5, 0.6]}
    prep.update(image_std=[0.2, 0.3, 0.25], resample=2, size={"height": 32, "width": 32})
    (path / "preprocessor_config.json").write_text(json.dumps(prep))
    return path


# Linear probes (unit/probe): a frozen tiny classifier and the image folder it reads.
def tiny_probe_classifier(seed: int = 0):
    import torch

    from vit_ft.models.classifier import ViTClassifier

    torch.manual_seed(seed)
    return ViTClassifier(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        class_names=["circle", "cross", "square", "triangle"],
        freeze_backbone=True,
        timm_kwargs={"patch_size": 8, "depth": 1},
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        scheduler={"warmup_steps": 0, "decay": "cosine"},
    )


def probe_datamodule(root, interpolation: str | None = None, clf=None):
    from vit_ft.data import ImageFolderDataModule
    from vit_ft.preprocessing import Preprocessing

    dm = ImageFolderDataModule(root=str(root), batch_size=8, num_workers=0, persistent_workers=False)
    dm.setup()
    pre = (clf or tiny_probe_classifier()).preprocessing
    dm.configure_preprocessing(Preprocessing(pre.img_size, interpolation=interpolation or pre.interpolation))
    return dm


# Classifier unit tests (unit/models): a random-init tiny ViT and uint8 image batches for it.
def tiny_classifier(**kw):
    """A random-init 2-block ViT-Tiny at 32 px with a zero head on 5 classes (``a``..``e``), trained with
    SGD at lr 0.5 without warmup; ``kw`` overrides any ``ViTClassifier`` argument."""
    from vit_ft.models.classifier import ViTClassifier

    args = dict(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        num_classes=5,
        class_names=list("abcde"),
        timm_kwargs={"depth": 2},
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9},
        scheduler={"warmup_steps": 0},
    )
    args.update(kw)
    return ViTClassifier(**args)


def uint8_loader(n: int = 32, k: int = 5, seed: int = 0, batch_size: int = 8, size: int = 32):
    """``n`` random uint8 images (``size`` px) with labels in ``[0, k)``, in batches of ``batch_size``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


# Callback and fault tests (unit/training): a 4-feature toy problem for a tiny linear LightningModule.
def vector_loader(n: int = 16, batch_size: int = 4, random_labels: bool = False):
    """``n`` standard-normal 4-vectors (seed 0) with labels ``i % 2`` (or random 0/1 from the same
    generator), in batches of ``batch_size``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 2, (n,), generator=g) if random_labels else torch.arange(n) % 2
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


ML_CLASSES = ("blue", "green", "red")


def make_multilabel_manifest(
    root: Path, n_train: int = 24, n_val: int = 12, size: int = 32, seed: int = 0
) -> Path:
    """A multi-label set: each image has a coloured square per label (red, green, blue, each in its own
    corner) on grey; ``root/train.csv`` and ``root/val.csv`` (image, labels), some rows with no label."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    corners = {"red": (0, 0), "green": (0, 1), "blue": (1, 0)}
    (root / "img").mkdir(parents=True, exist_ok=True)
    half = size // 2
    for split, n in (("train", n_train), ("val", n_val)):
        lines = ["image,labels"]
        for i in range(n):
            present = [c for c in ML_CLASSES if rng.random() < 0.5]
            if i == 0:
                present = ["red", "green"]  # at least one row with two labels: a multi-label set
            a = np.full((size, size, 3), 128, dtype=np.uint8)
            a += rng.integers(0, 20, a.shape, dtype=np.uint8)
            for c in present:
                r, k = corners[c]
                a[r * half + 2 : r * half + half - 2, k * half + 2 : k * half + half - 2] = colours[c]
            name = f"img/{split}_{i}.png"
            Image.fromarray(a).save(root / name)
            lines.append(f"{name},{' '.join(present)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root
