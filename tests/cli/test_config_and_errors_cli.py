"""Through the real CLI: ``--cfg job`` prints the config, a misspelt key fails, and a bad input ends the
run with one line and no traceback."""

from __future__ import annotations

from tests.helpers import TINY, run_cli


def test_cfg_job_prints_config_and_misspelt_key_fails(tmp_path):
    ok = run_cli("train.py", "data.root=/x", "optimizer.lr=0.5", "--cfg", "job", tmp_path=tmp_path)
    assert "lr: 0.5" in ok.stdout and "backbone: vit_base_patch32_384" in ok.stdout
    bad = run_cli("train.py", "data.root=/x", "optimizer.lrr=0.5", tmp_path=tmp_path, check=False)
    assert bad.returncode != 0 and "lrr" in bad.stderr


def test_bad_input_through_the_cli(tmp_path):
    proc = run_cli(
        "train.py", *TINY, f"data.root={tmp_path / 'missing'}", "logger=none", tmp_path=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.root=")
    assert "Traceback" not in proc.stderr
