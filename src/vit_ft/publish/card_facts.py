"""The facts a model card states, read from the export and from the source it came from.

:class:`Exported`: the network (arch, preprocessing), the files export.py wrote and where the card's
snippets find them. :class:`Origin` (:func:`read_origin`): the exported source; for a vit-ft checkpoint in
its run folder (``RUN/checkpoints/x.ckpt`` beside ``RUN/metrics.json``), the run's config, its results
(:func:`results`: the run's own and those of eval.py runs of this checkpoint inside the folder), its data
(:func:`dataset_of`, :func:`data_sizes`), its wall time and the command that reproduces it
(:func:`reproduce`: ``RUN/.hydra/overrides.yaml`` without this machine's paths other than the data root).
:func:`hub_id`: the Hub repository of the weights the run started from (the card's ``base_model``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_ft.checkpoint_format import read_record
from vit_ft.preprocessing import Preprocessing
from vit_ft.report import is_run_dir, read_run
from vit_ft.report.files import RunFiles, number
from vit_ft.weights.sources import looks_like_path, timm_tag

KEEP_PATH_KEYS = ("data.root", "data.name")  # the data the user gave stays in the reproduce command
ABS_PATH = re.compile(r"(^|[\s,\[{(='\"])(~|/|[A-Za-z]:[\\/])")
STREAMS = {"val": "validation", "test": "test"}  # metric prefix -> dataset split (val_ema -> validation)


def split_of(stream: str) -> str:
    """The dataset split of a metric stream: ``val`` / ``val_ema`` -> ``validation``, ``test`` -> ``test``."""
    return STREAMS[stream.split("_")[0]]


# -- what was exported ---------------------------------------------------------------------------------


@dataclass
class Exported:
    """The export the card describes: the network, the files export.py wrote (:func:`exported_files`) and
    where the card's snippets find them."""

    arch: dict[str, Any]  # the timm model: name, kwargs, layer_norm_eps
    pre: Preprocessing
    folder: Path  # the card's folder
    where: str  # ``out`` as the user gave it (its folder for a single file), or the repo id
    repo_id: str | None = None
    hf_dir: Path | None = None
    timm_file: Path | None = None
    onnx_file: Path | None = None
    onnx_data: Path | None = None  # the onnx file's external data (a network over 2 GB)


def exported_files(paths: list[Path]) -> dict[str, Path]:
    """The files export.py wrote by kind: ``hf_dir``, ``timm_file``, ``onnx_file``, ``onnx_data``
    (:class:`Exported`'s fields)."""
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.is_dir() and (p / "config.json").is_file():
            found["hf_dir"] = p
        elif p.suffix == ".safetensors":
            found["timm_file"] = p
        elif p.suffix == ".onnx":
            found["onnx_file"] = p
        elif p.name.endswith(".onnx.data"):
            found["onnx_data"] = p
    return found


# -- where the exported weights come from ------------------------------------------------------------


@dataclass
class Origin:
    """The exported source as the card describes it."""

    source: str
    checkpoint: Path | None = None  # a vit-ft .ckpt
    hparams: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    run: RunFiles | None = None

    @property
    def config(self) -> dict[str, Any]:
        return (self.run.config or {}) if self.run else {}

    @property
    def starting_weights(self) -> str | None:
        """What the run started from (``model.weights``); for other sources, the source itself."""
        if self.checkpoint is None:
            return self.source
        weights = self.hparams.get("weights")
        if weights is None:
            weights = (self.config.get("model") or {}).get("weights")
        return None if weights is None else str(weights)


def run_dir_of(ckpt: Path) -> Path | None:
    """The run folder of a checkpoint: ``RUN/checkpoints/x.ckpt`` -> ``RUN`` (or the checkpoint's folder)."""
    ckpt = ckpt.absolute()
    candidates = [ckpt.parent.parent] if ckpt.parent.name == "checkpoints" else []
    for d in [*candidates, ckpt.parent]:
        if is_run_dir(d) and ((d / "metrics.json").is_file() or (d / ".hydra").is_dir()):
            return d
    return None


def read_origin(source: str) -> Origin:
    path = Path(source).expanduser()
    if not (path.is_file() and path.suffix == ".ckpt"):
        return Origin(source)
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - export.py has read it already; the card only describes it
        return Origin(source)
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if not isinstance(hp, dict) or not isinstance(ck, dict):
        return Origin(source)
    run_dir = run_dir_of(path)
    return Origin(source, path, dict(hp), read_record(ck), read_run(run_dir) if run_dir else None)


def hub_id(weights: str | None) -> str | None:
    """The Hub repository of a weight source: a hub id (``org/name[@rev]``), or the repository timm
    downloads a pretrained tag from; None for a local file or a random init."""
    if not weights:
        return None
    w = str(weights).strip()
    if w.startswith("hf-hub:"):
        return w[len("hf-hub:") :].split("@")[0] or None
    if looks_like_path(w.split("@")[0]) or Path(w).expanduser().exists():
        return None
    tag = timm_tag(w)
    if tag is not None:
        import timm

        cfg = timm.models.get_pretrained_cfg(tag)
        return getattr(cfg, "hf_hub_id", None) or None
    base = w.split("@")[0]
    return base if base.count("/") == 1 else None


# -- the run's data, results and command -------------------------------------------------------------


def short_target(data: dict[str, Any]) -> str:
    return str(data.get("_target_") or "").rsplit(".", 1)[-1]


def dataset_of(cfg: dict[str, Any]) -> tuple[str | None, str, str]:
    """(Hub dataset id or None, dataset name, dataset type) of a run's ``data`` config."""
    data = cfg.get("data") or {}
    kind = short_target(data)
    name = data.get("name")
    if kind == "HFDataModule" and name:
        local = looks_like_path(str(name)) or Path(str(name)).expanduser().exists()
        if not local:
            return str(name), str(name), str(name)
        return None, Path(str(name)).name, "imagefolder"
    if kind == "ImageNetDataModule":
        return None, "ImageNet-1k", "imagenet-1k"
    if kind == "QuickstartDataModule":
        return None, "vit-ft quickstart shapes", "quickstart"
    root = data.get("root")
    return None, Path(str(root)).name if root else "image folder", "imagefolder"


def data_sizes(run_dir: Path) -> str | None:
    """``train 64, val 24 images`` from the run's log (the datamodule's ``data: ...`` line)."""
    found = None
    for log in sorted(run_dir.glob("*.log")):
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for m in re.finditer(r"data: \d+ classes; (.*? images)\s*$", text, re.M):
            found = m.group(1)
    return found


def wall_time(run: RunFiles) -> str | None:
    """The run's wall time from its folder's file times (start: ``.hydra/config.yaml``, end: ``metrics.json``)."""
    try:
        start = (run.run_dir / ".hydra" / "config.yaml").stat().st_mtime
        end = (run.run_dir / "metrics.json").stat().st_mtime
    except OSError:
        return None
    s = end - start
    if s <= 0:
        return None
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def is_checkpoint(origin: Origin, which: str) -> bool:
    """Whether the exported checkpoint is the run's ``best`` or ``last`` one (``metrics.json``'s ``checkpoints``)."""
    m = (origin.run.metrics or {}) if origin.run else {}
    ckpt = (m.get("checkpoints") or {}).get(which) or (
        (m.get("best") or {}).get("checkpoint") if which == "best" else None
    )
    return bool(ckpt and origin.checkpoint and Path(str(ckpt)).name == origin.checkpoint.name)


def stream_results(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"val": {"acc1": ...}, "val_ema": {...}, "test": {...}}`` of a metrics section (train/* left out)."""
    out: dict[str, dict[str, float]] = {}
    for key, v in (values or {}).items():
        stream, _, metric = str(key).partition("/")
        if stream.split("_")[0] in STREAMS and number(v) is not None:
            out.setdefault(stream, {})[metric] = float(v)
    return out


def extra_evaluations(origin: Origin) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(config, metrics.json)`` of eval.py runs inside the run folder that evaluated this checkpoint."""
    if origin.run is None or origin.checkpoint is None:
        return []
    out = []
    for sub in sorted(p for p in origin.run.run_dir.iterdir() if p.is_dir()):
        if not (sub / "metrics.json").is_file():
            continue
        ev = read_run(sub)
        ck = (ev.metrics or {}).get("ckpt_path")
        try:
            same = bool(ck) and Path(str(ck)).expanduser().samefile(origin.checkpoint)
        except OSError:
            same = False
        if same and isinstance((ev.metrics or {}).get("metrics"), dict):
            out.append((ev.config or {}, ev.metrics or {}))
    return out


def results(origin: Origin) -> list[dict[str, Any]]:
    """One row per (data set, split, weights): the values the card and ``model-index`` show."""
    if origin.run is None:
        return []
    m, cfg = origin.run.metrics or {}, origin.config
    _, name, kind = dataset_of(cfg)
    rows = []
    best = m.get("best") or {}
    is_best, is_last = is_checkpoint(origin, "best"), is_checkpoint(origin, "last")

    def add(values: dict[str, Any], what: str, ours: bool) -> None:
        for stream, vals in stream_results(values).items():
            rows.append(
                {"name": name, "type": kind, "stream": stream, "values": vals, "what": what, "ours": ours}
            )

    if is_best and number(best.get("score")) is not None:
        add({best.get("metric"): best["score"]}, f"this checkpoint (the best by {best.get('metric')})", True)
    # final: the weights at the end of training; test: the best checkpoint's (train.py tests it)
    add(
        m.get("final") or {},
        "at the end of training" + ("" if is_last else " (not this checkpoint)"),
        is_last,
    )
    test_ours = is_best or (is_last and not best.get("checkpoint"))
    add(
        m.get("test") or {},
        "the best checkpoint" + ("" if test_ours else " (not this checkpoint)"),
        test_ours,
    )
    for ev_cfg, ev in extra_evaluations(origin):
        _, ev_name, ev_kind = dataset_of(ev_cfg)
        for stream, values in stream_results(ev.get("metrics") or {}).items():
            rows.append(
                {
                    "name": ev_name,
                    "type": ev_kind,
                    "stream": stream,
                    "values": values,
                    "what": "eval.py",
                    "ours": True,
                }
            )
    return rows


def reproduce(run_dir: Path) -> tuple[str | None, list[str]]:
    """``python train.py <overrides>`` from ``.hydra/overrides.yaml`` and the keys left out because their
    value is a path on the training machine (``model.weights`` becomes a placeholder)."""
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None, []
    if not isinstance(overrides, list):
        return None, []
    kept, dropped = [], []
    for o in (str(x) for x in overrides):
        key, eq, value = o.partition("=")
        bare = key.lstrip("+~")
        if eq and bare not in KEEP_PATH_KEYS and ABS_PATH.search(value):
            if bare == "model.weights":
                kept.append(f"{key}=<path to {Path(value.strip(chr(39) + chr(34))).name}>")
            else:
                dropped.append(bare)
            continue
        kept.append(o)
    return " ".join(["python", "train.py", *map(shlex.quote, kept)]), dropped
