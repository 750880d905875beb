"""data.extra_eval: entries checked with one line, folders read (root/<class> or root/val/<class>), and one
in-process pass over a set whose classes are 2 of the model's 4."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from tests.helpers import SHAPE_CLASSES, quiet_trainer
from vit_ft.data import ImageFolderDataModule
from vit_ft.data.extra_eval import check_entries, extra_loader, load_extra_sets
from vit_ft.errors import ConfigError
from vit_ft.models.subset import evaluate_set, prepare_sets


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"val": {"root": "x"}}, ["'val' cannot name a set"]),
        ({"a/b": {"root": "x"}}, ["'a/b' cannot name a set"]),
        ({"s": {"root": "x", "name": "y"}}, ["data.extra_eval.s has both root and name"]),
        ({"s": {"split": "test"}}, ["neither root nor name"]),
        ({"s": {"root": "x", "split": "test"}}, ["unknown key(s) ['split']", "root, labels_file"]),
        ({"s": "x"}, ["data.extra_eval.s='x' must be a mapping"]),
        ({"s": {"root": "/no/such/folder"}}, ["data.extra_eval.s.root='/no/such/folder' does not exist"]),
    ],
)
def test_a_wrong_entry_is_one_line(entries, words):
    with pytest.raises(ConfigError) as e:
        load_extra_sets(entries)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_no_sets_and_a_set_switched_off():
    assert load_extra_sets({}) == [] and load_extra_sets(None) == []
    assert check_entries({"off": None}) == {}


@pytest.fixture(scope="module")
def two_of_four(image_folder, tmp_path_factory):
    """A set holding the val images of 2 of the 4 classes (root/<class>/ layout)."""
    root = tmp_path_factory.mktemp("extra") / "shifted"
    for c in ("circle", "square"):
        shutil.copytree(image_folder / "val" / c, root / c)
    return root


def test_folders_are_read_in_both_layouts(image_folder, two_of_four):
    full, sub = load_extra_sets({"full": {"root": str(image_folder)}, "sub": {"root": str(two_of_four)}})
    assert full.name == "full" and full.class_names == SHAPE_CLASSES  # root/val/<class>
    assert len(full) == sum(1 for p in (image_folder / "val").rglob("*") if p.is_file())
    assert sub.class_names == ["circle", "square"] and sorted(set(sub.records.labels)) == [0, 1]
    assert sub.file_key(0).startswith("circle/")  # what a labels file keys it by


class ConstantLogits(nn.Module):
    """Logits [0, 1, 2, 3] for every image: over circle and square, square (2 > 0) always wins."""

    num_classes = 4

    def forward(self, x):
        return torch.arange(4.0).expand(x.shape[0], 4)


def test_one_pass_over_a_subset_set_gives_its_metrics_and_predictions(image_folder, two_of_four):
    (s,) = prepare_sets(load_extra_sets({"shifted": {"root": str(two_of_four)}}), SHAPE_CLASSES)
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=4, num_workers=0)
    dm.img_size = 16
    res = evaluate_set(quiet_trainer(), ConstantLogits(), extra_loader(dm, s.set), s)
    logged = {k: float(v) for k, v in res.logged}
    square = float((s.set.records.labels == 1).mean())
    assert logged["shifted/acc1"] == pytest.approx(square)  # the square images
    # cross-entropy over the subset's logits [0, 2]: log(1 + e^2) for a circle, log(1 + e^-2) for a square
    ce_circle, ce_square = torch.log1p(torch.tensor([2.0, -2.0]).exp()).tolist()
    assert logged["shifted/loss"] == pytest.approx((1 - square) * ce_circle + square * ce_square, rel=1e-5)
    assert len(res.predictions) == len(s.set)
    assert (res.predictions.pred == 1).all()  # square, as the set's class index
    assert res.analysis["confusion"].shape == (2, 2)


def test_eval_py_stops_on_an_unknown_class_before_evaluating(image_folder, tmp_path, monkeypatch):
    """In process: the set's class folders are checked against the model's classes first."""
    from tests.unit.tasks.test_evaluate import EVAL, _cfg, _hf_dir
    from vit_ft.tasks import evaluate as task

    def no_trainer(*a, **k):
        raise AssertionError("a Trainer was built: the check came after the evaluation started")

    monkeypatch.setattr(task, "build_trainer", no_trainer)

    weights = tmp_path / "w"
    _hf_dir(weights, dict(enumerate(SHAPE_CLASSES)))
    odd = tmp_path / "odd"
    shutil.copytree(image_folder / "val" / "circle", odd / "circle")
    shutil.copytree(image_folder / "val" / "square", odd / "hexagon")
    out = tmp_path / "out"
    cfg = _cfg(
        [*EVAL, f"model.weights={weights}", f"data.root={image_folder}", f"+data.extra_eval.odd.root={odd}"],
        out,
    )
    with pytest.raises(ConfigError) as e:
        task.evaluate(cfg)
    assert "\n" not in str(e.value)
    assert "data.extra_eval.odd has 1 class(es) the model does not know: ['hexagon']" in str(e.value)
    assert not (out / "metrics.json").exists()


def test_the_report_has_a_section_per_set_and_keeps_set_predictions_out_of_the_run_s(tmp_path):
    """The run's report from metrics.json's extra_eval alone; a set's CSV is not taken as the run's."""
    import json

    from vit_ft.report import build_report
    from vit_ft.report.files import read_run

    per_class = {
        "circle": {"index": 0, "images": 2, "acc1": 0.5, "top_confusion": "square", "top_confusion_count": 1},
        "square": {"index": 1, "images": 2, "acc1": 1.0, "top_confusion": None, "top_confusion_count": 0},
    }
    section = {
        "images": 4,
        "classes": 2,
        "class_subset": True,
        "labels_file": "real.json",
        "real_images": 2,
        "metrics": {"shifted/acc1": 0.75, "shifted/real_acc1": 0.5, "shifted/loss": 0.6},
        "predictions": str(tmp_path / "shifted_predictions.csv"),
        "analysis": {"per_class": per_class},
    }
    (tmp_path / "metrics.json").write_text(
        json.dumps({"status": "completed", "extra_eval": {"shifted": section}})
    )
    (tmp_path / "shifted_predictions.csv").write_text(
        "index,file,true_index,true_label,pred_index,pred_label,prob,correct,topk\n"
        '0,a.jpg,0,circle,1,square,0.9,0,"[[""square"", 0.9]]"\n'
    )
    assert read_run(tmp_path).predictions is None
    md = build_report(tmp_path).read_text(encoding="utf-8")
    assert "## More evaluation sets" in md
    assert "| shifted | 4 | 0.75 |  | 0.5 |" in md  # acc1, no acc5 (2 classes), real_acc1
    assert "(shifted_predictions.csv)" in md and "scored over the model's logits of these classes only" in md
    assert md.index("| circle | 2 | 50.0% | square (1) |") < md.index(
        "| square | 2 | 100.0% |"
    )  # worst first


@pytest.mark.parametrize("probe", [{"mode": "knn"}, {"mode": "fewshot"}])
def test_a_feature_evaluation_with_extra_sets_is_one_line_before_anything_runs(probe, tmp_path):
    """k-NN and few-shot keep no classifier to score more sets with (a linear probe does: its checkpoint,
    tests/cli/test_probe_cli.py)."""
    from omegaconf import OmegaConf

    from vit_ft.tasks.train import train

    cfg = OmegaConf.create(
        {"probe": probe, "data": {"extra_eval": {"s": {"root": "x"}}}, "paths": {"output_dir": str(tmp_path)}}
    )
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert f"probe.mode={probe.get('mode', 'linear')}" in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # not even the run folder's lock
