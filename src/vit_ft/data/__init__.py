"""Data sources, decoding, transforms and the LightningDataModules."""

from vit_ft.data.datamodule import (
    ImageDataModule,
    ImageFolderDataModule,
    ManifestDataModule,
    QuickstartDataModule,
)
from vit_ft.data.hf import HFDataModule
from vit_ft.data.imagenet import ImageNetDataModule
from vit_ft.data.wds import WebDatasetDataModule

__all__ = [
    "HFDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ManifestDataModule",
    "ImageNetDataModule",
    "QuickstartDataModule",
    "WebDatasetDataModule",
]
