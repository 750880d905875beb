"""Backbones, weight readers and the LightningModule."""
