"""The model card in process: base_model of every weight source, the reproduce command without this
machine's paths, 1000 classes as the 10 best and 10 worst, class names with pipes, the best checkpoint's
and eval.py's results in model-index (read back with huggingface_hub's parsers), and the card of an export
that is not a vit-ft run. The card of a real run, its snippets run, and the push: tests/cli/test_card_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load

from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing
from vit_ft.publish.card import MARK, check_card_folder, classes_table, render, write_card
from vit_ft.publish.card_facts import Exported, Origin, hub_id, reproduce
from vit_ft.report.analysis import Analysis, ClassResult
from vit_ft.report.files import read_run


def test_base_model_is_the_hub_repository_of_the_starting_weights():
    assert (
        hub_id("vit_base_patch32_384.augreg_in21k_ft_in1k")
        == "timm/vit_base_patch32_384.augreg_in21k_ft_in1k"
    )
    assert hub_id("timm/vit_small_patch16_224.augreg_in21k") == "timm/vit_small_patch16_224.augreg_in21k"
    assert hub_id("google/vit-base-patch32-384@refs/pr/1") == "google/vit-base-patch32-384"
    assert hub_id("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k") == "timm/vit_tiny_patch16_224.augreg_in21k"
    for local in ("/data/weights/vit.safetensors", "./ckpt/last.ckpt", "~/w.npz", None, ""):
        assert hub_id(local) is None


def test_reproduce_command_keeps_the_data_root_and_no_other_path_of_this_machine(tmp_path):
    (tmp_path / ".hydra").mkdir()
    overrides = [
        "data=imagefolder",
        "data.root=/data/my images",
        "model.weights=/home/me/weights/vit_b32.safetensors",
        "ckpt_path=/home/me/runs/old/last.ckpt",
        "+paths.cache_dir=~/cache",
        "model.timm_kwargs={depth: 2}",
        "logger.wandb.tags=[a,/tmp/x]",
        "optimizer.lr=0.01",
    ]
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    command, dropped = reproduce(tmp_path)
    assert command == (
        "python train.py data=imagefolder 'data.root=/data/my images' "
        "'model.weights=<path to vit_b32.safetensors>' 'model.timm_kwargs={depth: 2}' optimizer.lr=0.01"
    )
    assert sorted(dropped) == ["ckpt_path", "logger.wandb.tags", "paths.cache_dir"]
    assert reproduce(tmp_path / "nowhere") == (None, [])


def _analysis(k: int) -> Analysis:
    classes = [ClassResult(i, f"class|{i}", 10, i % 11, "class|0" if i else None, 3) for i in range(k)]
    return Analysis(split="val", source="test", classes=classes, pairs=[])


def test_per_class_table_lists_every_class_up_to_20_then_the_10_best_and_10_worst():
    small = "\n".join(classes_table(_analysis(4)))
    assert small.count("\n| class\\|") == 4 and "class\\|0 (3)" in small  # pipes escaped, cells intact
    big = classes_table(_analysis(1000))
    rows = [r for r in big if r.startswith("| class\\|")]
    assert len(rows) == 20
    assert big[0] == "1000 classes; the 10 best and the 10 worst on val:"
    best, worst = rows[:10], rows[10:]
    assert all("| 100.0% |" in r for r in best) and all("| 0.0% |" in r for r in worst)
    assert all(r.count(" | ") == 3 for r in rows)  # four cells: no pipe in a name splits a row


def _fake_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder with a best checkpoint, final, test and an eval.py sub-run of that checkpoint."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    best = run / "checkpoints" / "best-epoch003-step000040.ckpt"
    best.write_bytes(b"")
    cfg = {"data": {"_target_": "vit_ft.data.HFDataModule", "name": "uoft-cs/cifar10"}, "model": {}}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {
        "status": "completed",
        "best": {"metric": "val/acc1", "score": 0.91234, "checkpoint": str(best)},
        "final": {"train/acc1": 0.987, "val/acc1": 0.9, "val/acc5": 0.99, "val_ema/acc1": 0.905},
        "test": {"test/acc1": 0.88},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    ev = run / "eval_imagenet"
    ev.mkdir()
    (ev / "metrics.json").write_text(
        json.dumps({"split": "val", "metrics": {"val/acc1": 0.7}, "ckpt_path": str(best)})
    )
    (ev / "config_resolved.yaml").write_text(
        yaml.safe_dump({"data": {"_target_": "vit_ft.data.ImageNetDataModule", "root": "/data/in1k"}})
    )
    return run, best


def _card(origin: Origin, **kw) -> str:
    args = dict(
        origin=origin,
        model_name="tiny",
        exported=Exported(
            arch={"name": "vit_tiny_patch16_224", "kwargs": {"num_classes": 3}},
            pre=Preprocessing(img_size=32),
            folder=Path("."),
            where="exported/tiny",
        ),
        class_names=["a", "b|c", "d"],
        params=1000,
        license="mit",
        pictures=[],
        version="0",
    )
    return render(**{**args, **kw})


def _results(tmp_path: Path, origin: Origin) -> tuple[set, str]:
    (tmp_path / "README.md").write_text(_card(origin))
    card = ModelCard.load(tmp_path / "README.md")
    got = {
        (r.dataset_type, r.dataset_split, r.metric_name.split(",")[0], r.metric_value)
        for r in card.data.eval_results
    }
    return got, card.text


def test_model_index_holds_this_checkpoints_results_only(tmp_path):
    run, best = _fake_run(tmp_path)
    origin = Origin(str(best), best, {"weights": "google/vit-base-patch32-384"}, {}, read_run(run))
    got, text = _results(tmp_path, origin)
    meta = metadata_load(tmp_path / "README.md")
    assert meta["base_model"] == "google/vit-base-patch32-384" and meta["datasets"] == ["uoft-cs/cifar10"]
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "image-classification"
    assert got == {
        ("uoft-cs/cifar10", "validation", "Top-1 accuracy", 0.9123),  # the best checkpoint's score
        ("uoft-cs/cifar10", "test", "Top-1 accuracy", 0.88),  # train.py tests the best checkpoint
        ("imagenet-1k", "validation", "Top-1 accuracy", 0.7),  # eval.py of this checkpoint
    }
    assert (
        "| uoft-cs/cifar10 | validation | at the end of training (not this checkpoint) | 90.0% | 99.0% |"
        in text
    )
    assert "Classes: a, b\\|c, d." in text

    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["checkpoints"] = {"best": str(best), "last": str(last)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    got, _ = _results(tmp_path, Origin(str(last), last, {}, {}, read_run(run)))
    assert got == {
        ("uoft-cs/cifar10", "validation", "Top-1 accuracy", 0.9),
        ("uoft-cs/cifar10", "validation", "Top-5 accuracy", 0.99),
        ("uoft-cs/cifar10", "validation", "Top-1 accuracy (EMA weights)", 0.905),
    }  # train/* is no evaluation; test and eval.py were of the best checkpoint


def test_a_source_that_is_no_vit_ft_run_says_so_and_has_no_run_sections(tmp_path):
    text = _card(Origin("timm/vit_tiny_patch16_224.augreg_in21k"))
    (tmp_path / "README.md").write_text(text)
    meta = metadata_load(tmp_path / "README.md")
    assert meta["base_model"] == "timm/vit_tiny_patch16_224.augreg_in21k" and "model-index" not in meta
    assert "which is not a vit-ft training run" in text
    for section in ("## Training", "## Results", "## Reproduce"):
        assert section not in text


def test_export_of_a_transformers_folder_to_one_timm_file_puts_the_card_beside_it(hf_dir, tmp_path):
    from omegaconf import OmegaConf

    from vit_ft.tasks.export import ExportConfig, export

    out = tmp_path / "single" / "tiny.safetensors"
    cfg = OmegaConf.merge(
        OmegaConf.structured(ExportConfig), {"weights": str(hf_dir), "out": str(out), "format": "timm"}
    )
    export(cfg)
    assert sorted(p.name for p in out.parent.iterdir()) == ["README.md", "tiny.safetensors"]
    card = ModelCard.load(out.parent / "README.md")
    assert card.data.library_name == "timm" and card.data.base_model is None  # a local folder
    assert f"file = {str(out)!r}" in card.text and "## Training" not in card.text
    assert "which is not a vit-ft training run" in card.text


def test_a_readme_not_written_by_vit_ft_is_never_overwritten(hf_dir, tmp_path, capsys):
    from omegaconf import OmegaConf

    from vit_ft.tasks.cli import run_cli
    from vit_ft.tasks.export import ExportConfig, export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    cfg = OmegaConf.merge(OmegaConf.structured(ExportConfig), {"weights": str(hf_dir), "out": str(out)})
    with pytest.raises(SystemExit) as e:
        run_cli(export, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not written by vit-ft" in err[0] and "card=false" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]  # nothing written
    (out / "README.md").write_text(MARK + "\n# an older card\n")
    check_card_folder(out)  # vit-ft's own card: rewritten
    with pytest.raises(ConfigError, match="license='Apache 2' is not a Hugging Face license id"):
        check_card_folder(tmp_path / "x", "Apache 2")
    check_card_folder(tmp_path / "x", "apache-2.0")


def test_write_card_without_run_folder_names_the_checkpoint(tmp_path):
    """A vit-ft checkpoint copied out of its run folder: the card says the run is not known."""
    import torch

    ckpt = tmp_path / "loose.ckpt"
    torch.save({"hyper_parameters": {"weights": "vit_tiny_patch16_224.augreg_in21k"}, "state_dict": {}}, ckpt)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.json").write_text("{}")
    written = write_card(
        out,
        [out],
        source=str(ckpt),
        arch={"name": "vit_tiny_patch16_224", "kwargs": {}},
        preprocessing=Preprocessing(img_size=224),
        class_names=["x", "y"],
        params=5_000_000,
        out_text="exp",
    )
    assert written == [out / "README.md"]
    text = written[0].read_text()
    assert "outside its run folder" in text and "`loose.ckpt`" in text
    assert metadata_load(written[0])["base_model"] == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert "from_pretrained('exp')" in text and "## Reproduce" not in text
