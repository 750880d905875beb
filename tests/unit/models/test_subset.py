"""Scoring a set over a subset of the model's classes, and ReaL-style labels, on fixed logits."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vit_ft.data.extra_eval import ExtraSet
from vit_ft.errors import ConfigError
from vit_ft.models.subset import SubsetMetrics, class_index, prepare_sets, read_labels_file

MODEL = ["circle", "cross", "square", "triangle"]
SET = ["circle", "square"]  # 2 of the model's 4 classes

# The model's logits for 4 images of the set. Over all 4 classes, image 0 and 2 would be called
# "cross" or "triangle" (classes the set does not have); over the set's two, image 0 -> circle,
# image 1 -> square, image 2 -> square, image 3 -> circle.
LOGITS = torch.tensor(
    [
        [2.0, 5.0, 1.0, 0.0],  # true circle: subset argmax circle (right); full argmax cross
        [0.0, 0.0, 3.0, 1.0],  # true square: square (right)
        [1.0, 0.0, 1.5, 9.0],  # true circle: square (wrong); full argmax triangle
        [4.0, 0.0, 0.5, 0.0],  # true square: circle (wrong)
    ]
)
TARGET = torch.tensor([0, 1, 0, 1])  # the set's labels (circle=0, square=1)


def computed(m: SubsetMetrics) -> dict[str, float]:
    return {k: float(v) for k, v in m.compute()}


def test_a_subset_set_is_scored_over_its_classes_logits():
    idx = class_index(SET, MODEL, "data.extra_eval.shifted")
    assert idx.tolist() == [0, 2]
    m = SubsetMetrics("shifted", len(SET), idx)
    m.update(LOGITS[:2], TARGET[:2])  # two batches: the sums carry over
    m.update(LOGITS[2:], TARGET[2:])
    out = computed(m)
    assert out["shifted/acc1"] == pytest.approx(0.5)  # images 0 and 1 right, by hand
    sub = LOGITS[:, [0, 2]]
    assert out["shifted/loss"] == pytest.approx(float(F.cross_entropy(sub, TARGET)), rel=1e-6)
    assert out["shifted/acc1_macro"] == pytest.approx(0.5)  # circle 1/2, square 1/2
    assert "shifted/acc5" not in out and "shifted/real_acc1" not in out  # 2 classes, no labels file
    conf = m.analysis["confusion"]
    assert conf.tolist() == [[1, 1], [1, 1]]  # rows: true circle, square


def test_the_model_s_own_classes_need_no_index_and_a_reordered_set_maps_by_name():
    assert class_index(MODEL, MODEL, "x") is None
    assert class_index(["square", "circle"], MODEL, "x").tolist() == [2, 0]


def test_a_class_the_model_does_not_know_is_one_line_listing_its_classes():
    with pytest.raises(ConfigError) as e:
        class_index(["circle", "hexagon"], MODEL, "data.extra_eval.shifted")
    msg = str(e.value)
    assert "\n" not in msg
    assert "data.extra_eval.shifted" in msg and "'hexagon'" in msg
    assert "circle, cross, square, triangle" in msg  # the model's classes, to rename the folder after


def test_real_labels_count_top1_right_when_in_the_list_and_leave_out_empty_lists():
    idx = class_index(SET, MODEL, "x")
    m = SubsetMetrics("shifted", len(SET), idx, real=True)
    # predictions over the subset, as model classes: 0 (circle), 2 (square), 2 (square), 0 (circle)
    accepted = [
        frozenset({0}),  # right
        frozenset({0, 1}),  # square not accepted: wrong (though plain acc1 counts it right)
        frozenset({0, 2}),  # square accepted: right (plain acc1 counts it wrong)
        frozenset(),  # empty: left out
    ]
    m.update(LOGITS, TARGET, accepted)
    out = computed(m)
    assert out["shifted/acc1"] == pytest.approx(0.5)
    assert out["shifted/real_acc1"] == pytest.approx(2 / 3)


def test_real_without_a_listed_image_is_nan_not_zero():
    m = SubsetMetrics("s", 4, None, real=True)
    m.update(LOGITS, torch.tensor([1, 2, 3, 0]), [None, frozenset(), None, None])
    assert math.isnan(computed(m)["s/real_acc1"])


class _Records:
    def __init__(self, root, names):
        self.root, self.names = root, names
        self.labels = [0] * len(names)

    def __len__(self):
        return len(self.names)

    def name(self, i):
        return f"{self.root}/{self.names[i]}"


def test_the_labels_file_keys_by_relative_or_bare_file_name_with_indices_or_names(tmp_path):
    s = ExtraSet(
        "shifted",
        SET,
        _Records(str(tmp_path), ["circle/a.jpg", "square/b.jpg", "square/c.jpg"]),
        root=str(tmp_path),
    )
    path = tmp_path / "real.json"
    path.write_text(json.dumps({"circle/a.jpg": [0, "square"], "b.jpg": [], "other.jpg": [1]}))
    assert read_labels_file(str(path), s, MODEL) == [frozenset({0, 2}), frozenset(), None]
    path.write_text(json.dumps([[0], [2], [1, 3]]))  # ImageNet ReaL's list, by sorted bare file name
    assert read_labels_file(str(path), s, MODEL) == [frozenset({0}), frozenset({2}), frozenset({1, 3})]
    s = ExtraSet(
        "shifted", SET, _Records(str(tmp_path), ["circle/z.jpg", "square/a.jpg"]), root=str(tmp_path)
    )
    path.write_text(json.dumps([[2], [0]]))  # a.jpg first, whatever its class folder
    assert read_labels_file(str(path), s, MODEL) == [frozenset({0}), frozenset({2})]


@pytest.mark.parametrize(
    "content, words",
    [
        ({"circle/a.jpg": ["hexagon"]}, ["'hexagon'", "circle/a.jpg"]),
        ({"circle/a.jpg": [7]}, ["class index 7", "0..3"]),
        ({"elsewhere.jpg": [0]}, ["names none of the set's 3 images"]),
        ([[0]], ["a list of 1 entries for 3 images"]),
    ],
)
def test_a_wrong_labels_file_is_one_line_before_any_pass(tmp_path, content, words):
    s = ExtraSet(
        "shifted",
        SET,
        _Records(str(tmp_path), ["circle/a.jpg", "square/b.jpg", "square/c.jpg"]),
        root=str(tmp_path),
    )
    path = tmp_path / "real.json"
    path.write_text(json.dumps(content))
    s.labels_file = str(path)
    with pytest.raises(ConfigError) as e:
        prepare_sets([s], MODEL)
    assert "\n" not in str(e.value) and "data.extra_eval.shifted.labels_file" in str(e.value)
    for w in words:
        assert w in str(e.value)
