"""Shared fixtures: tiny generated image folders and a runner for the real CLI.

Nothing here downloads: images are generated, models are random-init tiny ViTs.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch, tmp_path):
    """No test reaches a hub: Hugging Face offline, with an empty cache of its own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


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


def run_cli(script: str, *overrides: str, tmp_path: Path, check: bool = True, timeout: int = 300):
    """Run ``python <script> overrides...`` from the repo root, as a user would."""
    cmd = [sys.executable, str(ROOT / script), *overrides]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def make_image_folder(root: Path, n_train: int = 16, n_val: int = 6, size: int = 40) -> Path:
    """4 learnable classes of real JPEG/PNG files in train/ and val/ class folders."""
    from vit_ft.data.quickstart import make_quickstart_dataset

    return Path(make_quickstart_dataset(str(root), n_train=n_train, n_val=n_val, size=size))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


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
