"""A run prints what the user needs and nothing that looks like a problem when there is none."""

from __future__ import annotations

import re

from tests.helpers import TINY, run_cli


def test_a_clean_run_has_no_spurious_warnings(image_folder, tmp_path):
    proc = run_cli(
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=1",
        "trainer.enable_model_summary=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        tmp_path=tmp_path,
        fresh=True,  # a new interpreter: warnings printed while importing count too
    )
    out = proc.stdout + proc.stderr
    # the model summary counts real FLOPs (rich and plain summaries spell the line differently)
    assert re.search(r"Total FLOPs|Total Flops", out)
    assert not re.search(r"Total FLOPs: 0\b|(^|\s)0\s+Total Flops", out)
    for noise in ("anonymous setting has no effect", "💡 Tip", "LeafSpec", "Traceback"):
        assert noise not in out, f"{noise!r} in the output:\n{out[-3000:]}"
    assert "run directory :" in out
