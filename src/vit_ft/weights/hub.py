"""Fetching from the Hugging Face hub, for hub ids and timm pretrained tags alike.

The cache and offline mode are read from the environment at call time (``HF_HOME`` /
``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), not at import, so that a job
configured after import (tests, Hydra launchers) gets what it asked for; every failure to fetch
becomes one ConfigError line saying how to get the files or pass a local path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
from torch import nn

from vit_ft.compat import hub_offline_mode
from vit_ft.errors import ConfigError
from vit_ft.weights.io import first_line


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str | None:
    """The hub cache implied by the environment now (HF_HUB_CACHE, else HF_HOME/hub), None = default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _cache_text() -> str:
    from huggingface_hub import constants

    return f"the Hugging Face cache {hub_cache_dir() or constants.HF_HUB_CACHE}"


def hub_offline() -> bool:
    """Whether the environment (now, or at huggingface_hub's import) asks for offline mode."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _hub_error(source: str, e: BaseException) -> ConfigError:
    from huggingface_hub import errors

    local = "or pass a local path instead: model.weights=/path/to/model_dir (config.json + model.safetensors)"
    if isinstance(e, errors.GatedRepoError):
        return ConfigError(
            f"hub model {source!r} is gated; accept its terms and log in (hf auth login), {local}"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return ConfigError(
            f"{source!r} is no Hugging Face hub model (nor a local path); check the id, {local}"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return ConfigError(f"hub model {source!r}: no such revision; check the part after '@', {local}")
    if isinstance(e, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) or hub_offline():
        cache = _cache_text()
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({first_line(e)})"
        return ConfigError(
            f"hub model {source!r} is not in {cache} and {why}; download it once online "
            f"(hf download {source.split('@')[0]}), {local}"
        )
    return ConfigError(f"cannot fetch hub model {source!r}: {first_line(e)}; {local}")


def _snapshot(repo_id: str, revision: str | None, source: str) -> Path:
    """The local snapshot of a repo's config, preprocessor config and weights (safetensors when the
    repo has them, else pytorch_model.bin)."""
    from huggingface_hub import errors, snapshot_download

    kwargs = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": hub_cache_dir(),
        "local_files_only": hub_offline(),
    }
    base = ["config.json", "preprocessor_config.json"]
    try:
        path = Path(
            snapshot_download(allow_patterns=[*base, "*.safetensors", "*.safetensors.index.json"], **kwargs)
        )
        if not any(path.glob("*.safetensors")):  # old repos: pytorch_model.bin only
            path = Path(
                snapshot_download(
                    allow_patterns=[
                        *base,
                        "pytorch_model.bin",
                        "pytorch_model.bin.index.json",
                        "pytorch_model-*.bin",
                    ],
                    **kwargs,
                )
            )
    except (
        errors.HfHubHTTPError,
        errors.LocalEntryNotFoundError,
        errors.OfflineModeIsEnabled,
        errors.HFValidationError,
        OSError,
        ValueError,
    ) as e:
        raise _hub_error(source, e) from None
    return path


def download_model(source: str) -> Path:
    """The local model directory of hub id ``org/name[@revision]`` (downloaded unless cached)."""
    repo_id, _, revision = source.partition("@")
    path = _snapshot(repo_id, revision or None, source)
    if not (path / "config.json").is_file():
        raise ConfigError(f"hub model {source!r} has no config.json; it is not a transformers or timm model")
    return path


def create_timm_pretrained(name: str, *, source: str, overlay: Any, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=True, ...)`` with the cache and offline mode of the
    environment now; a failed download or a kwarg that does not fit the weights is a ConfigError."""
    from huggingface_hub import errors

    offline = hub_offline()
    try:
        with hub_offline_mode(offline):
            return timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=hub_cache_dir(), **kwargs
            )
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
        cache = _cache_text()
        why = "HF_HUB_OFFLINE is set" if offline else f"it cannot be downloaded ({first_line(e)})"
        raise ConfigError(
            f"timm weights {source!r} are not in {cache} and {why}; download them once online, or pass a "
            "local file: model.weights=/path/to/model.safetensors with model.backbone set"
        ) from None
    except RuntimeError as e:
        raise ConfigError(
            f"timm weights {source!r} do not fit {name} with timm_kwargs={kwargs}: {first_line(e)}; "
            "remove the architectural timm_kwargs"
        ) from None
