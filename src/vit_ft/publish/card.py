"""The model card of an export: ``README.md`` beside the exported files, as the Hugging Face Hub shows it.

Its YAML front matter is built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData`
(library_name, pipeline_tag, tags, base_model, datasets, license, ``model-index`` with the run's
validation and test results), so ``ModelCard.load`` / ``metadata_load`` read it back. The text says
what the model is, how to use it (transformers, timm and vit-ft snippets written for the exported files),
and, when the export comes from a vit-ft run folder (``RUN/checkpoints/x.ckpt`` beside ``RUN/metrics.json``),
the training summary, the results per class, the run report's pictures (copied into ``images/``) and the
command that reproduces the run (``RUN/.hydra/overrides.yaml``, without this machine's paths other than the
data root). Any other source (a timm tag, a transformers folder, a checkpoint outside its run folder)
gets a card that says so and has no run sections.

Where it goes (:func:`card_folder`): into ``out`` for a folder export; beside the file for a single-file
export (``out=model.safetensors`` / ``.onnx``). A ``README.md`` there that vit-ft did not write is never
overwritten (:func:`check_card_folder`, before anything is written).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_ft.checkpoint_format import read_record
from vit_ft.errors import ConfigError
from vit_ft.io import write_text_atomic
from vit_ft.preprocessing import Preprocessing
from vit_ft.report import PICTURES, REPORT_DIR, analysis_of, is_run_dir, read_run
from vit_ft.report.analysis import Analysis, ClassResult
from vit_ft.report.files import RunFiles, number
from vit_ft.report.markdown import cell, pct, table, what_ran
from vit_ft.weights.io import METADATA_KEY
from vit_ft.weights.sources import looks_like_path, timm_tag

CARD = "README.md"
IMAGES_DIR = "images"  # the run report's pictures, copied beside the card
MARK = "<!-- model card written by vit-ft export.py; the next export into this folder rewrites it -->"
SINGLE_FILE_SUFFIXES = (".safetensors", ".onnx")
ALL_CLASSES_UP_TO = 20  # more classes: the 10 best and the 10 worst
TOP_BOTTOM = 10
LICENSE_ID = re.compile(
    r"^[a-z0-9][a-z0-9.+\-]*$"
)  # the Hub's license ids: apache-2.0, mit, cc-by-4.0, other
KEEP_PATH_KEYS = ("data.root", "data.name")  # the data the user gave stays in the reproduce command
ABS_PATH = re.compile(r"(^|[\s,\[{(='\"])(~|/|[A-Za-z]:[\\/])")
STREAMS = {"val": "validation", "test": "test"}  # metric prefix -> dataset split (val_ema -> validation)
METRICS = (  # (metric key, model-index type, name)
    ("acc1", "accuracy", "Top-1 accuracy"),
    ("acc5", "accuracy", "Top-5 accuracy"),
    ("acc1_macro", "accuracy", "Mean per-class accuracy"),
)


def card_folder(out: str | os.PathLike) -> Path:
    """The folder the card goes into: ``out``, or its parent for a single-file export."""
    out = Path(out).expanduser()
    return out.parent if out.suffix in SINGLE_FILE_SUFFIXES else out


def check_card_folder(out: str | os.PathLike, license: str | None = None) -> None:
    """Refuse, before anything is written, a ``license`` that is no Hub license id and a ``README.md``
    in the card's folder that vit-ft did not write."""
    if license is not None and not LICENSE_ID.match(str(license)):
        raise ConfigError(
            f"license={license!r} is not a Hugging Face license id; pass one such as apache-2.0, mit, "
            "cc-by-4.0 or other (https://huggingface.co/docs/hub/repositories-licenses)"
        )
    readme = card_folder(out) / CARD
    if readme.is_file() and MARK not in readme.read_text(encoding="utf-8", errors="replace"):
        raise ConfigError(
            f"{readme} exists and was not written by vit-ft; export into a folder of its own "
            "(out=exported/my-vit) or pass card=false"
        )


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


def eval_results(rows: list[dict[str, Any]]) -> list[Any]:
    from huggingface_hub import EvalResult

    out = []
    for r in (r for r in rows if r["ours"]):  # model-index: this model's results only
        split = STREAMS[r["stream"].split("_")[0]]
        ema = " (EMA weights)" if "_ema" in r["stream"] else ""
        for key, mtype, mname in METRICS:
            if key in r["values"]:
                out.append(
                    EvalResult(
                        task_type="image-classification",
                        task_name="Image Classification",
                        dataset_type=r["type"],
                        dataset_name=r["name"],
                        dataset_split=split,
                        metric_type=mtype,
                        metric_name=f"{mname}{ema}, {r['what']}",
                        metric_value=round(r["values"][key], 4),
                    )
                )
    return out


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


# -- the card -------------------------------------------------------------------------------------------


@dataclass
class Exported:
    """What export.py wrote (:func:`exported_files`)."""

    hf_dir: Path | None = None
    timm_file: Path | None = None
    onnx_file: Path | None = None


def exported_files(paths: list[Path]) -> Exported:
    e = Exported()
    for p in map(Path, paths):
        if p.is_dir() and (p / "config.json").is_file():
            e.hf_dir = p
        elif p.suffix == ".safetensors":
            e.timm_file = p
        elif p.suffix == ".onnx":
            e.onnx_file = p
    return e


def shown(path: Path, folder: Path, where: str) -> str:
    """A file of the export as the snippets name it: inside ``where`` (the out the user gave, or the repo)."""
    rel = path.relative_to(folder).as_posix() if path != folder else ""
    return f"{where.rstrip('/')}/{rel}" if rel else where


def transformers_snippet(where: str, classes: int) -> list[str]:
    if classes:
        head = [
            "from transformers import AutoImageProcessor, AutoModelForImageClassification",
            "",
            f"processor = AutoImageProcessor.from_pretrained({where!r})",
            f"model = AutoModelForImageClassification.from_pretrained({where!r}).eval()",
        ]
        tail = [
            '    probs = model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]',
            "print(model.config.id2label[probs.argmax().item()], round(probs.max().item(), 4))",
        ]
    else:
        head = [
            "from transformers import AutoImageProcessor, AutoModel",
            "",
            f"processor = AutoImageProcessor.from_pretrained({where!r})",
            f"model = AutoModel.from_pretrained({where!r}).eval()",
        ]
        tail = [
            '    features = model(**processor(images=image, return_tensors="pt")).last_hidden_state',
            "print(features.shape)",
        ]
    return [
        "```python",
        "import torch",
        "from PIL import Image",
        *head,
        "",
        'image = Image.open("image.jpg").convert("RGB")',
        "with torch.no_grad():",
        *tail,
        "```",
    ]


def timm_snippet(file_line: list[str], arch: dict[str, Any], pre: Preprocessing, classes: int) -> list[str]:
    kwargs = dict(arch.get("kwargs") or {})
    overlay = {
        "input_size": (3, int(pre.img_size), int(pre.img_size)),
        "mean": tuple(float(v) for v in pre.mean),
        "std": tuple(float(v) for v in pre.std),
        "interpolation": pre.interpolation,
        "crop_pct": float(pre.crop_pct) if pre.crop_pct else 1.0,
        "crop_mode": pre.crop_mode if pre.crop_pct else "squash",  # no crop: a plain resize to the square
        "num_classes": classes,
    }
    eps = arch.get("layer_norm_eps")
    norm = (
        [f"    norm_layer=functools.partial(torch.nn.LayerNorm, eps={float(eps)!r}),"]
        if eps is not None
        else []
    )
    lines = [
        "```python",
        *(["import functools", ""] if norm else []),
        "import json",
        "",
        "import timm",
        "import torch",
        "from PIL import Image",
        "from safetensors import safe_open",
        "",
        *file_line,
        "model = timm.create_model(",
        f"    {arch['name']!r},",
        "    pretrained=True,",
        f"    pretrained_cfg_overlay=dict(file=file, **{overlay!r}),",
        *norm,
        f"    **{kwargs!r},",
        ").eval()",
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
        "",
        'image = Image.open("image.jpg").convert("RGB")',
        "with torch.no_grad():",
        "    out = model(transform(image).unsqueeze(0))",
    ]
    if classes:
        lines += [
            'with safe_open(file, "pt") as f:  # the class names travel in the file',
            f'    labels = json.loads(f.metadata()[{METADATA_KEY!r}])["class_names"]',
            "probs = out.softmax(-1)[0]",
            "print(labels[probs.argmax().item()], round(probs.max().item(), 4))",
        ]
    else:
        lines += ["print(out.shape)"]
    return lines + ["```"]


def usage_section(
    exported: Exported,
    folder: Path,
    where: str,
    repo_id: str | None,
    arch: dict[str, Any],
    pre: Preprocessing,
    classes: int,
) -> list[str]:
    out = ["## How to use", ""]
    if exported.hf_dir is not None:
        out += ["With transformers:", ""] + transformers_snippet(where, classes) + [""]
    if exported.timm_file is not None:
        name = exported.timm_file.relative_to(folder).as_posix()
        if repo_id:
            file_line = [
                "from huggingface_hub import hf_hub_download",
                "",
                f"file = hf_hub_download({repo_id!r}, {name!r})",
            ]
        else:
            file_line = [f"file = {shown(exported.timm_file, folder, where)!r}"]
        out += ["With timm (the weights, the architecture and the preprocessing of the run):", ""]
        out += timm_snippet(file_line, arch, pre, classes) + [""]
    weights = where
    if exported.hf_dir is None:
        exported_file = exported.timm_file or exported.onnx_file
        if exported_file is not None:
            weights = shown(exported_file, folder, where) if not repo_id else where
    out += [
        "With vit-ft (from its repository; top-5 per image, as JSON lines):",
        "",
        "```bash",
        f"python predict.py weights={shlex.quote(weights)} images=path/to/images out=predictions.jsonl",
        "```",
        "",
    ]
    if exported.onnx_file is not None:
        onnx = shown(exported.onnx_file, folder, where) if not repo_id else exported.onnx_file.name
        out += [
            f"With ONNX Runtime: `{onnx}` holds the class names and the preprocessing in its metadata; "
            f"`python predict.py weights={shlex.quote(onnx)} images=...` runs it.",
            "",
        ]
    return out


def classes_table(analysis: Analysis) -> list[str]:
    def row(c: ClassResult) -> list[Any]:
        conf = f"{c.top_confusion} ({c.top_confusion_count})" if c.top_confusion else ""
        return [c.name, c.images, pct(c.acc1) if c.images else "no images", conf]

    header = ["class", "images", "top-1", "most often mistaken for"]
    classes = analysis.classes
    if len(classes) <= ALL_CLASSES_UP_TO:
        return table(header, [row(c) for c in classes])
    ranked = analysis.worst()
    best = list(reversed(ranked[-TOP_BOTTOM:]))
    worst = ranked[:TOP_BOTTOM]
    out = [
        f"{len(classes)} classes; the {TOP_BOTTOM} best and the {TOP_BOTTOM} worst on {analysis.split}:",
        "",
    ]
    out += [f"**Best {TOP_BOTTOM}**", ""] + table(header, [row(c) for c in best])
    out += [f"**Worst {TOP_BOTTOM}**", ""] + table(header, [row(c) for c in worst])
    return out


def summary_rows(origin: Origin) -> list[list[str]]:
    """The run report's "what ran" rows, without this machine's paths (the data folder by its name)."""
    run = origin.run
    assert run is not None
    cfg = json.loads(json.dumps(run.config or {}, default=str))
    data = cfg.get("data") or {}
    for key in ("root", "name"):
        if data.get(key) and (looks_like_path(str(data[key])) or Path(str(data[key])).expanduser().exists()):
            data[key] = Path(str(data[key])).name
    weights = (cfg.get("model") or {}).get("weights")
    if weights and looks_like_path(str(weights)):
        cfg["model"]["weights"] = Path(str(weights)).name
    safe = RunFiles(run.run_dir, cfg, run.config_file, run.metrics, run.history, run.predictions)
    rows = [r for r in what_ran(safe, None) if r[0] not in ("task", "checkpoint")]
    sizes = data_sizes(run.run_dir)
    if sizes:
        rows.insert(2, ["images", sizes])
    t = wall_time(run)
    if t:
        rows.append(["time", f"{t} (wall clock, from the run folder's file times)"])
    ema = (cfg.get("model") or {}).get("ema") or {}
    if ema.get("decay") is not None:
        rows.append(["EMA", f"decay {ema['decay']}, used for {ema.get('use_for')}"])
    lora = (cfg.get("model") or {}).get("lora") or {}
    if lora.get("rank"):
        rows.append(
            ["LoRA", f"rank {lora['rank']}, alpha {lora.get('alpha')} (merged into the exported weights)"]
        )
    return rows


def render(
    *,
    origin: Origin,
    model_name: str,
    exported: Exported,
    folder: Path,
    where: str,
    repo_id: str | None,
    arch: dict[str, Any],
    pre: Preprocessing,
    class_names: list[str],
    params: int,
    license: str | None,
    pictures: list[tuple[str, str]],
    version: str,
) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    classes = len(class_names)
    run = origin.run
    cfg = origin.config
    ds_id, ds_name, _ = dataset_of(cfg) if run else (None, "", "")
    base = hub_id(origin.starting_weights)
    rows = results(origin)
    library = "transformers" if exported.hf_dir else "timm" if exported.timm_file else "onnx"
    tags = ["vit-ft", "image-classification", "vision-transformer", "timm"]
    tags += ["transformers"] if exported.hf_dir else []
    tags += ["onnx"] if exported.onnx_file else []
    data = ModelCardData(
        library_name=library,
        pipeline_tag="image-classification" if classes else "image-feature-extraction",
        tags=tags,
        base_model=base,
        datasets=[ds_id] if ds_id else None,
        license=license,
        model_name=model_name,
        eval_results=eval_results(rows) or None,
    )
    size = int(pre.img_size)
    what = f"A {arch['name']} image classifier" if classes else f"A {arch['name']} image encoder (no head)"
    out = [MARK, "", f"# {model_name}", "", "## What it is", ""]
    count = f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"
    facts = f"{what}: {count} parameters, {size}×{size} RGB input"
    facts += f", {classes} classes." if classes else "."
    if origin.checkpoint is not None:
        start = origin.starting_weights
        started = (
            f"[{base}](https://huggingface.co/{base})"
            if base
            else (f"`{Path(start).name}`" if start else "random initialisation")
        )
        out += [f"{facts} Fine-tuned with vit-ft from {started}."]
        if run is None:
            out += [
                "",
                f"Exported from the vit-ft checkpoint `{origin.checkpoint.name}`, outside its run folder: the "
                "training summary, the results and the reproduce command are not known to this card.",
            ]
    else:
        out += [
            f"{facts} Exported by vit-ft from `{origin.source}`, which is not a vit-ft training run: this card "
            "has no training summary, results or reproduce command.",
        ]
    crop = (
        f"resize to {size / pre.crop_pct:.0f} and central {size}×{size} crop"
        if pre.crop_pct
        else f"resize to {size}×{size}"
    )
    out += [
        "",
        f"Preprocessing: {crop} ({pre.interpolation}), pixels in [0, 1] normalised with mean "
        f"{[round(float(v), 4) for v in pre.mean]} and std {[round(float(v), 4) for v in pre.std]}.",
        "",
    ]
    if classes:
        listed = ", ".join(cell(n) for n in class_names[:ALL_CLASSES_UP_TO])
        more = f" and {classes - ALL_CLASSES_UP_TO} more" if classes > ALL_CLASSES_UP_TO else ""
        out += [f"Classes: {listed}{more}.", ""]
    out += usage_section(exported, folder, where, repo_id, arch, pre, classes)
    if run is not None:
        out += ["## Training", ""] + table(["", ""], summary_rows(origin))
        out += ["## Results", ""]
        if rows:
            out += table(
                ["data", "split", "weights", "top-1", "top-5", "mean per-class top-1"],
                [
                    [
                        r["name"],
                        STREAMS[r["stream"].split("_")[0]],
                        ("EMA, " if "_ema" in r["stream"] else "") + r["what"],
                        pct(r["values"].get("acc1")),
                        pct(r["values"].get("acc5")),
                        pct(r["values"].get("acc1_macro")),
                    ]
                    for r in rows
                ],
            )
        else:
            out += ["The run folder holds no results (`metrics.json` is missing or unreadable).", ""]
        analysis = analysis_of(run)
        if analysis is not None:
            out += [f"### Per class ({analysis.split}, {analysis.images} images, at the end of training)", ""]
            out += classes_table(analysis)
        if pictures:
            out += ["### Pictures from the run report", ""]
            for title, rel in pictures:
                out += [f"![{title}]({rel})", ""]
        command, dropped = reproduce(run.run_dir)
        out += ["## Reproduce", ""]
        if command:
            out += [
                f"With vit-ft {version}, from its repository (`data.root` / `data.name` is the data the run read):",
                "",
                "```bash",
                command,
                "```",
                "",
            ]
            if dropped:
                out += [f"Left out (paths on the training machine): {', '.join(sorted(set(dropped)))}.", ""]
            ckpt = origin.checkpoint.name if origin.checkpoint else "last.ckpt"
            out += [
                f"then `python export.py ckpt_path=<run folder>/checkpoints/{ckpt} out={model_name}` "
                "writes these files and this card.",
                "",
            ]
        else:
            out += ["The run folder has no `.hydra/overrides.yaml`; see its `config_resolved.yaml`.", ""]
    out += ["---", "", f"Card written by vit-ft {version} (`export.py`).", ""]
    text = "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(out)
    ModelCard(text, ignore_metadata_errors=False)  # what the Hub will parse: fail here, not there
    return text


def report_pictures(run: RunFiles) -> list[tuple[str, Path, str]]:
    """The run report's pictures that exist: ``(title, file, path beside the card)``."""
    found = [(title, run.run_dir / REPORT_DIR / name, f"{IMAGES_DIR}/{name}") for name, title in PICTURES]
    return [p for p in found if p[1].is_file()]


def write_card(
    out: str | os.PathLike,
    paths: list[Path],
    *,
    source: str,
    arch: dict[str, Any],
    preprocessing: Preprocessing,
    class_names: list[str] | None,
    params: int,
    out_text: str,
    repo_id: str | None = None,
    license: str | None = None,
) -> list[Path]:
    """Write ``README.md`` (and ``images/``) for the export ``paths`` of ``out``; the files written.
    ``out_text`` is ``out`` as the user gave it (the snippets name it; the repo id when ``repo_id``)."""
    from vit_ft import __version__

    folder = card_folder(out)
    exported = exported_files(paths)
    origin = read_origin(source)
    single = Path(out).suffix in SINGLE_FILE_SUFFIXES
    where = repo_id or (str(Path(out_text).parent) if single else out_text)
    pictures = report_pictures(origin.run) if origin.run is not None else []
    model_name = repo_id.split("/")[-1] if repo_id else (Path(out).stem if single else Path(out).name)
    text = render(
        origin=origin,
        model_name=model_name,
        exported=exported,
        folder=folder,
        where=where,
        repo_id=repo_id,
        arch=arch,
        pre=preprocessing,
        class_names=list(class_names or []),
        params=params,
        license=license,
        pictures=[(title, rel) for title, _, rel in pictures],
        version=__version__,
    )  # rendered (and parsed back) before anything is written
    for _, src, rel in pictures:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / rel)
    write_text_atomic(folder / CARD, text)
    return [folder / CARD, *(folder / rel for _, _, rel in pictures)]
