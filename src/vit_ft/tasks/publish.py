"""export.py's card and Hub options (``card``, ``license``, ``push_to_hub``, ``hub.private``,
``hub.revision``): checked before anything is written (:func:`check_publish`), done after the files
are (:func:`finish_export`). The work is in :mod:`vit_ft.publish`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit_ft.errors import ConfigError
from vit_ft.publish import (
    CARD,
    IMAGES_DIR,
    card_folder,
    check_card_folder,
    check_repo_id,
    push_folder,
    write_card,
)


@dataclass
class HubConfig:
    private: bool = False  # only for a repository the push creates
    revision: str | None = None  # a branch (created when missing); null: main


def check_publish(cfg: Any) -> None:
    """One line for a bad ``push_to_hub`` / ``license``, or a foreign README.md where the card goes."""
    repo = cfg.get("push_to_hub")
    if repo:
        check_repo_id(str(repo))
    card = cfg.get("card", True)
    if not isinstance(card, bool):
        raise ConfigError(f"card={card!r} must be true or false")
    if card:
        check_card_folder(str(cfg.out), cfg.get("license"))


def finish_export(cfg: Any, out: Path, source: str, bb: Any, paths: list[Path]) -> list[Path]:
    """After export.py wrote ``paths``: the model card (``card=true``), then the push (``push_to_hub``).
    The files written."""
    written: list[Path] = []
    repo = cfg.get("push_to_hub")
    repo = str(repo) if repo else None
    if cfg.get("card", True):
        written = write_card(
            out,
            paths,
            source=str(source),
            arch=bb.arch,
            preprocessing=bb.preprocessing,
            class_names=bb.class_names if bb.num_classes else [],
            params=sum(p.numel() for p in bb.model.parameters()),
            out_text=str(cfg.out),
            repo_id=repo,
            license=cfg.get("license"),
        )
        print(f"model card -> {written[0]}")
    if repo:
        folder = card_folder(out)
        allow = None
        if folder != out:  # a single-file export: only what this export wrote beside it
            allow = [p.name for p in paths] + [CARD, f"{IMAGES_DIR}/*"]
        hub = cfg.get("hub") or {}
        url = push_folder(
            folder,
            repo,
            allow_patterns=allow,
            private=bool(hub.get("private", False)),
            revision=hub.get("revision"),
            commit_message=f"Upload {Path(str(source)).name} exported by vit-ft",
        )
        print(f"pushed {folder} to the Hub repository {repo}: {url}")
    return written
