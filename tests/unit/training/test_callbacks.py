"""MetricsHistory (history.csv) and RunReport (redraws through the function it is given) in a real fit."""

from __future__ import annotations

import csv

import lightning as L
import torch
import torch.nn.functional as F

from tests.helpers import quiet_trainer, vector_loader
from vit_ft.training.callbacks import MetricsHistory, RunReport


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.eval_analysis = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.layer(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("train/lr", 0.1, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log("val/acc1", (logits.argmax(1) == y).float().mean(), on_epoch=True)

    def on_validation_epoch_end(self):
        self.eval_analysis = {"split": "val", "epoch": self.current_epoch}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return vector_loader(16, batch_size=4)


def test_history_has_a_row_per_logged_step_and_per_validation_and_the_report_is_redrawn(tmp_path):
    calls = []

    def draw(dirpath, analysis):
        calls.append((dirpath, dict(analysis)))
        with open(tmp_path / "history.csv", newline="") as f:  # written before the redraw
            rows = list(csv.DictReader(f))
        assert rows[-1]["val/acc1"] != ""

    def broken(dirpath, analysis):
        raise OSError("disk full")

    history, report, failing = (
        MetricsHistory(tmp_path),
        RunReport(tmp_path, draw, max_share=None),
        RunReport(tmp_path, broken, max_share=None),
    )
    trainer = quiet_trainer(max_epochs=2, log_every_n_steps=2, callbacks=[history, report, failing])
    trainer.fit(Tiny(), train_dataloaders=loader(), val_dataloaders=loader())

    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "train/loss", "train/lr", "val/acc1", "val/loss"]
    train = [(int(r["step"]), int(r["epoch"])) for r in rows if r["train/loss"]]
    val = [(int(r["step"]), int(r["epoch"])) for r in rows if r["val/loss"]]
    assert train == [(1, 0), (2, 0), (4, 0), (6, 1), (8, 1)]  # step 1, then every 2 optimizer steps
    assert val == [(4, 0), (8, 1)]  # 4 batches of 4 per epoch
    assert all(r["val/acc1"] == "" for r in rows if r["train/loss"])  # not logged there: an empty cell
    assert all(abs(float(r["train/lr"]) - 0.1) < 1e-6 for r in rows if r["train/loss"])
    assert [(d, a["epoch"]) for d, a in calls] == [(str(tmp_path), 0), (str(tmp_path), 1)]
    assert failing.warned and report.seconds > 0 and report.skipped == 0
    assert not list(tmp_path.glob("*.tmp"))

    resumed = MetricsHistory(tmp_path / "elsewhere")
    resumed.load_state_dict(history.state_dict())
    assert resumed.rows == history.rows


def test_the_report_is_skipped_while_it_would_cost_more_than_its_share(tmp_path):
    calls, now = [], [0.0]

    def slow(dirpath, analysis):  # 0.2 s on the report's clock; training takes none
        calls.append(analysis)
        now[0] += 0.2

    report = RunReport(tmp_path, slow, max_share=0.05, clock=lambda: now[0])
    trainer = quiet_trainer(max_epochs=3, callbacks=[report])
    trainer.fit(Tiny(), train_dataloaders=loader(), val_dataloaders=loader())
    assert len(calls) == 1 and report.skipped == 2  # epochs of milliseconds: only the first draws
