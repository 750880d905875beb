"""Test-only: make a CLI run stop for good at a chosen point, so a test can kill -9 it exactly there.

On ``PYTHONPATH`` (as ``sitecustomize``) when ``VIT_FT_TEST_STALL`` is set:
``save:N``  — the N-th checkpoint save writes its ``.tmp`` file, then hangs (a kill mid-save);
``batch:N`` — the N-th training batch waits before its step (a kill between micro-batches);
``full:N``  — rank 0's N-th checkpoint save finds the disk full (ENOSPC), nothing hangs.
It writes ``$VIT_FT_TEST_STALL_MARK`` when it hangs (or fails the save).
"""

import os

_spec = os.environ.get("VIT_FT_TEST_STALL")

if _spec:
    import time
    from pathlib import Path

    _kind, _n = _spec.split(":")
    _n = int(_n)
    _count = [0]

    def _hang() -> None:
        Path(os.environ["VIT_FT_TEST_STALL_MARK"]).write_text("stalled")
        while True:
            time.sleep(1)

    if _kind == "save":
        import torch

        _save = torch.save

        def save(obj, f, *args, **kwargs):  # the checkpoint IO writes the .tmp with torch.save
            _save(obj, f, *args, **kwargs)
            if isinstance(obj, dict) and "state_dict" in obj:  # a checkpoint, not another file
                _count[0] += 1
                if _count[0] == _n:
                    if hasattr(f, "flush"):
                        f.flush()
                    _hang()

        torch.save = save
    elif _kind == "batch":
        from vit_ft.models.classifier import ViTClassifier

        _step = ViTClassifier.training_step

        def training_step(self, batch, batch_idx):
            _count[0] += 1
            if _count[0] == _n:
                _hang()
            return _step(self, batch, batch_idx)

        ViTClassifier.training_step = training_step
    elif _kind == "full" and os.environ.get("LOCAL_RANK", "0") == "0":
        import errno

        import torch

        _save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "state_dict" in obj:
                _count[0] += 1
                if _count[0] == _n:
                    Path(os.environ["VIT_FT_TEST_STALL_MARK"]).write_text("full")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _save(obj, f, *args, **kwargs)

        torch.save = save
