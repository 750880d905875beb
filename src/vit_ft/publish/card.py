"""The model card of an export: ``README.md`` beside the exported files, as the Hugging Face Hub shows it.

The text says what the model is, how to use it (:mod:`~vit_ft.publish.card_usage`), and, when the export
comes from a vit-ft run folder, the training summary, the results per class, the run report's pictures
(copied into ``images/``) and the command that reproduces the run; what it states is read by
:mod:`~vit_ft.publish.card_facts`, its YAML front matter (``model-index``) built by
:mod:`~vit_ft.publish.front_matter`. Any other source (a timm tag, a transformers folder, a checkpoint
outside its run folder) gets a card that says so and has no run sections.

Where it goes (:func:`card_folder`): into ``out`` for a folder export; beside the file for a single-file
export (``out=model.safetensors`` / ``.onnx``). A ``README.md`` there that vit-ft did not write is never
overwritten (:func:`check_card_folder`, before anything is written).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from vit_ft.errors import ConfigError
from vit_ft.io import write_text_atomic
from vit_ft.preprocessing import Preprocessing
from vit_ft.publish.card_facts import (
    Exported,
    Origin,
    data_sizes,
    dataset_of,
    exported_files,
    hub_id,
    read_origin,
    reproduce,
    results,
    split_of,
    wall_time,
)
from vit_ft.publish.card_usage import usage_section
from vit_ft.publish.front_matter import front_matter
from vit_ft.report import PICTURES, REPORT_DIR, analysis_of
from vit_ft.report.analysis import Analysis, ClassResult
from vit_ft.report.files import RunFiles
from vit_ft.report.markdown import cell, pct, table, what_ran
from vit_ft.weights.sources import looks_like_path

CARD = "README.md"
IMAGES_DIR = "images"  # the run report's pictures, copied beside the card
MARK = "<!-- model card written by vit-ft export.py; the next export into this folder rewrites it -->"
SINGLE_FILE_SUFFIXES = (".safetensors", ".onnx")
ALL_CLASSES_UP_TO = 20  # more classes: the 10 best and the 10 worst
TOP_BOTTOM = 10
LICENSE_ID = re.compile(
    r"^[a-z0-9][a-z0-9.+\-]*$"
)  # the Hub's license ids: apache-2.0, mit, cc-by-4.0, other


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


# -- the card's body ---------------------------------------------------------------------------------


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
    class_names: list[str],
    params: int,
    license: str | None,
    pictures: list[tuple[str, str]],
    version: str,
) -> str:
    from huggingface_hub import ModelCard

    classes = len(class_names)
    run = origin.run
    arch, pre = exported.arch, exported.pre
    base = hub_id(origin.starting_weights)
    rows = results(origin)
    meta = front_matter(
        exported,
        model_name=model_name,
        classes=classes,
        base_model=base,
        dataset_id=dataset_of(origin.config)[0] if run else None,
        license=license,
        rows=rows,
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
    out += usage_section(exported, classes)
    if run is not None:
        out += ["## Training", ""] + table(["", ""], summary_rows(origin))
        out += ["## Results", ""]
        if rows:
            out += table(
                ["data", "split", "weights", "top-1", "top-5", "mean per-class top-1"],
                [
                    [
                        r["name"],
                        split_of(r["stream"]),
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
    text = meta + "\n" + "\n".join(out)
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
    single = Path(out).suffix in SINGLE_FILE_SUFFIXES
    exported = Exported(
        arch,
        preprocessing,
        folder,
        where=repo_id or (str(Path(out_text).parent) if single else out_text),
        repo_id=repo_id,
        **exported_files(paths),
    )
    origin = read_origin(source)
    pictures = report_pictures(origin.run) if origin.run is not None else []
    model_name = repo_id.split("/")[-1] if repo_id else (Path(out).stem if single else Path(out).name)
    text = render(
        origin=origin,
        model_name=model_name,
        exported=exported,
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
