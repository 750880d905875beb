"""LoRA adapters (the ``peft`` library) on a timm ViT's blocks, and the small checkpoints they make.

* :class:`LoraSpec` checks ``model.lora`` (rank, alpha, dropout, targets) once, with one-line errors.
* :func:`inject_lora` puts peft LoRA layers on the targeted ``nn.Linear`` of every block (in place:
  the network stays a timm ViT, so layer-wise decay, ``forward_head`` and gradient checkpointing
  still apply) and leaves only the adapters and the head trainable.
* A LoRA run's checkpoint omits the frozen base weights when ``model.weights`` can rebuild them
  (:func:`lora_checkpoint_info`, :func:`drop_base`); a fingerprint of the base checks, at load, that
  the rebuilt base is the one the adapters were trained on (:func:`check_base`). The module's
  checkpoint hooks call :func:`save_lora_entries` and :func:`restore_lora_entries`.
* :func:`merge_lora` folds the adapters into the linear layers (peft's ``merge``) and removes them:
  a plain ViT again, as export and ``load_weights`` of a LoRA checkpoint give (:func:`merged_state_dict`).

Module names in a LoRA network: ``blocks.0.attn.qkv.base_layer.weight`` (the frozen base),
``blocks.0.attn.qkv.lora_A.default.weight`` / ``lora_B`` (the adapters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vit_ft.checkpoint_format import LORA_RECORD, MODEL_PREFIX, feature_record
from vit_ft.errors import ConfigError
from vit_ft.settings import out_of_range
from vit_ft.weights.arch import create_from_arch
from vit_ft.weights.families import HEAD_NAMES, head_names

# Short name -> module path inside a timm ViT Block.
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
ADAPTER = "default"  # peft's adapter name


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.qkv",)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> LoraSpec | None:
        """``model.lora`` checked; None when LoRA is off (``rank`` null or 0)."""
        cfg = dict(cfg or {})
        rank = cfg.get("rank")
        if rank is None or rank == 0:
            return None
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ConfigError(
                f"model.lora.rank={rank!r} must be a positive integer (e.g. 8), or null/0 for no LoRA"
            )
        alpha = cfg.get("alpha", 16)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ConfigError(f"model.lora.alpha={alpha!r} must be a positive number (e.g. 16)")
        dropout = cfg.get("dropout", 0.0) or 0.0
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"model.lora.dropout={dropout!r} must be in [0, 1)")
        raw = cfg.get("targets", ["qkv"])
        raw = [raw] if isinstance(raw, str) else list(raw or [])
        if not raw:
            raise ConfigError("model.lora.targets is empty; name at least one of " + _target_names())
        targets = []
        for t in raw:
            full = TARGETS.get(str(t), str(t))
            if full not in TARGETS.values():
                raise ConfigError(
                    f"model.lora.targets has {t!r}, not a ViT block layer; use {_target_names()}"
                )
            if full not in targets:
                targets.append(full)
        return cls(int(rank), float(alpha), float(dropout), tuple(targets))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }


def _target_names() -> str:
    return ", ".join(f"{k} ({v})" for k, v in TARGETS.items())


def inject_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """``model`` (a timm ViT) with peft LoRA layers on ``spec.targets`` of every block, in place;
    only the adapters and the head require gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ConfigError(f"model.lora needs a ViT with transformer blocks; {type(model).__name__} has none")
    widths = {}
    for t in spec.targets:
        layer = blocks[0].get_submodule(t) if _has(blocks[0], t) else None
        if not isinstance(layer, nn.Linear):
            raise ConfigError(
                f"model.lora.targets has {t!r} but this {type(model).__name__}'s blocks have no such linear layer"
            )
        widths[t] = min(layer.in_features, layer.out_features)
    t = min(widths, key=widths.get)
    if spec.rank > widths[t]:  # a rank above the width adds parameters, not capacity
        raise out_of_range("model.lora.rank", spec.rank, f"an integer in [1, {widths[t]}] (the width of {t})")
    pattern = r"blocks\.\d+\.(" + "|".join(t.replace(".", r"\.") for t in spec.targets) + ")"
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=pattern,
        bias="none",
    )
    model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    heads = head_names(model)
    for name, p in model.named_parameters():
        p.requires_grad = is_adapter_key(name) or is_head_key(name, heads)
    return model


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def is_head_key(key: str, heads: tuple[str, ...] = HEAD_NAMES) -> bool:
    """A weight of a classifier head (every family's :data:`HEAD_NAMES`, e.g. DeiT's ``head_dist``)."""
    return key.replace("_orig_mod.", "").startswith(tuple(f"{h}." for h in heads))  # also under torch.compile


def is_base_key(key: str) -> bool:
    """A frozen weight of a LoRA network (everything but the adapters and the head)."""
    return not (is_adapter_key(key) or is_head_key(key))


def counts_as_base(key: str, present: Container[str] | None = None) -> bool:
    """A base weight, as a checkpoint holding the keys ``present`` counts it: a head it lacks is base,
    because a LoRA checkpoint written before vit-ft knew every family's head names left a distilled
    DeiT's ``head_dist`` frozen and dropped it with the base (``present=None``: today's rule)."""
    return is_base_key(key) or (present is not None and is_head_key(key) and key not in present)


def plain_key(key: str) -> str:
    """The key of a LoRA network's base weight in the plain timm network."""
    return key.replace(".base_layer.", ".")


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter_key(k) for k, _ in model.named_parameters())


def fingerprint(sd: dict[str, torch.Tensor], present: Container[str] | None = None) -> list[float]:
    """A checksum of the base weights of ``sd`` (any key naming): the sum and the absolute sum, in float64
    (``present``: see :func:`counts_as_base`)."""
    total, absolute = 0.0, 0.0
    for k, v in sd.items():
        if counts_as_base(k, present) and v.is_floating_point():
            total += float(v.detach().double().sum())
            absolute += float(v.detach().double().abs().sum())
    return [total, absolute]


def lora_checkpoint_info(spec: LoraSpec, base: dict[str, Any] | None, model: nn.Module) -> dict[str, Any]:
    """What a LoRA checkpoint records (under ``checkpoint['vit_ft']['lora']``): the spec, the
    :func:`~vit_ft.weights.load_weights` arguments that rebuild the base (None: the base weights are
    in the checkpoint), and the base's fingerprint."""
    return {
        "spec": spec.to_dict(),
        "base": base,
        "base_omitted": base is not None,
        "fingerprint": fingerprint(model.state_dict()),
    }


def drop_base(state_dict: dict[str, torch.Tensor], prefix: str = MODEL_PREFIX) -> None:
    """Remove the frozen base weights of a LoRA network from a (LightningModule) state dict, in place."""
    for k in [k for k in state_dict if k.startswith(prefix) and is_base_key(k[len(prefix) :])]:
        del state_dict[k]


def check_base(info: dict[str, Any], got: list[float], where: str) -> None:
    """Refuse a rebuilt base whose fingerprint ``got`` is not the one recorded in the checkpoint."""
    want = info.get("fingerprint")
    if want and not all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(want, got, strict=True)
    ):
        src = (info.get("base") or {}).get("source")
        raise ConfigError(
            f"{where}: the base weights rebuilt from model.weights={src!r} are not those its LoRA adapters were "
            "trained on (the file or hub revision changed); restore the original weights"
        )


def fill_base(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    info: dict[str, Any],
    own: dict[str, Any] | None,
    where: str,
    prefix: str = MODEL_PREFIX,
) -> None:
    """Put ``model``'s base weights (already rebuilt from ``model.weights``; ``own`` is its
    :func:`lora_checkpoint_info`) into a LoRA checkpoint's state dict that omits them, after
    checking their fingerprint and that the adapters and head are those of ``model``.

    The module loads such checkpoints with ``strict_loading=False``: under FSDP, Lightning loads the
    state dict before this hook runs, and the base weights are already in place from ``model.weights``."""
    if own is None:
        raise ConfigError(
            f"{where} was trained with model.lora={info.get('spec')}; load or resume it with the same model.lora"
        )
    mine = model.state_dict()
    present = {k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
    # a checkpoint lacking a head was fingerprinted with that head as base (see counts_as_base)
    old = any(counts_as_base(k, present) and not is_base_key(k) for k in mine)
    check_base(info, fingerprint(mine, present) if old else own["fingerprint"], where)
    trained = {prefix + k for k in mine if not counts_as_base(k, present)}
    theirs = {k for k in state_dict if k.startswith(prefix)}
    if not trained <= theirs or theirs - {prefix + k for k in mine}:
        raise ConfigError(
            f"{where}'s LoRA adapters ({len(theirs)} tensors) do not fit this model's model.lora={own['spec']} "
            f"({len(trained)}); load or resume it with the model.lora it was trained with"
        )
    for k, v in mine.items():
        if counts_as_base(k, present):
            state_dict.setdefault(prefix + k, v)


def save_lora_entries(state_dict: dict[str, torch.Tensor], info: dict[str, Any] | None) -> None:
    """A LoRA run's checkpoint (``info``: its :func:`lora_checkpoint_info`, None without LoRA) keeps the
    adapters and the head, and the base only when ``model.weights`` cannot rebuild it."""
    if info is not None and info["base_omitted"]:
        drop_base(state_dict)


def restore_lora_entries(
    checkpoint: dict[str, Any], model: nn.Module, own: dict[str, Any] | None, where: str = "the checkpoint"
) -> None:
    """Before a checkpoint that omits its base loads: :func:`fill_base` from ``model`` (its base
    already rebuilt from ``model.weights``). A checkpoint with its base needs nothing."""
    info = feature_record(checkpoint, LORA_RECORD)
    if info.get("base_omitted"):
        fill_base(checkpoint["state_dict"], model, info, own, where)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its linear layer (peft's ``merge``) and put the plain layer back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def merged_state_dict(
    sd: dict[str, torch.Tensor],
    arch: dict[str, Any],
    info: dict[str, Any],
    where: str,
    load_weights: Callable[..., Any],
) -> dict[str, torch.Tensor]:
    """The plain timm state dict of a LoRA checkpoint's network (``sd``: its ``model.*`` weights,
    prefix removed): base (rebuilt from the recorded weights source when omitted, by ``load_weights``,
    which the caller passes so that this module does not import the loader) + merged adapters."""

    spec = LoraSpec.from_config(info.get("spec"))
    if spec is None:
        raise ConfigError(f"{where}: its LoRA record has no rank; the checkpoint is damaged")
    if info.get("base_omitted"):
        base = dict(info["base"])
        bb = load_weights(str(base.pop("source")), **base)
        base_sd = {k: v for k, v in bb.model.state_dict().items() if counts_as_base(k, sd)}
        check_base(info, fingerprint(base_sd, sd), where)
    else:
        base_sd = {plain_key(k): v for k, v in sd.items() if is_base_key(k)}
    net = create_from_arch(arch)
    head = {k: v for k, v in sd.items() if is_head_key(k)}
    try:
        net.load_state_dict({**base_sd, **head}, strict=True)
        inject_lora(net, spec)
        res = net.load_state_dict({k: v for k, v in sd.items() if is_adapter_key(k)}, strict=False)
    except RuntimeError as e:
        raise ConfigError(
            f"{where}: its LoRA weights do not fit its network ({str(e).splitlines()[0]})"
        ) from None
    if res.unexpected_keys or any(is_adapter_key(k) for k in res.missing_keys):
        raise ConfigError(
            f"{where}: its LoRA adapters do not match model.lora={spec.to_dict()}; the file is damaged"
        )
    merge_lora(net)
    return net.state_dict()
