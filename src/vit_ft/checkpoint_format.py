"""The vit-ft checkpoint format: every key prefix and record name, in one place.

A vit-ft ``.ckpt`` is a Lightning checkpoint whose

* ``state_dict`` holds the trained network as ``model.<timm key>`` (:data:`MODEL_PREFIX`), the EMA of
  the weights beside it as ``model_ema.<timm key>`` (:data:`EMA_PREFIX`), and a linear probe's extra
  modules under their own names;
* ``hyper_parameters`` hold what rebuilds the network offline (``arch``, ``preprocessing``,
  ``class_names``, ``num_classes``, the ``ema``/``lora`` settings);
* ``vit_ft`` (:data:`RECORD`) is vit-ft's own record, built by :func:`build_record` only: the format
  version, the run's total optimizer steps, and per feature a sub-record (``lora``, ``probe``,
  ``multilabel``: the per-class thresholds of a multi-label model, chosen on val);
* ``rng_states`` (:data:`RNG_KEY`) holds every rank's random generators (exact resume).

Readers, writers and hooks import these names; none spells a prefix. The format version is 1 since the
first vit-ft checkpoint: a checkpoint without a record (e.g. written by a plain Lightning module) reads
as version 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vit_ft.errors import ConfigError

FORMAT_VERSION = 1
RECORD = "vit_ft"  # checkpoint["vit_ft"]: vit-ft's own record
RNG_KEY = "rng_states"  # checkpoint["rng_states"]: one dict of generator states per rank
MODEL_PREFIX = "model."  # state_dict["model.<timm key>"]: the trained network
EMA_PREFIX = "model_ema."  # state_dict["model_ema.<timm key>"]: the EMA of the weights beside it
HEAD_PREFIX = "head."  # the timm classifier head inside the network (see weights.families for all heads)
LORA_RECORD = "lora"  # checkpoint["vit_ft"]["lora"]: the adapters' spec and where the base comes from
PROBE_RECORD = "probe"  # checkpoint["vit_ft"]["probe"]: a linear probe's resume state
MULTILABEL_RECORD = (
    "multilabel"  # checkpoint["vit_ft"]["multilabel"]: {"thresholds": [K floats]}, chosen on val
)
MULTILABEL_ATTR = "vit_ft_thresholds"  # a loaded network with a multi-label head: its thresholds (to writers)
EMA_USES = ("eval", "export", "none")  # model.ema.use_for


def build_record(total_steps: int, **features: Any) -> dict[str, Any]:
    """vit-ft's record for ``checkpoint[RECORD]``: the format version, the run's total optimizer steps
    and one entry per feature that adds state (``lora=...``, ``probe=...``; ``None`` values left out)."""
    record: dict[str, Any] = {"format": FORMAT_VERSION, "total_steps": int(total_steps)}
    record.update({k: v for k, v in features.items() if v is not None})
    return record


def read_record(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's vit-ft record (an empty dict when it has none)."""
    rec = checkpoint.get(RECORD)
    return dict(rec) if isinstance(rec, Mapping) else {}


def feature_record(checkpoint: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One feature's sub-record (``LORA_RECORD``, ``PROBE_RECORD``), empty when absent."""
    sub = read_record(checkpoint).get(name)
    return dict(sub) if isinstance(sub, Mapping) else {}


def format_version(checkpoint: Mapping[str, Any]) -> int:
    """The record's format version (0: no vit-ft record)."""
    return int(read_record(checkpoint).get("format", 0) or 0)


def multilabel_thresholds(checkpoint: Mapping[str, Any]) -> list[float] | None:
    """The per-class thresholds a multi-label checkpoint stores (``None``: none stored)."""
    thr = feature_record(checkpoint, MULTILABEL_RECORD).get("thresholds")
    return [float(t) for t in thr] if isinstance(thr, (list, tuple)) else None


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix``, with the prefix dropped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def add_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries with ``prefix`` put in front of every key."""
    return {prefix + k: v for k, v in state.items()}


def has_prefix(state: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def check_hyper_parameters(hp: Any, where: str) -> None:
    """Refuse, in one line naming the key, ``hyper_parameters`` that would make Lightning import code
    (``_instantiator``, ``_class_path``: any ``_``-key or non-string key), or class names that are not
    strings. Other keys never reach the constructor (Lightning passes only its
    arguments); the values vit-ft reads are checked where they are read (``arch``, ``preprocessing``)."""
    if not isinstance(hp, Mapping):
        raise ConfigError(
            f"{where}: hyper_parameters={type(hp).__name__} is not a mapping; the file is damaged"
        )
    bad = sorted(repr(k) for k in hp if not isinstance(k, str) or k.startswith("_"))
    if bad:
        raise ConfigError(
            f"{where}: hyper_parameters has the key {bad[0]}, which vit-ft never writes (it would make Lightning "
            "import code); refusing the file"
        )
    names = hp.get("class_names")
    if names is not None and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    ):
        raise ConfigError(f"{where}: hyper_parameters.class_names must be a list of strings")
    k = hp.get("num_classes")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ConfigError(f"{where}: hyper_parameters.num_classes={k!r} must be an integer >= 0")


def ema_chosen(ema_cfg: Any, purpose: str) -> bool:
    """Whether a checkpoint trained with ``model.ema = ema_cfg`` is read as its EMA weights for
    ``purpose``: ``eval`` (eval.py, predict.py, initial weights) when ``use_for=eval``, ``export``
    (export.py) when ``use_for`` is ``eval`` or ``export``."""
    if not isinstance(ema_cfg, Mapping) or ema_cfg.get("decay") is None:
        return False
    use = ema_cfg.get("use_for", "eval")
    return use == "eval" or (use == "export" and purpose == "export")
