"""eval.py model.weights=<source>, in process (vit_ft.tasks.evaluate on a composed config): pretrained
weights evaluated as they are, their own head included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.helpers import ROOT, tiny_hf_vit
from vit_ft.data.decode import is_image_file
from vit_ft.data.transforms import build_eval_transform
from vit_ft.tasks.cli import run_cli as run_in_process
from vit_ft.tasks.evaluate import evaluate

transformers = pytest.importorskip("transformers")

CLASSES = ["circle", "cross", "square", "triangle"]  # the image_folder fixture's folders, sorted
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]


def _hf_dir(path: Path, id2label: dict[int, str] | None, seed: int = 0):
    model = tiny_hf_vit(id2label, seed=seed, scale=0.5)
    model.save_pretrained(path)
    prep = {"do_normalize": True, "image_mean": MEAN, "image_std": STD, "resample": 2, "size": 32}
    (path / "preprocessor_config.json").write_text(json.dumps(prep))
    return model


def _cfg(overrides: list[str], out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="eval", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


EVAL = [
    "trainer=cpu",
    "trainer.precision=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.batch_size=8",
    "data.num_workers=0",
]


def _direct(model, root: Path) -> tuple[float, float]:
    """(top-1, loss) of the transformers model itself on root/val, from the eval transform's pixels."""
    transform = build_eval_transform(32, interpolation="bilinear")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for f in sorted((root / "val" / name).iterdir()):
            if is_image_file(f.name):
                xs.append(transform(str(f)))
                ys.append(label)
    x = (torch.stack(xs).float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    y = torch.tensor(ys)
    acc = float((logits.argmax(-1) == y).float().mean())
    return acc, float(torch.nn.functional.cross_entropy(logits, y))


def test_pretrained_head_is_evaluated_as_it_is(image_folder, tmp_path):
    """A transformers checkpoint whose id2label are the data's class folders: eval.py's accuracy
    equals the checkpoint's own, at its own resolution (model.img_size=384 of the default config is
    not applied to pretrained weights unless given on the command line)."""
    model = _hf_dir(tmp_path / "w", dict(enumerate(CLASSES)))
    acc, loss = _direct(model, image_folder)
    cfg = _cfg([*EVAL, f"model.weights={tmp_path / 'w'}", f"data.root={image_folder}"], tmp_path / "run")
    metrics = evaluate(cfg)
    assert metrics["val/acc1"] == pytest.approx(acc, abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-4)  # the same logits, not only the same argmax
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["weights"] == str(tmp_path / "w") and saved["split"] == "val"
    # transformers' LABEL_i placeholders name no classes: the outputs are taken in the data's order
    placeholder = _hf_dir(tmp_path / "p", None, seed=1)
    cfg = _cfg([*EVAL, f"model.weights={tmp_path / 'p'}", f"data.root={image_folder}"], tmp_path / "run2")
    metrics = evaluate(cfg)
    acc, loss = _direct(placeholder, image_folder)
    assert metrics["val/acc1"] == pytest.approx(acc, abs=1e-6) and metrics["val/loss"] == pytest.approx(
        loss, rel=1e-4
    )


def _error(capsys, overrides: list[str], out: Path) -> str:
    cfg = _cfg([*EVAL, *overrides], out)
    with pytest.raises(SystemExit) as e:
        run_in_process(evaluate, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


def test_bad_input_is_one_line(image_folder, tmp_path, capsys):
    _hf_dir(tmp_path / "other", {0: "ant", 1: "bee", 2: "cat", 3: "dog"})
    root = f"data.root={image_folder}"
    line = _error(capsys, [f"model.weights={tmp_path / 'other'}", root], tmp_path / "r1")
    assert "classes differ from the data's 4" in line and "only in model: ['ant'" in line
    _hf_dir(tmp_path / "shuffled", dict(enumerate(reversed(CLASSES))))
    line = _error(capsys, [f"model.weights={tmp_path / 'shuffled'}", root], tmp_path / "r2")
    assert "different order" in line
    line = _error(capsys, [f"model.weights={tmp_path / 'missing.safetensors'}", root], tmp_path / "r3")
    assert "does not exist" in line
    assert "nothing to evaluate" in _error(capsys, ["model.weights=null", root], tmp_path / "r4")
    line = _error(capsys, [f"model.weights={tmp_path / 'other'}", root, "predictions=maybe"], tmp_path / "r5")
    assert line == "error: predictions='maybe' must be true or false (false: one pass, no CSV)"


def test_above_the_confusion_cap_eval_writes_the_dense_analysis_and_report(
    hf_dir, image_folder, tmp_path, monkeypatch
):
    """Many classes (the cap lowered to 2 for these 4): metrics.json's analysis, from the predictions
    pass or (predictions=false) from the evaluator, and report.md are the dense path's, nothing K x K made."""
    from vit_ft.models import analysis as analysis_module
    from vit_ft.tasks import outputs

    seen = []  # the form of each confusion matrix summarised

    def summary(confusion, *a, **kw):
        seen.append(type(confusion).__name__)
        return analysis_module.analysis_summary(confusion, *a, **kw)

    monkeypatch.setattr(outputs, "analysis_summary", summary)
    base = [*EVAL, f"model.weights={hf_dir}", f"data.root={image_folder}"]
    got = {}
    for cap in (2048, 2):
        monkeypatch.setattr(analysis_module, "DENSE_CONFUSION_MAX", cap)
        for csv in ("true", "false"):
            run = tmp_path / f"{cap}-{csv}" / "run"
            evaluate(_cfg([*base, f"predictions={csv}"], run))
            report = next(run.rglob("report.md")).read_text(encoding="utf-8").replace(str(run), "RUN")
            got[cap, csv] = (json.loads((run / "metrics.json").read_text())["analysis"], report)
    assert seen == ["ndarray", "ndarray", "SparseConfusion", "SparseConfusion"]
    for csv in ("true", "false"):
        assert got[2, csv] == got[2048, csv]
        assert got[2, csv][0]["top_confusions"] and len(got[2, csv][0]["per_class"]) == 4
