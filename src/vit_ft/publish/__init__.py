"""Publishing an exported model: its model card (``README.md`` beside the files) and the push to the
Hugging Face Hub. Pure of Hydra: ``export.py`` (:mod:`vit_ft.tasks.export`) calls :func:`check_card_folder`
before it writes anything, then :func:`write_card` and :func:`push_folder` after."""

from vit_ft.publish.card import CARD, IMAGES_DIR, card_folder, check_card_folder, write_card
from vit_ft.publish.hub import check_repo_id, push_folder

__all__ = [
    "CARD",
    "IMAGES_DIR",
    "card_folder",
    "check_card_folder",
    "check_repo_id",
    "push_folder",
    "write_card",
]
