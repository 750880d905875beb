"""The model card's YAML front matter, built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData`:
library_name, pipeline_tag, tags, base_model, datasets, license and ``model-index`` with this checkpoint's
validation and test results (:func:`~vit_ft.publish.card_facts.results`), so that ``ModelCard.load`` /
``metadata_load`` and the Hub read them back."""

from __future__ import annotations

from typing import Any

from vit_ft.publish.card_facts import Exported, split_of

METRICS = (  # (metric key, model-index type, name)
    ("acc1", "accuracy", "Top-1 accuracy"),
    ("acc5", "accuracy", "Top-5 accuracy"),
    ("acc1_macro", "accuracy", "Mean per-class accuracy"),
)


def front_matter(
    exported: Exported,
    *,
    model_name: str,
    classes: int,
    base_model: str | None,
    dataset_id: str | None,
    license: str | None,
    rows: list[dict[str, Any]],
) -> str:
    """``---`` YAML ``---``: the card's metadata; ``rows`` are :func:`~vit_ft.publish.card_facts.results`."""
    from huggingface_hub import ModelCardData

    library = "transformers" if exported.hf_dir else "timm" if exported.timm_file else "onnx"
    tags = ["vit-ft", "image-classification", "vision-transformer", "timm"]
    tags += ["transformers"] if exported.hf_dir else []
    tags += ["onnx"] if exported.onnx_file else []
    data = ModelCardData(
        library_name=library,
        pipeline_tag="image-classification" if classes else "image-feature-extraction",
        tags=tags,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        model_name=model_name,
        eval_results=eval_results(rows) or None,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def eval_results(rows: list[dict[str, Any]]) -> list[Any]:
    """``model-index`` entries (:class:`~huggingface_hub.EvalResult`): the rows of this checkpoint only."""
    from huggingface_hub import EvalResult

    out = []
    for r in (r for r in rows if r["ours"]):  # model-index: this model's results only
        split = split_of(r["stream"])
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
