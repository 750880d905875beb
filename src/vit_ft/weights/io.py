"""Reading weight files safely: safetensors, or ``torch.load(weights_only=True)``, nothing else.

A pickle that would import code is refused with a ConfigError, as is a truncated or corrupt file;
the tensors are unwrapped from the usual training-checkpoint containers and prefixes.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from vit_ft.errors import ConfigError

# safetensors metadata key under which vit_ft.weights.writers.save_timm_safetensors stores the
# arch, class names and preprocessing (JSON)
METADATA_KEY = "vit_ft"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def corrupt_file_error(path: Path, e: BaseException) -> ConfigError:
    """The error for a weight file that cannot be parsed."""
    return ConfigError(
        f"cannot read weights file {path}: {first_line(e)}; the file is truncated, corrupt or not a "
        "checkpoint - download or export it again"
    )


def torch_load_safely(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickle that would import code becomes a ConfigError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg:
            raise corrupt_file_error(path, e) from None
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        name = m.group(1) if m else "objects other than tensors and plain containers"
        raise ConfigError(
            f"refusing to load {path}: it is a pickle that needs {name}, which could run code; vit-ft only "
            "reads tensors and plain containers (safetensors or torch.load(weights_only=True)) - re-save the "
            "weights from a trusted environment with safetensors.torch.save_file(state_dict, ...)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
        raise corrupt_file_error(path, e) from None


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, on the CPU."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise corrupt_file_error(path, e) from None


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()
    }  # DataParallel leftovers on some keys only


def unwrap_state_dict(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint (raw, or under ``state_dict_ema`` / ``model_ema`` /
    ``state_dict`` / ``model`` / ``module``; EMA weights preferred, with a note)."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                if key in ("state_dict_ema", "model_ema"):
                    notes.append(f"using the EMA weights ({key!r}) of {path.name}")
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(
            f"{path} holds no state dict of tensors (found {keys}); pass a timm/transformers weight file, "
            "a raw state dict or one wrapped in 'state_dict' / 'model' / 'state_dict_ema'"
        )
    return strip_prefixes(dict(obj))


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Tensors of a weight file (safetensors or weights-only torch pickle): (state dict, safetensors
    metadata, notes). Wrappers (``state_dict`` / ``model`` / ``state_dict_ema``) and ``module.``
    prefixes are removed."""
    path = Path(path)
    notes: list[str] = []
    if path.suffix == ".safetensors":
        sd, meta = load_safetensors(path)
        return strip_prefixes(sd), meta, notes
    return unwrap_state_dict(torch_load_safely(path), path, notes), {}, notes
