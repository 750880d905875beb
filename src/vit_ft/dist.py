"""Which process this is, read from the environment (before or outside a Lightning Trainer).

Lightning's DDP launcher, torchrun and SLURM each state the rank in their own variables; code that
runs before a Trainer exists (Hydra callbacks, the record of a failed sweep job) asks here.
"""

from __future__ import annotations

import os

# Variables Lightning's launcher sets in the launching process; a sweep restores them between jobs.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def global_rank() -> int:
    """``RANK`` (torchrun, Lightning) or ``SLURM_PROCID``, else ``LOCAL_RANK`` + ``NODE_RANK``; 0 alone."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return int(os.environ.get("LOCAL_RANK", 0) or 0) + int(os.environ.get("NODE_RANK", 0) or 0)


def is_rank_zero() -> bool:
    return global_rank() == 0
