"""Everything before a batch reaches the model: tokenizers, datasets, collators, DataModules."""

from zoo.data.text import TextDataModule, TokenBlocks

__all__ = ["TextDataModule", "TokenBlocks"]
