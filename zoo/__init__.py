"""zoo: a PyTorch Lightning model zoo for Transformer language models."""

__version__ = "0.1.0"
