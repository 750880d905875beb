"""The model card's "How to use" section: transformers, timm and vit-ft (predict.py) snippets written for
the exported files, which load them from ``out`` as the user gave it or from the Hub repository."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from vit_ft.preprocessing import Preprocessing
from vit_ft.publish.card_facts import Exported
from vit_ft.weights.io import METADATA_KEY


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


def usage_section(exported: Exported, classes: int) -> list[str]:
    """``## How to use``: a snippet per library the export serves, and predict.py's command."""
    e = exported
    out = ["## How to use", ""]
    if e.hf_dir is not None:
        out += ["With transformers:", ""] + transformers_snippet(e.where, classes) + [""]
    if e.timm_file is not None:
        name = e.timm_file.relative_to(e.folder).as_posix()
        if e.repo_id:
            file_line = [
                "from huggingface_hub import hf_hub_download",
                "",
                f"file = hf_hub_download({e.repo_id!r}, {name!r})",
            ]
        else:
            file_line = [f"file = {shown(e.timm_file, e.folder, e.where)!r}"]
        out += ["With timm (the weights, the architecture and the preprocessing of the run):", ""]
        out += timm_snippet(file_line, e.arch, e.pre, classes) + [""]
    weights = e.where
    if e.hf_dir is None:
        exported_file = e.timm_file or e.onnx_file
        if exported_file is not None:
            weights = shown(exported_file, e.folder, e.where) if not e.repo_id else e.where
    out += [
        "With vit-ft (from its repository; top-5 per image, as JSON lines):",
        "",
        "```bash",
        f"python predict.py weights={shlex.quote(weights)} images=path/to/images out=predictions.jsonl",
        "```",
        "",
    ]
    if e.onnx_file is not None:
        onnx = shown(e.onnx_file, e.folder, e.where) if not e.repo_id else e.onnx_file.name
        out += [
            f"With ONNX Runtime: `{onnx}` holds the class names and the preprocessing in its metadata; "
            f"`python predict.py weights={shlex.quote(onnx)} images=...` runs it.",
            "",
        ]
        if e.onnx_data is not None:
            out += [
                f"The network is over 2 GB, so its weights are in `{e.onnx_data.name}` beside "
                f"`{e.onnx_file.name}` (ONNX external data): keep, copy or download the two files together; "
                "ONNX Runtime reads the weights from the folder of the `.onnx` file.",
                "",
            ]
    return out
