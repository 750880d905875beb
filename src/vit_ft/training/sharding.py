"""Sharded training (``trainer=fsdp``): Lightning's FSDP strategy set up for timm ViTs.

Each transformer block (timm ``Block``) is its own FSDP unit, so a rank holds the full weights of
one block at a time, and each block's activations are recomputed in backward (activation
checkpointing). Mixed precision follows ``trainer.precision`` (bf16-mixed on recent GPUs).
Checkpoints are written as one full state dict on rank 0 (``state_dict_type=full``): the ordinary
vit-ft ``.ckpt`` that eval.py, predict.py and export.py read, and that resumes under FSDP or not.

torch's FSDP needs CUDA devices (it refuses CPU-only execution), so this strategy does not run on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from vit_ft.errors import ConfigError

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")


def vit_block_classes() -> set[type[nn.Module]]:
    """The timm transformer block classes FSDP wraps (and checkpoints) one by one."""
    from timm.models import vision_transformer as vt

    names = ("Block", "ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock")
    return {getattr(vt, n) for n in names if isinstance(getattr(vt, n, None), type)}


def vit_fsdp_strategy(
    accelerator: str = "gpu",
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = True,
    cpu_offload: bool = False,
    state_dict_type: str = "full",
    **kwargs: Any,
) -> FSDPStrategy:
    """Lightning's :class:`FSDPStrategy` wrapping every ViT block; ``kwargs`` go to it (and to FSDP)."""
    if str(accelerator) == "cpu" or not torch.cuda.is_available():
        raise ConfigError(
            f"trainer=fsdp needs CUDA GPUs (torch's FSDP does not run on CPU; trainer.accelerator={accelerator!r}, "
            f"{torch.cuda.device_count()} GPU(s) visible); on CPU use trainer=ddp"
        )
    if sharding_strategy not in SHARDING:
        raise ConfigError(
            f"trainer.strategy.sharding_strategy={sharding_strategy!r} is not one of {', '.join(SHARDING)}"
        )
    if state_dict_type not in ("full", "sharded"):
        raise ConfigError(f"trainer.strategy.state_dict_type={state_dict_type!r} must be full or sharded")
    blocks = vit_block_classes()
    return FSDPStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=bool(cpu_offload),
        state_dict_type=state_dict_type,
        use_orig_params=True,  # frozen and trainable parameters in one unit (LoRA, linear probe)
        **kwargs,
    )
