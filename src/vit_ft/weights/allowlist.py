"""What a checkpoint carries, through allow-lists, before anything uses it.

An ``arch`` (see :mod:`vit_ft.weights.arch`) holds only the keys vit-ft writes, a registered timm model name
and ViT constructor arguments with plain values; a checkpoint's ``hyper_parameters`` hold no key that makes
Lightning import code, and their ``timm_kwargs`` and ``preprocessing`` are checked the same way. Every
refusal is one :class:`~vit_ft.errors.ConfigError` line naming the key: nothing from a file reaches an
import, a file open or Hydra's ``instantiate``.
"""

from __future__ import annotations

from typing import Any

import timm

from vit_ft.errors import ConfigError

# arch["features"] (a linear probe's head on token features, see vit_ft.models.features): the head's
# width in embedding widths. Absent: timm's own head on its own pooling.
HEAD_FEATURE_WIDTH = {"cls": 1, "mean": 1, "cls+mean": 2, "last4": 5}

ARCH_KEYS = ("name", "kwargs", "layer_norm_eps", "features")  # what vit-ft writes into an arch
# Constructor arguments that take code (a class or a function) or place tensors: never from an arch.
_CODE_ARGS = frozenset({"embed_layer", "block_fn", "mlp_layer", "attn_layer", "device", "dtype"})
# Arguments timm accepts either as code or as a registered name: from an arch, only the name.
_NAME_ARGS = frozenset({"norm_layer", "act_layer", "embed_norm_layer"})


def _constructor_args() -> frozenset[str]:
    """The keyword arguments of the timm networks vit-ft builds (ViT and DeiT, EVA-02, BEiT): what an
    arch's ``kwargs`` may hold. ``timm.create_model``'s own loading arguments (``checkpoint_path``,
    ``pretrained_cfg*``, ``features_only``, ...) are not among them, so no arch makes timm open a file."""
    import inspect

    from timm.models.beit import Beit
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    names: set[str] = set()
    for cls in (VisionTransformer, Eva, Beit):
        names |= set(list(inspect.signature(cls.__init__).parameters)[1:])
    return frozenset(names - _CODE_ARGS)


_ALLOWED_KWARGS: frozenset[str] | None = None


def _plain(v: Any) -> bool:
    """A JSON scalar, or a list/tuple of numbers (``img_size=(h, w)``, ``ref_feat_shape``)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v)


def check_arch(arch: Any, where: str) -> None:
    """Refuse, in one line naming the key, an ``arch`` that holds anything vit-ft does not write:
    unknown keys, a name that is not a registered timm model, constructor arguments outside the
    allow-list, or values that are not plain numbers/strings. ``where`` names the source (a checkpoint
    file, ``model.timm_kwargs``). Nothing from an arch reaches an import, a file open or ``instantiate``."""
    if (
        not isinstance(arch, dict)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs"), dict)
    ):
        raise ConfigError(
            f"{where}: arch={arch!r} is not a vit-ft arch (name and kwargs); the file is damaged or foreign"
        )
    extra = sorted(set(arch) - set(ARCH_KEYS))
    if extra:
        raise ConfigError(
            f"{where}: arch has the key {extra[0]!r}, which vit-ft never writes; refusing it (allowed: {', '.join(ARCH_KEYS)})"
        )
    name = arch["name"]
    if ":" in name or "/" in name or not timm.is_model(name):
        raise ConfigError(
            f"{where}: arch name {name!r} is not a registered timm model; pick one from timm.list_models('vit_*')"
        )
    eps = arch.get("layer_norm_eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
        raise ConfigError(f"{where}: arch layer_norm_eps={eps!r} must be a number in (0, 1) or null")
    feats = arch.get("features")
    if feats is not None and feats not in HEAD_FEATURE_WIDTH:
        raise ConfigError(f"{where}: arch features={feats!r} must be one of {', '.join(HEAD_FEATURE_WIDTH)}")
    check_timm_kwargs(arch["kwargs"], where)


def check_timm_kwargs(kwargs: Any, where: str) -> None:
    """Each key a ViT constructor argument (not a loading argument such as ``checkpoint_path``), each
    value plain: one line naming the first that is not."""
    global _ALLOWED_KWARGS
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: timm arguments {kwargs!r} are not a mapping")
    if _ALLOWED_KWARGS is None:
        _ALLOWED_KWARGS = _constructor_args()
    for key, value in kwargs.items():
        if key not in _ALLOWED_KWARGS:
            raise ConfigError(
                f"{where}: timm argument {key!r} is not one vit-ft passes to a ViT (a network argument such as "
                "depth, embed_dim, img_size, drop_path_rate); remove it"
            )
        if not _plain(value) or (key in _NAME_ARGS and not isinstance(value, (str, type(None)))):
            raise ConfigError(
                f"{where}: timm argument {key}={value!r} must be a plain number, string or list of numbers"
            )


def check_checkpoint_hparams(hp: Any, where: str) -> None:
    """A vit-ft checkpoint's ``hyper_parameters`` through allow-lists before anything uses them: no key
    that makes Lightning import code, a checked ``arch``, plain ``timm_kwargs``, a valid
    ``preprocessing``. ``where`` names the file (one ConfigError line naming the key otherwise)."""
    from vit_ft.checkpoint_format import check_hyper_parameters
    from vit_ft.preprocessing import Preprocessing

    check_hyper_parameters(hp, where)
    if hp.get("arch") is not None:
        check_arch(hp["arch"], where)
    if hp.get("timm_kwargs"):
        kwargs = dict(hp["timm_kwargs"]) if isinstance(hp["timm_kwargs"], dict) else hp["timm_kwargs"]
        overlay = kwargs.pop("pretrained_cfg_overlay", None) if isinstance(kwargs, dict) else None
        check_timm_kwargs(kwargs, f"{where}: hyper_parameters.timm_kwargs")
        if overlay is not None:  # timm's own way to name local weights (model.timm_kwargs): its fields only
            _check_overlay(overlay, f"{where}: hyper_parameters.timm_kwargs.pretrained_cfg_overlay")
    if hp.get("preprocessing") is not None:
        try:
            Preprocessing.from_dict(hp["preprocessing"])
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _check_overlay(overlay: Any, where: str) -> None:
    import dataclasses

    from timm.models import PretrainedCfg

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{where}={overlay!r} must be a mapping of timm pretrained-config fields")
    for key, value in overlay.items():
        if key not in fields or not _plain(value):
            raise ConfigError(
                f"{where}: {key}={value!r} is not a timm pretrained-config field with a plain value"
            )
