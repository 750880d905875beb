"""ckpt_path=auto (resume, start fresh, a changed config, a finished run), the run-directory lock (a busy
folder, a holder killed with -9, DDP ranks) and the wandb run of a run folder (same id, no step twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from vit_ft.errors import ConfigError
from vit_ft.tasks.resume import (
    config_differences,
    own_last_checkpoint,
    plan_resume,
    wandb_run_id,
)
from vit_ft.tasks.run_lock import run_dir_lock
from vit_ft.training import loggers as loggers_mod
from vit_ft.training.loggers import ResumableWandbLogger


def config(run_dir, **changes):
    cfg = {
        "seed": 42,
        "ckpt_path": "auto",
        "optimizer": {"lr": 0.002, "weight_decay": 0.0},
        "trainer": {"max_epochs": 3, "max_steps": -1, "enable_progress_bar": True},
        "paths": {"output_dir": str(run_dir), "cache_dir": "/somewhere"},
        "logger": {"wandb": {"mode": "auto"}},
        "callbacks": {
            "last_checkpoint": {
                "_target_": "vit_ft.training.checkpointing.StepCheckpoint",
                "dirpath": f"{run_dir}/checkpoints",
                "filename": "last",
                "every_n_steps": None,
            },
        },
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return OmegaConf.create(cfg)


def interrupted_run(run_dir, status=None):
    """A run folder as a run leaves it: config_resolved.yaml, last.ckpt, and metrics.json when it ended."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    saved = OmegaConf.to_container(config(run_dir))
    saved.update(resolved_preprocessing={"img_size": 32}, class_names=["a", "b"])
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(saved))
    if status:
        (run_dir / "metrics.json").write_text(json.dumps({"status": status, "global_step": 9, "value": 0.5}))
    return str(run_dir / "checkpoints" / "last.ckpt")


def test_auto_resumes_its_own_checkpoint_or_starts_fresh(tmp_path):
    assert plan_resume(config(tmp_path / "new")).ckpt_path is None
    last = interrupted_run(tmp_path / "run")
    plan = plan_resume(config(tmp_path / "run"))
    assert plan.ckpt_path == last and plan.resuming_own_run and plan.finished is None
    # run length, display and logging may change; the path of the cache too
    longer = config(tmp_path / "run", trainer__max_epochs=5, trainer__enable_progress_bar=False)
    longer.paths.cache_dir, longer.logger.wandb.mode = "/elsewhere", "offline"
    assert plan_resume(longer).ckpt_path == last
    assert plan_resume(config(tmp_path / "run", ckpt_path=None)).ckpt_path is None  # null: fresh
    other = interrupted_run(tmp_path / "other")
    explicit = plan_resume(config(tmp_path / "run", ckpt_path=other, optimizer__lr=0.5))
    assert explicit.ckpt_path == other and not explicit.resuming_own_run  # a file: as given, unchecked


def test_a_changed_config_stops_with_one_line_listing_the_keys(tmp_path):
    interrupted_run(tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        plan_resume(config(tmp_path / "run", optimizer__lr=0.01, seed=1))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "run") in msg
    assert "optimizer.lr: 0.002 -> 0.01" in msg and "seed: 42 -> 1" in msg and "weight_decay" not in msg
    os.remove(tmp_path / "run" / "config_resolved.yaml")
    with pytest.raises(ConfigError, match="config_resolved.yaml"):
        plan_resume(config(tmp_path / "run"))


def test_a_finished_run_has_nothing_to_do_unless_it_is_made_longer(tmp_path):
    last = interrupted_run(tmp_path / "run", status="completed")
    assert plan_resume(config(tmp_path / "run")).finished["global_step"] == 9
    longer = plan_resume(config(tmp_path / "run", trainer__max_epochs=6))
    assert longer.finished is None and longer.ckpt_path == last
    interrupted_run(tmp_path / "failed", status="interrupted")
    assert plan_resume(config(tmp_path / "failed")).finished is None


def test_config_differences_ignore_only_run_length_display_and_logging():
    a = {"trainer": {"max_epochs": 1, "devices": 1}, "logger": {"wandb": {"tags": []}}, "x": 1.0}
    b = {"trainer": {"max_epochs": 9, "devices": 2}, "logger": {"csv": {}}, "x": 1, "y": None}
    assert config_differences(a, b) == ["trainer.devices: 1 -> 2", "y: '<unset>' -> None"]
    assert config_differences(a, b, ("trainer.devices",)) == ["y: '<unset>' -> None"]  # left to vit-ft


# A holder as light as can be (a bare flock, as run_dir_lock takes it), to be killed with -9.
HOLD = (
    "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('held', flush=True)\ntime.sleep(120)\n"
)


def test_a_busy_run_directory_is_refused_naming_the_holder(tmp_path, monkeypatch):
    with run_dir_lock(str(tmp_path)):
        with pytest.raises(ConfigError) as e:
            with run_dir_lock(str(tmp_path)):
                pass
        monkeypatch.setenv("LOCAL_RANK", "1")  # another rank of the same run passes through
        with run_dir_lock(str(tmp_path)):
            pass
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and f"pid {os.getpid()} on " in msg


def test_a_holder_killed_with_sigkill_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="in use by another run"):
            with run_dir_lock(str(tmp_path)):
                pass
    finally:
        holder.kill()  # kill -9: the .lock file stays, the lock does not
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with run_dir_lock(str(tmp_path)):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_resumed_run_keeps_its_wandb_id(tmp_path):
    first = wandb_run_id(str(tmp_path), resuming_own_run=False)
    assert len(first) == 8 and (tmp_path / "wandb_run_id").read_text().strip() == first
    assert wandb_run_id(str(tmp_path), resuming_own_run=True) == first
    assert wandb_run_id(str(tmp_path), resuming_own_run=False) == first  # a restart: the same run too


def write_wandb_file(path, rows, cut: int = 0):
    """A ``run-*.wandb`` file holding history ``rows`` (wandb's LevelDB framing, one chunk per record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = bytearray(b":W&B\x00\x00\x01")
    for row in rows:
        rec = pb.Record()
        for k, v in row.items():
            item = rec.history.item.add()
            item.key, item.value_json = k, json.dumps(v)
        raw = rec.SerializeToString()
        out += (0).to_bytes(4, "little") + len(raw).to_bytes(2, "little") + b"\x01" + raw
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out[: len(out) - cut]))


def test_replayed_steps_are_not_logged_twice(tmp_path, monkeypatch):
    """Killed after logging step 5 (train and val) with its last checkpoint at step 3: the resumed run
    replays steps 4 and 5; a record cut short by the kill (step 6) does not count."""
    sent = []
    monkeypatch.setattr(
        loggers_mod.WandbLogger, "log_metrics", lambda self, m, step=None: sent.append((step, dict(m)))
    )
    rows = [{"train/loss": 1.0, "trainer/global_step": s} for s in range(6)]
    rows += [{"val/acc1": 0.5, "trainer/global_step": 5}, {"train/loss": 1.0, "trainer/global_step": 6}]
    write_wandb_file(
        tmp_path / "wandb" / "offline-run-20260101_000000-abc12345" / "run-abc12345.wandb", rows, cut=3
    )
    resumed = ResumableWandbLogger(id="abc12345", save_dir=str(tmp_path), offline=True)
    assert resumed.floor == 5
    for step in range(4, 8):
        resumed.log_metrics({"train/loss": 2.0, **({"val/acc1": 0.6, "lr": 0.1} if step == 5 else {})}, step)
    assert sent == [(5, {"lr": 0.1}), (6, {"train/loss": 2.0}), (7, {"train/loss": 2.0})]
    sent.clear()
    other = ResumableWandbLogger(id="new00000", save_dir=str(tmp_path), offline=True)
    other.log_metrics({"train/loss": 3.0}, 0)  # another wandb run: logs from the start
    assert sent == [(0, {"train/loss": 3.0})]


def test_callback_settings_their_class_frees_may_change_on_resume(tmp_path):
    """How often checkpoints are written, the preemption and report settings and an older sweep
    config's non-finite-guard entry may differ (each class says which of its keys); the rest compares."""
    last = interrupted_run(tmp_path / "run")
    saved_path = tmp_path / "run" / "config_resolved.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    saved["callbacks"]["nonfinite_loss"] = {  # the guard's module path before it moved (MOVED_TARGETS)
        "_target_": "vit_ft.training.callbacks.NonFiniteLossGuard",
        "every_n_steps": 10,
    }
    saved_path.write_text(OmegaConf.to_yaml(saved))
    now = config(tmp_path / "run")
    now.callbacks.last_checkpoint.every_n_steps = 50
    now.callbacks.preemption = {"_target_": "vit_ft.training.preemption.Preemption", "requeue": False}
    assert plan_resume(now).ckpt_path == last
    now.callbacks.last_checkpoint.save_top_k = 3
    with pytest.raises(ConfigError, match="callbacks.last_checkpoint.save_top_k: '<unset>' -> 3"):
        plan_resume(now)


def test_the_own_checkpoint_is_the_configs_last_checkpoint(tmp_path):
    cfg = config(tmp_path / "run")
    assert own_last_checkpoint(cfg) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg.callbacks.last_checkpoint.filename = "latest"
    assert own_last_checkpoint(cfg) == str(tmp_path / "run" / "checkpoints" / "latest.ckpt")
    del cfg.callbacks["last_checkpoint"]
    assert own_last_checkpoint(cfg) is None  # no writer of a last checkpoint: nothing to resume


def test_a_run_folder_older_than_the_recipe_and_lr_base_keys_resumes_as_it_ran(tmp_path):
    last = interrupted_run(tmp_path / "run")  # saved: optimizer.lr 0.002, no recipe/monitor/lr_base
    now = {"recipe": "auto", "monitor": "val/acc1", "data": {"sampler": "none"}}
    cfg = config(tmp_path / "run", optimizer__lr=None)
    cfg.merge_with(now)
    cfg.optimizer.merge_with({"lr_base": 0.01, "lr_base_size": 512, "lr_base_scale": None})
    plan = plan_resume(cfg, auto_resolved=("optimizer.lr",))
    assert plan.ckpt_path == last and plan.resuming_own_run
    # the run continues as it ran: the configured recipe, the saved lr, not lr_base x batch
    assert cfg.recipe == "paper" and cfg.optimizer.lr_base is None and cfg.optimizer.lr == 0.002
    assert cfg.monitor == "val/acc1" and cfg.data.sampler == "none"
    # a value given on the command line is the user's: compared with the older behaviour, and refused
    given = config(tmp_path / "run", optimizer__lr=None)
    given.merge_with(now)
    given.optimizer.merge_with({"lr_base": 0.01})
    with pytest.raises(ConfigError) as e:
        plan_resume(given, auto_resolved=("optimizer.lr",), given=lambda key: key == "recipe")
    assert "recipe: 'paper' -> 'auto'" in str(e.value) and "\n" not in str(e.value)
    # today's folders hold every key: nothing is adopted from ADDED_KEYS
    fresh = config(tmp_path / "new", optimizer__lr=None)
    fresh.merge_with(now)
    assert plan_resume(fresh).ckpt_path is None and fresh.recipe == "auto"
