"""export.py's model card and push_to_hub through the real CLI, on one tiny run (3 subprocesses: train,
export with card, export with push): the card read back with huggingface_hub's parsers, its transformers
and timm snippets run on the exported folder, and the push recorded by a local fake of the Hub's HTTP API
(HF_ENDPOINT; tests/unit/publish/fake_hub.py) through the real huggingface_hub client."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard, metadata_load

from tests.helpers import ROOT, TINY, clean_env, make_image_folder, read_metrics, run_cli
from tests.unit.publish.fake_hub import FakeHub

PIPE_CLASS = "cir|cle"  # a class folder name with a pipe: the card's tables must escape it


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    data = make_image_folder(tmp / "data")
    for split in ("train", "val"):
        (data / split / "circle").rename(data / split / PIPE_CLASS)
    run_cli(
        "train.py",
        *TINY,
        "data=imagefolder",
        f"data.root={data}",
        "trainer.max_epochs=1",
        "logger=none",
        f"paths.cache_dir={tmp / 'cache'}",  # a path of this machine: not in the reproduce command
        f"hydra.run.dir={tmp / 'run'}",
        tmp_path=tmp,
    )
    return tmp, data, tmp / "run"


@pytest.fixture(scope="module")
def exported(run):
    tmp, _, _ = run
    proc = run_cli(
        "export.py", "ckpt_path=run/checkpoints/last.ckpt", "out=exported", "license=apache-2.0", tmp_path=tmp
    )
    assert "model card -> exported/README.md" in proc.stdout
    return tmp / "exported"


def test_card_front_matter_and_sections(run, exported):
    tmp, data, run_dir = run
    readme = exported / "README.md"
    meta = metadata_load(readme)
    card = ModelCard.load(readme)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "apache-2.0" and "vit-ft" in meta["tags"] and "base_model" not in meta
    final = read_metrics(run_dir)["final"]
    top1 = {r.metric_value for r in card.data.eval_results if r.metric_name.startswith("Top-1 accuracy,")}
    assert top1 == {round(final["val/acc1"], 4)}  # last.ckpt: the values at the end of training
    text = card.text
    for section in ("## What it is", "## How to use", "## Training", "## Results", "## Reproduce"):
        assert section in text
    assert "| images | train 64, val 24 images |" in text  # from train.log
    assert "| cir\\|cle | 6 |" in text  # the pipe escaped: one cell, not two
    links = re.findall(r"!\[[^\]]*\]\((images/[^)]+)\)", text)
    assert len(links) >= 4 and all((exported / link).is_file() for link in links)
    command = re.search(r"## Reproduce.*?```bash\n(.*?)\n```", text, re.S).group(1)
    args = shlex.split(command)
    assert (
        args[:2] == ["python", "train.py"] and f"data.root={data}" in args and "trainer.max_epochs=1" in args
    )
    assert not any(a.startswith("paths.cache_dir") for a in args)
    assert str(tmp) not in readme.read_text().replace(
        f"data.root={data}", ""
    )  # no other path of this machine


def test_card_snippets_run_on_the_exported_folder(run, exported, monkeypatch):
    tmp, data, _ = run
    monkeypatch.chdir(tmp)
    shutil.copy(next((data / "val" / "square").iterdir()), tmp / "image.jpg")
    blocks = re.findall(r"```python\n(.*?)```", (exported / "README.md").read_text(), re.S)
    assert len(blocks) == 2 and "transformers" in blocks[0] and "timm.create_model" in blocks[1]
    printed = []
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "card snippet", "exec"), {})  # noqa: S102 - the card's own code
        label, prob = out.getvalue().strip().splitlines()[-1].rsplit(" ", 1)
        printed.append((label, float(prob)))
    (hf_label, hf_prob), (timm_label, timm_prob) = printed
    assert hf_label in (PIPE_CLASS, "cross", "square", "triangle") and hf_label == timm_label
    assert abs(hf_prob - timm_prob) < 1e-3  # the same weights and the same preprocessing


def test_push_to_hub_uploads_the_export_and_its_card(run):
    tmp, _, run_dir = run
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    env = {k: v for k, v in clean_env(tmp).items() if k != "HF_HUB_OFFLINE"}
    with FakeHub() as hub:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake")
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "export.py"),
                f"ckpt_path={best}",
                "out=pushed",
                "push_to_hub=me/tiny-vit",
                "hub.private=true",
                "hub.revision=v1",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed pushed to the Hub repository me/tiny-vit" in proc.stdout
    posts = [r for r in hub.requests if r["method"] == "POST"]  # (huggingface_hub also GETs what it likes)
    paths = [r["path"].split("?")[0] for r in posts]
    assert paths[0] == "/api/repos/create" and posts[0]["json"]["visibility"] == "private"
    assert "/api/models/me/tiny-vit/branch/v1" in paths and paths[-1] == "/api/models/me/tiny-vit/commit/v1"
    local = {p.relative_to(tmp / "pushed").as_posix() for p in (tmp / "pushed").rglob("*") if p.is_file()}
    assert set(hub.files) == local and "timm_model.safetensors" in local
    readme = hub.files["README.md"].decode()
    assert readme == (tmp / "pushed" / "README.md").read_text()
    assert "from_pretrained('me/tiny-vit')" in readme
    assert "hf_hub_download('me/tiny-vit', 'timm_model.safetensors')" in readme
    card = ModelCard(readme)
    score = json.loads((run_dir / "metrics.json").read_text())["best"]["score"]
    assert any(
        r.metric_value == round(score, 4) and "the best by val/acc1" in r.metric_name
        for r in card.data.eval_results
    )
