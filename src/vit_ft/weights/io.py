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

from vit_ft.checkpoint_format import RECORD
from vit_ft.errors import ConfigError

# safetensors metadata key under which vit_ft.weights.writers.save_timm_safetensors stores the
# arch, class names and preprocessing (JSON)
METADATA_KEY = "vit_ft"


def unsafe_global(e: pickle.UnpicklingError) -> str | None:
    """What a ``weights_only`` load refused (a class or function the pickle would call), or ``None`` when
    the pickle is simply broken."""
    msg = str(e)
    if "Weights only load failed" not in msg:
        return None
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    return m.group(1) if m else "objects other than tensors and plain containers"


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
        name = unsafe_global(e)
        if name is None:
            raise corrupt_file_error(path, e) from None
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


# -- checking a file the user names, before anything else runs ---------------------------------------
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 (and .npz)
PICKLE_MAGIC = b"\x80"  # a pickle of protocol >= 2 (torch.save's legacy format)


def _load_for_check(path: Path, label: str) -> Any:
    """``torch.load(weights_only=True)`` with the tensors memory-mapped (only the pickle is read)."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == ZIP_MAGIC
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        name = unsafe_global(e)
        if name is None:
            raise ConfigError(f"{label} is corrupt ({first_line(e)}); pass a complete checkpoint") from None
        raise ConfigError(
            f"{label} is refused: it is a pickle that needs {name}, which could run code when loaded; vit-ft "
            "reads only tensors and plain containers - re-save it from a trusted environment "
            "(safetensors.torch.save_file(state_dict, ...))"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        raise ConfigError(
            f"{label} is truncated or corrupt ({first_line(e)}): a save or a copy that did not finish? "
            "use an earlier checkpoint or copy the file again"
        ) from None


def check_checkpoint_file(
    source: str | Path, key: str, *, lightning: bool, resume: bool = False
) -> dict | None:
    """Check a file the user names (``ckpt_path=``, ``model.weights=``, ``weights=``) before any data
    or model is set up; raise :class:`ConfigError` with one line naming the file and what is wrong:
    missing, a folder where a file is needed, empty, truncated (a save or copy that did not finish),
    foreign (not a Lightning checkpoint where one is needed, not a weights file) or a pickle that
    would run code. Only the pickle is read (tensors are memory-mapped): cheap for any size.

    ``lightning``: a Lightning ``.ckpt`` is required (``resume``: with its training state, for
    ``trainer.fit(ckpt_path=...)``). Returns the checkpoint's ``hyper_parameters`` (a Lightning
    checkpoint), else None. A folder (a transformers directory) or an ``.npz`` is left to its reader
    once it is known to exist and not to be empty."""
    path = Path(str(source)).expanduser()
    label = f"{key}={str(source)!r}"
    if not path.exists():
        raise ConfigError(f"{label} does not exist (cwd {Path.cwd()}); pass the path of an existing file")
    if path.is_dir():
        if lightning:
            raise ConfigError(f"{label} is a folder; pass a .ckpt file (e.g. <run>/checkpoints/last.ckpt)")
        return None
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(
            f"{label} is empty (0 bytes): a save or a copy that never started; pass a complete file"
        )
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ConfigError(
                f"{label} is truncated or corrupt ({size} bytes; {first_line(e)}): a save or a copy that did "
                "not finish - use an earlier checkpoint or copy the file again"
            ) from None
        if not any(n.endswith("data.pkl") for n in names):
            if not lightning and path.suffix == ".npz":
                return None  # a big_vision .npz: its reader checks the arrays
            raise ConfigError(f"{label} is a zip archive but not a PyTorch checkpoint (holds {names[:3]})")
    elif path.suffix == ".safetensors" or (head[8:9] == b"{" and head[:1] != PICKLE_MAGIC):
        if lightning:
            raise ConfigError(
                f"{label} is a safetensors weights file, not a Lightning checkpoint; start from its "
                f"weights with model.weights={path}"
            )
        load_safetensors_header(path, label)
        return None
    elif head[:1] != PICKLE_MAGIC:
        what = (
            "a Lightning checkpoint (.ckpt)"
            if lightning
            else "a weights file (.safetensors, .pth, .bin, .npz)"
        )
        raise ConfigError(
            f"{label} is not {what}: it starts with {head[:8]!r}; pass a file vit-ft wrote or reads"
        )
    obj = _load_for_check(path, label)
    if not lightning:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(
            f"{label} is not a Lightning checkpoint (it holds {keys}, no 'state_dict'); to start from these "
            f"weights pass model.weights={path} instead"
        )
    if resume and "optimizer_states" not in obj:
        raise ConfigError(
            f"{label} holds weights only (no optimizer or loop state: saved with save_weights_only), so "
            f"training cannot resume from it; start from its weights with model.weights={path}"
        )
    hp = obj.get("hyper_parameters")
    if hp is not None and RECORD in obj:  # a vit-ft checkpoint: what it carries, through allow-lists
        from vit_ft.weights.allowlist import check_checkpoint_hparams

        check_checkpoint_hparams(hp, label)
    return dict(hp) if isinstance(hp, dict) else {}


def load_safetensors_header(path: Path, label: str) -> None:
    """Open a safetensors file (its header and that the file covers every tensor), nothing more."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"{label} is truncated or corrupt ({first_line(e)}): a save or a copy that did not finish - "
            "copy or export it again"
        ) from None


def check_weights_source(source: str | None, key: str) -> None:
    """:func:`check_checkpoint_file` for a weights source that is a local file (a folder, a timm tag
    or a hub id is left to :func:`vit_ft.weights.load_weights`)."""
    if source and Path(str(source)).expanduser().is_file():
        check_checkpoint_file(str(source), key, lightning=False)
