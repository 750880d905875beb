"""Above ``DENSE_CONFUSION_MAX`` classes the report reads the confusion as its non-zero cells: the same
report.md, pictures and model-card table as the dense path (the cap is lowered here to compare)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.report.test_report import fake_run
from vit_ft.models import analysis as analysis_module
from vit_ft.models.analysis import SparseConfusion
from vit_ft.publish.card import classes_table
from vit_ft.report import build_report, figures, read_run
from vit_ft.report.analysis import analysis_of
from vit_ft.report.build import REPORT_DIR


def _confusion(k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cm = np.diag(rng.integers(1, 6, k)) + rng.integers(0, 3, (k, k)) * (rng.random((k, k)) < 0.15)
    cm[k - 2] = 0  # a class without images
    return cm.astype(np.int64)


def _report(run, live=None) -> str:
    """report.md, the run folder's own path written as ``RUN``."""
    return build_report(run, live).read_text(encoding="utf-8").replace(str(run), "RUN")


@pytest.mark.parametrize("k", [40])  # the top pairs (the grid from cells: the in-memory test)
def test_the_report_and_card_from_the_cells_are_the_dense_ones(tmp_path, monkeypatch, k):
    names = [f"class {i}" for i in range(k)]
    cm = _confusion(k)
    dense_run = fake_run(tmp_path / "dense" / "run", names, cm)
    md_dense, dense = _report(dense_run), analysis_of(read_run(dense_run))
    monkeypatch.setattr(analysis_module, "DENSE_CONFUSION_MAX", 2)
    sparse_run = fake_run(tmp_path / "sparse" / "run", names, cm)
    md_sparse, sparse = _report(sparse_run), analysis_of(read_run(sparse_run))
    assert isinstance(dense.confusion, np.ndarray) and isinstance(sparse.confusion, SparseConfusion)
    assert sparse.source == dense.source == "val_predictions.csv"
    assert md_sparse == md_dense
    assert (sparse.classes, sparse.pairs, sparse.acc1_macro) == (dense.classes, dense.pairs, dense.acc1_macro)
    assert classes_table(sparse) == classes_table(dense)  # the model card's per-class table
    assert (sparse_run / REPORT_DIR / figures.CONFUSION).is_file()


def test_the_in_memory_analysis_as_cells_gives_the_dense_report(tmp_path):
    names = ["cat", "dog", "bird", "owl", "fox"]
    cm = _confusion(5, seed=3)
    live = {"split": "val", "class_names": names, "acc1_macro": 0.7, "ece": 0.1}
    run = fake_run(tmp_path / "run", names, cm, predictions=False, metrics=False)
    md_dense = _report(run, {**live, "confusion": cm})
    grid = (run / REPORT_DIR / figures.CONFUSION).read_bytes()
    md_sparse = _report(run, {**live, "confusion": SparseConfusion.from_dense(cm)})
    assert md_sparse == md_dense and "Top confusions (val)" in md_sparse
    assert (run / REPORT_DIR / figures.CONFUSION).read_bytes() == grid  # the same grid, drawn from the cells
