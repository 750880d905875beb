"""vit-ft: fine-tune Vision Transformers with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
